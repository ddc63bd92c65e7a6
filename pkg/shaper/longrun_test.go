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
	id, _, _ := s.lookupID("app/_default_/egress")
	for _, h := range hooks {
		s.mu.Lock()
		p := s.progs[progKey{id, h.prog()}]
		s.mu.Unlock()
		if p == nil {
			t.Fatalf("no %s program cached after Preload", h.prog())
		}
		// Attach uses the same instance.
		if q, err := s.program(id, "app/_default_/egress", h); err != nil || q != p {
			t.Fatalf("%s program after Preload: %v %v, want the preloaded one", h.prog(), q, err)
		}
	}
}
