package shaper

import (
	"errors"
	"testing"
)

func TestRootCurrentNoticesPinsReplaced(t *testing.T) {
	s := openTestShaper(t)
	if !s.Current() {
		t.Fatal("a freshly opened shaper is not current")
	}
	other, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Current() || !other.Current() {
		t.Fatal("two openers of the same pins must both be current")
	}
	// Uninstall removes the pins; a later run pins new maps.
	if err := other.Destroy(); err != nil {
		t.Fatal(err)
	}
	if s.Current() {
		t.Fatal("current after its pins were removed")
	}
	fresh, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if s.Current() || !fresh.Current() {
		t.Fatalf("after re-pinning: old current=%v, new current=%v; want false, true", s.Current(), fresh.Current())
	}
}

func TestRootPreloadLoadsTheBudgetsProgram(t *testing.T) {
	s := openTestShaper(t)
	if err := s.Preload("nope"); !errors.Is(err, ErrNoBudget) {
		t.Fatalf("Preload of a missing budget: %v, want ErrNoBudget", err)
	}
	if err := s.UpsertBudget(Budget{Name: "app/_default_/egress", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	if err := s.Preload("app/_default_/egress"); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	loaded := len(s.progs)
	for _, n := range []string{progName, policeName, countName, limitName} {
		if s.progs[progKey{sharedID, n}] == nil {
			t.Errorf("no shared %s instance cached after Preload", n)
		}
	}
	s.mu.Unlock()
	if loaded != 4 {
		t.Fatalf("%d program instances after Preload; want the 4 shared ones", loaded)
	}
	// Attach (cls_bpf, the default) uses them: nothing more is loaded.
	app, host := testPair(t)
	noFq := errors.Is(FqSupport(), ErrNoFq)
	for _, a := range []struct {
		dev  Device
		hook Hook
	}{{app, HookShape}, {host, HookPolice}} {
		if _, err := s.Attach(a.dev, "app/_default_/egress", AttachOptions{Hook: a.hook, NoFq: noFq}); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.progs) != loaded {
		t.Fatalf("%d program instances after two attaches; want the %d preloaded", len(s.progs), loaded)
	}
}
