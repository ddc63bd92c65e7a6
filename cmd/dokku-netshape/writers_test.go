package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/blkiodev"
	"github.com/docker/docker/api/types/container"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/limits"
	"github.com/dokku-netshape/dokku-netshape/pkg/size"
	"github.com/dokku-netshape/dokku-netshape/test/docker/dockertest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// touchLock creates the config lock's directory as any earlier set would
// have: it is where the lock lives, not config, so tests asserting "nothing
// changed" start from a tree that has it.
func touchLock(t *testing.T, e *cliEnv) {
	t.Helper()
	unlock, err := e.Env.LockConfig(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
}

// Every writer waits for the config lock; one held too long (here by the
// test itself) makes it fail with one line naming the holder, having
// changed nothing.
func TestConfigLockHeldElsewhere(t *testing.T) {
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	e.AddApp("copy", "web", 1)
	mustRun(t, "dokku-netshape", "set", "shop", "--blkio-weight", "300", "--egress", "1mbit", "--no-apply")
	defer func(d time.Duration) { configLockTimeout = d }(configLockTimeout)
	configLockTimeout = 200 * time.Millisecond
	unlock, err := e.Env.LockConfig(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	base := filepath.Dir(filepath.Dir(e.DokkuRoot))
	for _, argv := range [][]string{
		{"dokku-netshape", "set", "shop", "--memory", "1g", "--no-apply"},
		{"dokku-netshape", "clear", "shop", "--all", "--no-apply"},
		{pluginDir + "post-app-clone-setup", "shop", "copy"},
		{pluginDir + "post-app-rename-setup", "shop", "copy"},
		{pluginDir + "post-delete", "shop", "latest"},
	} {
		before := treeSnapshot(t, base)
		o := capture(t, argv...)
		want := fmt.Sprintf(" !     timed out waiting for the netshape config lock %s after 200ms: held by pid %d (", e.Env.ConfigLockPath(), os.Getpid())
		if o.code == 0 || !strings.HasPrefix(o.stderr, want) || strings.Count(o.stderr, "\n") != 1 || o.stdout != "" {
			t.Errorf("%q:\n%s\nwant one line starting %q", argv, o, want)
		}
		if d := diffSnapshots(before, treeSnapshot(t, base)); len(d) > 0 {
			t.Errorf("%q changed the tree:\n%s", argv, strings.Join(d, "\n"))
		}
	}
}

// Issue 8, finding 1c: a multi-flag set whose last write fails (a key it
// cannot replace) had already written the blkio line. Now what it wrote
// is undone: the tree is as before, byte for byte.
func TestSetAllOrNothing(t *testing.T) {
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	e.SetDockerOptions("shop", "", operatorLines...)
	mustRun(t, "dokku-netshape", "set", "shop", "--device-write-iops", "/dev/sdb:50", "--memory", "128m", "--no-apply")
	// The network key can be written by no one, root included: a directory
	// (with something in it) stands where the file goes.
	blocker := e.PropertyPath("resource", "shop", "_default_.limit.network-egress")
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Dir(filepath.Dir(e.DokkuRoot))
	before := treeSnapshot(t, base)
	o := capture(t, "dokku-netshape", "set", "shop", "--blkio-weight", "500", "--device-read-bps", "/dev/sda:1mb",
		"--device-write-iops", "/dev/sdb:60", "--memory", "256m", "--egress", "5mbit", "--no-apply")
	if o.code == 0 || !strings.Contains(o.stderr, "save network-egress limit of shop") || !strings.Contains(o.stderr, "(what was already written is undone)") ||
		strings.Count(o.stderr, "\n") != 1 || o.stdout != "" {
		t.Errorf("set over a blocked key:\n%s", o)
	}
	if d := diffSnapshots(before, treeSnapshot(t, base)); len(d) > 0 {
		t.Errorf("failed set left changes:\n%s", strings.Join(d, "\n"))
	}
	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, e, "shop", dokku.DefaultProcess)
}

// The same finding as the dokku user would hit it: an unprivileged process
// (uid 65534 owning the tree, as dokku owns Dokku's) and a read-only
// resource dir. The set fails, nothing it wrote is left; with the dir
// writable again the same set succeeds.
func TestRootReadOnlyResourceDirAsUnprivilegedUser(t *testing.T) {
	nettest.RequireRoot(t)
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	e.SetDockerOptions("shop", "", operatorLines...)
	e.SetResource("shop", "", dokku.Limit, dokku.CPU, "1")
	touchLock(t, e)
	base := filepath.Dir(filepath.Dir(e.DokkuRoot))
	bin := unprivilegedCopy(t, base)
	resDir := e.Env.PropertyDir(dokku.ResourcePlugin, "shop")
	if err := os.Chmod(resDir, 0o555); err != nil {
		t.Fatal(err)
	}
	args := []string{"set", "shop", "--blkio-weight", "500", "--device-read-bps", "/dev/sda:1mb", "--memory", "256m", "--no-apply"}
	run := func() (string, error) {
		cmd := cliProcess(t, []string{"DOKKU_SYSTEM_USER=nobody", "DOKKU_SYSTEM_GROUP=nogroup"}, args...)
		cmd.Path, cmd.Args[0] = bin, bin
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	before := treeSnapshot(t, base)
	out, err := run()
	if err == nil || !strings.Contains(out, "permission denied") || !strings.Contains(out, "(what was already written is undone)") {
		t.Errorf("set over a read-only resource dir: %v\n%s", err, out)
	}
	if d := diffSnapshots(before, treeSnapshot(t, base)); len(d) > 0 {
		t.Errorf("failed set left changes:\n%s", strings.Join(d, "\n"))
	}
	if err := os.Chmod(resDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := run(); err != nil {
		t.Fatalf("same set, dir writable: %v\n%s", err, out)
	}
	wantProp(t, e, "resource", "shop", "_default_.limit.memory", "256m")
	owned := checkConsistent(t, e, "shop", dokku.DefaultProcess)[dokku.DefaultProcess]
	if want := "--blkio-weight=500 --device-read-bps=/dev/sda:1mb"; strings.Join(owned, " ") != want {
		t.Errorf("our lines %q, want %s", owned, want)
	}
}

// unprivilegedCopy hands the tree under base to uid 65534, opens the path
// to it, and copies the test binary where that user can run it.
func unprivilegedCopy(t *testing.T, base string) string {
	t.Helper()
	err := filepath.Walk(base, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 65534, 65534)
	})
	if err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parents are 0700.
	for d := base; d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	for d := dir; d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "dokku-netshape.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// Issue 8, finding 3: report without an app stopped at the first app with
// a bad property. Now every app prints; the broken one's section (text) or
// entry (JSON) carries its error, and the exit status is non-zero.
func TestDockerReportBrokenApp(t *testing.T) {
	nettest.RequireRoot(t)
	dockertest.Need(t)
	e := newCLIEnv(t)
	e.AddApp("aaa", "web", 1)
	e.AddApp("broken", "web", 1)
	e.AddApp("zzz", "web", 1)
	e.SetResource("aaa", "", dokku.Limit, dokku.NetworkEgress, "1mbit")
	e.SetResource("broken", "", dokku.Limit, dokku.NetworkEgress, "lots\nof")
	e.SetResource("zzz", "", dokku.Limit, dokku.NetworkEgress, "2mbit")
	const brokenErr = `broken: resource _default_.limit.network-egress of app broken: invalid rate (7 bytes with unprintable characters, not shown)`

	o := capture(t, "dokku-netshape", "report")
	if o.code == 0 || o.stderr != " !     report failed for 1 of 3 apps (broken): see their sections\n" {
		t.Errorf("report:\n%s", o)
	}
	sections := strings.Split(o.stdout, "=====> ")
	if len(sections) != 4 || !strings.HasPrefix(sections[1], "aaa netshape information\n") ||
		!strings.HasPrefix(sections[2], "broken netshape information\n"+fmt.Sprintf("       %-32s%s", "Netshape error:", `broken: resource _default_.limit.network-egress of app broken: invalid rate (7 bytes with unprintable characters, not shown)`)) ||
		strings.Count(sections[2], "\n") != 2 || !strings.HasPrefix(sections[3], "zzz netshape information\n") ||
		!strings.Contains(sections[1], fmt.Sprintf("%-32s1mbit\n", "Netshape egress:")) || !strings.Contains(sections[3], fmt.Sprintf("%-32s2mbit\n", "Netshape egress:")) {
		t.Errorf("report sections:\n%s", o.stdout)
	}

	o = capture(t, "dokku-netshape", "report", "--format", "json")
	var byApp map[string]map[string]any
	if err := json.Unmarshal([]byte(o.stdout), &byApp); err != nil || o.code == 0 {
		t.Fatalf("report --format json: %v\n%s", err, o)
	}
	if byApp["aaa"]["netshape-egress"] != "1mbit" || byApp["zzz"]["netshape-egress"] != "2mbit" ||
		!strings.HasPrefix(fmt.Sprint(byApp["broken"]["error"]), brokenErr) || len(byApp["broken"]) != 1 {
		t.Errorf("json: %v", byApp)
	}

	o = capture(t, "dokku-netshape", "report", "--netshape-egress")
	if o.code == 0 || o.stdout != "1mbit\n\n2mbit\n" || !strings.HasPrefix(o.stderr, " !     report failed for broken ("+brokenErr) || strings.Count(o.stderr, "\n") != 1 {
		t.Errorf("report --netshape-egress:\n%s", o)
	}

	// One app asked for: its section, its error, exit non-zero.
	o = capture(t, "dokku-netshape", "report", "broken", "--format", "json")
	var one map[string]string
	if err := json.Unmarshal([]byte(o.stdout), &one); err != nil || o.code == 0 || !strings.HasPrefix(one["error"], brokenErr) {
		t.Errorf("report broken --format json: %v\n%s", err, o)
	}
	o = mustRun(t, "dokku-netshape", "report", "zzz", "--netshape-egress")
	if o.stdout != "2mbit\n" {
		t.Errorf("report zzz:\n%s", o)
	}
}

// hostBlockDevice returns /dev/NAME of a block device of this host (a
// disk rather than a loop device when there is one).
func hostBlockDevice(t *testing.T) string {
	t.Helper()
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		t.Fatal(err)
	}
	var loops []string
	for _, ent := range ents {
		dev := "/dev/" + ent.Name()
		if _, err := limits.BlockDevice(dev); err != nil {
			continue
		}
		if strings.HasPrefix(ent.Name(), "loop") || strings.HasPrefix(ent.Name(), "zram") || strings.HasPrefix(ent.Name(), "ram") {
			loops = append(loops, dev)
			continue
		}
		return dev
	}
	if len(loops) > 0 {
		return loops[0]
	}
	t.Fatal("no block device under /dev on this Docker host: device limits cannot be tried")
	return ""
}

// Issue 8, finding 2, against a real dockerd: set accepts a device limit
// exactly when Docker can start a container with it. The accepted line is
// read back from docker-options and given to Docker as Dokku would pass it;
// each refused argument, given to Docker as is, makes the container fail.
func TestDockerDeviceLimitsDockerCanApply(t *testing.T) {
	nettest.RequireRoot(t)
	cli := dockertest.Need(t)
	defer func(r limits.DeviceResolver) { deviceResolver = r }(deviceResolver)
	deviceResolver = nil // this host's /dev, as on a server
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	disk := hostBlockDevice(t)
	for _, tc := range []struct {
		arg    string
		accept bool
	}{
		{disk + ":10mb", true},
		{"/dev/null:10mb", false},
		{"/dev/../etc/passwd:1mb", false},
		{"/dev/netshape-no-such-disk:1mb", false},
	} {
		o := capture(t, "dokku-netshape", "set", "shop", "--device-read-bps", tc.arg, "--no-apply")
		if (o.code == 0) != tc.accept {
			t.Errorf("set --device-read-bps %s: accepted=%v, want %v\n%s", tc.arg, o.code == 0, tc.accept, o)
			continue
		}
		given := tc.arg
		if tc.accept {
			lines := readList(t, e.PropertyPath("docker-options", "shop", "_default_.deploy"))
			want := "--device-read-bps=" + tc.arg
			if !slices.Contains(lines, want) {
				t.Fatalf("docker-options %q, want %q", lines, want)
			}
			given = strings.TrimPrefix(want, "--device-read-bps=")
		}
		path, val, _ := strings.Cut(given, ":")
		rate, err := size.Parse(val)
		if err != nil {
			t.Fatal(err)
		}
		id := dockertest.Run(t, cli, dockertest.Spec{
			Name:    "netshape-devlimit-" + nettest.Suffix(),
			Cmd:     []string{"/app", "--help"},
			NoStart: true,
			Host: func(hc *container.HostConfig) {
				hc.BlkioDeviceReadBps = []*blkiodev.ThrottleDevice{{Path: path, Rate: uint64(rate)}}
			},
		})
		err = cli.ContainerStart(context.Background(), id, container.StartOptions{})
		if (err == nil) != tc.accept {
			t.Errorf("docker start with --device-read-bps %s: %v (set accepted it: %v)", given, err, tc.accept)
		}
	}
}
