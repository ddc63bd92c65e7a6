package shaper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Migration from the pinned layout of the hash maps (v1) to the array layout.
//
// Until the budget maps became arrays indexed by a slot they were hashes keyed
// by an FNV id, pinned under the same names. A new binary meets those pins on
// its first Open on a host that ran an old one, with old programs attached and
// shaping. It must neither fail nor blackhole. What makes it safe: an attached
// program holds its maps by reference, not by pin, so the old programs keep
// enforcing the old maps whatever happens to the pins, until each is replaced.
//
//  1. stashV1 (before the new maps are loaded): the old maps' pins move into
//     <pin dir>/v1 (a bpffs rename; nothing else touches the maps), the config
//     map last, since its type is how an old layout is recognised: a run that
//     dies halfway resumes on the next Open. The device registry and the TCX
//     link pins are the same in both layouts and stay.
//  2. migrateV1 (after the new maps are open): every named, configured budget
//     of the stash gets a slot in the new maps with its config, policer config,
//     clocks and counters (a snapshot: what the old programs count after it
//     is not carried). Each registry record is pointed at its budget's new
//     slot and marked flagStaleProg, so the next Attach of the device (the
//     next reconcile) swaps the new program in atomically (TCX link update or
//     cls_bpf replace) instead of finding it in place. Then the stash's pins
//     are removed; the old maps go when the last old program is replaced or
//     detached. Until then the old programs keep enforcing the old config: a
//     budget changed before its devices are re-attached is not seen by them.
//
// A failure returns an error from Open and leaves the stash for the next run:
// the old programs go on enforcing, the caller says so.
//
// Readers open the shaper without the reconcile lock (report, metrics, top),
// so two processes may meet one old layout (or a fresh directory) at once:
// while a migration is pending or the maps are not all pinned, Open holds an
// flock on the pin directory from stashV1 until it is done, and checks again
// once it has it.

const (
	// stashDir holds the v1 pins during a migration.
	stashDir = "v1"
	// flagStaleProg marks a registry record whose attached program uses maps
	// of an older layout: Attach must replace it even if it looks in place.
	flagStaleProg = 1 << 1
)

// v1Maps are the pins the v1 layout had besides the device registry, config
// last (see stashV1).
var v1Maps = []string{"netshape_names", "netshape_state", "netshape_stats", "netshape_flows",
	"netshape_pcfg", "netshape_pstate", "netshape_pstats", "netshape_cfg"}

// stashV1 moves the pins of a v1 layout in dir out of the way of the new
// maps. While a migration is pending, or the directory's maps are not all
// pinned yet, it returns holding the directory's lock; the caller releases
// it (unlock) once it has loaded the maps and migrateV1 has run.
func stashV1(dir string) (unlock func(), err error) {
	unlock = func() {}
	pending, err := v1Pending(dir)
	if err != nil {
		return unlock, err
	}
	// A directory without the registry (created last) is fresh or half
	// made: its creators take turns too, or two of them pinning one map
	// meet with "file exists". Once complete, opens take no lock.
	if _, err := os.Stat(filepath.Join(dir, devsSpec().Name)); !pending && err == nil {
		return unlock, nil
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return unlock, fmt.Errorf("migrate pinned maps in %s: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return unlock, fmt.Errorf("migrate pinned maps in %s: lock: %w", dir, err)
	}
	unlock = func() { unix.Close(fd) } // closing the last descriptor drops the flock
	// Another process may have migrated while we waited.
	cfg, err := ebpf.LoadPinnedMap(filepath.Join(dir, "netshape_cfg"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return unlock, nil
	}
	if err != nil {
		return unlock, fmt.Errorf("inspect pinned budget config in %s: %w", dir, err)
	}
	typ := cfg.Type()
	cfg.Close()
	if typ != ebpf.Hash {
		return unlock, nil
	}
	// The stash exists before anything moves into it, so a process that
	// finds the config gone sees the stash and waits for this one.
	stash := filepath.Join(dir, stashDir)
	if err := os.MkdirAll(stash, 0o700); err != nil {
		return unlock, fmt.Errorf("migrate pinned maps in %s: %w", dir, err)
	}
	for _, name := range v1Maps {
		err := os.Rename(filepath.Join(dir, name), filepath.Join(stash, name))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return unlock, fmt.Errorf("migrate pinned maps in %s: move %s aside: %w", dir, name, err)
		}
	}
	return unlock, nil
}

// v1Pending: dir holds a v1 layout, or the stash of an unfinished migration.
func v1Pending(dir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, stashDir)); err == nil {
		return true, nil
	}
	cfg, err := ebpf.LoadPinnedMap(filepath.Join(dir, "netshape_cfg"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // a fresh directory
	}
	if err != nil {
		return false, fmt.Errorf("inspect pinned budget config in %s: %w", dir, err)
	}
	defer cfg.Close()
	return cfg.Type() == ebpf.Hash, nil
}

// v1BudgetState is struct budget_state of the v1 layout (the clock was
// charged under a spin lock then).
type v1BudgetState struct {
	Lock, Pad uint32
	TLast     uint64
}

// v1 is what migrateV1 reads from the stash; a map missing from it (a layout
// older still, or a stash from a run that died) reads as empty.
type v1 struct {
	names, cfg, state, stats, pcfg, pstate, pstats *ebpf.Map
}

func (o *v1) close() {
	for _, m := range []*ebpf.Map{o.names, o.cfg, o.state, o.stats, o.pcfg, o.pstate, o.pstats} {
		if m != nil {
			m.Close()
		}
	}
}

