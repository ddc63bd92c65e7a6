package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/rootns"
)

// instEnv is install/uninstall at their real paths — only ever inside the
// private mount namespace of rootns.Enter, where those paths are private
// tmpfs — with a recording fake systemctl.
type instEnv struct {
	dir, sudoers, unit, systemctlLog, pinDir, lock, rootBin string
}

// newInstEnv must be called inside rootns.Enter.
func newInstEnv(t *testing.T) *instEnv {
	t.Helper()
	nettest.RequireRoot(t)
	rootns.MustBeInside(t)
	dir := t.TempDir()
	e := &instEnv{
		dir:          dir,
		sudoers:      defaultSudoers,
		unit:         defaultUnit,
		systemctlLog: filepath.Join(dir, "systemctl.log"),
		pinDir:       shaper.DefaultPinDir,
		lock:         reconcile.DefaultLockPath,
		rootBin:      defaultRootBin,
	}
	fake := filepath.Join(dir, "systemctl")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$*\" >>"+e.systemctlLog+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{envSudoers, envUnit, envPinDir, envLock, envRootBin} {
		t.Setenv(k, "")
	}
	t.Setenv(envSystemctl, fake)
	t.Setenv("DOKKU_SYSTEM_USER", "dokku")
	t.Setenv("DOKKU_SYSTEM_GROUP", "dokku")
	t.Setenv("DOKKU_ROOT", "/home/dokku")
	t.Setenv("DOKKU_LIB_ROOT", "/var/lib/dokku")
	t.Cleanup(func() {
		if _, err := os.Stat(e.pinDir); err != nil {
			return
		}
		if s, err := shaper.Open(shaper.Options{PinDir: e.pinDir}); err == nil {
			if bs, err := s.Budgets(); err == nil {
				for _, b := range bs {
					s.RemoveBudget(b.Name)
				}
			}
			s.Destroy()
		}
		os.RemoveAll(e.pinDir)
	})
	return e
}

func (e *instEnv) systemctlCalls(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(e.systemctlLog)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// requireVisudo: the sudoers checks are the point of these tests; CI
// installs sudo with .ci/plugin-deps.sh.
func requireVisudo(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("visudo")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("visudo not found: run .ci/plugin-deps.sh")
	}
	t.Skip("visudo not found: run .ci/plugin-deps.sh")
	return ""
}

func wantFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != mode {
		t.Errorf("%s: mode %v, want %v", path, st.Mode(), mode)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 || sys.Gid != 0 {
		t.Errorf("%s: owner %d:%d, want root", path, sys.Uid, sys.Gid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != content {
		t.Errorf("%s:\n%s\nwant:\n%s", path, b, content)
	}
}

func mustSelf(t *testing.T) string {
	t.Helper()
	self, err := selfPath()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

func TestRootInstallWritesSudoersAndUnit(t *testing.T) {
	if !rootns.Enter(t) {
		return
	}
	e := newInstEnv(t)
	visudo := requireVisudo(t)
	testBin, err := os.ReadFile(mustSelf(t))
	if err != nil {
		t.Fatal(err)
	}
	self := e.rootBin // what sudo and the unit must run

	// A stale temp file with a foreign owner and a wide mode must not become the grant.
	stale := e.sudoers + ".netshape-tmp"
	if err := os.WriteFile(stale, []byte("dokku ALL=(ALL) NOPASSWD: ALL\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(stale, 65534, 65534); err != nil {
		t.Fatal(err)
	}

	if err := install(context.Background()); err != nil {
		t.Fatalf("install: %v", err)
	}
	wantSudoers := "# Written by the netshape Dokku plugin's install trigger; removed by its uninstall trigger.\n" +
		"# Dokku runs plugins as dokku; attaching BPF programs needs root, so exactly these\n" +
		"# subcommands of the plugin binary may run as root, with a reset environment: the root\n" +
		"# side reads Dokku's paths from /etc/dokku-netshape/paths, never from its caller.\n" +
		"Cmnd_Alias DOKKU_NETSHAPE = " + self + " apply *, " + self + " remove *, " + self + " report, " + self + " report *, " + self + " top *\n" +
		"Defaults!DOKKU_NETSHAPE env_reset\n" +
		"dokku ALL=(root) NOPASSWD: DOKKU_NETSHAPE\n"
	wantFile(t, e.sudoers, wantSudoers, 0o440)
	wantConf := "# Written by the netshape plugin's install trigger. The root side (apply, remove, report run\n" +
		"# through sudo by the dokku user) takes Dokku's paths from here, never from its caller.\n" +
		"DOKKU_ROOT=/home/dokku\nDOKKU_LIB_ROOT=/var/lib/dokku\nDOKKU_SYSTEM_USER=dokku\nDOKKU_SYSTEM_GROUP=dokku\n"
	wantFile(t, rootConfPath, wantConf, 0o644)
	if conf, err := readRootConf(rootConfPath); err != nil || conf["DOKKU_LIB_ROOT"] != "/var/lib/dokku" {
		t.Errorf("readRootConf of what install wrote: %v, %v", conf, err)
	}
	wantFile(t, e.rootBin, string(testBin), 0o755)
	if out, err := exec.Command(visudo, "-cf", e.sudoers).CombinedOutput(); err != nil {
		t.Errorf("visudo -cf %s: %v: %s", e.sudoers, err, out)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("temp file left behind: %v", err)
	}

	wantUnit := "[Unit]\n" +
		"Description=dokku-netshape: re-apply Dokku app limits when Docker (re)creates containers\n" +
		"After=docker.service\nWants=docker.service\n\n[Service]\n" +
		"Environment=\"DOKKU_ROOT=/home/dokku\"\nEnvironment=\"DOKKU_LIB_ROOT=/var/lib/dokku\"\n" +
		"Environment=\"DOKKU_SYSTEM_USER=dokku\"\nEnvironment=\"DOKKU_SYSTEM_GROUP=dokku\"\n" +
		"ExecStart=" + self + " watch\nCPUWeight=1000\nRestart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n"
	wantFile(t, e.unit, wantUnit, 0o644)

	unit := filepath.Base(e.unit)
	wantCalls := []string{"daemon-reload", "enable " + unit, "restart " + unit}
	if got := e.systemctlCalls(t); strings.Join(got, "|") != strings.Join(wantCalls, "|") {
		t.Errorf("systemctl calls %q, want %q", got, wantCalls)
	}
	if st, err := os.Stat(e.pinDir); err != nil || !st.IsDir() {
		t.Errorf("pin dir %s not created: %v", e.pinDir, err)
	}

	// Dokku re-runs every install trigger on each plugin:install: same files,
	// the watcher restarted (it may be running an older binary).
	if err := install(context.Background()); err != nil {
		t.Fatalf("second install: %v", err)
	}
	wantFile(t, e.sudoers, wantSudoers, 0o440)
	wantFile(t, e.unit, wantUnit, 0o644)
	wantCalls = append(wantCalls, wantCalls...)
	if got := e.systemctlCalls(t); strings.Join(got, "|") != strings.Join(wantCalls, "|") {
		t.Errorf("systemctl calls after re-install %q, want %q", got, wantCalls)
	}
	ents, _ := os.ReadDir(e.dir)
	for _, ent := range ents {
		if strings.Contains(ent.Name(), "tmp") {
			t.Errorf("leftover %s", ent.Name())
		}
	}
}

// The plugin's own binary lives in a tree Dokku chowns to dokku: install
// copies it to a root-only path and points the plugin's link there.
func TestRootInstallRootBinaryAndPluginLink(t *testing.T) {
	if !rootns.Enter(t) {
		return
	}
	e := newInstEnv(t)
	plugin := filepath.Join(e.dir, "plugins", "available", "netshape")
	self := filepath.Join(plugin, "bin", "dokku-netshape")
	if err := os.MkdirAll(filepath.Dir(self), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(self, []byte("binary v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Dokku's postinst: chown -R dokku:dokku plugins.
	if err := os.Chown(self, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	got, err := installRootBinary(self)
	if err != nil || got != e.rootBin {
		t.Fatalf("installRootBinary = %q, %v; want %q", got, err, e.rootBin)
	}
	wantFile(t, e.rootBin, "binary v1", 0o755)
	if l, err := os.Readlink(self); err != nil || l != e.rootBin {
		t.Errorf("plugin binary: link %q %v, want a link to %s", l, err, e.rootBin)
	}
	// Re-run from the copy (the link): nothing to copy, link unchanged.
	if got, err := installRootBinary(e.rootBin); err != nil || got != e.rootBin {
		t.Fatalf("second installRootBinary = %q, %v", got, err)
	}
	wantFile(t, e.rootBin, "binary v1", 0o755)
	// A rebuild replaces the link with a file: the copy follows.
	if err := os.Remove(self); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(self, []byte("binary v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := installRootBinary(self); err != nil {
		t.Fatal(err)
	}
	wantFile(t, e.rootBin, "binary v2", 0o755)
	if l, err := os.Readlink(self); err != nil || l != e.rootBin {
		t.Errorf("after rebuild: link %q %v", l, err)
	}
	// A copy target others can write is refused (the grant would be theirs).
	if err := os.Chmod(filepath.Dir(e.rootBin), 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := installRootBinary(self); err == nil || !strings.Contains(err.Error(), "refusing to grant sudo") {
		t.Errorf("world-writable copy dir: %v, want a refusal", err)
	}
}

func TestRootInstallWithoutSystemdWritesNoUnit(t *testing.T) {
	if !rootns.Enter(t) {
		return
	}
	e := newInstEnv(t)
	requireVisudo(t)
	t.Setenv(envSystemctl, "")
	old := systemdRunDir
	systemdRunDir = filepath.Join(e.dir, "no-systemd")
	t.Cleanup(func() { systemdRunDir = old })

	if err := install(context.Background()); err != nil {
		t.Fatalf("install: %v", err)
	}
	if _, err := os.Stat(e.sudoers); err != nil {
		t.Errorf("sudoers not written: %v", err)
	}
	if _, err := os.Stat(e.unit); !os.IsNotExist(err) {
		t.Errorf("unit written without systemd: %v", err)
	}
	if err := uninstall(context.Background()); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if _, err := os.Stat(e.sudoers); !os.IsNotExist(err) {
		t.Errorf("sudoers left: %v", err)
	}
}

func TestRootInstallRefusesIgnoredSudoersName(t *testing.T) {
	if !rootns.Enter(t) {
		return
	}
	e := newInstEnv(t)
	for _, name := range []string{"netshape.conf", "netshape~"} {
		p := filepath.Join(e.dir, name)
		t.Setenv(envSudoers, p)
		err := install(context.Background())
		if err == nil || !strings.Contains(err.Error(), "sudo ignores") {
			t.Errorf("%s: got %v, want an error saying sudo ignores it", name, err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s written: %v", name, err)
		}
	}
}

func TestRootWriteSudoersKeepsOldFileWhenVisudoRejects(t *testing.T) {
	if !rootns.Enter(t) {
		return
	}
	e := newInstEnv(t)
	requireVisudo(t)
	if err := os.WriteFile(e.sudoers, []byte("# previous\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	checked, err := writeSudoers(e.sudoers, "dokku ALL=(root NOPASSWD: /bin/true\n")
	if err == nil || !strings.Contains(err.Error(), "visudo rejected") || checked {
		t.Fatalf("got checked=%v err=%v, want a visudo rejection", checked, err)
	}
	wantFile(t, e.sudoers, "# previous\n", 0o440)
	if _, err := os.Stat(e.sudoers + ".netshape-tmp"); !os.IsNotExist(err) {
		t.Errorf("rejected temp file left: %v", err)
	}
}

func TestSudoersContentRejectsUnsafeInput(t *testing.T) {
	for _, c := range []struct{ self, user string }{
		{"/var/lib/dokku/plugins/my plugin/bin/x", "dokku"},
		{"/opt/a,b/x", "dokku"},
		{"/opt/a:b/x", "dokku"},
		{"/opt/x", "dokku ALL=(ALL) ALL #"},
		{"/opt/x", "Dokku"},
		{"relative/x", "dokku"},
	} {
		if _, err := sudoersContent(c.self, c.user); err == nil {
			t.Errorf("sudoersContent(%q, %q) accepted", c.self, c.user)
		}
	}
	if _, err := sudoersContent("/var/lib/dokku/plugins/available/netshape/bin/dokku-netshape", "dokku"); err != nil {
		t.Errorf("Dokku's real path rejected: %v", err)
	}
}

func TestRootCheckRootOnly(t *testing.T) {
	nettest.RequireRoot(t)
	base := t.TempDir()
	mk := func(dirMode os.FileMode, fileMode os.FileMode, uid int) string {
		d, err := os.MkdirTemp(base, "d")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, dirMode); err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(d, "bin")
		if err := os.WriteFile(f, []byte("x"), fileMode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, fileMode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(f, uid, 0); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, c := range []struct {
		name     string
		dir      os.FileMode
		file     os.FileMode
		uid      int
		wantFail string
	}{
		{"root only", 0o755, 0o755, 0, ""},
		{"sticky world-writable dir", 0o777 | os.ModeSticky, 0o755, 0, ""},
		{"world-writable dir", 0o777, 0o755, 0, "writable by group or others"},
		{"group-writable file", 0o755, 0o775, 0, "writable by group or others"},
		{"file owned by nobody", 0o755, 0o755, 65534, "not root"},
		{"nobody's file in a sticky dir", 0o777 | os.ModeSticky, 0o755, 65534, "not root"},
	} {
		err := checkRootOnly(mk(c.dir, c.file, c.uid))
		switch {
		case c.wantFail == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.wantFail != "" && (err == nil || !strings.Contains(err.Error(), c.wantFail)):
			t.Errorf("%s: got %v, want %q", c.name, err, c.wantFail)
		}
	}
}

func TestRootUninstallRemovesBudgetsPinsAndFiles(t *testing.T) {
	if !rootns.Enter(t) {
		return
	}
	e := newInstEnv(t)
	requireVisudo(t)
	if err := install(context.Background()); err != nil {
		t.Fatalf("install: %v", err)
	}
	s, err := shaper.Open(shaper.Options{PinDir: e.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"myapp/_default_/egress", "other/web/ingress"} {
		if err := s.UpsertBudget(shaper.Budget{Name: name, Rate: 20_000_000}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if err := os.WriteFile(e.lock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	callsBefore := len(e.systemctlCalls(t))

	// Dokku fires `uninstall PLUGIN` in every plugin: another plugin's name changes nothing.
	if err := runTrigger("uninstall", []string{"postgres"}); err != nil {
		t.Fatalf("uninstall postgres: %v", err)
	}
	for _, p := range []string{e.sudoers, e.unit, e.pinDir, e.rootBin} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("uninstall of another plugin removed %s", p)
		}
	}

	if err := runTrigger("uninstall", []string{pluginName}); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	for _, p := range []string{e.sudoers, e.unit, e.pinDir, e.lock, e.rootBin, rootConfPath, filepath.Dir(rootConfPath)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall: %v", p, err)
		}
	}
	unit := filepath.Base(e.unit)
	want := []string{"disable --now " + unit, "daemon-reload"}
	if got := e.systemctlCalls(t)[callsBefore:]; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("systemctl calls %q, want %q", got, want)
	}
	// Uninstalling twice (a retry after a partial failure) is fine.
	if err := uninstall(context.Background()); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
}

// The attachment half needs sch_fq: it runs in the `make vm-test` guests.
func TestRootFqUninstallDetachesDevices(t *testing.T) {
	nettest.RequireFq(t)
	if !rootns.Enter(t) {
		return
	}
	e := newInstEnv(t)
	requireVisudo(t)
	if err := install(context.Background()); err != nil {
		t.Fatalf("install: %v", err)
	}
	p := nettest.NewPair(t, nettest.NewNetns(t, "inst"), nil, 7)
	app := shaper.Device{Netns: p.A.Path, Name: p.NameA}
	host := shaper.Device{Name: p.NameB}
	s, err := shaper.Open(shaper.Options{PinDir: e.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"myapp/_default_/egress", "myapp/_default_/ingress"} {
		if err := s.UpsertBudget(shaper.Budget{Name: b, Rate: 20_000_000}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Attach(app, "myapp/_default_/egress", shaper.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(host, "myapp/_default_/ingress", shaper.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	if err := uninstall(context.Background()); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if _, err := os.Stat(e.pinDir); !os.IsNotExist(err) {
		t.Errorf("pin dir left: %v", err)
	}
	// Back to the kernel's default: no fq root, no clsact, no filters.
	for _, c := range [][]string{
		{"ip", "netns", "exec", p.A.Name, "tc", "qdisc", "show", "dev", p.NameA},
		{"tc", "qdisc", "show", "dev", p.NameB},
	} {
		out, err := nettest.Output(c...)
		if err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
		if strings.Contains(out, "fq ") || strings.Contains(out, "clsact") {
			t.Errorf("%v after uninstall:\n%s", c, out)
		}
	}
}
