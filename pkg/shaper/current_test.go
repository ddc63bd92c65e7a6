package shaper

import "testing"

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
