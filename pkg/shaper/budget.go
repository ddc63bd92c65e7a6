package shaper

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

const (
	maxNameLen = 127
	maxBudgets = 4096 // MAX_BUDGETS in bpf/edt.c: slots 1..4096 of its arrays

	// MaxRate is the largest rate a budget accepts (1 Tbit/s): beyond it the
	// per-packet cost rounds to zero nanoseconds and nothing would be enforced.
	MaxRate = 1_000_000_000_000

	// MinRate is the smallest (10 kbit/s): the default horizon is 8 frames,
	// about 10 s here, and express may reach twice that; fq must never hold a
	// stamp beyond its own horizon (fqHorizon), or it drops what we charged.
	MinRate = 10_000

	// wireMTU is one full Ethernet frame, the unit the default thresholds are counted in.
	wireMTU = 1514

	// horizonGSOs packets of maxGSO (also what GRO hands a qdisc) fit in
	// the default horizon, which they stretch to at most gsoHorizonMax
	// (reached below 4.2 Mbit/s).
	horizonGSOs   = 2
	gsoHorizonMax = 250 * time.Millisecond

	// expressBytes is the largest packet that may jump the queue as part of a
	// sparse flow: two frames, enough for a request or an ACK, never a bulk GSO burst.
	expressBytes = 2 * wireMTU

	// PoliceJitter is what the backstop policer allows on top of how far EDT
	// may legitimately run ahead (express, 2x the horizon): delivery from the
	// container-side veth to the host side's ingress hook goes through a
	// softirq backlog that bunches frames up, a few hundred ms under
	// emulation. A paced stream must never be dropped for it.
	PoliceJitter = 250 * time.Millisecond

	// minSegHeader is what the policer charges per further segment of a GSO
	// packet (MIN_SEG_HEADER in bpf/edt.c): Ethernet + IPv4 + TCP.
	minSegHeader = 54

	// maxGSO is the largest packet a socket hands the stack (64 KiB).
	maxGSO = 64 << 10

	// budgetCountOnly and budgetNoFq are BUDGET_COUNT_ONLY and BUDGET_NOFQ
	// in bpf/edt.c (budget_cfg.flags).
	budgetCountOnly = 1
	budgetNoFq      = 2

	// NoFqTolerance is NOFQ_TOL_NS in bpf/edt.c: the no-fq policer
	// (DatapathPolicing) lets a budget's traffic run this far ahead of its
	// clock (or the horizon, if longer), so TCP keeps its rate across the
	// ~200 ms it stalls after a drop; a budget with such a device lets its
	// backstop allow this much more than PoliceTolerance.
	NoFqTolerance = 300 * time.Millisecond
)

// Budget is one rate shared by every device attached to it.
type Budget struct {
	// Name identifies the budget, e.g. "myapp/_default_/egress" (1..127 bytes).
	Name string
	// Rate in bits per second (1..MaxRate).
	Rate uint64
	// Horizon: a packet whose budget backlog before it exceeds this is dropped.
	// Zero means DefaultHorizon(Rate).
	Horizon time.Duration
	// CEThreshold: above this backlog ECN-capable packets are CE-marked
	// (for DCTCP-like senders). Zero or negative: no marking, the default.
	// Marking at a fixed backlog costs a classic-ECN (CUBIC) sender its rate
	// at any RTT above ~2.5x the threshold: at 2 ms it kept 0.74-0.995 of the
	// rate on a 1 ms path and 0.16-0.32 with 20 ms of RTT, while without marks
	// every sender held 0.995-1.002 (docs/MEASUREMENTS.md, finding 5). Sparse
	// flows get their latency from express and the horizon bounds the bulk
	// queue, so marking buys nothing measurable by default.
	CEThreshold time.Duration
	// CountOnly makes a budget that only counts (Stats.Bytes and Packets, in
	// the same per-CPU counters) and enforces nothing: for apps that are
	// monitored but not limited. Rate, Horizon and CEThreshold must be zero.
	// Attach puts the netshape_count program on a device for it, at either
	// hook and without any qdisc (DatapathCount). Upserting the same name
	// with a Rate (or back with CountOnly) switches it live: devices attached
	// for counting keep only counting until they are attached again (Attach
	// then adds fq and swaps the program atomically), and shaping devices of
	// a budget switched to CountOnly count and pass until re-attached (then
	// their fq is removed). pkg/reconcile does both in one App run.
	CountOnly bool
}

