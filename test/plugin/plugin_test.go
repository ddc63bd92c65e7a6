// Package plugin tests dokku-netshape as an installed Dokku plugin: the
// committed plugin layout copied into /var/lib/dokku/plugins, driven exactly
// as Dokku drives it — the install/uninstall triggers as root, subcommands,
// `commands` and the other triggers as the dokku user, which reaches root
// only through `sudo -n` and the sudoers file the install trigger wrote.
//
// Every test runs in a private mount namespace (test/rootns): the real
// paths — /etc/sudoers.d, /etc/dokku-netshape, /usr/local/libexec,
// /var/lib/dokku, /home/dokku, /run, /sys/fs/bpf — are private there, and
// the `dokku` user exists only in the namespace's /etc. Nothing reaches the
// machine's own configuration.
//
// Needs root, sudo (.ci/plugin-deps.sh), a Docker daemon for the lifecycle
// test (.ci/docker-up.sh) and Go.
package plugin

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/docker/dockertest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/rootns"
)

// The plugin's entry points as committed at the repo root.
var (
	wantTriggers    = []string{"post-app-clone-setup", "post-app-rename-setup", "post-delete", "post-deploy", "report", "uninstall"}
	wantSubcommands = []string{"apply", "clear", "help", "report", "set", "top"}
)

var (
	repoRoot  string
	dokkuUser struct{ uid, gid uint32 }
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	repoRoot = filepath.Join(wd, "..", "..")
	return m.Run()
}

func requireTools(t *testing.T) {
	t.Helper()
	nettest.RequireRoot(t)
	for _, tool := range []string{"sudo", "visudo", "go", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := tool + " not found (sudo: .ci/plugin-deps.sh)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// dokkuEnv is a Dokku host inside the private namespace: the fixture tree
// bound at /home/dokku and /var/lib/dokku, the plugin tree under
// /var/lib/dokku/plugins, and the real paths install writes.
type dokkuEnv struct {
	*dokkutest.Fixture
	base      string
	available string // plugins/available/netshape
	enabled   string // plugins/enabled/netshape
	sudoers   string // the grant
	unit      string
	rootBin   string
	pinDir    string
	lock      string
}

// newDokkuEnv must run inside rootns.Enter.
func newDokkuEnv(t *testing.T) *dokkuEnv {
	t.Helper()
	rootns.MustBeInside(t)
	dokkuUser.uid, dokkuUser.gid = rootns.AddUser(t, "dokku")
	f := dokkutest.NewFixture(t)
	// Dokku's real paths, private to the namespace.
	for src, dst := range map[string]string{f.DokkuRoot: "/home/dokku", f.LibRoot: "/var/lib/dokku"} {
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind %s on %s: %v", src, dst, err)
		}
	}
	f.DokkuRoot, f.LibRoot = "/home/dokku", "/var/lib/dokku"
	f.Env.DokkuRoot, f.Env.LibRoot = f.DokkuRoot, f.LibRoot
	t.Setenv("DOKKU_ROOT", f.DokkuRoot)
	t.Setenv("DOKKU_LIB_ROOT", f.LibRoot)
	base := t.TempDir()
	e := &dokkuEnv{
		Fixture:   f,
		base:      base,
		available: filepath.Join(f.LibRoot, "plugins", "available", "netshape"),
		enabled:   filepath.Join(f.LibRoot, "plugins", "enabled", "netshape"),
		sudoers:   "/etc/sudoers.d/dokku-netshape",
		unit:      "/etc/systemd/system/dokku-netshape-watch.service",
		rootBin:   "/usr/local/libexec/dokku-netshape",
		pinDir:    shaper.DefaultPinDir,
		lock:      "/run/netshape.lock",
	}
	t.Cleanup(func() {
		if _, err := os.Stat(e.pinDir); err == nil {
			if s, err := shaper.Open(shaper.Options{PinDir: e.pinDir}); err == nil {
				if bs, err := s.Budgets(); err == nil {
					for _, b := range bs {
						s.RemoveBudget(b.Name)
					}
				}
				s.Destroy()
			}
			os.RemoveAll(e.pinDir)
		}
	})
	// t.TempDir() dirs are 0700: the dokku user must reach the tree.
	for _, leaf := range []string{f.DokkuRoot, base} {
		for d := leaf; d != filepath.Clean(os.TempDir()) && d != "/"; d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	fake := filepath.Join(base, "systemctl")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$*\" >>"+filepath.Join(base, "systemctl.log")+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Dokku's trees belong to dokku.
	chownTree(t, f.DokkuRoot)
	chownTree(t, filepath.Join(f.LibRoot, "config"))
	chownTree(t, filepath.Join(f.LibRoot, "data"))
	return e
}

func chownTree(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(dokkuUser.uid), int(dokkuUser.gid))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// env is what Dokku exports to plugins, plus the test's private paths.
func (e *dokkuEnv) env() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + filepath.Dir(goBin()),
		"HOME=/root",
		"DOKKU_ROOT=" + e.DokkuRoot,
		"DOKKU_LIB_ROOT=" + e.LibRoot,
		"DOKKU_SYSTEM_USER=dokku",
		"DOKKU_SYSTEM_GROUP=dokku",
		"PLUGIN_PATH=" + filepath.Join(e.LibRoot, "plugins"),
		"PLUGIN_AVAILABLE_PATH=" + filepath.Join(e.LibRoot, "plugins", "available"),
		"PLUGIN_ENABLED_PATH=" + filepath.Join(e.LibRoot, "plugins", "enabled"),
		"DOKKU_NOT_IMPLEMENTED_EXIT=10",
		"NETSHAPE_SYSTEMCTL=" + filepath.Join(e.base, "systemctl"),
	}
}