// migrateV1 carries the budgets of a stashed v1 layout into s's maps, points
// the registry at them and removes the stash (see the comment at the top).
func (s *Shaper) migrateV1() error {
	stash := filepath.Join(s.pinDir, stashDir)
	if _, err := os.Stat(stash); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var old v1
	defer old.close()
	for _, m := range []struct {
		to   **ebpf.Map
		name string
	}{{&old.names, "netshape_names"}, {&old.cfg, "netshape_cfg"}, {&old.state, "netshape_state"}, {&old.stats, "netshape_stats"},
		{&old.pcfg, "netshape_pcfg"}, {&old.pstate, "netshape_pstate"}, {&old.pstats, "netshape_pstats"}} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(stash, m.name), nil)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("migrate budgets: open old %s: %w", m.name, err)
		}
		*m.to = mp
	}
	slots := map[uint32]uint32{} // v1 id -> slot
	if old.names != nil && old.cfg != nil {
		var (
			id  uint32
			raw [maxNameLen + 1]byte
		)
		names := map[uint32]string{}
		it := old.names.Iterate()
		for it.Next(&id, &raw) {
			names[id] = cstr(raw[:])
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("migrate budgets: list old names: %w", err)
		}
		for id, name := range names {
			slot, ok, err := s.carryV1(&old, id, name)
			if err != nil {
				return fmt.Errorf("migrate budget %q: %w", name, err)
			}
			if ok {
				slots[id] = slot
			}
		}
	}
	if err := s.restaleRegistry(slots); err != nil {
		return err
	}
	for _, name := range v1Maps {
		if err := os.Remove(filepath.Join(stash, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("migrate budgets: remove old pin %s: %w", name, err)
		}
	}
	if err := os.Remove(stash); err != nil {
		return fmt.Errorf("migrate budgets: remove %s: %w", stash, err)
	}
	return nil
}

// carryV1 writes the v1 budget id (named name) into a slot of s's maps and
// returns the slot; ok is false for a name without a config (an upsert that
// never finished: nothing to carry). Idempotent, so a resumed run may repeat it.
func (s *Shaper) carryV1(old *v1, id uint32, name string) (slot uint32, ok bool, err error) {
	var cfg edtBudgetCfg
	if err := old.cfg.Lookup(id, &cfg); errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, fmt.Errorf("read old config: %w", err)
	}
	if cfg == (edtBudgetCfg{}) {
		return 0, false, nil
	}
	slot, found, err := s.lookupID(name)
	if err != nil {
		return 0, false, err
	}
	if !found {
		if slot, _, err = s.allocateID(name); err != nil {
			return 0, false, err
		}
	}
	// Everything but the config first, as UpsertBudget does: the slot's
	// config is what makes the datapath enforce it.
	if err := s.maps.NetshapeCfg.Update(slot, edtBudgetCfg{}, ebpf.UpdateAny); err != nil {
		return 0, false, fmt.Errorf("clear slot %d: %w", slot, err)
	}
	if err := s.resetSlot(slot); err != nil {
		return 0, false, err
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return 0, false, fmt.Errorf("count CPUs: %w", err)
	}
	carry := []struct {
		from, to *ebpf.Map
		val      any
	}{
		{old.pcfg, s.maps.NetshapePcfg, new(edtPoliceCfg)},
		{old.state, s.maps.NetshapeState, new(v1BudgetState)},
		{old.pstate, s.maps.NetshapePstate, new(edtPoliceState)},
		{old.stats, s.maps.NetshapeStats, &[]edtBudgetStats{}},
		{old.pstats, s.maps.NetshapePstats, &[]edtPoliceStats{}},
	}
	for _, c := range carry {
		if c.from == nil {
			continue
		}
		err := c.from.Lookup(id, c.val)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("read old %s: %w", c.from, err)
		}
		// Per-CPU values: the same machine, so the same number of CPUs;
		// anything else is not ours to guess at.
		val := c.val
		switch v := c.val.(type) {
		case *v1BudgetState:
			val = edtBudgetState{T_last: v.TLast}
		case *[]edtBudgetStats:
			if val = *v; len(*v) != ncpu {
				continue
			}
		case *[]edtPoliceStats:
			if val = *v; len(*v) != ncpu {
				continue
			}
		}
		if err := c.to.Update(slot, val, ebpf.UpdateAny); err != nil {
			return 0, false, fmt.Errorf("write %s: %w", c.to, err)
		}
	}
	if err := s.maps.NetshapeCfg.Update(slot, cfg, ebpf.UpdateAny); err != nil {
		return 0, false, fmt.Errorf("write config: %w", err)
	}
	return slot, true, nil
}

// restaleRegistry points every record not yet migrated at its budget's new
// slot (0, no budget, for one whose budget did not survive) and marks it
// stale, so the next Attach replaces its program.
func (s *Shaper) restaleRegistry(slots map[uint32]uint32) error {
	var (
		k   devKey
		v   devVal
		upd = map[devKey]devVal{}
	)
	it := s.devs.Iterate()
	for it.Next(&k, &v) {
		if v.Flags&flagStaleProg != 0 {
			continue // done by an earlier, interrupted run
		}
		v.Budget = slots[v.Budget]
		v.Flags |= flagStaleProg
		upd[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("migrate device registry: %w", err)
	}
	for k, v := range upd {
		if err := s.devs.Update(k, v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("migrate device registry: %w", err)
		}
	}
	return nil
}