// Stats are a budget's counters since it was created, summed over CPUs.
type Stats struct {
	Bytes, Packets, Delayed, Dropped, Marked, Express uint64
	// Bypassed counts frames the backstop policer on the host-side veth
	// dropped: they reached the host faster than the budget allows, i.e.
	// they skipped the EDT program (PACKET_QDISC_BYPASS). Zero for paced traffic.
	Bypassed uint64
	// Credited counts frames the policer passed on the one-off allowance of
	// a live rate decrease (EDT had stamped them at the old rate).
	Credited uint64
}

// BudgetStatus is a budget as it is in the kernel right now.
type BudgetStatus struct {
	Budget
	ID uint32
	// Backlog is how far the budget's departure clock is ahead of now: the
	// queueing delay a bulk packet arriving now would get.
	Backlog time.Duration
	Stats   Stats
}

// frameTime is how long one full frame takes at rate bits/s.
func frameTime(rate uint64) time.Duration { return timeFor(wireMTU, rate) }

// timeFor is how long n bytes take at rate bits/s (bytesIn's inverse).
func timeFor(n, rate uint64) time.Duration {
	return time.Duration(n * 8 * uint64(time.Second) / rate)
}

// DefaultHorizon is the drop horizon for a rate: 20 ms, or 8 full frames at
// low rates where 20 ms would not hold the few packets TCP keeps in flight
// (one 1514-byte frame takes 12 ms at 1 Mbit/s), or horizonGSOs packets of
// the largest size a segmentation offload hands the qdisc (a local TCP
// sender's GSO burst, a forwarded GRO train), up to gsoHorizonMax. One 64 KiB
// packet takes 26 ms at 20 Mbit/s: with a 20 ms horizon a flow could never
// have a second one queued, and each drop costs a whole burst and a window
// reduction (20 Mbit/s held 85 % for one forwarded flow, 68 % for 16 local
// ones, in the peer comparison).
func DefaultHorizon(rate uint64) time.Duration {
	gso := min(horizonGSOs*timeFor(maxGSO, rate), gsoHorizonMax)
	return max(20*time.Millisecond, 8*frameTime(rate), gso)
}

func (b Budget) validate() error {
	if b.Name == "" || len(b.Name) > maxNameLen || bytes.IndexByte([]byte(b.Name), 0) >= 0 {
		return fmt.Errorf("%w: name %q must be 1..%d bytes without NUL", ErrBadBudget, b.Name, maxNameLen)
	}
	if b.CountOnly {
		if b.Rate != 0 || b.Horizon != 0 || b.CEThreshold != 0 {
			return fmt.Errorf("%w %q: a count-only budget has no rate, horizon or CE threshold", ErrBadBudget, b.Name)
		}
		return nil
	}
	if b.Rate < MinRate || b.Rate > MaxRate {
		return fmt.Errorf("%w %q: rate %d bit/s is outside %d..%d", ErrBadBudget, b.Name, b.Rate, uint64(MinRate), uint64(MaxRate))
	}
	if h := b.cfg().HorizonNs; 2*time.Duration(h) > fqHorizon {
		return fmt.Errorf("%w %q: horizon %s is over half of fq's %s", ErrBadBudget, b.Name, time.Duration(h), fqHorizon)
	}
	if b.Horizon < 0 {
		return fmt.Errorf("%w %q: negative horizon %s", ErrBadBudget, b.Name, b.Horizon)
	}
	return nil
}

// PoliceTolerance is how far the backstop policer lets a budget's traffic run
// ahead of its clock: the furthest EDT itself lets packets leave early (express
// up to twice the horizon; bulk packets leave at their slot) plus PoliceJitter.
// Over any window w at most rate*(w + tolerance) plus one frame gets past it.
func (b Budget) PoliceTolerance() time.Duration {
	c := b.cfg()
	return time.Duration(max(c.ExpressNs, c.HorizonNs)) + PoliceJitter
}

func (b Budget) cfg() edtBudgetCfg {
	if b.CountOnly {
		return edtBudgetCfg{Flags: budgetCountOnly}
	}
	h := b.Horizon
	if h == 0 {
		h = DefaultHorizon(b.Rate)
	}
	ce := max(b.CEThreshold, 0)
	return edtBudgetCfg{
		RateBps:   b.Rate,
		HorizonNs: uint64(h),
		CeNs:      uint64(ce),
		// Express may run the backlog to twice the horizon, never further:
		// this bounds what many sparse-looking flows can borrow ahead.
		ExpressNs:    uint64(2 * h),
		ExpressBytes: expressBytes,
	}
}