type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
	maxRSSKiB      int64 // of the process and the descendants it waited for (sudo waits for the command)
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs path with args as root (asDokku false) or as the dokku user,
// with Dokku's environment, and a time limit.
func (e *dokkuEnv) run(t *testing.T, asDokku bool, extraEnv []string, path string, args ...string) result {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(e.env(), extraEnv...)
	cmd.Dir = e.base
	if asDokku {
		cmd.Env = append(cmd.Env, "HOME=/home/dokku", "USER=dokku")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: dokkuUser.uid, Gid: dokkuUser.gid, Groups: []uint32{}}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	start := time.Now()
	select {
	case err = <-done:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v: timed out", path, args)
	}
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSSKiB = ru.Maxrss
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", path, err)
	}
	return r
}

func (e *dokkuEnv) mustRun(t *testing.T, asDokku bool, path string, args ...string) result {
	t.Helper()
	return e.mustRunEnv(t, asDokku, nil, path, args...)
}

func (e *dokkuEnv) mustRunEnv(t *testing.T, asDokku bool, extraEnv []string, path string, args ...string) result {
	t.Helper()
	r := e.run(t, asDokku, extraEnv, path, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: %s", strings.TrimPrefix(path, e.LibRoot), strings.Join(args, " "), r)
	}
	return r
}

func goBin() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// buildBinary builds the plugin binary once per test binary run.
var built struct {
	path string
	err  error
}

