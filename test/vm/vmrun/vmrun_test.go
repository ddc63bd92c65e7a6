package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestInitramfsListsWithCpio: the archive must be readable by a real cpio (the kernel's unpacker
// follows the same newc rules), with parents, the console node and file contents intact.
func TestInitramfsListsWithCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("cpio not installed (.ci/vm-deps.sh installs it)")
		}
		t.Skip("cpio not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "mod.ko")
	if err := os.WriteFile(src, []byte("odd-length payload"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.gz")
	err := writeInitramfs(out, []initramfsFile{
		{dst: "/init", data: []byte("#!/bin/sh\n"), mode: 0o755},
		{dst: "/netshape/modules/mod.ko", src: src, mode: 0o644},
	})
	if err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command("sh", "-c", "gzip -dc "+out+" | cpio -itv --quiet").CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, list)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Fields(l)
		names = append(names, f[len(f)-1])
		if f[len(f)-1] == "dev/console" && !strings.HasPrefix(f[0], "c") {
			t.Errorf("dev/console is not a character device: %s", l)
		}
		if f[len(f)-1] == "init" && f[0] != "-rwxr-xr-x" {
			t.Errorf("init mode: %s", l)
		}
	}
	for _, want := range []string{"dev", "dev/console", "proc", "sys", "newroot", "init", "netshape", "netshape/modules", "netshape/modules/mod.ko"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("%s missing from archive: %v", want, names)
		}
	}
	got, err := exec.Command("sh", "-c", "gzip -dc "+out+" | cpio -i --quiet --to-stdout netshape/modules/mod.ko").Output()
	if err != nil || string(got) != "odd-length payload" {
		t.Errorf("module content through cpio: %q, %v", got, err)
	}
}

func TestResolveModulesOrdersDependenciesFirst(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n" +
		"kernel/net/9p/9pnet.ko: kernel/fs/netfs/netfs.ko\n" +
		"kernel/fs/netfs/netfs.ko:\n" +
		"kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n" +
		"kernel/net/sched/sch_fq.ko:\n"
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_pci.ko\n"), 0o644)

	got, err := resolveModules(dir, []string{"virtio-pci", "9pnet_virtio", "9p", "sch_fq"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/fs/netfs/netfs.ko", "kernel/net/9p/9pnet.ko", "kernel/net/9p/9pnet_virtio.ko",
		"kernel/fs/9p/9p.ko", "kernel/net/sched/sch_fq.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order:\n got %v\nwant %v", got, want)
	}
	if _, err := resolveModules(dir, []string{"no_such_mod"}); err == nil {
		t.Error("unknown module accepted")
	}
}

func TestScanConsoleCollectsMarkersAndTests(t *testing.T) {
	console := strings.Join([]string{
		"[    0.1] booting",
		"NETSHAPE-READY uptime=2.50 kernel=6.1.0-56-amd64\r",
		"NETSHAPE-CMD 0 cd x && ./t.test -test.v",
		"=== RUN   TestA",
		"--- PASS: TestA (1.25s)",
		"=== RUN   TestB/sub",
		"    x_test.go:9: got 1, want 2",
		"    --- FAIL: TestB/sub (0.00s)",
		`[   12.3] some kernel line NETSHAPE-RESULT {"metric":"m","bits_per_sec":1e6}`,
		"NETSHAPE-RESULT {not json",
		"--- SKIP: TestC (0.00s)",
		"NETSHAPE-CMD-EXIT 0 1",
		"NETSHAPE-EXIT 1",
	}, "\n") + "\n"
	r := &KernelRun{ExitCode: -1}
	scanConsole(strings.NewReader(console), r, time.Now(), false, func(string, ...any) {})
	if r.ExitCode != 1 || !reflect.DeepEqual(r.CommandExits, []int{1}) {
		t.Errorf("exit %d, command exits %v", r.ExitCode, r.CommandExits)
	}
	if r.GuestUptimeAtReady != 2.5 {
		t.Errorf("uptime %v", r.GuestUptimeAtReady)
	}
	wantTests := []TestResult{{0, "TestA", "PASS", 1.25, nil}, {0, "TestB/sub", "FAIL", 0, []string{"    x_test.go:9: got 1, want 2"}}, {0, "TestC", "SKIP", 0, nil}}
	if !reflect.DeepEqual(r.Tests, wantTests) {
		t.Errorf("tests %+v", r.Tests)
	}
	if len(r.Results) != 1 || string(r.Results[0]) != `{"metric":"m","bits_per_sec":1e6}` {
		t.Errorf("results %q", r.Results)
	}
}

func TestShellJoinRoundTrips(t *testing.T) {
	args := []string{"./x.test", "-test.run", "^TestA$|B C", "it's", ""}
	out, err := exec.Command("sh", "-c", "for a in "+shellJoin(args)+`; do printf '[%s]' "$a"; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "[./x.test][-test.run][^TestA$|B C][it's][]"; string(out) != want {
		t.Errorf("got %s want %s", out, want)
	}
}