// UpsertBudget creates a budget or changes it in place. A rate change is one
// map write the datapath reads on the next packet: no attachment is touched,
// no packet is lost, no connection notices anything but the new rate.
func (s *Shaper) UpsertBudget(b Budget) error {
	if err := b.validate(); err != nil {
		return err
	}
	id, found, err := s.lookupID(b.Name)
	if err != nil {
		return err
	}
	fresh := false
	if !found {
		if id, fresh, err = s.allocateID(b.Name); err != nil {
			return err
		}
	}
	if fresh {
		// A new budget starts from a clean slot, whatever an interrupted
		// run left in it; its config stays all zero (the datapath passes)
		// until it is written below.
		if err := s.maps.NetshapeCfg.Update(id, edtBudgetCfg{}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("budget %q: clear its slot's config: %w", b.Name, err)
		}
		if err := s.resetSlot(id); err != nil {
			return fmt.Errorf("budget %q: %w", b.Name, err)
		}
	}
	cfg := b.cfg()
	// Once a device polices the budget without fq, its backstop stays
	// lenient for the budget's life (bpf/edt.c BUDGET_NOFQ): keep the flag.
	old, _, err := s.budgetCfg(id)
	if err != nil {
		return fmt.Errorf("budget %q: %w", b.Name, err)
	}
	cfg.Flags |= old.Flags & budgetNoFq
	// The policer's config before the rate: a decrease must come with its
	// credit already in place when the first packet sees the lower rate.
	pcfg, err := s.policeCfg(id, b)
	if err != nil {
		return err
	}
	if err := s.maps.NetshapePcfg.Update(id, pcfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write policer config of budget %q: %w", b.Name, err)
	}
	if err := s.maps.NetshapeCfg.Update(id, cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write config of budget %q: %w", b.Name, err)
	}
	return nil
}

// policeCfg is the policer config for b. When b lets through less than the
// budget's current config (a lower rate, or a smaller burst: rate × tolerance), packets EDT
// already stamped at the old rate are still on their way: the policer gets a
// one-off credit of what the old config could have had ahead of its clock
// (plus one GSO packet), usable while those packets drain (twice the old
// tolerance). The policer spends it before charging its clock, so the old
// bytes do not eat the new rate's tolerance. Without it a live decrease from
// 100 to 1 Mbit/s would drop them as bypassed; the most it lets through
// beyond the new rate is the credit, once.
func (s *Shaper) policeCfg(id uint32, b Budget) (edtPoliceCfg, error) {
	if b.CountOnly {
		return edtPoliceCfg{}, nil // the policer passes a budget without a rate
	}
	newTol := b.PoliceTolerance()
	pc := edtPoliceCfg{TolNs: uint64(newTol)}
	old, found, err := s.budgetCfg(id)
	if err != nil {
		return pc, fmt.Errorf("budget %q: %w", b.Name, err)
	}
	if !found || old.RateBps == 0 {
		return pc, nil // count-only until now: nothing was paced, nothing is in flight ahead
	}
	var prev edtPoliceCfg
	if err := s.maps.NetshapePcfg.Lookup(id, &prev); err != nil {
		return pc, fmt.Errorf("read policer config of budget %q: %w", b.Name, err)
	}
	pc.CreditBytes, pc.CreditUntil, pc.CreditSeq = prev.CreditBytes, prev.CreditUntil, prev.CreditSeq
	oldTol := time.Duration(prev.TolNs)
	if oldTol == 0 { // a budget made before the policer existed
		oldTol = Budget{Rate: old.RateBps, Horizon: time.Duration(old.HorizonNs)}.PoliceTolerance()
	}
	// What is in flight left at most the old rate plus the old burst (rate
	// × tolerance, in bytes); a config that allows both lets it through.
	// In time the tolerance may shrink: the default horizon does as the rate
	// rises past 20 Mbit/s, while the burst it allows in bytes grows.
	if b.Rate >= old.RateBps && bytesIn(b.Rate, newTol) >= bytesIn(old.RateBps, oldTol) {
		return pc, nil // nothing in flight can outrun the new config
	}
	now := monotonicNow()
	credit := bytesIn(old.RateBps, oldTol) + maxGSO
	if prev.CreditUntil > now { // an earlier grant still draining: keep it
		credit += prev.CreditBytes
	}
	pc.CreditBytes = credit
	pc.CreditUntil = max(now+2*uint64(oldTol), prev.CreditUntil)
	pc.CreditSeq = prev.CreditSeq + 1
	return pc, nil
}

// bytesIn is what rate bits/s carries in d.
func bytesIn(rate uint64, d time.Duration) uint64 {
	return uint64(float64(rate) / 8 * d.Seconds())
}