func buildBinary(t *testing.T) string {
	t.Helper()
	if built.path == "" && built.err == nil {
		dir, err := os.MkdirTemp("", "netshape-plugin-bin-")
		if err == nil {
			built.path = filepath.Join(dir, "dokku-netshape")
			cmd := exec.Command(goBin(), "build", "-trimpath", "-o", built.path, "./cmd/dokku-netshape")
			cmd.Dir = repoRoot
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("go build: %v: %s", err, out)
			}
		} else {
			built.err = err
		}
	}
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// copyPluginFiles copies the committed entry points (links stay links), as
// a git clone or the release tarball would lay them out.
func copyPluginFiles(t *testing.T, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dst, "subcommands"), 0o755); err != nil {
		t.Fatal(err)
	}
	names := []string{"plugin.toml", "install", "update", "commands"}
	for _, s := range wantSubcommands {
		names = append(names, filepath.Join("subcommands", s))
	}
	names = append(names, wantTriggers...)
	for _, n := range names {
		src := filepath.Join(repoRoot, n)
		st, err := os.Lstat(src)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			l, err := os.Readlink(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(l, filepath.Join(dst, n)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, n), b, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

func executable(path string) bool { return unix.Access(path, unix.X_OK) == nil }

// The committed layout: exactly these links, relative, to the binary; the
// scripts executable; bin/ ignored by git.
func TestRootPluginLayout(t *testing.T) {
	requireTools(t)
	var links []string
	ents, err := os.ReadDir(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		p := filepath.Join(repoRoot, ent.Name())
		if l, err := os.Readlink(p); err == nil && l == "bin/dokku-netshape" {
			links = append(links, ent.Name())
		}
	}
	if !slices.Equal(links, wantTriggers) {
		t.Errorf("trigger links %v, want %v", links, wantTriggers)
	}
	subs, err := os.ReadDir(filepath.Join(repoRoot, "subcommands"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range subs {
		l, err := os.Readlink(filepath.Join(repoRoot, "subcommands", s.Name()))
		if err != nil || l != "../bin/dokku-netshape" {
			t.Errorf("subcommands/%s: link %q %v, want ../bin/dokku-netshape", s.Name(), l, err)
		}
		got = append(got, s.Name())
	}
	if !slices.Equal(got, wantSubcommands) {
		t.Errorf("subcommands %v, want %v", got, wantSubcommands)
	}
	if l, err := os.Readlink(filepath.Join(repoRoot, "update")); err != nil || l != "install" {
		t.Errorf("update: link %q %v, want install", l, err)
	}
	for _, s := range []string{"install", "commands"} {
		if st, err := os.Stat(filepath.Join(repoRoot, s)); err != nil || st.Mode().Perm()&0o111 != 0o111 {
			t.Errorf("%s not executable: %v", s, err)
		}
	}
	toml, err := os.ReadFile(filepath.Join(repoRoot, "plugin.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[plugin]\n", "\ndescription = \"", "\nversion = \"", "\n[plugin.config]\n"} {
		if !strings.Contains(string(toml), want) {
			t.Errorf("plugin.toml lacks %q:\n%s", want, toml)
		}
	}
	out, err := exec.Command("git", "-C", repoRoot, "check-ignore", "bin/dokku-netshape").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "bin/dokku-netshape" {
		t.Errorf("bin/dokku-netshape not git-ignored: %v %s", err, out)
	}
}

// The whole life of the plugin on a Dokku host, in the order Dokku runs it.
func TestRootDockerPluginLifecycleAsDokkuUser(t *testing.T) {
	requireTools(t)
	if !rootns.Enter(t) {
		return
	}
	dockertest.Need(t) // post-deploy and report reconcile against Docker
	e := newDokkuEnv(t)
	e.AddApp("myapp", "web", 1)
	chownTree(t, filepath.Join(e.LibRoot, "config"))
	chownTree(t, e.DokkuRoot)

	// plugin:install: clone, enable (an absolute link, as plugn makes it).
	copyPluginFiles(t, e.available)
	if err := os.MkdirAll(filepath.Dir(e.enabled), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.available, e.enabled); err != nil {
		t.Fatal(err)
	}

	// Not built yet: Dokku must see no triggers or subcommands, and the
	// `commands` fallback must leave other plugins' commands alone.
	for _, n := range append(slices.Clone(wantTriggers), "subcommands/set") {
		if executable(filepath.Join(e.enabled, n)) {
			t.Errorf("%s executable before the binary exists", n)
		}
	}
	if r := e.run(t, true, nil, filepath.Join(e.enabled, "commands"), "foo:bar", "x"); r.code != 10 || r.stdout != "" {
		t.Errorf("unbuilt commands foo:bar: %s", r)
	}
	if r := e.run(t, true, nil, filepath.Join(e.enabled, "commands"), "netshape:set", "myapp"); r.code != 1 || !strings.Contains(r.stderr, "plugin:install") {
		t.Errorf("unbuilt commands netshape:set: %s", r)
	}

	// A release tarball's binary, then Dokku's postinst habit of handing
	// the whole plugins tree to dokku.
	bin := buildBinary(t)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.available, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.available, "bin", "dokku-netshape"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.available, "bin", ".release"), []byte("e2e test build\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	chownTree(t, filepath.Join(e.LibRoot, "plugins"))

	// The install trigger, as root, no arguments.
	r := e.mustRun(t, false, filepath.Join(e.enabled, "install"))
	if !strings.Contains(r.stdout, "using the shipped binary (e2e test build)") {
		t.Errorf("install did not use the shipped binary:\n%s", r)
	}
	if l, err := os.Readlink(filepath.Join(e.available, "bin", "dokku-netshape")); err != nil || l != e.rootBin {
		t.Errorf("plugin binary: link %q %v, want a link to the root-owned copy %s", l, err, e.rootBin)
	}
	st, err := os.Stat(e.sudoers)
	if err != nil {
		t.Fatalf("install wrote no sudoers file: %v", err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o440 || sys.Uid != 0 {
		t.Errorf("sudoers: mode %v uid %d, want 0440 root", st.Mode().Perm(), sys.Uid)
	}
	for _, n := range append(slices.Clone(wantTriggers), "subcommands/set", "commands") {
		if !executable(filepath.Join(e.enabled, n)) {
			t.Errorf("%s not executable after install", n)
		}
	}
	if out, err := exec.Command("visudo", "-c").CombinedOutput(); err != nil {
		t.Fatalf("visudo -c with the installed files: %v\n%s", err, out)
	}

	// dokku netshape:set, as Dokku runs it: as dokku, full command name first.
	e.mustRun(t, true, filepath.Join(e.enabled, "subcommands", "set"), "netshape:set", "myapp", "--egress", "20mbit", "--no-apply")
	e.mustRun(t, true, filepath.Join(e.enabled, "subcommands", "set"), "netshape:set", "myapp", "--ingress", "50mbit", "--no-apply")
	for key, want := range map[string]string{
		"_default_.limit.network-egress":  "20mbit",
		"_default_.limit.network-ingress": "50mbit",
	} {
		p := e.PropertyPath("resource", "myapp", key)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != dokkuUser.uid || sys.Gid != dokkuUser.gid || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: owner %d:%d mode %v, want dokku:dokku 0600", key, sys.Uid, sys.Gid, st.Mode().Perm())
		}
		if got := e.Read(p); got != want {
			t.Errorf("%s = %q, want %q (no newline)", key, got, want)
		}
	}

	// Help and Dokku's fallback dispatcher.
	for _, c := range [][]string{{"commands", "netshape:help"}, {"commands", "netshape"}, {"subcommands/help", "netshape:help"}} {
		r := e.mustRun(t, true, filepath.Join(e.enabled, c[0]), c[1])
		for _, want := range []string{"Usage: dokku netshape[:COMMAND]", "netshape:set", "netshape:clear", "netshape:apply", "netshape:report"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%s %s lacks %q:\n%s", c[0], c[1], want, r.stdout)
			}
		}
	}
	if r := e.run(t, true, nil, filepath.Join(e.enabled, "commands"), "foo:bar"); r.code != 10 || r.stdout != "" {
		t.Errorf("commands foo:bar: %s, want exit 10 and no output", r)
	}
	if r := e.mustRun(t, true, filepath.Join(e.enabled, "commands"), "help"); !strings.HasPrefix(r.stdout, "    netshape") {
		t.Errorf("commands help: %q", r.stdout)
	}

	// post-deploy as dokku needs root (BPF): it goes through sudo -n and
	// the installed grant, and creates the app's budgets.
	e.mustRun(t, true, filepath.Join(e.enabled, "post-deploy"), "myapp", "", "", "latest")
	budgets := func() map[string]uint64 {
		s, err := shaper.Open(shaper.Options{PinDir: e.pinDir})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		bs, err := s.Budgets()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]uint64{}
		for _, b := range bs {
			m[b.Name] = b.Rate
		}
		return m
	}
	if got := budgets(); got["myapp/_default_/egress"] != 20_000_000 || got["myapp/_default_/ingress"] != 50_000_000 {
		t.Errorf("budgets after post-deploy as dokku: %v", got)
	}
	// netshape:report with and without an app (sudo's bare `report` rule),
	// and Dokku's `report` trigger.
	for _, c := range [][]string{
		{"subcommands/report", "netshape:report", "myapp"},
		{"subcommands/report", "netshape:report"},
		{"report", "myapp"},
	} {
		r := e.mustRun(t, true, filepath.Join(e.enabled, c[0]), c[1:]...)
		if !strings.Contains(r.stdout, "myapp netshape information") || !strings.Contains(r.stdout, "20mbit") {
			t.Errorf("%v:\n%s", c, r)
		}
	}
	// post-delete as dokku: remove through sudo.
	e.mustRun(t, true, filepath.Join(e.enabled, "post-delete"), "myapp", "latest")
	if got := budgets(); len(got) != 0 {
		t.Errorf("budgets after post-delete: %v", got)
	}

	// What the grant allows, asked of sudo itself as dokku: exactly the
	// reconcile subcommands of the root-owned copy, nothing else — not the
	// same program at a path dokku controls.
	forged := filepath.Join(e.available, "bin", "forged")
	if err := os.WriteFile(forged, b, 0o755); err != nil {
		t.Fatal(err)
	}
	chownTree(t, forged)
	for _, c := range []struct {
		args []string
		ok   bool
	}{
		{[]string{e.rootBin, "apply", "myapp"}, true},
		{[]string{e.rootBin, "apply", "--all"}, true},
		{[]string{e.rootBin, "remove", "myapp"}, true},
		{[]string{e.rootBin, "report"}, true},
		{[]string{e.rootBin, "report", "myapp", "--format", "json"}, true},
		{[]string{e.rootBin, "apply"}, false},
		{[]string{e.rootBin, "set", "myapp", "--egress", "1mbit"}, false},
		{[]string{e.rootBin, "watch"}, false},
		{[]string{e.rootBin, "install"}, false},
		{[]string{e.rootBin}, false},
		{[]string{forged, "apply", "myapp"}, false},
		{[]string{"/bin/sh", "-c", "id"}, false},
	} {
		r := e.run(t, true, nil, "/usr/bin/sudo", append([]string{"-n", "-l"}, c.args...)...)
		if (r.code == 0) != c.ok {
			t.Errorf("sudo -n -l %s as dokku: %s\nwant allowed=%v", strings.Join(c.args, " "), r, c.ok)
		}
	}

	// Without the grant, what needs root fails and says why: a command
	// exits non-zero; post-deploy fails open (the deploy must not fail) but
	// says the same.
	if err := os.Rename(e.sudoers, e.sudoers+".off"); err != nil {
		t.Fatal(err)
	}
	r = e.run(t, true, nil, filepath.Join(e.enabled, "subcommands", "apply"), "netshape:apply", "myapp")
	if r.code == 0 || !strings.Contains(r.stderr, "sudoers grant") {
		t.Errorf("netshape:apply without the sudoers grant: %s\nwant a failure naming the sudoers grant", r)
	}
	r = e.run(t, true, nil, filepath.Join(e.enabled, "post-deploy"), "myapp", "", "", "latest")
	if r.code != 0 || !strings.Contains(r.stderr, "sudoers grant") {
		t.Errorf("post-deploy without the sudoers grant: %s\nwant exit 0 and a warning naming the sudoers grant", r)
	}
	if err := os.Rename(e.sudoers+".off", e.sudoers); err != nil {
		t.Fatal(err)
	}

	// plugin:uninstall: `uninstall netshape` as root in every plugin, then rm -rf.
	e.mustRun(t, false, filepath.Join(e.enabled, "uninstall"), "netshape")
	for _, p := range []string{e.sudoers, e.unit, e.rootBin, e.pinDir, "/etc/dokku-netshape"} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left after uninstall: %v", p, err)
		}
	}
	// Dokku's properties are Dokku's: they stay.
	if got := e.Read(e.PropertyPath("resource", "myapp", "_default_.limit.network-egress")); got != "20mbit" {
		t.Errorf("resource property after uninstall: %q", got)
	}
}

// plugin:install from git: a clone has no binary; the install trigger
// builds it with Go. Without Go or a shipped binary it fails and says how.
func TestRootPluginInstallFromGitClone(t *testing.T) {
	requireTools(t)
	if !rootns.Enter(t) {
		return
	}
	e := newDokkuEnv(t)
	if err := os.MkdirAll(filepath.Dir(e.available), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("git", "clone", "-q", repoRoot, e.available).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v: %s", err, out)
	}
	if err := os.MkdirAll(filepath.Dir(e.enabled), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.available, e.enabled); err != nil {
		t.Fatal(err)
	}

	r := e.run(t, false, []string{"GO=none"}, filepath.Join(e.enabled, "install"))
	if r.code == 0 || !strings.Contains(r.stderr, "install Go") || !strings.Contains(r.stderr, "release tarball") {
		t.Errorf("install without Go or binary: %s\nwant a failure naming both ways", r)
	}
	if _, err := os.Stat(e.sudoers); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed install wrote %s", e.sudoers)
	}

	r = e.mustRun(t, false, filepath.Join(e.enabled, "install"))
	if !strings.Contains(r.stdout, "building bin/dokku-netshape with go version") {
		t.Errorf("install did not build:\n%s", r)
	}
	for _, p := range []string{e.sudoers, e.rootBin} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	// The built binary answers as the commands dispatcher.
	if r := e.run(t, true, nil, filepath.Join(e.enabled, "commands"), "foo:bar"); r.code != 10 {
		t.Errorf("commands foo:bar after build: %s", r)
	}
	// Nothing the build left is tracked: `plugin:update` can still pull.
	if out, err := exec.Command("git", "-C", e.available, "status", "--porcelain").CombinedOutput(); err != nil || len(out) != 0 {
		t.Errorf("clone dirty after install: %v\n%s", err, out)
	}
	// The update trigger (plugin:update) rebuilds and re-installs.
	r = e.mustRun(t, false, filepath.Join(e.enabled, "update"))
	if !strings.Contains(r.stdout, "building bin/dokku-netshape") || !strings.Contains(r.stdout, "may run apply, remove, report, top as root") {
		t.Errorf("update trigger:\n%s", r)
	}
	e.mustRun(t, false, filepath.Join(e.enabled, "uninstall"), "netshape")
	if _, err := os.Stat(e.sudoers); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("sudoers left after uninstall: %v", err)
	}
}

