package shaper

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// Count-only budgets (Budget.CountOnly): netshape_count through
// BPF_PROG_TEST_RUN, their attachments without any qdisc, and the live switch
// between counting and enforcing on one device.

func countProg(t *testing.T, s *Shaper, name string) (uint32, *ebpf.Program) {
	t.Helper()
	id, found, err := s.lookupID(name)
	if err != nil || !found {
		t.Fatalf("budget %q: %v", name, err)
	}
	p, err := s.load(id, name, countName)
	if err != nil {
		t.Fatal(err)
	}
	return id, p
}

func TestCountOnlyBudgetValidation(t *testing.T) {
	for _, b := range []Budget{
		{Name: "c", CountOnly: true, Rate: 1e6},
		{Name: "c", CountOnly: true, Horizon: time.Second},
		{Name: "c", CountOnly: true, CEThreshold: time.Millisecond},
		{Name: "", CountOnly: true},
	} {
		if err := b.validate(); !errors.Is(err, ErrBadBudget) {
			t.Errorf("%+v: %v, want ErrBadBudget", b, err)
		}
	}
	if err := (Budget{Name: "c", CountOnly: true}).validate(); err != nil {
		t.Errorf("count-only budget refused: %v", err)
	}
	if c := (Budget{Name: "c", CountOnly: true}).cfg(); c != (edtBudgetCfg{Flags: budgetCountOnly}) {
		t.Errorf("count-only config %+v, want no rate and the flag", c)
	}
}

