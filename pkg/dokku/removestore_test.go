package dokku_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
)

// Records written the real way (SetOwned, under the config lock) for two
// apps and two process types are all removed, then config/netshape itself;
// the docker-options lines and every other plugin's config stay.
func TestRemoveOwnStoreLeavesNothing(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1, "worker", 1)
	f.AddApp("blog", "web", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.Memory, "1g")
	err := f.Env.Change(time.Second, func(env dokku.Env) error {
		d := env.DockerOptions()
		if err := d.SetOwned("shop", "", []string{"--blkio-weight=300"}); err != nil {
			return err
		}
		if err := d.SetOwned("shop", "worker", []string{"--blkio-weight=100"}); err != nil {
			return err
		}
		return d.SetOwned("blog", "", []string{"--blkio-weight=500"})
	})
	if err != nil {
		t.Fatal(err)
	}
	store := f.Env.PluginConfigDir(dokku.OwnerPlugin)
	if ents, err := os.ReadDir(store); err != nil || len(ents) != 2 {
		t.Fatalf("store before: %v %v, want two app directories", ents, err)
	}
	before, err := f.Env.DockerOptions().Lines("shop", "")
	if err != nil || len(before) == 0 {
		t.Fatalf("docker-options before: %v %v", before, err)
	}

	if err := f.Env.RemoveOwnStore(time.Second); err != nil {
		t.Fatalf("RemoveOwnStore: %v", err)
	}
	if _, err := os.Lstat(store); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s left: %v", store, err)
	}
	if got := f.Read(f.PropertyPath("resource", "shop", "_default_.limit.memory")); got != "1g" {
		t.Errorf("resource property after: %q", got)
	}
	if after, err := f.Env.DockerOptions().Lines("shop", ""); err != nil || strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("docker-options lines changed: %v %v, were %v", after, err, before)
	}
	// Again, with nothing there: no error, nothing created.
	if err := f.Env.RemoveOwnStore(time.Second); err != nil {
		t.Errorf("second RemoveOwnStore: %v", err)
	}
	if _, err := os.Lstat(store); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("second RemoveOwnStore created %s: %v", store, err)
	}
}

// What netshape did not write stays, with its directories, and is named;
// what it wrote beside it is still removed. A symlink is never followed.
func TestRemoveOwnStoreKeepsForeignEntries(t *testing.T) {
	f := dokkutest.NewFixture(t)
	store := f.Env.PluginConfigDir(dokku.OwnerPlugin)
	outside := t.TempDir()
	victim := filepath.Join(outside, "owned-docker-options._default_.deploy")
	mk := func(p, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mk(filepath.Join(store, "shop", "owned-docker-options._default_.deploy"), "--blkio-weight=300")
	mk(filepath.Join(store, "shop", "notes.txt"), "an operator's file")
	mk(filepath.Join(store, "blog", "owned-docker-options.web.deploy"), "--blkio-weight=500")
	mk(victim, "not ours")
	if err := os.Symlink(outside, filepath.Join(store, "linked")); err != nil {
		t.Fatal(err)
	}

	err := f.Env.RemoveOwnStore(time.Second)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(store, "shop", "notes.txt")) ||
		!strings.Contains(err.Error(), filepath.Join(store, "linked")) {
		t.Fatalf("RemoveOwnStore: %v, want the foreign entries named", err)
	}
	for _, p := range []string{filepath.Join(store, "shop", "notes.txt"), filepath.Join(store, "linked"), victim} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	for _, p := range []string{filepath.Join(store, "shop", "owned-docker-options._default_.deploy"), filepath.Join(store, "blog")} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s kept: %v", p, err)
		}
	}
}

// Under the config lock: while a writer holds it, nothing is removed.
func TestRemoveOwnStoreWaitsForTheConfigLock(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	if err := f.Env.Change(time.Second, func(env dokku.Env) error {
		return env.DockerOptions().SetOwned("shop", "", []string{"--blkio-weight=300"})
	}); err != nil {
		t.Fatal(err)
	}
	unlock, err := f.Env.LockConfig(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	err = f.Env.RemoveOwnStore(200 * time.Millisecond)
	if !errors.Is(err, dokku.ErrConfigLockTimeout) {
		t.Fatalf("RemoveOwnStore under a held lock: %v", err)
	}
	if ents, err := os.ReadDir(filepath.Join(f.Env.PluginConfigDir(dokku.OwnerPlugin), "shop")); err != nil || len(ents) != 1 {
		t.Errorf("records after a timed-out remove: %v %v", ents, err)
	}
}
