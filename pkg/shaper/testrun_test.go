package shaper

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// skbCtx mirrors struct __sk_buff (uapi linux/bpf.h) so BPF_PROG_TEST_RUN can
// be given a tstamp and wire_len and hand the tstamp back.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
	CB                                                                          [5]uint32
	Hash, TCClassid, Data, DataEnd, NapiID, Family, RemoteIP4, LocalIP4         uint32
	RemoteIP6, LocalIP6                                                         [4]uint32
	RemotePort, LocalPort, DataMeta                                             uint32
	FlowKeys, Tstamp                                                            uint64
	WireLen, GsoSegs                                                            uint32
	Sk                                                                          uint64
	GsoSize                                                                     uint32
	TstampType                                                                  uint8
	_                                                                           [3]uint8
	Hwtstamp                                                                    uint64
}

const (
	tcActShot  = 2
	tcActUnspc = 0xffffffff // TC_ACT_UNSPEC (-1): pass on to the next program
)

// packet builds an Ethernet frame. ecn is the IP ECN field (0 not-ECT, 2 ECT(0)).
// sport varies the flow hash.
func packet(ethertype uint16, ecn byte, sport uint16) []byte {
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 2})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(eth[12:], ethertype)
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12] = 5 << 4
	switch ethertype {
	case 0x0800:
		ip := make([]byte, 20)
		ip[0] = 0x45
		ip[1] = ecn
		binary.BigEndian.PutUint16(ip[2:], 40)
		ip[8] = 64
		ip[9] = 6
		copy(ip[12:], []byte{10, 250, 0, 1})
		copy(ip[16:], []byte{10, 250, 0, 2})
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(ip[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
		return append(append(eth, ip...), tcp...)
	case 0x86dd:
		ip := make([]byte, 40)
		ip[0] = 0x60 | ecn>>2
		ip[1] = (ecn & 3) << 4
		binary.BigEndian.PutUint16(ip[4:], 20)
		ip[6] = 6
		ip[7] = 64
		ip[8], ip[23] = 0xfd, 1
		ip[24], ip[39] = 0xfd, 2
		return append(append(eth, ip...), tcp...)
	default: // ARP-sized opaque payload
		return append(eth, make([]byte, 28)...)
	}
}

func ipv4ECN(frame []byte) byte { return frame[14+1] & 3 }
func ipv6ECN(frame []byte) byte { return (frame[14+1] >> 4) & 3 }

type testBudget struct {
	t    *testing.T
	s    *Shaper
	name string
	id   uint32
	prog *ebpf.Program
}

// openTestShaper opens a shaper on a private pin directory removed at cleanup.
func openTestShaper(t *testing.T) *Shaper {
	t.Helper()
	nettest.RequireRoot(t)
	s, err := Open(Options{PinDir: "/sys/fs/bpf/netshape-test-" + nettest.Suffix()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Destroy(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func newTestBudget(t *testing.T, s *Shaper, b Budget) *testBudget {
	t.Helper()
	if err := s.UpsertBudget(b); err != nil {
		t.Fatal(err)
	}
	id, found, err := s.lookupID(b.Name)
	if err != nil || !found {
		t.Fatalf("budget %q not found after upsert: %v", b.Name, err)
	}
	prog, err := s.program(id, b.Name, HookShape)
	if err != nil {
		t.Fatal(err)
	}
	return &testBudget{t: t, s: s, name: b.Name, id: id, prog: prog}
}

// setClock puts the budget's departure clock at now+ahead.
func (b *testBudget) setClock(ahead time.Duration) uint64 {
	b.t.Helper()
	at := monotonicNow() + uint64(ahead)
	if err := b.s.maps.NetshapeState.Update(b.id, edtBudgetState{T_last: at}, ebpf.UpdateExist); err != nil {
		b.t.Fatal(err)
	}
	return at
}

func (b *testBudget) clock() uint64 {
	b.t.Helper()
	var st edtBudgetState
	if err := b.s.maps.NetshapeState.Lookup(b.id, &st); err != nil {
		b.t.Fatal(err)
	}
	return st.T_last
}

func (b *testBudget) stats() Stats {
	b.t.Helper()
	st, err := b.s.Budget(b.name)
	if err != nil {
		b.t.Fatal(err)
	}
	return st.Stats
}

type runResult struct {
	ret    uint32
	tstamp uint64
	data   []byte
	before uint64 // monotonic time just before the run
	after  uint64 // and just after
}

// run sends one packet of wireLen bytes through prog.
func run(t *testing.T, prog *ebpf.Program, frame []byte, wireLen uint32, tstamp uint64) runResult {
	t.Helper()
	in := skbCtx{WireLen: wireLen, Tstamp: tstamp}
	var out skbCtx
	data := make([]byte, len(frame)+256)
	r := runResult{before: monotonicNow()}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: data, Context: in, ContextOut: &out})
	r.after = monotonicNow()
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	r.ret, r.tstamp, r.data = ret, out.Tstamp, data[:len(frame)]
	return r
}

// cost is the nanoseconds wireLen bytes take at rate bits/s, as the program computes it.
func cost(wireLen, rate uint64) uint64 { return wireLen * 8 * uint64(time.Second) / rate }

func TestRootEDTIdleBudgetDepartsNow(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000 // 1 byte per microsecond
	b := newTestBudget(t, s, Budget{Name: "idle", Rate: rate})
	r := run(t, b.prog, packet(0x0800, 0, 1000), 5000, 0)
	if r.ret != tcActUnspc {
		t.Fatalf("verdict %d, want TC_ACT_UNSPEC", int32(r.ret))
	}
	if r.tstamp < r.before || r.tstamp > r.after {
		t.Fatalf("idle budget: departure %d not within the run [%d, %d]", r.tstamp, r.before, r.after)
	}
	if got, want := b.clock(), r.tstamp+cost(5000, rate); got != want {
		t.Fatalf("clock after one packet = %d, want departure + 5000 B at 8 Mbit/s = %d", got, want)
	}
}

func TestRootEDTSpacing(t *testing.T) {
	s := openTestShaper(t)
	for _, tc := range []struct {
		rate    uint64
		wireLen []uint64
	}{
		{8_000_000, []uint64{5000, 5000, 5000}},
		{1_000_000_000, []uint64{65000, 9000, 4000, 65000}},
		{20_000_000, []uint64{3100, 64000, 3100}},
		{123_456_789, []uint64{7777, 4321}},
	} {
		b := newTestBudget(t, s, Budget{Name: "spacing", Rate: tc.rate, Horizon: 20 * time.Second})
		want := b.setClock(time.Second)
		for i, l := range tc.wireLen {
			r := run(t, b.prog, packet(0x0800, 0, uint16(2000+i)), uint32(l), 0)
			if r.tstamp != want {
				t.Fatalf("rate %d packet %d (%d B): departure %d, want %d (previous + previous cost)", tc.rate, i, l, r.tstamp, want)
			}
			want += cost(l, tc.rate)
		}
		if got := b.clock(); got != want {
			t.Fatalf("rate %d: clock %d, want %d", tc.rate, got, want)
		}
		if err := s.RemoveBudget("spacing"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRootEDTRespectsLaterTimestamp(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000
	b := newTestBudget(t, s, Budget{Name: "later", Rate: rate, Horizon: 10 * time.Second})
	// TCP's own pacing put the packet ahead of an idle budget (far enough
	// ahead that a slow emulated guest cannot reach it before the run).
	paced := monotonicNow() + uint64(500*time.Millisecond)
	r := run(t, b.prog, packet(0x0800, 0, 1), 5000, paced)
	if r.tstamp != paced {
		t.Fatalf("departure %d, want the existing later timestamp %d", r.tstamp, paced)
	}
	if got, want := b.clock(), paced+cost(5000, rate); got != want {
		t.Fatalf("clock %d, want %d", got, want)
	}
	// A timestamp from another clock (far ahead) is not a pacing decision.
	far := monotonicNow() + uint64(time.Hour)
	b.setClock(-time.Second)
	r = run(t, b.prog, packet(0x0800, 0, 2), 5000, far)
	if r.tstamp < r.before || r.tstamp > r.after {
		t.Fatalf("timestamp an hour ahead was honoured: departure %d, run [%d, %d]", r.tstamp, r.before, r.after)
	}
	// An earlier timestamp than the budget clock is pushed to the clock.
	clock := b.setClock(800 * time.Millisecond)
	r = run(t, b.prog, packet(0x0800, 0, 3), 5000, monotonicNow()+uint64(400*time.Millisecond))
	if r.tstamp != clock {
		t.Fatalf("departure %d, want budget clock %d", r.tstamp, clock)
	}
}

func TestRootEDTHorizonDrop(t *testing.T) {
	s := openTestShaper(t)
	const rate = 1_000_000
	horizon := 200 * time.Millisecond
	b := newTestBudget(t, s, Budget{Name: "horizon", Rate: rate, Horizon: horizon, CEThreshold: -1})

	clock := b.setClock(horizon + 100*time.Millisecond)
	r := run(t, b.prog, packet(0x0800, 0, 1), 5000, 0)
	if r.ret != tcActShot {
		t.Fatalf("backlog beyond horizon: verdict %d, want TC_ACT_SHOT", int32(r.ret))
	}
	if got := b.clock(); got != clock {
		t.Fatalf("a dropped packet moved the clock: %d, want %d", got, clock)
	}
	// Measured before the packet: a 480 ms packet on a 150 ms backlog passes.
	clock = b.setClock(150 * time.Millisecond)
	r = run(t, b.prog, packet(0x0800, 0, 2), 60000, 0)
	if r.ret != tcActUnspc || r.tstamp != clock {
		t.Fatalf("packet larger than the horizon on a short backlog: verdict %d departure %d, want pass at %d", int32(r.ret), r.tstamp, clock)
	}
	st := b.stats()
	if st.Dropped != 1 || st.Packets != 1 || st.Bytes != 60000 || st.Delayed != 1 {
		t.Fatalf("counters %+v, want 1 dropped, 1 packet of 60000 B, 1 delayed", st)
	}
	// The sender's own pacing delay is not budget backlog: a packet TCP
	// stamped beyond the horizon on an idle budget passes at its stamp.
	b.setClock(-time.Second)
	paced := monotonicNow() + uint64(horizon+300*time.Millisecond)
	if r := run(t, b.prog, packet(0x0800, 0, 3), 1000, paced); r.ret != tcActUnspc || r.tstamp != paced {
		t.Fatalf("paced packet on an idle budget: verdict %d departure %d, want pass at %d", int32(r.ret), r.tstamp, paced)
	}
}

func TestRootEDTMarksCE(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000
	b := newTestBudget(t, s, Budget{Name: "ce", Rate: rate, Horizon: 2 * time.Second, CEThreshold: 200 * time.Millisecond})
	for _, tc := range []struct {
		name      string
		ethertype uint16
		ecn       byte
		backlog   time.Duration
		wantECN   byte
		ecnOf     func([]byte) byte
	}{
		{"v4 ECT(0) above threshold", 0x0800, 2, 500 * time.Millisecond, 3, ipv4ECN},
		{"v4 ECT(1) above threshold", 0x0800, 1, 500 * time.Millisecond, 3, ipv4ECN},
		{"v6 ECT(0) above threshold", 0x86dd, 2, 500 * time.Millisecond, 3, ipv6ECN},
		{"v4 not-ECT above threshold", 0x0800, 0, 500 * time.Millisecond, 0, ipv4ECN},
		{"v4 ECT(0) below threshold", 0x0800, 2, 100 * time.Millisecond, 2, ipv4ECN},
	} {
		before := b.stats().Marked
		b.setClock(tc.backlog)
		r := run(t, b.prog, packet(tc.ethertype, tc.ecn, 7), 5000, 0)
		if got := tc.ecnOf(r.data); got != tc.wantECN {
			t.Errorf("%s: ECN field %d, want %d", tc.name, got, tc.wantECN)
		}
		wantMarked := before
		if tc.wantECN == 3 {
			wantMarked++
		}
		if got := b.stats().Marked; got != wantMarked {
			t.Errorf("%s: marked counter %d, want %d", tc.name, got, wantMarked)
		}
		if r.ret != tcActUnspc {
			t.Errorf("%s: a marked packet must still pass, verdict %d", tc.name, int32(r.ret))
		}
	}
}

func TestRootEDTExpressForSparseFlows(t *testing.T) {
	s := openTestShaper(t)
	// At the lowest rate a 3000-byte packet costs 2.4 s, so "the flow still
	// has a packet in its slot" holds however slowly the test runs.
	const rate = MinRate
	b := newTestBudget(t, s, Budget{Name: "express", Rate: rate})
	clock := b.setClock(3 * time.Second) // + 2 packets stays under the ~9.7 s horizon

	// A small packet of an idle flow leaves now, but is charged to the budget.
	r := run(t, b.prog, packet(0x0800, 0, 4242), 3000, 0)
	if r.tstamp < r.before || r.tstamp > r.after {
		t.Fatalf("sparse packet waited: departure %d, run [%d, %d]", r.tstamp, r.before, r.after)
	}
	clock += cost(3000, rate)
	if got := b.clock(); got != clock {
		t.Fatalf("express packet not charged: clock %d, want %d", got, clock)
	}
	// The same flow's next packet has its own predecessor in flight: it queues.
	r = run(t, b.prog, packet(0x0800, 0, 4242), 3000, 0)
	if r.tstamp != clock {
		t.Fatalf("second packet of the flow: departure %d, want budget clock %d", r.tstamp, clock)
	}
	clock += cost(3000, rate)
	// A large packet of another idle flow is bulk: it queues too.
	r = run(t, b.prog, packet(0x0800, 0, 4343), expressBytes+1, 0)
	if r.tstamp != clock {
		t.Fatalf("large packet: departure %d, want budget clock %d", r.tstamp, clock)
	}
	if st := b.stats(); st.Express != 1 || st.Packets != 3 {
		t.Fatalf("counters %+v, want 1 express of 3 packets", st)
	}
}

func TestRootEDTExpressIsBounded(t *testing.T) {
	s := openTestShaper(t)
	const rate = MinRate
	horizon := 10 * time.Second
	b := newTestBudget(t, s, Budget{Name: "bounded", Rate: rate, Horizon: horizon})
	// Beyond twice the horizon even a sparse packet is dropped.
	b.setClock(2*horizon + time.Second)
	if r := run(t, b.prog, packet(0x0800, 0, 999), 3000, 0); r.ret != tcActShot {
		t.Fatalf("sparse packet beyond 2x horizon: verdict %d, want drop", int32(r.ret))
	}
	// Between the horizon and twice it, a sparse packet still goes express.
	b.setClock(horizon + time.Second)
	if r := run(t, b.prog, packet(0x0800, 0, 998), 3000, 0); r.ret != tcActUnspc || r.tstamp > r.after {
		t.Fatalf("sparse packet within 2x horizon: verdict %d departure %d, want express", int32(r.ret), r.tstamp)
	}
}

func TestRootEDTCountsEveryEthertype(t *testing.T) {
	s := openTestShaper(t)
	const rate = 8_000_000
	b := newTestBudget(t, s, Budget{Name: "ethertypes", Rate: rate, Horizon: 20 * time.Second})
	want := b.setClock(time.Second)
	for i, et := range []uint16{0x0800, 0x86dd, 0x0806, 0x88cc} {
		r := run(t, b.prog, packet(et, 0, uint16(i)), 4000, 0)
		if r.tstamp != want {
			t.Fatalf("ethertype %#04x: departure %d, want %d", et, r.tstamp, want)
		}
		want += cost(4000, rate)
	}
	if st := b.stats(); st.Packets != 4 || st.Bytes != 16000 {
		t.Fatalf("counters %+v, want 4 packets, 16000 bytes", st)
	}
}

func TestRootEDTUnknownBudgetPasses(t *testing.T) {
	s := openTestShaper(t)
	newTestBudget(t, s, Budget{Name: "gone", Rate: MinRate})
	// Another process's program instance for the budget stays loaded.
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	b := newTestBudget(t, s2, Budget{Name: "gone", Rate: MinRate})
	if err := s.RemoveBudget("gone"); err != nil {
		t.Fatal(err)
	}
	// The program outlived its budget (e.g. an attachment left by a crash):
	// it must fail open, not drop or delay.
	r := run(t, b.prog, packet(0x0800, 0, 1), 5000, 0)
	if r.ret != tcActUnspc || r.tstamp != 0 {
		t.Fatalf("budget removed: verdict %d departure %d, want pass with no timestamp", int32(r.ret), r.tstamp)
	}
}

func TestRootEDTSharedBudgetAcrossProgramsAndCPUs(t *testing.T) {
	s := openTestShaper(t)
	// A second shaper on the same pins stands for a second process: it loads
	// its own program instance for the same budget.
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	const rate = 1_000_000_000
	b := newTestBudget(t, s, Budget{Name: "shared", Rate: rate, Horizon: 20 * time.Second, CEThreshold: -1})
	b2 := newTestBudget(t, s2, Budget{Name: "shared", Rate: rate, Horizon: 20 * time.Second, CEThreshold: -1})
	if b.id != b2.id || b.prog == b2.prog {
		t.Fatalf("want one budget id and two program instances, got ids %d/%d", b.id, b2.id)
	}
	start := b.setClock(time.Second)
	const (
		workers = 4
		repeat  = 20000
		wireLen = 9000
	)
	frame := packet(0x0800, 0, 5)
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		prog := b.prog
		if w%2 == 1 {
			prog = b2.prog
		}
		go func() {
			_, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{WireLen: wireLen}, Repeat: repeat})
			errs <- err
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Every packet must have advanced the shared clock by exactly its cost:
	// an unlocked read-modify-write on several CPUs would lose some.
	want := start + workers*repeat*cost(wireLen, rate)
	if got := b.clock(); got != want {
		t.Fatalf("clock advanced by %d ns, want %d (%d packets of %d B at 1 Gbit/s)", got-start, want-start, workers*repeat, wireLen)
	}
	if st := b.stats(); st.Packets != workers*repeat {
		t.Fatalf("packets counter %d, want %d", st.Packets, workers*repeat)
	}
}

func TestRootBudgetRateChangeInPlace(t *testing.T) {
	s := openTestShaper(t)
	b := newTestBudget(t, s, Budget{Name: "live", Rate: 20_000_000, Horizon: 20 * time.Second})
	clock := b.setClock(time.Second)
	run(t, b.prog, packet(0x0800, 0, 1), 5000, 0)
	if err := s.UpsertBudget(Budget{Name: "live", Rate: 50_000_000, Horizon: 20 * time.Second}); err != nil {
		t.Fatal(err)
	}
	// Same id, same clock, same counters: only the rate changed.
	id, _, _ := s.lookupID("live")
	if id != b.id {
		t.Fatalf("rate change moved the budget from id %d to %d", b.id, id)
	}
	want := clock + cost(5000, 20_000_000)
	if got := b.clock(); got != want {
		t.Fatalf("clock after rate change %d, want %d", got, want)
	}
	r := run(t, b.prog, packet(0x0800, 0, 2), 5000, 0)
	if r.tstamp != want {
		t.Fatalf("departure %d, want %d", r.tstamp, want)
	}
	if got, want2 := b.clock(), want+cost(5000, 50_000_000); got != want2 {
		t.Fatalf("second packet not charged at the new rate: clock %d, want %d", got, want2)
	}
	st, err := s.Budget("live")
	if err != nil {
		t.Fatal(err)
	}
	if st.Rate != 50_000_000 || st.Stats.Packets != 2 {
		t.Fatalf("status %+v, want rate 50 Mbit/s and 2 packets", st)
	}
}

func TestRootBudgetRemoveLeavesNothing(t *testing.T) {
	s := openTestShaper(t)
	b := newTestBudget(t, s, Budget{Name: "temp", Rate: MinRate})
	run(t, b.prog, packet(0x0800, 0, 1), 100, 0)
	if err := s.RemoveBudget("temp"); err != nil {
		t.Fatal(err)
	}
	if err := s.names.Lookup(b.id, make([]byte, maxNameLen+1)); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("slot %d still named: %v", b.id, err)
	}
	// The budget maps are arrays: a freed slot is all zero, so whatever
	// budget takes it next starts clean.
	for name, m := range map[string]*ebpf.Map{"cfg": s.maps.NetshapeCfg, "state": s.maps.NetshapeState,
		"pcfg": s.maps.NetshapePcfg, "pstate": s.maps.NetshapePstate} {
		var v []byte
		if err := m.Lookup(b.id, &v); err != nil {
			t.Fatalf("read slot %d of %s: %v", b.id, name, err)
		}
		if len(v) == 0 || !allZero(v) {
			t.Errorf("%s slot %d not zeroed after removal: % x", name, b.id, v)
		}
	}
	var stats []edtBudgetStats
	var pstats []edtPoliceStats
	if err := s.maps.NetshapeStats.Lookup(b.id, &stats); err != nil {
		t.Fatal(err)
	}
	if err := s.maps.NetshapePstats.Lookup(b.id, &pstats); err != nil {
		t.Fatal(err)
	}
	for cpu := range stats {
		if stats[cpu] != (edtBudgetStats{}) || pstats[cpu] != (edtPoliceStats{}) {
			t.Errorf("counters of slot %d not zeroed on CPU %d: %+v %+v", b.id, cpu, stats[cpu], pstats[cpu])
		}
	}
	var k edtFlowKey
	var v uint64
	it := s.maps.NetshapeFlows.Iterate()
	for it.Next(&k, &v) {
		if k.Budget == b.id {
			t.Errorf("flow entry left for budget %d", b.id)
		}
	}
	if _, err := s.Budget("temp"); !errors.Is(err, ErrNoBudget) {
		t.Fatalf("Budget(temp) after removal: %v, want ErrNoBudget", err)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