// RemoveBudget detaches every device attached to the budget, then deletes it.
// Removing a budget that does not exist is not an error.
func (s *Shaper) RemoveBudget(name string) error {
	id, found, err := s.lookupID(name)
	if err != nil || !found {
		return err
	}
	atts, err := s.Attachments()
	if err != nil {
		return err
	}
	for _, a := range atts {
		if a.BudgetID == id {
			if err := s.DetachHook(a.Device, a.Hook); err != nil {
				return fmt.Errorf("remove budget %q: %w", name, err)
			}
		}
	}
	// Config first: from here on the datapath passes packets unshaped and
	// uncounted. Then the rest of the slot, and only then is it free: a
	// slot is never handed out before it is clean.
	if err := s.maps.NetshapeCfg.Update(id, edtBudgetCfg{}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("remove budget %q: clear its config: %w", name, err)
	}
	if err := s.resetSlot(id); err != nil {
		return fmt.Errorf("remove budget %q: %w", name, err)
	}
	if err := s.dropPrograms(id); err != nil {
		return fmt.Errorf("remove budget %q: %w", name, err)
	}
	if err := s.names.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove budget %q: free its slot: %w", name, err)
	}
	return nil
}

// resetSlot zeroes what the datapath keeps in a budget slot besides its
// config (the budget maps are arrays: an entry is never absent, only zero):
// the clocks, the counters, the policer's config and the slot's flows.
func (s *Shaper) resetSlot(id uint32) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count CPUs: %w", err)
	}
	for _, m := range []struct {
		m    *ebpf.Map
		zero any
	}{
		{s.maps.NetshapePcfg, edtPoliceCfg{}},
		{s.maps.NetshapeState, edtBudgetState{}},
		{s.maps.NetshapeStats, make([]edtBudgetStats, ncpu)},
		{s.maps.NetshapePstate, edtPoliceState{}},
		{s.maps.NetshapePstats, make([]edtPoliceStats, ncpu)},
	} {
		if err := m.m.Update(id, m.zero, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("reset slot %d of %s: %w", id, m.m, err)
		}
	}
	return s.forgetFlows(id)
}

// budgetCfg reads a slot's config; found is false for a slot without a
// budget (all zero: no rate and no flags).
func (s *Shaper) budgetCfg(id uint32) (edtBudgetCfg, bool, error) {
	var cfg edtBudgetCfg
	if err := s.maps.NetshapeCfg.Lookup(id, &cfg); err != nil {
		return cfg, false, fmt.Errorf("read config of slot %d: %w", id, err)
	}
	return cfg, cfg.RateBps != 0 || cfg.Flags != 0, nil
}

func (s *Shaper) forgetFlows(id uint32) error {
	var k edtFlowKey
	var v uint64
	var stale []edtFlowKey
	it := s.maps.NetshapeFlows.Iterate()
	for it.Next(&k, &v) {
		if k.Budget == id {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list flows: %w", err)
	}
	for _, k := range stale {
		if err := s.maps.NetshapeFlows.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget flow: %w", err)
		}
	}
	return nil
}

// Budget returns one budget's current state.
func (s *Shaper) Budget(name string) (BudgetStatus, error) {
	id, found, err := s.lookupID(name)
	if err != nil {
		return BudgetStatus{}, err
	}
	if !found {
		return BudgetStatus{}, fmt.Errorf("budget %q: %w", name, ErrNoBudget)
	}
	return s.status(id, name)
}

// Budgets lists every budget in the kernel.
func (s *Shaper) Budgets() ([]BudgetStatus, error) {
	names, err := s.allNames()
	if err != nil {
		return nil, err
	}
	out := make([]BudgetStatus, 0, len(names))
	for id, name := range names {
		st, err := s.status(id, name)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue // named but never configured: an interrupted upsert, not a budget
		}
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	sortBudgets(out)
	return out, nil
}

