package shaper

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// The backstop policer (netshape_police) through BPF_PROG_TEST_RUN. Its clock
// is bpf_ktime_get_ns, so the tests either put the policer clock (tat) at a
// known distance from now, far from any boundary a slow run could cross, or
// pace real packets by the wall clock and only assert what lateness cannot
// change.

type testPolicer struct {
	*testBudget
	pol *ebpf.Program
	tol time.Duration
}

func newTestPolicer(t *testing.T, s *Shaper, b Budget) *testPolicer {
	t.Helper()
	tb := newTestBudget(t, s, b)
	p, err := s.program(tb.id, b.Name, HookPolice)
	if err != nil {
		t.Fatal(err)
	}
	return &testPolicer{testBudget: tb, pol: p, tol: b.PoliceTolerance()}
}

// setTAT puts the policer clock at now+ahead (negative: behind now, idle).
func (p *testPolicer) setTAT(ahead time.Duration) uint64 {
	p.t.Helper()
	at := uint64(int64(monotonicNow()) + int64(ahead))
	if err := p.s.maps.NetshapePstate.Update(p.id, edtPoliceState{Tat: at}, ebpf.UpdateExist); err != nil {
		p.t.Fatal(err)
	}
	return at
}

func (p *testPolicer) tat() uint64 {
	p.t.Helper()
	var st edtPoliceState
	if err := p.s.maps.NetshapePstate.Lookup(p.id, &st); err != nil {
		p.t.Fatal(err)
	}
	return st.Tat
}

// counters sums the policer's own per-CPU counters of the budget.
func (p *testPolicer) counters() edtPoliceStats {
	p.t.Helper()
	var per []edtPoliceStats
	if err := p.s.maps.NetshapePstats.Lookup(p.id, &per); err != nil {
		p.t.Fatal(err)
	}
	var sum edtPoliceStats
	for _, c := range per {
		sum.Bytes += c.Bytes
		sum.Packets += c.Packets
		sum.Bypassed += c.Bypassed
		sum.Credited += c.Credited
	}
	if st := p.stats(); st.Bypassed != sum.Bypassed || st.Credited != sum.Credited {
		p.t.Fatalf("Budget() reports %d bypassed, %d credited; the map holds %d, %d", st.Bypassed, st.Credited, sum.Bypassed, sum.Credited)
	}
	return sum
}

// frameOf is an Ethernet frame of exactly size bytes (skb->len at the hook).
func frameOf(ethertype uint16, size int) []byte {
	f := packet(ethertype, 0, 1)
	if size > len(f) {
		f = append(f, make([]byte, size-len(f))...)
	}
	return f[:size]
}

// police sends one frame with gsoSegs segments through the policer.
func (p *testPolicer) police(frame []byte, gsoSegs uint32) uint32 {
	p.t.Helper()
	ret, err := p.pol.Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{GsoSegs: gsoSegs}})
	if err != nil {
		p.t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

func TestRootPoliceTolerance(t *testing.T) {
	// Express lets EDT run 2x the horizon ahead; the policer allows that plus the jitter.
	for _, tc := range []struct {
		b    Budget
		want time.Duration
	}{
		{Budget{Rate: 100e6}, 2*20*time.Millisecond + PoliceJitter},
		{Budget{Rate: 20e6}, 2*52428800*time.Nanosecond + PoliceJitter}, // two 64 KiB packets at 20 Mbit/s
		{Budget{Rate: 1e6}, 2*250*time.Millisecond + PoliceJitter},
		{Budget{Rate: MinRate}, 2*8*frameTime(MinRate) + PoliceJitter},
		{Budget{Rate: 20e6, Horizon: time.Second}, 2*time.Second + PoliceJitter},
	} {
		if got := tc.b.PoliceTolerance(); got != tc.want {
			t.Errorf("rate %d horizon %s: tolerance %s, want %s", tc.b.Rate, tc.b.Horizon, got, tc.want)
		}
	}
}

// A stream paced at exactly the rate passes whole, after an EDT-style express
// burst as large as EDT itself allows (2x the horizon ahead of the clock).
func TestRootPolicePassesPacedStream(t *testing.T) {
	s := openTestShaper(t)
	const (
		rate = 8_000_000 // 1 byte per microsecond
		size = 1000      // 1 ms per frame
		n    = 300
	)
	p := newTestPolicer(t, s, Budget{Name: "paced", Rate: rate})
	p.setTAT(-time.Second)
	// Express: sparse packets leave at once while the budget clock runs up to
	// 2x the horizon (131 ms at this rate) ahead; a full 2x horizon of them arrives at once.
	burst := int(2 * DefaultHorizon(rate) / (size * time.Microsecond))
	for i := 0; i < burst; i++ {
		if r := p.police(frameOf(0x0800, size), 0); r != tcActUnspc {
			t.Fatalf("express burst frame %d of %d: verdict %d, want pass", i, burst, int32(r))
		}
	}
	// Then the bulk stream at exactly the rate: frame i is due at start + i ms,
	// after the burst. Sending late (a loaded machine) only helps it.
	start := time.Now().Add(time.Duration(burst) * time.Millisecond)
	for i := 0; i < n; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Millisecond)))
		if r := p.police(frameOf(0x0800, size), 0); r != tcActUnspc {
			t.Fatalf("paced frame %d: verdict %d, want pass", i, int32(r))
		}
	}
	if st := p.counters(); st.Bypassed != 0 {
		t.Fatalf("paced stream: %d bypassed, want 0", st.Bypassed)
	}
}