// netshape_count counts every packet (wire length at egress; at ingress, where
// wire_len is skb->len, a GSO packet's further segments are charged a minimal
// header each) and never drops or stamps.
func TestRootCountOnlyCountsAndPasses(t *testing.T) {
	s := openTestShaper(t)
	if err := s.UpsertBudget(Budget{Name: "mon", CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Budget("mon")
	if err != nil || !st.CountOnly || st.Rate != 0 {
		t.Fatalf("budget read back %+v %v, want count-only without a rate", st, err)
	}
	_, prog := countProg(t, s, "mon")
	var bytes uint64
	for _, tc := range []struct {
		frame   int
		wireLen uint32 // 0: as at ingress, wire_len = skb->len
		segs    uint32
		want    uint64
	}{
		{1514, 1514, 1, 1514},
		{3000, 3108, 2, 3108}, // egress: the stack already counted both segments' headers
		{3000, 0, 2, 3000 + minSegHeader},
		{100, 0, 0, 100},
	} {
		in := skbCtx{WireLen: tc.wireLen, GsoSegs: tc.segs, Tstamp: 12345}
		var out skbCtx
		ret, err := prog.Run(&ebpf.RunOptions{Data: frameOf(0x0800, tc.frame), Context: in, ContextOut: &out})
		if err != nil {
			t.Fatal(err)
		}
		if ret != tcActUnspc || out.Tstamp != 12345 {
			t.Fatalf("frame %d: verdict %d tstamp %d, want pass with the timestamp untouched", tc.frame, int32(ret), out.Tstamp)
		}
		bytes += tc.want
	}
	if st := (&testBudget{t: t, s: s, name: "mon"}).stats(); st.Packets != 4 || st.Bytes != bytes || st.Delayed+st.Dropped+st.Marked+st.Express != 0 {
		t.Fatalf("counters %+v, want 4 packets and %d bytes, nothing else", st, bytes)
	}
	// Once the budget is gone another process's instance of the program
	// (e.g. left attached by a crash) passes and counts nothing.
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	_, prog = countProg(t, s2, "mon")
	if err := s.RemoveBudget("mon"); err != nil {
		t.Fatal(err)
	}
	if ret, err := prog.Run(&ebpf.RunOptions{Data: frameOf(0x0800, 200), Context: skbCtx{WireLen: 200}}); err != nil || ret != tcActUnspc {
		t.Fatalf("removed budget: verdict %d %v, want pass", int32(ret), err)
	}
}

// A shaping (or policing) device whose budget was switched to count-only
// counts and passes until it is re-attached; a budget without a rate that is
// not count-only passes uncounted.
func TestRootShapingProgramsOnCountOnlyBudget(t *testing.T) {
	s := openTestShaper(t)
	b := newTestBudget(t, s, Budget{Name: "sw", Rate: 1e6})
	limit, err := s.load(b.id, b.name, limitName)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertBudget(Budget{Name: "sw", CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	b.setClock(10 * time.Second) // far past any horizon: a rate would drop
	for _, p := range []*ebpf.Program{b.prog, limit} {
		r := run(t, p, packet(0x0800, 0, 7), 1500, 0)
		if r.ret != tcActUnspc || r.tstamp != 0 {
			t.Fatalf("count-only budget: verdict %d departure %d, want pass unstamped", int32(r.ret), r.tstamp)
		}
	}
	if st := b.stats(); st.Packets != 2 || st.Bytes != 3000 || st.Dropped != 0 || st.Delayed != 0 {
		t.Fatalf("counters %+v, want 2 packets, 3000 bytes", st)
	}
	// Back to a rate: the policer variant enforces it again.
	if err := s.UpsertBudget(Budget{Name: "sw", Rate: 1e6}); err != nil {
		t.Fatal(err)
	}
	if r := run(t, limit, packet(0x0800, 0, 7), 1500, 0); r.ret != tcActShot {
		t.Fatalf("rate restored with a 10 s backlog: verdict %d, want drop", int32(r.ret))
	}
}

// A count-only attachment is the program alone: no root qdisc at either hook,
// recorded with DatapathCount, idempotent, switched live to the no-fq policer
// and back by re-attaching after an upsert, removed cleanly, and pruned when
// its namespace goes.
func TestRootCountOnlyAttachSwitchDetachPrune(t *testing.T) {
	s := openTestShaper(t)
	appNs := nettest.NewNetns(t, "app")
	p := nettest.NewPair(t, appNs, nil, 3)
	app, host := Device{Netns: appNs.Path, Name: p.NameA}, Device{Name: p.NameB}
	if err := s.UpsertBudget(Budget{Name: "m/egress", CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertBudget(Budget{Name: "m/ingress", CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	// Where pkg/reconcile counts: app egress at the host veth's ingress, app ingress at its egress.
	eg, err := s.Attach(host, "m/egress", AttachOptions{Hook: HookPolice})
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.Attach(host, "m/ingress", AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// And on a container-side device, as for a veth whose peer is not in the host namespace.
	ap, err := s.Attach(app, "m/egress", AttachOptions{NoFq: true}) // NoFq means nothing to a count-only budget
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []Attachment{eg, in, ap} {
		if a.Datapath != DatapathCount || a.Degraded() {
			t.Fatalf("attachment %+v, want DatapathCount", a)
		}
	}
	prefix := "tcx:"
	if eg.Mode == ModeLegacy {
		prefix = "tc:"
	}
	want := []string{prefix + countName}
	st := inspect(t, host)
	if st.rootHandle != 0 || !slices.Equal(st.egressProgs, want) || !slices.Equal(st.ingressProgs, want) {
		t.Fatalf("host device %+v, want no root qdisc and %v at both hooks", st, want)
	}
	if st := inspect(t, app); st.rootHandle != 0 || !slices.Equal(st.egressProgs, want) {
		t.Fatalf("app device %+v, want no root qdisc and %v at egress", st, want)
	}
	atts, err := s.Attachments()
	if err != nil || len(atts) != 3 {
		t.Fatalf("attachments %+v %v, want 3", atts, err)
	}
	for _, a := range atts {
		if a.Datapath != DatapathCount {
			t.Fatalf("recorded %+v, want DatapathCount", a)
		}
	}
	pinsBefore := pins(t, s)
	again, err := s.Attach(host, "m/ingress", AttachOptions{})
	if err != nil || again != in || !slices.Equal(pins(t, s), pinsBefore) {
		t.Fatalf("second attach: %+v %v, want %+v unchanged", again, err, in)
	}

	// Live switch to a limit, on a kernel without fq: the policer variant.
	if err := s.UpsertBudget(Budget{Name: "m/ingress", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	sw, err := s.Attach(host, "m/ingress", AttachOptions{NoFq: true})
	if err != nil || sw.Datapath != DatapathPolicing || !sw.Degraded() {
		t.Fatalf("switch to a limit without fq: %+v %v, want DatapathPolicing", sw, err)
	}
	if st := inspect(t, host); st.rootHandle != 0 || !slices.Equal(st.egressProgs, []string{prefix + limitName}) || !slices.Equal(st.ingressProgs, want) {
		t.Fatalf("after the switch: %+v, want %s%s at egress, still counting at ingress, no qdisc", st, prefix, limitName)
	}
	if !slices.Equal(pins(t, s), pinsBefore) {
		t.Fatalf("the switch re-created links: pins %v, were %v", pins(t, s), pinsBefore)
	}
	// And back to counting.
	if err := s.UpsertBudget(Budget{Name: "m/ingress", CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	if back, err := s.Attach(host, "m/ingress", AttachOptions{}); err != nil || back.Datapath != DatapathCount {
		t.Fatalf("switch back: %+v %v", back, err)
	}
	if st := inspect(t, host); !slices.Equal(st.egressProgs, want) {
		t.Fatalf("after switching back: %+v", st)
	}

	if err := s.Detach(host); err != nil {
		t.Fatal(err)
	}
	if st := inspect(t, host); st.rootHandle != 0 || len(st.egressProgs)+len(st.ingressProgs) != 0 || st.hasClsact {
		t.Fatalf("host after detach: %+v", st)
	}
	// The app's namespace goes away: Prune forgets its count attachment.
	nettest.Run(t, "ip", "netns", "del", appNs.Name)
	var pruned []Attachment
	for deadline := time.Now().Add(5 * time.Second); len(pruned) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		got, err := s.Prune()
		if err != nil {
			t.Fatal(err)
		}
		pruned = append(pruned, got...)
	}
	if len(pruned) != 1 || pruned[0].Datapath != DatapathCount || pruned[0].Budget != "m/egress" {
		t.Fatalf("pruned %+v, want the app's count attachment", pruned)
	}
	if p := pins(t, s); len(p) != 0 {
		t.Fatalf("pins left: %v", p)
	}
	if a, err := s.Attachments(); err != nil || len(a) != 0 {
		t.Fatalf("attachments left: %v %v", a, err)
	}
}

// Real TCP through a count-only attachment at each hook of the host-side veth
// (where reconcile counts a container): what the budget counts is what
// crossed, header for header. The app's side sends to the host's side and back.
func TestRootCountOnlyCountsRealTCP(t *testing.T) {
	s := openTestShaper(t)
	appNs := nettest.NewNetns(t, "app")
	p := nettest.NewPair(t, appNs, nil, 4)
	host := Device{Name: p.NameB}
	for _, n := range []string{"tcp/egress", "tcp/ingress"} {
		if err := s.UpsertBudget(Budget{Name: n, CountOnly: true}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Attach(host, "tcp/egress", AttachOptions{Hook: HookPolice}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(host, "tcp/ingress", AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		budget   string
		from, to *nettest.Netns
		toIP     string
	}{
		{"tcp/egress", appNs, nil, p.IPB},
		{"tcp/ingress", nil, appNs, p.IPA},
	} {
		before, err := s.Budget(tc.budget)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := traffic.ListenIn(tc.to.PathOrSelf(), tc.toIP+":0")
		if err != nil {
			t.Fatal(err)
		}
		sink := traffic.NewSink(ln)
		res, err := traffic.Send(context.Background(), traffic.SendOptions{Addr: sink.Addr().String(), Duration: time.Second,
			Dial: traffic.DialIn(tc.from.PathOrSelf())})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		got := sink.Bytes()
		sink.Close()
		st, err := s.Budget(tc.budget)
		if err != nil {
			t.Fatal(err)
		}
		st.Stats.Bytes -= before.Stats.Bytes // the other run's ACKs
		st.Stats.Packets -= before.Stats.Packets
		// Counted is payload plus every segment's headers: Ethernet+IP+TCP+timestamps per full
		// segment of a 1500-byte MTU is 66/1448 = 4.6 % (GSO segments at ingress are charged
		// 54 of their 66 bytes: 3.7 %). So 3..5.5 % over the payload, which both directions
		// must show, or a GSO packet was counted as one segment.
		if r := float64(st.Stats.Bytes) / float64(got); r < 1.03 || r > 1.055 {
			t.Errorf("%s: counted %d bytes in %d packets for %d bytes of payload received (sent %d)", tc.budget, st.Stats.Bytes, st.Stats.Packets, got, res.Bytes)
		}
		t.Logf("%s: %d payload bytes received, %d counted (%.3f), %d packets", tc.budget, got, st.Stats.Bytes, float64(st.Stats.Bytes)/float64(got), st.Stats.Packets)
	}
}

// With fq: a count-only device gains our fq and the EDT program when its
// budget gets a rate (fq first, then the program swap, same link), and loses
// the fq again when the budget goes back to counting.
func TestRootFqCountOnlySwitchesToEDTAndBack(t *testing.T) {
	nettest.RequireFq(t)
	s := openTestShaper(t)
	app, _ := testPair(t)
	if err := s.UpsertBudget(Budget{Name: "fqsw", CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	a, err := s.Attach(app, "fqsw", AttachOptions{})
	if err != nil || a.Datapath != DatapathCount {
		t.Fatalf("count attach: %+v %v", a, err)
	}
	prefix := "tcx:"
	if a.Mode == ModeLegacy {
		prefix = "tc:"
	}
	if st := inspect(t, app); st.rootHandle != 0 || !slices.Equal(st.egressProgs, []string{prefix + countName}) {
		t.Fatalf("counting: %+v", st)
	}
	pinsBefore := pins(t, s)
	if err := s.UpsertBudget(Budget{Name: "fqsw", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	if a, err = s.Attach(app, "fqsw", AttachOptions{}); err != nil || a.Datapath != DatapathEDT {
		t.Fatalf("switch to a limit: %+v %v", a, err)
	}
	if st := inspect(t, app); st.rootKind != "fq" || st.rootHandle != fqHandle || !slices.Equal(st.egressProgs, []string{prefix + progName}) {
		t.Fatalf("shaping: %+v, want our fq and %s%s", st, prefix, progName)
	}
	if !slices.Equal(pins(t, s), pinsBefore) {
		t.Fatalf("the switch re-created links: %v, were %v", pins(t, s), pinsBefore)
	}
	if err := s.UpsertBudget(Budget{Name: "fqsw", CountOnly: true}); err != nil {
		t.Fatal(err)
	}
	if a, err = s.Attach(app, "fqsw", AttachOptions{}); err != nil || a.Datapath != DatapathCount {
		t.Fatalf("switch back: %+v %v", a, err)
	}
	if st := inspect(t, app); st.rootHandle != 0 || !slices.Equal(st.egressProgs, []string{prefix + countName}) {
		t.Fatalf("counting again: %+v, want no root qdisc of ours", st)
	}
	if err := s.RemoveBudget("fqsw"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s, app)
}
