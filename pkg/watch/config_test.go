package watch

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
)

// changes collects what a ResourceFiles reports.
type changes struct {
	t   *testing.T
	mu  sync.Mutex
	got []string
	log syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func follow(t *testing.T, r *ResourceFiles) *changes {
	t.Helper()
	c := &changes{t: t}
	r.Log = &c.log
	ctx, cancel := context.WithCancel(context.Background())
	ch := r.Changes(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case app := <-ch:
				c.mu.Lock()
				c.got = append(c.got, app)
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// expect waits until every app in want was reported, then (after the
// stragglers of the same change had time to arrive) forgets everything
// reported so far. Any app in not reported meanwhile fails the test.
func (c *changes) expect(want []string, not ...string) {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		got := append([]string(nil), c.got...)
		c.mu.Unlock()
		for _, n := range not {
			if slices.Contains(got, n) {
				c.t.Fatalf("%s reported (all: %v), want only %v", n, got, want)
			}
		}
		if !slices.ContainsFunc(want, func(a string) bool { return !slices.Contains(got, a) }) {
			time.Sleep(50 * time.Millisecond)
			c.mu.Lock()
			c.got = nil
			c.mu.Unlock()
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%v not all reported within 5s (got %v); log:\n%s", want, got, c.log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// env is a Dokku tree with only DOKKU_LIB_ROOT; writes keep the test's owner.
func env(t *testing.T) dokku.Env {
	lib := filepath.Join(t.TempDir(), "lib")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	return dokku.Env{LibRoot: lib, IsRoot: func() bool { return false }}
}

func setNet(t *testing.T, e dokku.Env, app string, typ dokku.ResourceType, v string) {
	t.Helper()
	if err := e.SetResource(app, "", dokku.Limit, typ, v); err != nil {
		t.Fatal(err)
	}
}

func TestResourceFilesFollowsTheStoreCreatedLater(t *testing.T) {
	e := env(t) // no config/ yet: Dokku installed, no plugin wrote properties
	c := follow(t, NewResourceFiles(e, nil))
	// pkg/dokku's writer: mkdir config/resource/shop, temp file, rename.
	setNet(t, e, "shop", dokku.NetworkEgress, "20mbit")
	c.expect([]string{"shop"})
	// Another app's dir appears after the store is followed, written at once.
	if err := os.MkdirAll(filepath.Join(e.PluginConfigDir(dokku.ResourcePlugin), "blog"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeInPlace(t, e, "blog", "_default_.limit.network-ingress", "5mbit")
	c.expect([]string{"blog"})
}

func writeInPlace(t *testing.T, e dokku.Env, app, key, value string) {
	t.Helper()
	// As Dokku's PropertyWrite: open with O_TRUNC and write, no rename.
	if err := os.WriteFile(filepath.Join(e.PropertyDir(dokku.ResourcePlugin, app), key), []byte(value), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestResourceFilesWritesRenamesDeletes(t *testing.T) {
	e := env(t)
	setNet(t, e, "shop", dokku.NetworkEgress, "20mbit")
	setNet(t, e, "blog", dokku.NetworkEgress, "20mbit")
	c := follow(t, NewResourceFiles(e, nil))

	// Dokku's in-place write of an existing key.
	writeInPlace(t, e, "shop", "_default_.limit.network-egress", "30mbit")
	c.expect([]string{"shop"})
	// Our own atomic rename, a process type's key.
	if err := e.SetResource("shop", "worker", dokku.Limit, dokku.Network, "1mbit"); err != nil {
		t.Fatal(err)
	}
	c.expect([]string{"shop"})
	// `resource:limit --network-egress clear` deletes the key.
	setNet(t, e, "shop", dokku.NetworkEgress, "clear")
	c.expect([]string{"shop"})
	// Keys the shaper does not read change nothing: blog's write is
	// reported after them, shop's are not reported at all.
	if err := e.SetResource("shop", "", dokku.Limit, dokku.Memory, "512m"); err != nil {
		t.Fatal(err)
	}
	if err := e.SetResource("shop", "", dokku.Reserve, dokku.Network, "1mbit"); err != nil {
		t.Fatal(err)
	}
	writeInPlace(t, e, "shop", "_default_.limit.cpu", "2")
	setNet(t, e, "blog", dokku.NetworkIngress, "9mbit")
	c.expect([]string{"blog"}, "shop")
}

func TestResourceFilesAppDirAndStoreRemoved(t *testing.T) {
	e := env(t)
	setNet(t, e, "shop", dokku.NetworkEgress, "20mbit")
	setNet(t, e, "blog", dokku.NetworkEgress, "20mbit")
	c := follow(t, NewResourceFiles(e, nil))
	store := e.PluginConfigDir(dokku.ResourcePlugin)

	// apps:destroy removes the app's property dir.
	if err := os.RemoveAll(filepath.Join(store, "shop")); err != nil {
		t.Fatal(err)
	}
	c.expect([]string{"shop"})
	// Re-created under the same name: followed again.
	setNet(t, e, "shop", dokku.NetworkIngress, "1mbit")
	c.expect([]string{"shop"})

	// The whole store goes (every app's limits with it) and comes back.
	if err := os.RemoveAll(store); err != nil {
		t.Fatal(err)
	}
	c.expect([]string{"shop", "blog"})
	setNet(t, e, "blog", dokku.NetworkEgress, "3mbit")
	c.expect([]string{"blog"})
	writeInPlace(t, e, "blog", "_default_.limit.network-egress", "4mbit")
	c.expect([]string{"blog"})
}

func TestResourceFilesInotifyUnavailableIsLoudAndRetried(t *testing.T) {
	e := env(t)
	setNet(t, e, "shop", dokku.NetworkEgress, "20mbit")
	var mu sync.Mutex
	failing := true
	r := NewResourceFiles(e, nil)
	r.Retry = 20 * time.Millisecond
	r.newWatcher = func() (*fsnotify.Watcher, error) {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return nil, errors.New("too many open files")
		}
		return fsnotify.NewWatcher()
	}
	c := follow(t, r)
	if log := c.log.String(); !strings.Contains(log, "NOT FOLLOWING resource:limit CHANGES") || !strings.Contains(log, "too many open files") {
		t.Fatalf("log %q: want a loud line naming the failure", log)
	}
	// A change while inotify is unavailable is picked up on recovery.
	setNet(t, e, "shop", dokku.NetworkEgress, "30mbit")
	mu.Lock()
	failing = false
	mu.Unlock()
	c.expect([]string{"shop"})
	writeInPlace(t, e, "shop", "_default_.limit.network-egress", "40mbit")
	c.expect([]string{"shop"})
	if log := c.log.String(); strings.Count(log, "NOT FOLLOWING") != 1 || !strings.Contains(log, "again") {
		t.Fatalf("log %q: want the failure said once and the recovery said", log)
	}
}

func TestResourceFilesOverflowReportsEveryApp(t *testing.T) {
	e := env(t)
	setNet(t, e, "shop", dokku.NetworkEgress, "20mbit")
	setNet(t, e, "blog", dokku.NetworkEgress, "20mbit")
	f := &follower{ResourceFiles: NewResourceFiles(e, nil), apps: map[string]bool{}, ancestors: map[string]bool{}, queued: map[string]bool{}}
	f.dir = f.Dir
	f.Retry = time.Minute
	f.newWatcher = fsnotify.NewWatcher
	f.setup(false)
	defer f.fsw.Close()
	if len(f.queue) != 0 {
		t.Fatalf("initial arm queued %v: the caller's first resync covers those", f.queue)
	}
	f.handleErr(fsnotify.ErrEventOverflow)
	if len(f.queue) != 2 {
		t.Fatalf("after an overflow queued %v, want both apps", f.queue)
	}
}
