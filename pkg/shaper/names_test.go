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

// AttachmentsWhere selects records by budget name, a record whose budget is
// gone by "", and nil selects all, as Attachments does.
func TestRootAttachmentsWhere(t *testing.T) {
	s := openTestShaper(t)
	for _, n := range []string{"a", "b"} {
		if err := s.UpsertBudget(Budget{Name: n, Rate: 1e6}); err != nil {
			t.Fatal(err)
		}
	}
	put := func(ino uint64, budget uint32, dev string) {
		v := devVal{Budget: budget}
		v.setDevice(Device{Name: dev})
		if err := s.devs.Put(devKey{NetnsIno: ino, Ifindex: 1}, v); err != nil {
			t.Fatal(err)
		}
	}
	put(1, budgetID(t, s, "a"), "deva")
	put(2, budgetID(t, s, "b"), "devb")
	put(3, 12345, "orphan") // its budget is gone
	devices := func(match func(string) bool) []string {
		t.Helper()
		atts, err := s.AttachmentsWhere(match)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range atts {
			out = append(out, a.Budget+":"+a.Device.Name)
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		match func(string) bool
		want  []string
	}{
		{func(n string) bool { return n == "a" }, []string{"a:deva"}},
		{func(n string) bool { return n == "" }, []string{":orphan"}},
		{nil, []string{":orphan", "a:deva", "b:devb"}},
	} {
		if got := devices(c.match); !slices.Equal(got, c.want) {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	all, err := s.Attachments()
	if err != nil || len(all) != 3 {
		t.Fatalf("Attachments = %v %v", all, err)
	}
	for _, k := range []uint64{1, 2, 3} {
		s.devs.Delete(devKey{NetnsIno: k, Ifindex: 1})
	}
}

// PruneAttachments acts on what was listed: a record whose device vanished is
// forgotten, but one rewritten since it was listed (another budget under the
// same key) is left alone.
func TestRootPruneAttachmentsChecksTheRecord(t *testing.T) {
	s := openTestShaper(t)
	for _, n := range []string{"a", "b"} {
		if err := s.UpsertBudget(Budget{Name: n, Rate: 1e6}); err != nil {
			t.Fatal(err)
		}
	}
	put := func(ino uint64, budget uint32) {
		v := devVal{Budget: budget}
		v.setDevice(Device{Netns: "/run/netns/netshape-test-gone", Name: "eth0"})
		if err := s.devs.Put(devKey{NetnsIno: ino, Ifindex: 2}, v); err != nil {
			t.Fatal(err)
		}
	}
	a, b := budgetID(t, s, "a"), budgetID(t, s, "b")
	put(1, a)
	put(2, a)
	listed, err := s.AttachmentsWhere(func(n string) bool { return n == "a" })
	if err != nil || len(listed) != 2 {
		t.Fatalf("listed %v %v", listed, err)
	}
	put(2, b) // rewritten since
	pruned, err := s.PruneAttachments(listed)
	if err != nil {
		t.Fatal(err)
	}
	if len(pruned) != 1 || pruned[0].NetnsIno != 1 {
		t.Fatalf("pruned %+v, want only the record still as listed", pruned)
	}
	left, err := s.Attachments()
	if err != nil || len(left) != 1 || left[0].Budget != "b" {
		t.Fatalf("left %+v %v, want b's record", left, err)
	}
	s.devs.Delete(devKey{NetnsIno: 2, Ifindex: 2})
}
