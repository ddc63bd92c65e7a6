package shaper

import (
	"slices"
	"testing"
)

// A remembered name -> id is checked before use: after another process
// removed the budget, or its id went to another name, lookupID does not
// return the stale id.
func TestRootBudgetIDHintsAreChecked(t *testing.T) {
	s := openTestShaper(t)
	if err := s.UpsertBudget(Budget{Name: "a", Rate: 1e6}); err != nil {
		t.Fatal(err)
	}
	id := budgetID(t, s, "a") // remembered
	other, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.RemoveBudget("a"); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.lookupID("a"); err != nil || found {
		t.Fatalf("removed elsewhere, lookupID(a) found=%v %v", found, err)
	}
	// Its id given to another name.
	var raw [maxNameLen + 1]byte
	copy(raw[:], "z")
	if err := other.names.Put(id, raw); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.lookupID("a"); err != nil || found {
		t.Fatalf("id reused, lookupID(a) found=%v %v", found, err)
	}
	if got, found, err := s.lookupID("z"); err != nil || !found || got != id {
		t.Fatalf("lookupID(z) = %d %v %v, want %d", got, found, err, id)
	}
	names, err := s.BudgetNames()
	if err != nil || !slices.Equal(names, []string{"z"}) {
		t.Fatalf("BudgetNames = %q %v", names, err)
	}
}
