package shaper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
)

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program has no id")
	}
	return id
}

// pinnedProgs lists the names in the pinned programs directory ("" when it does not exist).
func pinnedProgs(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, progsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out
}

// sharedPins are the pin names of the four shared instances (cls_bpf), which
// Preload always loads; a budget's own instances are for TCX (Options.TCX).
func sharedPins() []string {
	var out []string
	for _, n := range []string{progName, policeName, countName, limitName} {
		out = append(out, fmt.Sprintf("%s_%s_%d", objectTag(), n, sharedID))
	}
	return out
}

func budgetID(t *testing.T, s *Shaper, name string) uint32 {
	t.Helper()
	id, found, err := s.lookupID(name)
	if err != nil || !found {
		t.Fatalf("budget %q: found %v, %v", name, found, err)
	}
	return id
}

// A second process (a second Shaper on the same pins) attaching for a budget
// the first loaded programs for reuses the first's verified instances: same
// kernel program, no new load. An attachment's program is reused too.
func TestRootProgramPinsReused(t *testing.T) {
	s := openTestShaper(t)
	s.tcx = true
	app, _ := testPair(t)
	if err := s.UpsertBudget(Budget{Name: "app/egress", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	if err := s.Preload("app/egress"); err != nil {
		t.Fatal(err)
	}
	id := budgetID(t, s, "app/egress")
	tag := objectTag()
	want := append(sharedPins(), fmt.Sprintf("%s_%s_%d", tag, progName, id), fmt.Sprintf("%s_%s_%d", tag, policeName, id))
	slices.Sort(want)
	if got := pinnedProgs(t, s.PinDir()); !slices.Equal(got, want) {
		t.Fatalf("pinned programs after Preload: %q, want %q", got, want)
	}
	first := map[string]ebpf.ProgramID{}
	for _, n := range []string{progName, policeName} {
		first[n] = progID(t, s.progs[progKey{id, n}])
	}
	// The datapath this kernel attaches with (fq or the no-fq policer), by the first process.
	a, err := s.Attach(app, "app/egress", AttachOptions{})
	if errors.Is(err, ErrNoFq) {
		a, err = s.Attach(app, "app/egress", AttachOptions{NoFq: true})
	}
	if err != nil {
		t.Fatal(err)
	}
	attached := progFor(HookShape, a.Datapath)
	first[attached] = progID(t, s.progs[progKey{id, attached}])

	s2, err := Open(Options{PinDir: s.PinDir(), TCX: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Preload("app/egress"); err != nil {
		t.Fatal(err)
	}
	for n, want := range first {
		p, err := s2.load(id, "app/egress", n)
		if err != nil {
			t.Fatal(err)
		}
		if got := progID(t, p); got != want {
			t.Errorf("second process's %s is program %d, want the pinned %d (loaded again)", n, got, want)
		}
	}
	if err := s2.Detach(app); err != nil {
		t.Fatal(err)
	}
	if err := s2.RemoveBudget("app/egress"); err != nil {
		t.Fatal(err)
	}
	shared := sharedPins()
	slices.Sort(shared)
	if got := pinnedProgs(t, s.PinDir()); !slices.Equal(got, shared) {
		t.Fatalf("pinned programs after RemoveBudget: %q, want only the shared %q", got, shared)
	}
}

// A budget's pinned programs go with the budget and no other's do; Destroy
// (uninstall) takes the rest.
func TestRootProgramPinsGoWithTheirBudget(t *testing.T) {
	s := openTestShaper(t)
	s.tcx = true
	for _, b := range []Budget{{Name: "a/egress", Rate: 1e6}, {Name: "b/egress", Rate: 1e6}, {Name: "c/count", CountOnly: true}} {
		if err := s.UpsertBudget(b); err != nil {
			t.Fatal(err)
		}
		if err := s.Preload(b.Name); err != nil {
			t.Fatal(err)
		}
	}
	if got := pinnedProgs(t, s.PinDir()); len(got) != 4+5 {
		t.Fatalf("pinned programs: %q, want the 4 shared and 5 (two per shaping budget, one for the count-only)", got)
	}
	a, b := budgetID(t, s, "a/egress"), budgetID(t, s, "b/egress")
	if err := s.RemoveBudget("a/egress"); err != nil {
		t.Fatal(err)
	}
	for _, n := range pinnedProgs(t, s.PinDir()) {
		_, id, ok := parseProgPin(n)
		if !ok || id == a {
			t.Errorf("left after RemoveBudget(a): %s", n)
		}
	}
	if _, err := ebpf.LoadPinnedProgram(s.progPin(progKey{b, progName}), nil); err != nil {
		t.Errorf("b's program pin went with a: %v", err)
	}
	dir := s.PinDir()
	if err := s.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin directory after Destroy: %v", err)
	}
}

// A program pinned by another build (another object tag) is removed by Open
// and never used.
func TestRootProgramPinsOfAnotherBuildAreRemoved(t *testing.T) {
	s := openTestShaper(t)
	s.tcx = true
	if err := s.UpsertBudget(Budget{Name: "a/egress", Rate: 1e6}); err != nil {
		t.Fatal(err)
	}
	if err := s.Preload("a/egress"); err != nil {
		t.Fatal(err)
	}
	// An instance for another id, moved to the name another build would give it.
	p, err := s.load(77, "x", progName)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.PinDir(), progsDir)
	stale := fmt.Sprintf("000000000000_%s_%d", progName, 77)
	if err := p.Pin(filepath.Join(dir, stale)); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := pinnedProgs(t, s.PinDir()); slices.Contains(got, stale) || len(got) != 4+2 {
		t.Fatalf("after Open: %q, want only this build's 4 shared and 2 of the budget", got)
	}
}

// A pinned program whose maps are not the ones pinned now (they were
// replaced) is not used: the process loads and pins its own.
func TestRootProgramPinWithOtherMapsIsNotUsed(t *testing.T) {
	s := openTestShaper(t)
	s2 := openTestShaper(t) // other maps
	for _, x := range []*Shaper{s, s2} {
		if err := x.UpsertBudget(Budget{Name: "a/egress", Rate: 1e6}); err != nil {
			t.Fatal(err)
		}
	}
	id := budgetID(t, s, "a/egress")
	if id2 := budgetID(t, s2, "a/egress"); id2 != id {
		t.Fatalf("same name, ids %d and %d", id, id2)
	}
	p, err := s.load(id, "a/egress", progName)
	if err != nil {
		t.Fatal(err)
	}
	// s's instance pinned where s2 looks for its own.
	if err := os.MkdirAll(filepath.Join(s2.PinDir(), progsDir), 0o700); err != nil {
		t.Fatal(err)
	}
	path := s2.progPin(progKey{id, progName})
	if err := p.Pin(path); err != nil {
		t.Fatal(err)
	}
	q, err := s2.load(id, "a/egress", progName)
	if err != nil {
		t.Fatal(err)
	}
	if progID(t, q) == progID(t, p) {
		t.Fatal("the second shaper used a program bound to the first's maps")
	}
	pinned, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if progID(t, pinned) != progID(t, q) {
		t.Fatal("the refused pin was not replaced by the second shaper's own instance")
	}
}

// Devices of one budget attached at once load its instance once; two budgets'
// instances load side by side.
func TestRootConcurrentLoadsLoadEachOnce(t *testing.T) {
	s := openTestShaper(t)
	for _, n := range []string{"a", "b"} {
		if err := s.UpsertBudget(Budget{Name: n, Rate: 1e6}); err != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]uint32{"a": budgetID(t, s, "a"), "b": budgetID(t, s, "b")}
	got := make([]ebpf.ProgramID, 8)
	errs := make(chan error, len(got))
	var wg sync.WaitGroup
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := []string{"a", "b"}[i%2]
			p, err := s.load(ids[n], n, progName)
			if err != nil {
				errs <- err
				return
			}
			info, err := p.Info()
			if err != nil {
				errs <- err
				return
			}
			got[i], _ = info.ID()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != got[i%2] {
			t.Fatalf("loads of one instance returned programs %d and %d", got[i%2], got[i])
		}
	}
	if got[0] == got[1] {
		t.Fatal("two budgets share one program instance")
	}
}
