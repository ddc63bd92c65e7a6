package dokku_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
)

// snapshot maps every path under root to type, mode, owner and content hash.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			desc += fmt.Sprintf(" %d:%d", st.Uid, st.Gid)
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[strings.TrimPrefix(p, root)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("removed %s", p)
		} else if a != b {
			t.Errorf("changed %s: %s -> %s", p, b, a)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("added %s", p)
		}
	}
}

// A change that writes, deletes and creates across plugins and then fails
// leaves the tree exactly as it was: contents, modes, owners, no new dirs,
// no temp files.
func TestChangeUndoesEverythingOnFailure(t *testing.T) {
	for _, version := range []string{"0.38.27", "0.37.9"} {
		t.Run(version, func(t *testing.T) {
			f := dokkutest.NewFixture(t, dokkutest.WithVersion(version))
			f.AddApp("shop", "web", 1)
			f.SetResource("shop", "", dokku.Limit, dokku.Memory, "256m")
			f.SetResource("shop", "", dokku.Limit, dokku.CPU, "1")
			f.SetDockerOptions("shop", "", "--restart=on-failure:10")
			if err := os.Chmod(f.PropertyPath("resource", "shop", "_default_.limit.cpu"), 0o640); err != nil {
				t.Fatal(err)
			}
			if os.Geteuid() == 0 {
				// Restored files keep their owner too (as root, the usual case
				// of a file another user wrote).
				if err := os.Chown(f.PropertyPath("resource", "shop", "_default_.limit.cpu"), 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			f.SetPropertyList("netshape", "other", "owned-docker-options._default_.deploy", "--blkio-weight=10")
			f.AddApp("other")
			// config/netshape, the lock's directory, exists already.
			root := filepath.Dir(filepath.Dir(f.DokkuRoot))
			before := snapshot(t, root)

			boom := errors.New("boom")
			err := f.Env.Change(time.Second, func(env dokku.Env) error {
				if err := env.SetResource("shop", "", dokku.Limit, dokku.Memory, "1g"); err != nil {
					return err
				}
				if err := env.SetResource("shop", "", dokku.Limit, dokku.CPU, "clear"); err != nil {
					return err
				}
				if err := env.SetResource("shop", "web", dokku.Limit, dokku.NetworkEgress, "1mbit"); err != nil {
					return err
				}
				if err := env.DockerOptions().SetOwned("shop", "", []string{"--blkio-weight=500"}); err != nil {
					return err
				}
				if err := env.Properties("netshape").Destroy("other"); err != nil {
					return err
				}
				if err := env.Properties("brand-new-plugin").Set("shop", "k", "v"); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) || !strings.Contains(err.Error(), "undone") {
				t.Fatalf("Change: %v", err)
			}
			sameTree(t, before, snapshot(t, root))
		})
	}
}

// A change that succeeds stays; one that fails before writing returns its
// error untouched.
func TestChangeCommitsAndPassesErrors(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	if err := f.Env.Change(time.Second, func(env dokku.Env) error {
		return env.SetResource("shop", "", dokku.Limit, dokku.Memory, "1g")
	}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath("resource", "shop", "_default_.limit.memory")); got != "1g" {
		t.Fatalf("memory = %q", got)
	}
	early := errors.New("bad input")
	if err := f.Env.Change(time.Second, func(dokku.Env) error { return early }); err != early {
		t.Fatalf("Change: %v, want the error itself", err)
	}
}

// While one holder has the config lock, a second waits, then gives up after
// its timeout naming the holder (this process, from /proc/locks); once the
// holder is gone it gets the lock at once.
func TestConfigLockTimeoutNamesHolder(t *testing.T) {
	f := dokkutest.NewFixture(t)
	unlock, err := f.Env.LockConfig(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(f.Env.ConfigLockPath()); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Fatalf("lock dir: %v %v", fi, err)
	}
	start := time.Now()
	_, err = f.Env.LockConfig(300 * time.Millisecond)
	waited := time.Since(start)
	if !errors.Is(err, dokku.ErrConfigLockTimeout) || !strings.Contains(err.Error(), fmt.Sprintf("held by pid %d (", os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
	if waited < 300*time.Millisecond {
		t.Fatalf("gave up after %s, before its timeout", waited)
	}
	// A Change waits on the same lock and writes nothing.
	err = f.Env.Change(100*time.Millisecond, func(env dokku.Env) error {
		return env.SetResource("shop", "", dokku.Limit, dokku.Memory, "1g")
	})
	if !errors.Is(err, dokku.ErrConfigLockTimeout) {
		t.Fatalf("Change under a held lock: %v", err)
	}
	unlock()
	unlock2, err := f.Env.LockConfig(0)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	unlock2()
	// No stray file: the lock dir lists no app and no property.
	if ents, _ := os.ReadDir(f.Env.ConfigLockPath()); len(ents) != 0 {
		t.Fatalf("lock dir holds %v", ents)
	}
}

// The lock refuses a symlink planted where its directory belongs.
func TestConfigLockRefusesSymlink(t *testing.T) {
	f := dokkutest.NewFixture(t)
	target := t.TempDir()
	if err := os.Symlink(target, f.Env.ConfigLockPath()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Env.LockConfig(100 * time.Millisecond); err == nil {
		t.Fatal("lock taken through a symlink")
	}
}

// A panic inside a change undoes it before it propagates.
func TestChangeUndoesOnPanic(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.Memory, "256m")
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Fatalf("recovered %v, want the panic", p)
			}
		}()
		f.Env.Change(time.Second, func(env dokku.Env) error {
			if err := env.SetResource("shop", "", dokku.Limit, dokku.Memory, "1g"); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if got := f.Read(f.PropertyPath("resource", "shop", "_default_.limit.memory")); got != "256m" {
		t.Fatalf("memory = %q after a panicking change", got)
	}
	// The lock was released.
	unlock, err := f.Env.LockConfig(0)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
}
