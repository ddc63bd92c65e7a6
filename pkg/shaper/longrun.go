package shaper

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Preload loads the programs a budget's attachments run now (the shared
// instances cls_bpf filters run; with Options.TCX also the budget's own EDT
// shaper and backstop policer, or its count program), so a later Attach by this Shaper does not wait for the verifier
// (hundreds of milliseconds per program under emulation). A long-running
// process calls it after budgets change; a Shaper keeps its programs until Close.
func (s *Shaper) Preload(budget string) error {
	id, found, err := s.lookupID(budget)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("preload budget %q: %w", budget, ErrNoBudget)
	}
	cfg, _, err := s.budgetCfg(id)
	if err != nil {
		return fmt.Errorf("preload budget %q: %w", budget, err)
	}
	// The shared instances (cls_bpf, every budget) are loaded once per
	// Shaper, all four: whichever a device needs next is ready. A budget's
	// own instances serve TCX attachments only.
	for _, n := range []string{progName, policeName, countName, limitName} {
		if _, err := s.load(sharedID, "", n); err != nil {
			return err
		}
	}
	if !s.tcx {
		return nil
	}
	names := []string{progName, policeName}
	if cfg.Flags&budgetCountOnly != 0 {
		names = []string{countName}
	}
	for _, n := range names {
		if _, err := s.load(id, budget, n); err != nil {
			return err
		}
	}
	return nil
}

// Current reports whether the maps this Shaper holds are still the ones
// pinned in its directory. A long-running process (the watcher) checks it
// before each use: after an uninstall or an operator removed the pins,
// another process may have pinned new maps, and writing to the old ones
// would shape nothing. Any doubt counts as not current.
func (s *Shaper) Current() bool {
	for _, m := range []struct {
		held *ebpf.Map
		name string
	}{{s.maps.NetshapeCfg, "netshape_cfg"}, {s.devs, "netshape_devs"}} {
		if m.held == nil || !samePinned(m.held, filepath.Join(s.pinDir, m.name)) {
			return false
		}
	}
	return true
}

func samePinned(held *ebpf.Map, pin string) bool {
	pinned, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		return false
	}
	defer pinned.Close()
	a, errA := held.Info()
	b, errB := pinned.Info()
	if errA != nil || errB != nil {
		return false
	}
	idA, okA := a.ID()
	idB, okB := b.ID()
	return okA && okB && idA == idB
}
