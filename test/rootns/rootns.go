// Package rootns runs a root test inside a private mount namespace where the
// machine's configuration paths are private copies, so a test can install
// the plugin for real — sudoers grant, systemd unit, root binary, root-owned
// config, a dokku user — and attack it through the real sudo, without
// touching the machine's own /etc, /run, /usr/local or bpffs.
//
//	func TestRootX(t *testing.T) {
//		if !rootns.Enter(t) {
//			return // the parent: the test ran (and passed or failed) in the child
//		}
//		... // the child, inside the namespace
//	}
//
// Enter re-executes the test binary for this one test with
// unshare(CLONE_NEWNS) (Go marks / MS_REC|MS_PRIVATE), then, in the child:
// /etc, /usr/local, /var/lib and /home become overlays whose writes land in
// a tmpfs; /etc/sudoers.d, /etc/systemd/system, /usr/local/libexec,
// /var/lib/dokku, /home/dokku and /run are empty tmpfs (the host's Docker
// socket is bound back at /run/docker.sock); /sys/fs/bpf is a fresh bpffs.
// sudo reads /etc/sudoers, which includes /etc/sudoers.d — the private one.
// The parent checks that the real /etc/sudoers.d and /etc/systemd/system are
// the same before and after.
package rootns

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	envTest    = "NETSHAPE_ROOTNS_TEST"    // the test the child runs
	envParent  = "NETSHAPE_ROOTNS_PARENT"  // the parent's mount namespace, to be sure the child left it
	envScratch = "NETSHAPE_ROOTNS_SCRATCH" // an empty dir of the parent's, the child's tmpfs goes there
)

// Private lists the paths that are empty private tmpfs in the child.
var Private = []string{"/etc/sudoers.d", "/etc/systemd/system", "/usr/local/libexec", "/var/lib/dokku", "/home/dokku", "/run"}

// Watched are the real paths whose listing must not change across a test.
var Watched = []string{"/etc/sudoers.d", "/etc/systemd/system", "/etc/dokku-netshape", "/usr/local/libexec", "/var/lib/dokku", "/home/dokku", "/etc/passwd", "/etc/group"}

// Enter reports whether the caller is the child inside the namespace. In
// the parent it runs the child and returns false.
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount namespaces, sudo)")
	}
	if os.Getenv(envTest) == t.Name() {
		prepareOnce(t)
		return true
	}
	runChild(t)
	return false
}

func mntNS(pid string) string {
	l, _ := os.Readlink("/proc/" + pid + "/ns/mnt")
	return l
}

func runChild(t *testing.T) {
	t.Helper()
	before := snapshot(t)
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1", "-test.v"}
	// The parent's timeout and failfast, given as "-flag=value" or "-flag value" (make vm-test's form).
	for i := 1; i < len(os.Args); i++ {
		a := os.Args[i]
		switch {
		case a == "-test.timeout" || a == "--test.timeout":
			if i+1 < len(os.Args) {
				args = append(args, a+"="+os.Args[i+1])
				i++
			}
		case strings.HasPrefix(a, "-test.timeout=") || strings.HasPrefix(a, "-test.failfast"):
			args = append(args, a)
		}
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envTest+"="+t.Name(), envParent+"="+mntNS("self"), envScratch+"="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := out.String()
	after := snapshot(t)
	if d := diff(before, after); len(d) > 0 {
		t.Errorf("the machine's own paths changed during the test:\n%s", strings.Join(d, "\n"))
	}
	switch {
	case strings.Contains(text, "--- SKIP: "+t.Name()):
		t.Skip("in the namespace: " + lastLines(text, 8))
	case err != nil || !strings.Contains(text, "--- PASS: "+t.Name()):
		t.Errorf("in the private mount namespace (%v):\n%s", err, text)
	default:
		t.Log("ran in a private mount namespace:\n" + text)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// snapshot lists each watched path: its entries with mode, owner and content.
func snapshot(t *testing.T) map[string]string {
	t.Helper()
	snap := map[string]string{}
	for _, root := range Watched {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				snap[p] = "error " + err.Error()
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			// Mode, owner and content; not times: a directory's mtime moves
			// when anything enters and leaves it again.
			desc := info.Mode().String()
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				desc += fmt.Sprintf(" %d:%d", st.Uid, st.Gid)
			}
			if info.Mode().IsRegular() {
				if b, err := os.ReadFile(p); err == nil {
					desc += fmt.Sprintf(" %x", sha256.Sum256(b))
				}
			}
			snap[p] = desc
			return nil
		})
	}
	return snap
}