// What arrives faster than rate plus the tolerance is dropped and counted, and
// a dropped frame does not move the clock.
func TestRootPoliceDropsWhatOutrunsTheBudget(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000
	p := newTestPolicer(t, s, Budget{Name: "outrun", Rate: rate})

	// Deterministic edges: 50 ms either side of the tolerance.
	at := p.setTAT(p.tol + 50*time.Millisecond)
	if r := p.police(frameOf(0x0800, 1000), 0); r != tcActShot {
		t.Fatalf("clock beyond tolerance: verdict %d, want TC_ACT_SHOT", int32(r))
	}
	if got := p.tat(); got != at {
		t.Fatalf("a dropped frame moved the clock: %d, want %d", got, at)
	}
	// Checked before charging: a GSO packet costing more (57 ms) than the
	// 50 ms left of the tolerance still passes.
	at = p.setTAT(p.tol - 50*time.Millisecond)
	if r := p.police(frameOf(0x0800, 3000), 1000); r != tcActUnspc {
		t.Fatalf("clock within tolerance: verdict %d, want pass", int32(r))
	}
	charged := uint64(3000 + 999*minSegHeader)
	if got, want := p.tat(), at+cost(charged, rate); got != want {
		t.Fatalf("clock after a passed frame %d, want %d", got, want)
	}
	if st := p.counters(); st.Bypassed != 1 || st.Packets != 1 || st.Bytes != charged {
		t.Fatalf("counters %+v, want 1 bypassed, 1 passed of %d B", st, charged)
	}

	// A flood from idle: back to back, far faster than the rate. What passes
	// is the tolerance's worth plus what the rate earned while the run lasted.
	p.setTAT(-time.Second)
	before := p.counters()
	const n, size = 2000, 1000
	t0 := monotonicNow()
	ret, err := p.pol.Run(&ebpf.RunOptions{Data: frameOf(0x86dd, size), Context: skbCtx{}, Repeat: n})
	elapsed := time.Duration(monotonicNow() - t0)
	if err != nil {
		t.Fatal(err)
	}
	st := p.counters()
	passed, bypassed := st.Packets-before.Packets, st.Bypassed-before.Bypassed
	if passed+bypassed != n {
		t.Fatalf("flood: %d passed + %d bypassed, want %d", passed, bypassed, n)
	}
	perFrame := time.Duration(cost(size, rate))
	lo := uint64(p.tol / perFrame)
	hi := uint64((p.tol+elapsed)/perFrame) + 1
	if passed < lo || passed > hi {
		t.Fatalf("flood of %d frames in %s: %d passed, want %d..%d (tolerance %s at %d bit/s)", n, elapsed, passed, lo, hi, p.tol, rate)
	}
	if ret != tcActShot {
		t.Fatalf("last frame of the flood: verdict %d, want drop", int32(ret))
	}
}