func (s *Shaper) status(id uint32, name string) (BudgetStatus, error) {
	cfg, found, err := s.budgetCfg(id)
	if err != nil {
		return BudgetStatus{}, fmt.Errorf("budget %q: %w", name, err)
	}
	if !found {
		return BudgetStatus{}, fmt.Errorf("read config of budget %q: %w", name, ebpf.ErrKeyNotExist)
	}
	st := BudgetStatus{ID: id, Budget: Budget{
		Name:        name,
		Rate:        cfg.RateBps,
		Horizon:     time.Duration(cfg.HorizonNs),
		CEThreshold: time.Duration(cfg.CeNs),
		CountOnly:   cfg.Flags&budgetCountOnly != 0,
	}}
	if cfg.CeNs == 0 && !st.CountOnly {
		st.CEThreshold = -1
	}
	var state edtBudgetState
	if err := s.maps.NetshapeState.Lookup(id, &state); err == nil {
		if now := monotonicNow(); state.T_last > now {
			st.Backlog = time.Duration(state.T_last - now)
		}
	}
	var perCPU []edtBudgetStats
	if err := s.maps.NetshapeStats.Lookup(id, &perCPU); err != nil {
		return BudgetStatus{}, fmt.Errorf("read counters of budget %q: %w", name, err)
	}
	for _, c := range perCPU {
		st.Stats.Bytes += c.Bytes
		st.Stats.Packets += c.Packets
		st.Stats.Delayed += c.Delayed
		st.Stats.Dropped += c.Dropped
		st.Stats.Marked += c.Marked
		st.Stats.Express += c.Express
	}
	var police []edtPoliceStats
	if err := s.maps.NetshapePstats.Lookup(id, &police); err != nil {
		return BudgetStatus{}, fmt.Errorf("read policer counters of budget %q: %w", name, err)
	}
	for _, c := range police {
		st.Stats.Bypassed += c.Bypassed
		st.Stats.Credited += c.Credited
	}
	return st, nil
}

// lookupID finds the id of a named budget. The names map is small (at most
// maxBudgets entries) and only read on the control path, so a scan is fine.
func (s *Shaper) lookupID(name string) (uint32, bool, error) {
	if id, ok := s.hintedID(name); ok {
		return id, true, nil
	}
	names, err := s.allNames()
	if err != nil {
		return 0, false, err
	}
	for id, n := range names {
		if n == name {
			return id, true, nil
		}
	}
	return 0, false, nil
}

func (s *Shaper) allNames() (map[uint32]string, error) {
	out := map[uint32]string{}
	if err := eachEntry(s.names, func(id uint32, raw [maxNameLen + 1]byte) {
		out[id] = string(bytes.TrimRight(raw[:], "\x00"))
	}); err != nil {
		return nil, fmt.Errorf("list budgets: %w", err)
	}
	s.hints.remember(out)
	return out, nil
}

// allocateID gives a new name a free slot (1..maxBudgets, the index of its
// entries in the budget arrays): the one its FNV-1a hash points at, or the
// next free one after it. Starting from the hash rather than the lowest free
// slot keeps a name's slot stable across remove and re-create, and makes it
// unlikely that a just-freed slot goes to another budget at once. Claiming
// the name entry with UpdateNoExist is what makes a slot ours, so two
// processes can never both take one.
func (s *Shaper) allocateID(name string) (id uint32, fresh bool, err error) {
	h := fnv.New32a()
	h.Write([]byte(name))
	var raw [maxNameLen + 1]byte
	copy(raw[:], name)
	start := h.Sum32() % maxBudgets
	for i := uint32(0); i < maxBudgets; i++ {
		id := 1 + (start+i)%maxBudgets
		err := s.names.Update(id, raw, ebpf.UpdateNoExist)
		if err == nil {
			return id, true, nil
		}
		if errors.Is(err, unix.E2BIG) {
			// The kernel's word for a full map is "argument list too long".
			return 0, false, fmt.Errorf("register budget %q: %w", name, errSlotsFull)
		}
		if !errors.Is(err, ebpf.ErrKeyExist) {
			return 0, false, fmt.Errorf("register budget %q: %w", name, err)
		}
		// Taken. By this very name, if another process registered it since
		// lookupID: every allocator of a name walks the same slots, so they
		// all meet at the one the first of them took (and only it resets it).
		var held [maxNameLen + 1]byte
		if err := s.names.Lookup(id, &held); err == nil && held == raw {
			return id, false, nil
		}
	}
	return 0, false, fmt.Errorf("register budget %q: %w", name, errSlotsFull)
}

// SlotsFree is how many more budgets the maps can take.
func (s *Shaper) SlotsFree() (int, error) {
	names, err := s.allNames()
	if err != nil {
		return 0, err
	}
	return max(0, maxBudgets-len(names)), nil
}

// errSlotsFull: every budget slot of the maps is taken.
var errSlotsFull = fmt.Errorf("all %d budget slots are in use (each app, direction and process type with a limit takes one; "+
	"`dokku-netshape apply --all` frees those of deleted apps)", maxBudgets)

func namesSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       "netshape_names",
		Type:       ebpf.Hash,
		KeySize:    4,
		ValueSize:  maxNameLen + 1,
		MaxEntries: maxBudgets,
		Pinning:    ebpf.PinByName,
	}
}