// plugin:install of the release tarball on a server without Go: plugn
// untars it into the plugin dir (moving a single top directory's contents
// up) and the install trigger uses the shipped binary.
func TestRootPluginInstallFromTarball(t *testing.T) {
	requireTools(t)
	if !rootns.Enter(t) {
		return
	}
	e := newDokkuEnv(t)
	out := filepath.Join(e.base, "dist")
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "plugin-tarball.sh"))
	cmd.Env = append(os.Environ(), "OUT="+out, "GO="+goBin())
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("plugin-tarball.sh: %v\n%s", err, o)
	}
	tarballs, _ := filepath.Glob(filepath.Join(out, "dokku-netshape-*-linux-amd64.tar.gz"))
	if len(tarballs) != 1 {
		t.Fatalf("tarballs: %v", tarballs)
	}
	check := exec.Command("sha256sum", "-c", filepath.Base(tarballs[0])+".sha256")
	check.Dir = out
	if sum, err := check.CombinedOutput(); err != nil {
		t.Errorf("checksum: %v %s", err, sum)
	}
	listing, err := exec.Command("tar", "tvzf", tarballs[0]).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(listing)), "\n") {
		if f := strings.Fields(line); len(f) < 2 || f[1] != "0/0" {
			t.Errorf("tarball entry not owned by root (plugn untars as root and keeps owners): %s", line)
		}
	}

	// plugn install URL --name netshape, for a tarball.
	if err := os.MkdirAll(e.available, 0o755); err != nil {
		t.Fatal(err)
	}
	if o, err := exec.Command("tar", "xzf", tarballs[0], "-C", e.available).CombinedOutput(); err != nil {
		t.Fatalf("untar: %v %s", err, o)
	}
	ents, err := os.ReadDir(e.available)
	if err != nil || len(ents) != 1 || !ents[0].IsDir() {
		t.Fatalf("tarball top level: %v %v, want one directory", ents, err)
	}
	top := filepath.Join(e.available, ents[0].Name())
	inner, err := os.ReadDir(top)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range inner {
		if err := os.Rename(filepath.Join(top, ent.Name()), filepath.Join(e.available, ent.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(top); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(e.enabled), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.available, e.enabled); err != nil {
		t.Fatal(err)
	}

	r := e.mustRunEnv(t, false, []string{"GO=none"}, filepath.Join(e.enabled, "install"))
	if !strings.Contains(r.stdout, "using the shipped binary (") || !strings.Contains(r.stdout, " linux/amd64)") {
		t.Errorf("install from tarball:\n%s", r)
	}
	r = e.mustRun(t, true, filepath.Join(e.enabled, "commands"), "netshape:help")
	if !strings.Contains(r.stdout, "netshape:set") {
		t.Errorf("commands netshape:help after tarball install:\n%s", r)
	}
	e.mustRun(t, false, filepath.Join(e.enabled, "uninstall"), "netshape")
}
