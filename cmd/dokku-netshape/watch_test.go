package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// The watcher keeps its shaper between reconciles but must neither keep the
// reconcile lock nor keep writing maps that are no longer pinned.
func TestRootKeptHandlesReleaseTheLockAndFollowRepinning(t *testing.T) {
	nettest.RequireRoot(t)
	pinDir := "/sys/fs/bpf/netshape-test-" + nettest.Suffix()
	lock := filepath.Join(t.TempDir(), "netshape.lock")
	t.Setenv(envPinDir, pinDir)
	t.Setenv(envLock, lock)
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	k := &kept{}
	defer k.close()

	var first *shaper.Shaper
	if err := k.do(func(r *reconcile.Reconciler) error {
		first = r.Shaper
		return r.Shaper.UpsertBudget(shaper.Budget{Name: "shop/_default_/egress", Rate: 20e6})
	}); err != nil {
		t.Fatal(err)
	}
	// Between reconciles anyone (the CLI, a trigger) can take the lock.
	got := make(chan error, 1)
	go func() {
		unlock, err := reconcile.Lock(lock)
		if err == nil {
			unlock()
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reconcile lock is still held after the watcher's reconcile returned")
	}
	// Same pins: the same handles (programs stay loaded).
	if err := k.do(func(r *reconcile.Reconciler) error {
		if r.Shaper != first {
			t.Error("the shaper was reopened although its pins did not change")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// An uninstall removes the pins; the next reconcile must use the new ones.
	other, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := k.do(func(r *reconcile.Reconciler) error {
		if r.Shaper == first || !r.Shaper.Current() {
			t.Error("still on the removed maps")
		}
		bs, err := r.Shaper.Budgets()
		if err == nil && len(bs) != 0 {
			t.Errorf("budgets %v on fresh pins", bs)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
