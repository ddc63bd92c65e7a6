package main

import (
	"github.com/dokku-netshape/dokku-netshape/test/rootns"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/docker/dockertest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// Every teardown (remove, apply --all, uninstall) changes the shaping only
// under the reconcile lock, through pkg/reconcile's one implementation: the
// tests hold the lock and show the command waits without touching anything,
// then does its job once the lock is free.

// budgetsIn lists the budget names pinned under pinDir.
func budgetsIn(t *testing.T, pinDir string) []string {
	t.Helper()
	s, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bs, err := s.Budgets()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range bs {
		out = append(out, b.Name)
	}
	slices.Sort(out)
	return out
}

func upsertBudgets(t *testing.T, pinDir string, names ...string) {
	t.Helper()
	s, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, n := range names {
		if err := s.UpsertBudget(shaper.Budget{Name: n, Rate: 1e6}); err != nil {
			t.Fatal(err)
		}
	}
}

// underLock runs cmd while the test holds the lock at path: cmd must neither
// finish nor change the budgets under pinDir until the lock is released, and
// must finish after. It returns what cmd returned.
func underLock[T any](t *testing.T, path, pinDir string, cmd func() T) T {
	t.Helper()
	unlock, err := reconcile.Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	before := budgetsIn(t, pinDir)
	done := make(chan T, 1)
	go func() { done <- cmd() }()
	select {
	case out := <-done:
		unlock()
		t.Fatalf("finished while the reconcile lock was held: %v", out)
	case <-time.After(700 * time.Millisecond):
	}
	if after := budgetsIn(t, pinDir); !slices.Equal(after, before) {
		t.Errorf("budgets changed while the reconcile lock was held: %q -> %q", before, after)
	}
	unlock()
	select {
	case out := <-done:
		return out
	case <-time.After(time.Minute):
		t.Fatal("still waiting a minute after the lock was released")
	}
	panic("unreachable")
}

// apply --all cleans up after apps deleted while nobody looked, plain and
// hashed (a 255-byte name), and orphan names; live apps keep their budgets.
func TestDockerApplyAllRemovesDeletedAppsUnderLock(t *testing.T) {
	dockertest.Need(t) // apply lists each live app's containers
	nettest.RequireRoot(t)
	e := newCLIEnv(t)
	live := dockertest.AppName()
	e.AddApp(live, "web", 1)
	e.SetResource(live, "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	longGone := strings.Repeat("g", 255)
	upsertBudgets(t, e.PinDir, "gone/_default_/egress", "gone/web/ingress",
		reconcile.BudgetName(longGone, "worker", reconcile.Egress), reconcile.BudgetName(live, "web", reconcile.Ingress))

	o := underLock(t, os.Getenv(envLock), e.PinDir, func() outcome { return capture(t, "dokku-netshape", "apply", "--all") })
	if o.code != 0 {
		t.Fatalf("apply --all:\n%s", o)
	}
	for _, app := range []string{"gone", "~"} {
		if !strings.Contains(o.stdout, "-----> Removed limits of deleted app "+app) {
			t.Errorf("apply --all did not report removing %s:\n%s", app, o)
		}
	}
	want := []string{reconcile.BudgetName(live, reconcile.DefaultScope, reconcile.Egress)}
	if got := budgetsIn(t, e.PinDir); !slices.Equal(got, want) {
		t.Errorf("budgets after apply --all: %q, want %q (the live app's configured one)", got, want)
	}
}

// post-delete's remove and the uninstall trigger wait for the lock too.
func TestRootRemoveAndUninstallWaitForLock(t *testing.T) {
	t.Run("remove", func(t *testing.T) {
		nettest.RequireRoot(t)
		e := newCLIEnv(t)
		long := strings.Repeat("l", 255)
		upsertBudgets(t, e.PinDir, "shop/_default_/egress", reconcile.BudgetName(long, "web", reconcile.Ingress),
			reconcile.BudgetName(long, strings.Repeat("p", 200), reconcile.Egress))
		o := underLock(t, os.Getenv(envLock), e.PinDir, func() outcome { return capture(t, "dokku-netshape", "remove", long) })
		if o.code != 0 {
			t.Fatalf("remove:\n%s", o)
		}
		if got := budgetsIn(t, e.PinDir); !slices.Equal(got, []string{"shop/_default_/egress"}) {
			t.Errorf("budgets after remove: %q", got)
		}
	})
	t.Run("uninstall", func(t *testing.T) {
		if !rootns.Enter(t) {
			return
		}
		e := newInstEnv(t)
		upsertBudgets(t, e.pinDir, "shop/_default_/egress", "other/web/ingress")
		err := underLock(t, e.lock, e.pinDir, func() error { return runTrigger("uninstall", []string{pluginName}) })
		if err != nil {
			t.Fatalf("uninstall: %v", err)
		}
		for _, p := range []string{e.pinDir, e.lock} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("%s left after uninstall: %v", p, err)
			}
		}
	})
}