func diff(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			out = append(out, "removed "+k)
		} else if v != w {
			out = append(out, "changed "+k+": "+v+" -> "+w)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, "added "+k)
		}
	}
	slices.Sort(out)
	return out
}

var prepared struct {
	sync.Once
	err error
}

func prepareOnce(t *testing.T) {
	t.Helper()
	prepared.Do(func() { prepared.err = prepare() })
	if prepared.err != nil {
		t.Fatalf("prepare the private mount namespace: %v", prepared.err)
	}
}

func prepare() error {
	if p := os.Getenv(envParent); p == "" || p == mntNS("self") {
		return fmt.Errorf("not in a mount namespace of its own (parent %q, self %q): refusing to mount anything", p, mntNS("self"))
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	scratch := os.Getenv(envScratch)
	if scratch == "" {
		return fmt.Errorf("%s not set", envScratch)
	}
	if err := unix.Mount("tmpfs", scratch, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs on %s: %w", scratch, err)
	}
	// Keep the host's Docker socket reachable after /run is replaced.
	dockerSock := ""
	if st, err := os.Stat("/run/docker.sock"); err == nil && st.Mode()&fs.ModeSocket != 0 {
		dockerSock = filepath.Join(scratch, "docker.sock")
		if err := bindFile("/run/docker.sock", dockerSock); err != nil {
			return err
		}
	}
	overlays := 0
	overlay := func(dir string) error {
		overlays++
		up := filepath.Join(scratch, "ov", strconv.Itoa(overlays))
		for _, d := range []string{"upper", "work"} {
			if err := os.MkdirAll(filepath.Join(up, d), 0o755); err != nil {
				return err
			}
		}
		opts := "lowerdir=" + dir + ",upperdir=" + filepath.Join(up, "upper") + ",workdir=" + filepath.Join(up, "work")
		if err := unix.Mount("overlay", dir, "overlay", 0, opts); err != nil {
			return fmt.Errorf("overlay on %s: %w", dir, err)
		}
		return nil
	}
	for _, dir := range []string{"/etc", "/usr/local", "/var/lib", "/home"} {
		if err := overlay(dir); err != nil {
			return err
		}
	}
	for _, dir := range Private {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("tmpfs on %s: %w", dir, err)
		}
	}
	if dockerSock != "" {
		if err := bindFile(dockerSock, "/run/docker.sock"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll("/run/lock", 0o1777); err != nil {
		return err
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpffs on /sys/fs/bpf: %w", err)
	}
	return nil
}

// bindFile bind-mounts src onto dst, creating dst as an empty file.
func bindFile(src, dst string) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	return nil
}

// AddUser creates a system user and group of that name in the private
// /etc (passwd, group, shadow; home /home/NAME, which is private too) and
// returns its ids. Only inside the namespace.
func AddUser(t *testing.T, name string) (uid, gid uint32) {
	t.Helper()
	if os.Getenv(envTest) == "" {
		t.Fatal("rootns.AddUser outside the private namespace")
	}
	if u, err := user.Lookup(name); err == nil {
		if _, err := user.LookupGroup(name); err != nil {
			t.Fatalf("user %s exists without its group", name)
		}
		id, _ := strconv.Atoi(u.Uid)
		g, _ := strconv.Atoi(u.Gid)
		return uint32(id), uint32(g)
	}
	id := 0
	for n := 990; n > 100; n-- {
		_, e1 := user.LookupId(strconv.Itoa(n))
		_, e2 := user.LookupGroupId(strconv.Itoa(n))
		if e1 != nil && e2 != nil {
			id = n
			break
		}
	}
	if id == 0 {
		t.Fatal("no free system uid")
	}
	home := "/home/" + name
	for file, line := range map[string]string{
		"/etc/passwd": fmt.Sprintf("%s:x:%d:%d::%s:/bin/bash\n", name, id, id, home),
		"/etc/group":  fmt.Sprintf("%s:x:%d:\n", name, id),
		"/etc/shadow": fmt.Sprintf("%s:!:20000::::::\n", name),
	} {
		f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, id, id); err != nil {
		t.Fatal(err)
	}
	return uint32(id), uint32(id)
}

// MustBeInside fails the test unless it runs in the child's private mount
// namespace: helpers that write the real configuration paths call it first.
func MustBeInside(t *testing.T) {
	t.Helper()
	if os.Getenv(envTest) == "" || mntNS("self") == os.Getenv(envParent) {
		t.Fatal("refusing to write the machine's configuration paths outside the private mount namespace (call rootns.Enter first)")
	}
}
