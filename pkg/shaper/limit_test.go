package shaper

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// netshape_limit, the no-fq policer (DatapathPolicing), through
// BPF_PROG_TEST_RUN: it shares the EDT budget clock, never stamps, drops
// beyond max(horizon, NoFqTolerance) measured before the packet, and the
// backstop of a budget so policed allows its burst.

func limitProg(t *testing.T, b *testBudget) *ebpf.Program {
	t.Helper()
	p, err := b.s.load(b.id, b.name, limitName)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRootLimitPolicesWithoutStamping(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000 // 1 byte per µs
	b := newTestBudget(t, s, Budget{Name: "lim", Rate: rate, CEThreshold: -1})
	p := limitProg(t, b)
	tol := max(DefaultHorizon(rate), NoFqTolerance)

	// Idle: passes now, unstamped (a timestamp TCP set stays as it was), and charges the clock from now.
	b.setClock(-time.Second)
	r := run(t, p, packet(0x0800, 0, 1), 5000, 4242)
	if r.ret != tcActUnspc || r.tstamp != 4242 {
		t.Fatalf("idle budget: verdict %d tstamp %d, want pass with the timestamp untouched", int32(r.ret), r.tstamp)
	}
	if c := b.clock(); c < r.before+cost(5000, rate) || c > r.after+cost(5000, rate) {
		t.Fatalf("clock %d, want now + 5 ms", c)
	}
	// Within the tolerance: passes, charged on top of the backlog.
	clock := b.setClock(tol - 50*time.Millisecond)
	if r := run(t, p, packet(0x0800, 0, 2), 60000, 0); r.ret != tcActUnspc || r.tstamp != 0 {
		t.Fatalf("backlog under the tolerance: verdict %d tstamp %d, want pass unstamped", int32(r.ret), r.tstamp)
	}
	if got := b.clock(); got != clock+cost(60000, rate) {
		t.Fatalf("clock %d, want %d", got, clock+cost(60000, rate))
	}
	// Beyond it: dropped, clock untouched.
	clock = b.setClock(tol + 50*time.Millisecond)
	if r := run(t, p, packet(0x0800, 0, 3), 100, 0); r.ret != tcActShot {
		t.Fatalf("backlog beyond the tolerance %s: verdict %d, want drop", tol, int32(r.ret))
	}
	if got := b.clock(); got != clock {
		t.Fatalf("a dropped packet moved the clock")
	}
	if st := b.stats(); st.Packets != 2 || st.Bytes != 65000 || st.Dropped != 1 || st.Delayed != 0 || st.Express != 0 {
		t.Fatalf("counters %+v, want 2 packets of 65000 B, 1 dropped, nothing delayed", st)
	}
	// A horizon longer than NoFqTolerance is the tolerance.
	long := newTestBudget(t, s, Budget{Name: "lim-long", Rate: rate, Horizon: 2 * time.Second})
	lp := limitProg(t, long)
	long.setClock(1900 * time.Millisecond)
	if r := run(t, lp, packet(0x0800, 0, 4), 100, 0); r.ret != tcActUnspc {
		t.Fatalf("1.9 s backlog under a 2 s horizon: verdict %d, want pass", int32(r.ret))
	}
}

// One clock for every device, CPU and process on the budget, as for EDT.
func TestRootLimitSharedAcrossProgramsAndCPUs(t *testing.T) {
	s := openTestShaper(t)
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	const rate = 1_000_000_000
	b := newTestBudget(t, s, Budget{Name: "lshared", Rate: rate, Horizon: 20 * time.Second})
	b2 := newTestBudget(t, s2, Budget{Name: "lshared", Rate: rate, Horizon: 20 * time.Second})
	p1, p2 := limitProg(t, b), limitProg(t, b2)
	start := b.setClock(time.Second)
	const workers, repeat, wireLen = 4, 20000, 9000
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		p := p1
		if w%2 == 1 {
			p = p2
		}
		go func() {
			_, err := p.Run(&ebpf.RunOptions{Data: packet(0x0800, 0, 5), Context: skbCtx{WireLen: wireLen}, Repeat: repeat})
			errs <- err
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got, want := b.clock(), start+workers*repeat*cost(wireLen, rate); got != want {
		t.Fatalf("clock advanced %d ns, want %d", got-start, want-start)
	}
	if st := b.stats(); st.Packets != workers*repeat {
		t.Fatalf("packets %d, want %d", st.Packets, workers*repeat)
	}
}

// Attaching a budget with NoFq marks it, and from then on its backstop allows
// NoFqTolerance more: a burst the no-fq policer passed is not dropped a second
// time. An upsert keeps the mark. Without it the same burst is bypass.
func TestRootBackstopAllowsNoFqBurst(t *testing.T) {
	s := openTestShaper(t)
	_, host := testPair(t)
	p := newTestPolicer(t, s, Budget{Name: "nofq", Rate: 8_000_000})
	ahead := p.tol + NoFqTolerance/2
	p.setTAT(ahead)
	if r := p.police(frameOf(0x0800, 1000), 1); r != tcActShot {
		t.Fatalf("unmarked budget, %s ahead (tolerance %s): verdict %d, want drop", ahead, p.tol, int32(r))
	}
	if _, err := s.Attach(host, "nofq", AttachOptions{NoFq: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertBudget(Budget{Name: "nofq", Rate: 8_000_000}); err != nil {
		t.Fatal(err)
	}
	var cfg edtBudgetCfg
	if err := s.maps.NetshapeCfg.Lookup(p.id, &cfg); err != nil || cfg.Flags&budgetNoFq == 0 {
		t.Fatalf("config %+v %v after attach without fq and an upsert, want the no-fq mark", cfg, err)
	}
	p.setTAT(ahead)
	if r := p.police(frameOf(0x0800, 1000), 1); r != tcActUnspc {
		t.Fatalf("marked budget, %s ahead: verdict %d, want pass", ahead, int32(r))
	}
	p.setTAT(p.tol + NoFqTolerance + 50*time.Millisecond)
	if r := p.police(frameOf(0x0800, 1000), 1); r != tcActShot {
		t.Fatalf("marked budget beyond tolerance + %s: verdict %d, want drop", NoFqTolerance, int32(r))
	}
}