// Every policer instance of a budget (one per host-side veth, in any process)
// charges one clock, exactly, from several CPUs at once.
func TestRootPoliceSharedAcrossInstancesAndCPUs(t *testing.T) {
	s := openTestShaper(t)
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	const rate = 1_000_000_000
	b := Budget{Name: "shared", Rate: rate, Horizon: 5 * time.Second}
	p := newTestPolicer(t, s, b)
	p2 := newTestPolicer(t, s2, b)
	if p.id != p2.id || p.pol == p2.pol {
		t.Fatalf("want one budget and two program instances, got ids %d/%d", p.id, p2.id)
	}
	// Ahead of now by 1 s and below the ~10 s tolerance for the whole run:
	// every frame passes and charges exactly its cost.
	start := p.setTAT(time.Second)
	const (
		workers = 4
		repeat  = 2000
		size    = 1000
	)
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		prog := p.pol
		if w%2 == 1 {
			prog = p2.pol
		}
		go func() {
			_, err := prog.Run(&ebpf.RunOptions{Data: frameOf(0x0800, size), Context: skbCtx{}, Repeat: repeat})
			errs <- err
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got, want := p.tat(), start+workers*repeat*cost(size, rate); got != want {
		t.Fatalf("clock advanced by %d ns, want %d", got-start, want-start)
	}
	if st := p2.counters(); st.Packets != workers*repeat || st.Bypassed != 0 {
		t.Fatalf("counters %+v, want %d packets and none bypassed", st, workers*repeat)
	}
}

// A live rate decrease: what EDT stamped at the old rate is still on its way.
// The policer passes it on a one-off credit without charging the new clock;
// once the credit is spent (or expired) the new rate holds.
func TestRootPoliceCreditOnRateDecrease(t *testing.T) {
	s := openTestShaper(t)
	// Small rates keep the credit (bytes) small: the frames that spend it
	// run in well under its validity even in an emulated guest.
	const old, lower = 1_000_000, 100_000
	// A long old horizon keeps the credit's validity (2x the old tolerance)
	// far beyond anything a slow run could take.
	const oldHorizon = 5 * time.Second
	p := newTestPolicer(t, s, Budget{Name: "decrease", Rate: old, Horizon: oldHorizon})
	oldTol := p.tol

	// Same config again, and an increase: no credit.
	for _, r := range []uint64{old, 2 * old} {
		if err := s.UpsertBudget(Budget{Name: "decrease", Rate: r, Horizon: oldHorizon}); err != nil {
			t.Fatal(err)
		}
		var pc edtPoliceCfg
		if err := s.maps.NetshapePcfg.Lookup(p.id, &pc); err != nil {
			t.Fatal(err)
		}
		if pc.CreditSeq != 0 || pc.CreditBytes != 0 {
			t.Fatalf("upsert at %d bit/s granted credit %+v, want none", r, pc)
		}
	}
	if err := s.UpsertBudget(Budget{Name: "decrease", Rate: old, Horizon: oldHorizon}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertBudget(Budget{Name: "decrease", Rate: lower}); err != nil {
		t.Fatal(err)
	}
	var pc edtPoliceCfg
	if err := s.maps.NetshapePcfg.Lookup(p.id, &pc); err != nil {
		t.Fatal(err)
	}
	// The first decrease (2x -> 1x) granted one credit, the second adds its own
	// (the first one has not expired).
	wantSecond := bytesIn(old, oldTol) + maxGSO
	if pc.CreditSeq != 2 || pc.CreditBytes < wantSecond {
		t.Fatalf("after two decreases: %+v, want seq 2 and at least %d bytes", pc, wantSecond)
	}
	newTol := Budget{Rate: lower}.PoliceTolerance()
	if pc.TolNs != uint64(newTol) {
		t.Fatalf("tolerance %d, want %d", pc.TolNs, newTol)
	}
	credit := pc.CreditBytes

	// The policer clock is beyond the new tolerance: every frame passes on
	// the credit and leaves the clock where it was, until the credit is spent.
	at := p.setTAT(newTol + time.Hour)
	const size = 1500
	n := credit / size
	ret, err := p.pol.Run(&ebpf.RunOptions{Data: frameOf(0x0800, size), Context: skbCtx{}, Repeat: uint32(n)})
	if err != nil || ret != tcActUnspc {
		t.Fatalf("frames within the credit: verdict %d %v, want pass", int32(ret), err)
	}
	if got := p.tat(); got != at {
		t.Fatalf("credited frames moved the clock: %d, want %d", got, at)
	}
	if r := p.police(frameOf(0x0800, size), 0); r != tcActShot {
		t.Fatalf("frame beyond the credit: verdict %d, want drop", int32(r))
	}
	if st := p.counters(); st.Credited != n || st.Bypassed != 1 {
		t.Fatalf("counters %+v, want %d credited and 1 bypassed", st, n)
	}

	// A fresh grant that has expired passes nothing.
	if err := s.UpsertBudget(Budget{Name: "decrease", Rate: old, Horizon: oldHorizon}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertBudget(Budget{Name: "decrease", Rate: lower}); err != nil {
		t.Fatal(err)
	}
	if err := s.maps.NetshapePcfg.Lookup(p.id, &pc); err != nil {
		t.Fatal(err)
	}
	pc.CreditUntil = monotonicNow() - 1
	if err := s.maps.NetshapePcfg.Update(p.id, pc, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	p.setTAT(newTol + time.Second)
	if r := p.police(frameOf(0x0800, size), 0); r != tcActShot {
		t.Fatalf("expired credit: verdict %d, want drop", int32(r))
	}
}

// A GSO packet is charged its length plus a minimal header per further
// segment: skb->len at ingress counts the headers once.
func TestRootPoliceChargesGSOSegments(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000
	p := newTestPolicer(t, s, Budget{Name: "gso", Rate: rate, Horizon: 5 * time.Second})
	for _, tc := range []struct {
		segs uint32
		want uint64 // charged bytes
	}{
		{0, 3000}, {1, 3000}, {2, 3000 + minSegHeader}, {44, 3000 + 43*minSegHeader},
	} {
		at := p.setTAT(time.Second)
		if r := p.police(frameOf(0x0800, 3000), tc.segs); r != tcActUnspc {
			t.Fatalf("gso_segs %d: verdict %d, want pass", tc.segs, int32(r))
		}
		if got, want := p.tat(), at+cost(tc.want, rate); got != want {
			t.Errorf("gso_segs %d: clock advanced %d ns, want %d (%d bytes)", tc.segs, got-at, want-at, tc.want)
		}
	}
}

// No protocol is parsed: every ethertype is charged by its length alike.
func TestRootPoliceChargesEveryEthertype(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000
	p := newTestPolicer(t, s, Budget{Name: "ethertypes", Rate: rate, Horizon: 5 * time.Second})
	want := p.setTAT(time.Second)
	for _, et := range []uint16{0x0800, 0x86dd, 0x0806, 0x88cc, 0x8100, 0x9000} {
		if r := p.police(frameOf(et, 1200), 0); r != tcActUnspc {
			t.Fatalf("ethertype %#04x: verdict %d, want pass", et, int32(r))
		}
		want += cost(1200, rate)
		if got := p.tat(); got != want {
			t.Fatalf("ethertype %#04x: clock %d, want %d", et, got, want)
		}
	}
	p.setTAT(p.tol + time.Second)
	for _, et := range []uint16{0x0806, 0x88cc} {
		if r := p.police(frameOf(et, 60), 0); r != tcActShot {
			t.Fatalf("ethertype %#04x beyond tolerance: verdict %d, want drop", et, int32(r))
		}
	}
	if st := p.counters(); st.Packets != 6 || st.Bytes != 6*1200 || st.Bypassed != 2 {
		t.Fatalf("counters %+v, want 6 passed of 1200 B and 2 bypassed", st)
	}
}

// A policer whose budget is gone (left attached by a crash) fails open.
func TestRootPoliceUnknownBudgetPasses(t *testing.T) {
	s := openTestShaper(t)
	newTestBudget(t, s, Budget{Name: "gone", Rate: MinRate})
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	p := newTestPolicer(t, s2, Budget{Name: "gone", Rate: MinRate})
	if err := s.RemoveBudget("gone"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if r := p.police(frameOf(0x0800, 1500), 0); r != tcActUnspc {
			t.Fatalf("budget removed: verdict %d, want pass", int32(r))
		}
	}
}

// A rate increase under the default horizon shortens the policer's tolerance
// in time (the horizon shrinks from 52 ms at 20 Mbit/s to 21 ms at 50) but
// allows a larger burst in bytes: nothing in flight can outrun it, so no
// credit. The same rate with a shorter horizon allows less: credit.
func TestRootPoliceNoCreditWhenTheBurstGrows(t *testing.T) {
	s := openTestShaper(t)
	p := newTestPolicer(t, s, Budget{Name: "grow", Rate: 20e6})
	credit := func(b Budget) edtPoliceCfg {
		t.Helper()
		if err := s.UpsertBudget(b); err != nil {
			t.Fatal(err)
		}
		var pc edtPoliceCfg
		if err := s.maps.NetshapePcfg.Lookup(p.id, &pc); err != nil {
			t.Fatal(err)
		}
		return pc
	}
	if pc := credit(Budget{Name: "grow", Rate: 50e6}); pc.CreditSeq != 0 || time.Duration(pc.TolNs) >= p.tol {
		t.Fatalf("20 -> 50 Mbit/s: %+v; want a shorter tolerance than %s and no credit", pc, p.tol)
	}
	if pc := credit(Budget{Name: "grow", Rate: 50e6, Horizon: 5 * time.Millisecond}); pc.CreditSeq != 1 || pc.CreditBytes == 0 {
		t.Fatalf("a shorter horizon at the same rate: %+v; want a credit", pc)
	}
}
