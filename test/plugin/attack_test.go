package plugin

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/rootns"
)

// The secret a root-only file holds; no output may ever contain it.
const rootSecret = "NETSHAPE-ROOT-ONLY-SECRET-7d1f"

// fakeDocker answers like a Docker daemon with no containers at all.
func fakeDocker(t *testing.T, sock string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/_ping"):
			w.Header().Set("Api-Version", "1.41")
			w.Write([]byte("OK"))
		case strings.HasSuffix(r.URL.Path, "/containers/json"):
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte("[]"))
		default:
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// silentDocker accepts connections and never answers.
func silentDocker(t *testing.T, sock string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() { l.Close() })
}

// installed is a Dokku host with the plugin installed by its real install
// trigger (Docker reached at fakeSock), one app with a 20mbit egress limit.
func installed(t *testing.T, dockerSock string) *dokkuEnv {
	t.Helper()
	e := newDokkuEnv(t)
	e.AddApp("myapp", "web", 1)
	copyPluginFiles(t, e.available)
	if err := os.MkdirAll(filepath.Dir(e.enabled), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.available, e.enabled); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(buildBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.available, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.available, "bin", "dokku-netshape"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.available, "bin", ".release"), []byte("attack test build\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	chownTree(t, e.DokkuRoot)
	chownTree(t, filepath.Join(e.LibRoot, "config"))
	chownTree(t, filepath.Join(e.LibRoot, "data"))
	chownTree(t, filepath.Join(e.LibRoot, "plugins"))
	e.mustRunEnv(t, false, []string{"DOCKER_HOST=unix://" + dockerSock, "NETSHAPE_DOCKER_TIMEOUT=3s"}, filepath.Join(e.enabled, "install"))
	e.mustRun(t, true, filepath.Join(e.enabled, "subcommands", "set"), "netshape:set", "myapp", "--egress", "20mbit")
	if got := e.egressBudget(t); got != 20_000_000 {
		t.Fatalf("egress budget after set: %d, want 20mbit", got)
	}
	// A root-only file the dokku user must never see.
	if err := os.WriteFile("/etc/netshape-secret", []byte(rootSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *dokkuEnv) egressBudget(t *testing.T) uint64 {
	t.Helper()
	s, err := shaper.Open(shaper.Options{PinDir: e.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := s.Budget("myapp/_default_/egress")
	if err != nil {
		return 0
	}
	return b.Rate
}

// sudo runs the granted binary through the real grant as the dokku user.
func (e *dokkuEnv) sudo(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return e.run(t, true, env, "/usr/bin/sudo", append([]string{"-n", e.rootBin}, args...)...)
}

// plantProperty replaces a property of myapp, as the dokku user could.
func (e *dokkuEnv) plantProperty(t *testing.T, key string, plant func(p string) error) string {
	t.Helper()
	p := e.PropertyPath("resource", "myapp", key)
	os.Remove(p)
	if err := plant(p); err != nil {
		t.Fatal(err)
	}
	os.Lchown(p, int(dokkuUser.uid), int(dokkuUser.gid))
	return p
}

func (e *dokkuEnv) restoreEgress(t *testing.T) {
	t.Helper()
	p := e.PropertyPath("resource", "myapp", "_default_.limit.network-egress")
	os.Remove(p)
	e.SetResource("myapp", "", "limit", "network-egress", "20mbit")
	chownTree(t, filepath.Dir(p))
}

func noSecret(t *testing.T, what string, r result) {
	t.Helper()
	if strings.Contains(r.stdout+r.stderr, rootSecret) || strings.Contains(r.stdout+r.stderr, "SECRET") {
		t.Errorf("%s printed the root-only secret:\n%s", what, r)
	}
}

// Each attack as the dokku user runs it: files it plants in Dokku's tree,
// its environment, its argv, a Docker that never answers — against the
// real sudo grant written by the real install trigger.
func TestRootAttacksThroughTheGrant(t *testing.T) {
	requireTools(t)
	if !rootns.Enter(t) {
		return
	}
	goodSock, silentSock := "/run/netshape-fake-docker.sock", "/run/netshape-silent-docker.sock"
	fakeDocker(t, goodSock)
	silentDocker(t, silentSock)
	e := installed(t, goodSock)
	report := filepath.Join(e.enabled, "subcommands", "report")
	apply := filepath.Join(e.enabled, "subcommands", "apply")

	t.Run("symlink to a root-only file", func(t *testing.T) {
		for _, key := range []string{"_default_.limit.memory", "_default_.limit.network-egress"} {
			p := e.plantProperty(t, key, func(p string) error { return os.Symlink("/etc/netshape-secret", p) })
			for _, c := range []struct {
				what string
				r    result
			}{
				{"netshape:report --netshape-memory", e.run(t, true, nil, report, "netshape:report", "myapp", "--netshape-memory")},
				{"netshape:report", e.run(t, true, nil, report, "netshape:report", "myapp")},
				{"netshape:apply", e.run(t, true, nil, apply, "netshape:apply", "myapp")},
				{"sudo report", e.sudo(t, nil, "report", "myapp", "--netshape-memory")},
				{"sudo apply", e.sudo(t, nil, "apply", "myapp")},
			} {
				noSecret(t, key+": "+c.what, c.r)
				if key == "_default_.limit.network-egress" || strings.Contains(c.what, "report") {
					if c.r.code == 0 || !strings.Contains(c.r.stdout+c.r.stderr, p) || !strings.Contains(c.r.stdout+c.r.stderr, "symbolic link") {
						t.Errorf("%s: %s: %s\nwant a failure naming %s as a symbolic link", key, c.what, c.r, p)
					}
				}
			}
			os.Remove(p)
		}
		e.restoreEgress(t)
	})

	t.Run("fifo", func(t *testing.T) {
		p := e.plantProperty(t, "_default_.limit.network-egress", func(p string) error { return syscall.Mkfifo(p, 0o600) })
		for _, c := range []struct {
			what string
			r    result
		}{
			{"sudo apply", e.sudo(t, nil, "apply", "myapp")},
			{"sudo report", e.sudo(t, nil, "report", "myapp")},
			{"netshape:apply", e.run(t, true, nil, apply, "netshape:apply", "myapp")},
		} {
			if c.r.code == 0 || !strings.Contains(c.r.stdout+c.r.stderr, "FIFO") || c.r.took > 20*time.Second {
				t.Errorf("%s with a FIFO property: %s (took %v)\nwant a prompt failure naming the FIFO", c.what, c.r, c.r.took)
			}
		}
		// post-deploy (every deploy) fails open, promptly.
		r := e.run(t, true, nil, filepath.Join(e.enabled, "post-deploy"), "myapp", "", "", "latest")
		if r.code != 0 || !strings.Contains(r.stdout+r.stderr, "FIFO") || r.took > 20*time.Second {
			t.Errorf("post-deploy with a FIFO property: %s (took %v)", r, r.took)
		}
		// The lock is free: the next apply goes through at once.
		os.Remove(p)
		e.restoreEgress(t)
		if r := e.sudo(t, nil, "apply", "myapp"); r.code != 0 || r.took > 20*time.Second {
			t.Errorf("apply after the FIFO is gone: %s (took %v)", r, r.took)
		}
	})

	t.Run("dev zero and a huge file", func(t *testing.T) {
		e.plantProperty(t, "_default_.limit.network-egress", func(p string) error { return os.Symlink("/dev/zero", p) })
		r := e.sudo(t, nil, "report", "myapp")
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "symbolic link") || r.took > 20*time.Second {
			t.Errorf("/dev/zero link: %s (took %v)", r, r.took)
		}
		t.Logf("report with a /dev/zero link: %v, max RSS %d KiB", r.took, r.maxRSSKiB)
		p := e.plantProperty(t, "_default_.limit.network-egress", func(p string) error {
			if err := os.WriteFile(p, []byte("20mbit"), 0o600); err != nil {
				return err
			}
			return os.Truncate(p, 4<<30) // 4 GiB, sparse
		})
		for _, args := range [][]string{{"report", "myapp"}, {"apply", "myapp"}} {
			r := e.sudo(t, nil, args...)
			t.Logf("%s with a 4 GiB property: %v, max RSS %d KiB", args[0], r.took, r.maxRSSKiB)
			if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "larger than 16 KiB") || !strings.Contains(r.stdout+r.stderr, p) {
				t.Errorf("%v with a 4 GiB property: %s", args, r)
			}
			if r.maxRSSKiB > 200<<10 || r.took > 20*time.Second {
				t.Errorf("%v with a 4 GiB property: max RSS %d KiB, took %v; want < 200 MiB, < 20s", args, r.maxRSSKiB, r.took)
			}
		}
		e.restoreEgress(t)
	})

	t.Run("linked app dir and config dir", func(t *testing.T) {
		evil := filepath.Join(e.base, "evil")
		if err := os.MkdirAll(filepath.Join(evil, "myapp"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(evil, "myapp", "_default_.limit.network-egress"), []byte("1kbit"), 0o600); err != nil {
			t.Fatal(err)
		}
		chownTree(t, evil)
		linkedApp := filepath.Join(e.DokkuRoot, "linked")
		if err := os.Symlink(e.AppDir("myapp"), linkedApp); err != nil {
			t.Fatal(err)
		}
		os.Lchown(linkedApp, int(dokkuUser.uid), int(dokkuUser.gid))
		if r := e.sudo(t, nil, "apply", "linked"); r.code == 0 || !strings.Contains(r.stdout+r.stderr, "symbolic link") {
			t.Errorf("apply of a linked app dir: %s", r)
		}
		os.Remove(linkedApp)

		cfg := filepath.Join(e.LibRoot, "config", "resource", "myapp")
		if err := os.Rename(cfg, cfg+".real"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(evil, "myapp"), cfg); err != nil {
			t.Fatal(err)
		}
		r := e.sudo(t, nil, "apply", "myapp")
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "symbolic link") {
			t.Errorf("apply with a linked config dir: %s", r)
		}
		if got := e.egressBudget(t); got != 20_000_000 {
			t.Errorf("egress budget after the linked-config attack: %d, want 20mbit unchanged", got)
		}
		os.Remove(cfg)
		if err := os.Rename(cfg+".real", cfg); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("hostile environment", func(t *testing.T) {
		// An attacker tree saying 1kbit, and every knob pointing away.
		evil := filepath.Join(e.base, "evil-tree")
		for _, d := range []string{"home/myapp", "lib/config/resource/myapp"} {
			if err := os.MkdirAll(filepath.Join(evil, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(evil, "lib/config/resource/myapp/_default_.limit.network-egress"), []byte("1kbit"), 0o644); err != nil {
			t.Fatal(err)
		}
		chownTree(t, evil)
		pins, lock := filepath.Join(e.base, "evil-pins"), filepath.Join(e.base, "evil.lock")
		hostile := []string{
			"DOKKU_ROOT=" + filepath.Join(evil, "home"), "DOKKU_LIB_ROOT=" + filepath.Join(evil, "lib"),
			"DOKKU_LIB_PATH=" + filepath.Join(evil, "lib"), "NETSHAPE_PIN_DIR=" + pins, "NETSHAPE_LOCK=" + lock,
			"DOCKER_HOST=unix://" + silentSock, "NETSHAPE_DOCKER_TIMEOUT=1h", "LD_PRELOAD=" + filepath.Join(evil, "evil.so"),
		}
		check := func(what string) {
			t.Helper()
			for _, c := range []struct {
				what string
				r    result
			}{
				{"sudo report", e.sudo(t, hostile, "report", "myapp", "--netshape-egress")},
				{"netshape:report", e.run(t, true, hostile, report, "netshape:report", "myapp", "--netshape-egress")},
			} {
				if c.r.code != 0 || strings.TrimSpace(c.r.stdout) != "20mbit" {
					t.Errorf("%s: %s with a hostile environment: %s\nwant 20mbit from the real tree", what, c.what, c.r)
				}
			}
			if r := e.sudo(t, hostile, "apply", "myapp"); r.code != 0 {
				t.Errorf("%s: sudo apply with a hostile environment: %s", what, r)
			}
			if got := e.egressBudget(t); got != 20_000_000 {
				t.Errorf("%s: egress budget %d, want 20mbit", what, got)
			}
			for _, p := range []string{pins, lock} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s: the root side created %s", what, p)
				}
			}
		}
		check("through the grant")
		// sudo refuses variables set on its command line.
		if r := e.run(t, true, nil, "/usr/bin/sudo", "-n", "DOKKU_LIB_ROOT="+evil, e.rootBin, "report", "myapp"); r.code == 0 {
			t.Errorf("sudo VAR=... accepted: %s", r)
		}
		// Even a sudoers that keeps every one of them: the root side ignores them.
		keep := "Defaults:dokku env_keep += \"DOKKU_ROOT DOKKU_LIB_ROOT DOKKU_LIB_PATH NETSHAPE_PIN_DIR NETSHAPE_LOCK DOCKER_HOST NETSHAPE_DOCKER_TIMEOUT LD_PRELOAD\"\n"
		if err := os.WriteFile("/etc/sudoers.d/zz-keep-everything", []byte(keep), 0o440); err != nil {
			t.Fatal(err)
		}
		check("with a sudoers that keeps the hostile variables")
		os.Remove("/etc/sudoers.d/zz-keep-everything")
	})

	t.Run("argv beyond the granted forms", func(t *testing.T) {
		for _, args := range [][]string{
			{"apply", "myapp", "other"},
			{"apply", "myapp", "--all"},
			{"apply", "myapp", "--help"},
			{"apply", "--generate-bash-completion"},
			{"remove", "myapp", "--force"},
			{"report", "myapp", "--netshape-bogus"},
			{"report", "myapp", "--sample-window", "1h"}, // a root process held open
			{"top", "--interval", "1ms", "--count", "1"},
			{"top", "--interval", "1s", "--count", "1", "--help"},
			{"top", "--interval", "1s", "--count", "99999999"},
		} {
			r := e.sudo(t, nil, args...)
			if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "only `apply APP|--all [--force]`") {
				t.Errorf("sudo %v: %s\nwant the root side's refusal", args, r)
			}
		}
		if r := e.sudo(t, nil, "apply", "myapp", "--force"); r.code != 0 {
			t.Errorf("apply --force (granted: the app's own veths): %s", r)
		}
		// Bare `top` is not even in the sudoers grant (only "top *"): sudo refuses.
		if r := e.sudo(t, nil, "top"); r.code == 0 || r.stdout != "" {
			t.Errorf("sudo top: %s\nwant a refusal", r)
		}
	})

	// top through the grant (issue 9): read-only, bounded, plain lines when
	// stdout is no terminal, and nothing taken from a hostile environment.
	t.Run("top", func(t *testing.T) {
		pins := filepath.Join(e.base, "evil-top-pins")
		hostile := []string{"NETSHAPE_PIN_DIR=" + pins, "TERM=xterm-256color", "LD_PRELOAD=" + filepath.Join(e.base, "evil.so")}
		for _, c := range []struct {
			what string
			r    result
		}{
			{"sudo top", e.sudo(t, hostile, "top", "--interval", "100ms", "--count", "2")},
			{"netshape:top", e.run(t, true, hostile, filepath.Join(e.enabled, "subcommands", "top"), "netshape:top", "--interval", "100ms", "--count", "2")},
		} {
			out := c.r.stdout
			if c.r.code != 0 || strings.Count(out, "netshape top:") != 2 || !strings.Contains(out, "myapp") || strings.Contains(out, "\x1b") {
				t.Errorf("%s: %s\nwant two plain blocks naming myapp, no escape codes", c.what, c.r)
			}
			if _, err := os.Lstat(pins); err == nil {
				t.Errorf("%s: the root side used the caller's NETSHAPE_PIN_DIR", c.what)
			}
		}
	})

	t.Run("docker that never answers", func(t *testing.T) {
		conf := "DOKKU_ROOT=/home/dokku\nDOKKU_LIB_ROOT=/var/lib/dokku\nDOKKU_SYSTEM_USER=dokku\nDOKKU_SYSTEM_GROUP=dokku\n" +
			"DOCKER_HOST=unix://" + silentSock + "\nNETSHAPE_DOCKER_TIMEOUT=2s\n"
		if err := os.WriteFile("/etc/dokku-netshape/paths", []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		want := "Docker did not answer within 2s on unix://" + silentSock
		r := e.run(t, true, nil, filepath.Join(e.enabled, "post-deploy"), "myapp", "", "", "latest")
		if r.code != 0 || !strings.Contains(r.stdout+r.stderr, want) || r.took > 30*time.Second {
			t.Errorf("post-deploy with a silent Docker: %s (took %v)\nwant exit 0 and %q", r, r.took, want)
		}
		t.Logf("post-deploy with a silent Docker returned after %v", r.took)
		r = e.run(t, true, nil, report, "netshape:report", "myapp")
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, want) || r.took > 30*time.Second {
			t.Errorf("netshape:report with a silent Docker: %s (took %v)", r, r.took)
		}
		// Back to an answering daemon: the lock was released.
		conf = strings.Replace(conf, silentSock, goodSock, 1)
		if err := os.WriteFile("/etc/dokku-netshape/paths", []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := e.sudo(t, nil, "apply", "myapp"); r.code != 0 || r.took > 20*time.Second {
			t.Errorf("apply after the silent daemon: %s (took %v)", r, r.took)
		}
	})

	t.Run("lock held elsewhere", func(t *testing.T) {
		conf := "DOKKU_ROOT=/home/dokku\nDOKKU_LIB_ROOT=/var/lib/dokku\nDOKKU_SYSTEM_USER=dokku\nDOKKU_SYSTEM_GROUP=dokku\n" +
			"DOCKER_HOST=unix://" + goodSock + "\nNETSHAPE_LOCK_TIMEOUT=2s\n"
		if err := os.WriteFile("/etc/dokku-netshape/paths", []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		unlock, err := reconcile.LockWait(e.lock, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r := e.sudo(t, nil, "apply", "myapp")
		unlock()
		want := fmt.Sprintf("timed out waiting for the reconcile lock %s after 2s: held by pid %d: ", e.lock, os.Getpid())
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, want) || r.took > 20*time.Second {
			t.Errorf("apply while the lock is held: %s (took %v)\nwant %q", r, r.took, want)
		}
		if r := e.sudo(t, nil, "apply", "myapp"); r.code != 0 {
			t.Errorf("apply after the holder let go: %s", r)
		}
	})
}
