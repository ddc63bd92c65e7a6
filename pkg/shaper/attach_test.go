package shaper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// devState is everything on a device that Attach/Detach may change.
type devState struct {
	rootKind     string
	rootHandle   uint32
	egressProgs  []string // TCX programs and legacy filters at egress, by name
	ingressProgs []string // and at ingress
	hasClsact    bool
}

func inspect(t *testing.T, dev Device) devState {
	t.Helper()
	ns, err := openNetns(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.close()
	l, err := ns.link(dev)
	if err != nil {
		t.Fatal(err)
	}
	var st devState
	qs, err := ns.nl.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		switch {
		case q.Attrs().Parent == netlink.HANDLE_ROOT:
			st.rootKind, st.rootHandle = q.Type(), q.Attrs().Handle
		case q.Type() == "clsact":
			st.hasClsact = true
		}
	}
	for _, side := range []struct {
		parent uint32
		attach ebpf.AttachType
		out    *[]string
	}{
		{netlink.HANDLE_MIN_EGRESS, ebpf.AttachTCXEgress, &st.egressProgs},
		{netlink.HANDLE_MIN_INGRESS, ebpf.AttachTCXIngress, &st.ingressProgs},
	} {
		if st.hasClsact {
			fs, err := ns.nl.FilterList(l, side.parent)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok {
					*side.out = append(*side.out, "tc:"+bf.Name)
				}
			}
		}
		names, err := tcxNames(ns, l, side.attach)
		if err != nil && !errors.Is(err, errNoQuery) {
			t.Errorf("list TCX programs: %v", err)
		}
		for _, n := range names {
			*side.out = append(*side.out, "tcx:"+n)
		}
		slices.Sort(*side.out)
	}
	return st
}

func pins(t *testing.T, s *Shaper) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.PinDir(), "links"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func assertClean(t *testing.T, s *Shaper, devs ...Device) {
	t.Helper()
	for _, d := range devs {
		st := inspect(t, d)
		if st.rootHandle != 0 || len(st.egressProgs) != 0 || len(st.ingressProgs) != 0 || st.hasClsact {
			t.Errorf("%s not back to its default: %+v", d, st)
		}
	}
	if p := pins(t, s); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
	if a, err := s.Attachments(); err != nil || len(a) != 0 {
		t.Errorf("attachments left: %v %v", a, err)
	}
}

// testPair is a container-like setup: ns "app" with one end (app egress is
// shaped there), the other end in the test's own namespace (app ingress).
func testPair(t *testing.T) (app, host Device) {
	p := nettest.NewPair(t, nettest.NewNetns(t, "app"), nil, 1)
	return Device{Netns: p.A.Path, Name: p.NameA}, Device{Name: p.NameB}
}

func TestRootAttachErrorsNameTheDevice(t *testing.T) {
	s := openTestShaper(t)
	app, _ := testPair(t)
	if _, err := s.Attach(app, "nobudget", AttachOptions{}); !errors.Is(err, ErrNoBudget) {
		t.Fatalf("attach to unknown budget: %v, want ErrNoBudget", err)
	}
	if err := s.UpsertBudget(Budget{Name: "b", Rate: 1e6}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Attach(Device{Netns: app.Netns, Name: "nosuchdev0"}, "b", AttachOptions{})
	if !errors.Is(err, ErrNoDevice) || err.Error() != "device nosuchdev0@"+app.Netns+": device not found" {
		t.Fatalf("missing device: %v", err)
	}
	_, err = s.Attach(Device{Netns: "/run/netns/does-not-exist", Name: "eth0"}, "b", AttachOptions{})
	if !errors.Is(err, ErrNoNetns) {
		t.Fatalf("missing netns: %v, want ErrNoNetns", err)
	}
	long := Device{Netns: "/run/netns/" + strings.Repeat("x", netnsPathLen), Name: "eth0"}
	if _, err := s.Attach(long, "b", AttachOptions{}); err == nil || !strings.Contains(err.Error(), "must be under 128 bytes") {
		t.Fatalf("over-long netns path: %v", err)
	}
	for _, bad := range []Budget{{Name: "", Rate: 1}, {Name: "x", Rate: 0}, {Name: "x", Rate: MinRate - 1}, {Name: "x", Rate: MaxRate + 1}, {Name: "x", Rate: MinRate, Horizon: 31 * time.Second}, {Name: string(make([]byte, 128)), Rate: 1}} {
		if err := s.UpsertBudget(bad); !errors.Is(err, ErrBadBudget) {
			t.Errorf("UpsertBudget(%q, %d): %v, want ErrBadBudget", bad.Name, bad.Rate, err)
		}
	}
	assertClean(t, s, app)
}

// On a kernel without sch_fq (this host) Attach must fail with ErrNoFq and
// leave the device exactly as it was. Kernels with fq can't reach this path.
func TestRootAttachWithoutFqChangesNothing(t *testing.T) {
	nettest.RequireRoot(t)
	if nettest.HaveFq(t) {
		t.Skip("this kernel has sch_fq; the fq-missing path is tested on the dev/CI host kernel")
	}
	s := openTestShaper(t)
	app, host := testPair(t)
	if err := s.UpsertBudget(Budget{Name: "nofq", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []Device{app, host} {
		before := inspect(t, d)
		_, err := s.Attach(d, "nofq", AttachOptions{})
		if !errors.Is(err, ErrNoFq) {
			t.Fatalf("attach %s: %v, want ErrNoFq", d, err)
		}
		want := "device " + d.String() + ": the kernel has no fq qdisc (sch_fq), which enforces departure times"
		if err.Error() != want {
			t.Fatalf("error %q, want %q", err, want)
		}
		if after := inspect(t, d); !slices.Equal(after.egressProgs, before.egressProgs) || after.rootHandle != before.rootHandle || after.rootKind != before.rootKind {
			t.Fatalf("failed attach changed %s: before %+v after %+v", d, before, after)
		}
	}
	assertClean(t, s, app, host)
}

// The program half of an attachment works without fq, so both attach modes
// can be exercised on any kernel: TCX where it exists, legacy tc everywhere.
func TestRootProgramAttachModes(t *testing.T) {
	s := openTestShaper(t)
	app, _ := testPair(t)
	if err := s.UpsertBudget(Budget{Name: "modes", Rate: 1e6}); err != nil {
		t.Fatal(err)
	}
	id, _, _ := s.lookupID("modes")
	prog, err := s.program(id, "modes", HookShape)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := openNetns(app)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.close()
	l, _ := ns.link(app)
	key := devKey{NetnsIno: ns.ino, Ifindex: uint32(l.Attrs().Index)}

	s.tcx = true // TCX where the kernel has it (the default is tested in TestRootAttachModePolicy)
	mode, _, err := s.attachProg(ns, l, key, id, "modes", progName, app, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := "tcx:" + progName
	if mode == ModeLegacy {
		want = "tc:" + progName
	}
	if got := inspect(t, app).egressProgs; !slices.Equal(got, []string{want}) {
		t.Fatalf("after attach (%s): egress programs %v, want [%s]", mode, got, want)
	}
	if err := s.detachProg(ns, l, key, devVal{}, app); err != nil {
		t.Fatal(err)
	}
	if got := inspect(t, app).egressProgs; len(got) != 0 {
		t.Fatalf("after detach: egress programs %v", got)
	}

	// Legacy explicitly (the path Debian 6.1 takes), with a foreign filter beside ours.
	foreign := foreignFilter(t, ns, l)
	created, err := attachLegacy(ns, l, prog, progName, app, HookShape, id)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Fatal("clsact already existed (foreign filter); attachLegacy claims it created it")
	}
	if got := inspect(t, app).egressProgs; !slices.Equal(got, []string{"tc:" + progName, "tc:" + foreign}) {
		t.Fatalf("legacy attach: %v", got)
	}
	if err := s.detachProg(ns, l, key, devVal{Flags: flagOwnClsact}, app); err != nil {
		t.Fatal(err)
	}
	if got := inspect(t, app); !slices.Equal(got.egressProgs, []string{"tc:" + foreign}) || !got.hasClsact {
		t.Fatalf("detach removed more than ours: %+v", got)
	}
}

// TestRootAttachModePolicy: a new device gets clsact + cls_bpf; one where
// another tool's TCX program already sits at the hook gets TCX, placed last
// at egress and first at ingress; a device keeps the mode it was attached
// with whichever way the next shaper prefers, and never carries two of ours.
func TestRootAttachModePolicy(t *testing.T) {
	s := openTestShaper(t)
	for _, b := range []Budget{{Name: "p1", Rate: 1e6}, {Name: "p2", Rate: 2e6}} {
		if err := s.UpsertBudget(b); err != nil {
			t.Fatal(err)
		}
	}
	tcxShaper, err := Open(Options{PinDir: s.PinDir(), TCX: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tcxShaper.Close()

	// Without sch_fq (this project's build host) the shaping hook runs
	// the policing variant; the mode policy is the same.
	noFq := errors.Is(FqSupport(), ErrNoFq)
	shape := progName
	if noFq {
		shape = limitName
	}

	// The default: legacy, on every kernel.
	app, host := testPair(t)
	a, err := s.Attach(app, "p1", AttachOptions{NoFq: noFq})
	if err != nil {
		t.Fatal(err)
	}
	if got := inspect(t, app).egressProgs; a.Mode != ModeLegacy || !slices.Equal(got, []string{"tc:" + shape}) {
		t.Fatalf("default attach: mode %s, egress %v; want tc and our filter alone", a.Mode, got)
	}
	// A legacy device stays legacy for a shaper that prefers TCX.
	if a, err = tcxShaper.Attach(app, "p2", AttachOptions{NoFq: noFq}); err != nil {
		t.Fatal(err)
	}
	if got := inspect(t, app).egressProgs; a.Mode != ModeLegacy || !slices.Equal(got, []string{"tc:" + shape}) {
		t.Fatalf("re-attach by a TCX shaper: mode %s, egress %v; want the legacy filter swapped in place", a.Mode, got)
	}

	// Another tool's TCX programs at both hooks of the host-side device.
	hostNs, err := openNetns(host)
	if err != nil {
		t.Fatal(err)
	}
	defer hostNs.close()
	hl, _ := hostNs.link(host)
	foreign, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "operator_tcx", Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TCX_NEXT
	})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXEgress, ebpf.AttachTCXIngress} {
		fl, err := link.AttachTCX(link.TCXOptions{Interface: hl.Attrs().Index, Program: foreign, Attach: at})
		if errors.Is(err, ebpf.ErrNotSupported) {
			t.Logf("kernel %s has no TCX: only the default and the mode-keeping were checked", kernelRelease(t))
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		defer fl.Close()
	}
	sh, err := s.Attach(host, "p1", AttachOptions{NoFq: noFq})
	if err != nil {
		t.Fatal(err)
	}
	po, err := s.Attach(host, "p1", AttachOptions{Hook: HookPolice})
	if err != nil {
		t.Fatal(err)
	}
	if sh.Mode != ModeTCX || po.Mode != ModeTCX {
		t.Fatalf("beside another tool's TCX programs: shaper %s, policer %s; want tcx for both", sh.Mode, po.Mode)
	}
	eg, in := tcxOrder(t, hostNs, hl, ebpf.AttachTCXEgress), tcxOrder(t, hostNs, hl, ebpf.AttachTCXIngress)
	if !slices.Equal(eg, []string{"operator_tcx", shape}) || !slices.Equal(in, []string{policeName, "operator_tcx"}) {
		t.Fatalf("TCX order: egress %v, ingress %v; want ours last at egress and first at ingress", eg, in)
	}
	if st := inspect(t, host); st.hasClsact {
		t.Fatalf("TCX attach added a clsact: %+v", st)
	}

	// A TCX device stays TCX for the default shaper (the link is updated in place).
	if sh, err = s.Attach(host, "p2", AttachOptions{NoFq: noFq}); err != nil {
		t.Fatal(err)
	}
	if eg := tcxOrder(t, hostNs, hl, ebpf.AttachTCXEgress); sh.Mode != ModeTCX || !slices.Equal(eg, []string{"operator_tcx", shape}) || inspect(t, host).hasClsact {
		t.Fatalf("re-attach of a TCX device: mode %s, egress %v", sh.Mode, eg)
	}
	if err := s.Detach(host); err != nil {
		t.Fatal(err)
	}
	if eg, in := tcxOrder(t, hostNs, hl, ebpf.AttachTCXEgress), tcxOrder(t, hostNs, hl, ebpf.AttachTCXIngress); !slices.Equal(eg, []string{"operator_tcx"}) || !slices.Equal(in, []string{"operator_tcx"}) {
		t.Fatalf("after detach: egress %v, ingress %v; want only the other tool's", eg, in)
	}
}

// tcxOrder lists the names of the TCX programs at one hook of l, in run order.
func tcxOrder(t *testing.T, ns *nsRef, l netlink.Link, at ebpf.AttachType) []string {
	t.Helper()
	names, err := tcxNames(ns, l, at)
	if err != nil {
		t.Fatalf("list TCX programs: %v", err)
	}
	return names
}

// errNoQuery: the kernel could not be asked (no TCX): no programs.
var errNoQuery = errors.New("no TCX query")

// tcxNames lists the names of the TCX programs at one hook of l, in run order.
func tcxNames(ns *nsRef, l netlink.Link, at ebpf.AttachType) ([]string, error) {
	var names []string
	err := ns.do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
		if err != nil {
			return fmt.Errorf("%w: %v", errNoQuery, err)
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				return err
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil {
				return err
			}
			names = append(names, info.Name)
		}
		return nil
	})
	return names, err
}

// foreignFilter puts another tool's cls_bpf filter at egress (prio 10).
func foreignFilter(t *testing.T, ns *nsRef, l netlink.Link) string {
	return foreignFilterAt(t, ns, l, netlink.HANDLE_MIN_EGRESS)
}

func foreignFilterAt(t *testing.T, ns *nsRef, l netlink.Link, parent uint32) string {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	if err := ns.nl.QdiscAdd(clsact(l)); err != nil && !errors.Is(err, unix.EEXIST) {
		t.Fatal(err)
	}
	const name = "operator_filter"
	f := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 10},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := ns.nl.FilterAdd(f); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestRootFqAttachBothDirectionsIdempotentAndClean(t *testing.T) {
	nettest.RequireFq(t)
	s := openTestShaper(t)
	app, host := testPair(t)
	for _, b := range []Budget{{Name: "app/egress", Rate: 20e6}, {Name: "app/ingress", Rate: 50e6}} {
		if err := s.UpsertBudget(b); err != nil {
			t.Fatal(err)
		}
	}
	a1, err := s.Attach(app, "app/egress", AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(host, "app/ingress", AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []Device{app, host} {
		st := inspect(t, d)
		if st.rootKind != "fq" || st.rootHandle != fqHandle || len(st.egressProgs) != 1 {
			t.Fatalf("%s after attach: %+v, want our fq and one program", d, st)
		}
	}
	before := inspect(t, app)
	pinsBefore := pins(t, s)
	a2, err := s.Attach(app, "app/egress", AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a1.Unchanged || !a2.Unchanged {
		t.Fatalf("first attach Unchanged=%v, second %v: want false, then true", a1.Unchanged, a2.Unchanged)
	}
	if a2.Unchanged = false; a1 != a2 || !slices.Equal(pins(t, s), pinsBefore) {
		t.Fatalf("second attach changed the attachment: %+v vs %+v", a1, a2)
	}
	if after := inspect(t, app); !slices.Equal(after.egressProgs, before.egressProgs) {
		t.Fatalf("second attach changed the device: %+v vs %+v", before, after)
	}
	atts, err := s.Attachments()
	if err != nil || len(atts) != 2 {
		t.Fatalf("attachments %v %v, want 2", atts, err)
	}
	// A second process finds the attachments and can remove them.
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.RemoveBudget("app/egress"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Detach(host); err != nil {
		t.Fatal(err)
	}
	if err := s2.RemoveBudget("app/ingress"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s, app, host)
}

func TestRootFqForeignRootQdisc(t *testing.T) {
	nettest.RequireFq(t)
	s := openTestShaper(t)
	app, _ := testPair(t)
	if err := s.UpsertBudget(Budget{Name: "f", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	nettest.Run(t, "ip", "netns", "exec", filepath.Base(app.Netns), "tc", "qdisc", "add", "dev", app.Name, "root", "handle", "7:", "pfifo", "limit", "100")
	_, err := s.Attach(app, "f", AttachOptions{})
	if !errors.Is(err, ErrForeignQdisc) {
		t.Fatalf("attach over a foreign root qdisc: %v, want ErrForeignQdisc", err)
	}
	if st := inspect(t, app); st.rootKind != "pfifo" || len(st.egressProgs) != 0 {
		t.Fatalf("refused attach changed the device: %+v", st)
	}
	if _, err := s.Attach(app, "f", AttachOptions{Force: true}); err != nil {
		t.Fatalf("forced attach: %v", err)
	}
	if st := inspect(t, app); st.rootKind != "fq" || st.rootHandle != fqHandle {
		t.Fatalf("forced attach: %+v", st)
	}
	if err := s.Detach(app); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s, app)
}

func TestRootFqSwapBudgetAndPrune(t *testing.T) {
	nettest.RequireFq(t)
	s := openTestShaper(t)
	appNs := nettest.NewNetns(t, "gone")
	p := nettest.NewPair(t, appNs, nil, 2)
	app := Device{Netns: appNs.Path, Name: p.NameA}
	for _, n := range []string{"one", "two"} {
		if err := s.UpsertBudget(Budget{Name: n, Rate: 10e6}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Attach(app, "one", AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	a, err := s.Attach(app, "two", AttachOptions{})
	if err != nil || a.Budget != "two" {
		t.Fatalf("swap budget: %+v %v", a, err)
	}
	if st := inspect(t, app); len(st.egressProgs) != 1 {
		t.Fatalf("after swap want exactly one program: %+v", st)
	}
	// The "container" goes away: its netns and devices with it.
	nettest.Run(t, "ip", "netns", "del", appNs.Name)
	pruned, err := s.Prune()
	if err != nil || len(pruned) != 1 || pruned[0].Budget != "two" {
		t.Fatalf("prune: %+v %v", pruned, err)
	}
	if p := pins(t, s); len(p) != 0 {
		t.Fatalf("pins left after prune: %v", p)
	}
}

// The backstop policer needs no fq, so its whole Attach/Detach path runs on
// any kernel: TCX where the kernel has it (this host), at the host-side
// device's ingress, recorded apart from the shaping hook of the same device.
func TestRootPoliceAttachDetach(t *testing.T) {
	s := openTestShaper(t)
	app, host := testPair(t)
	if err := s.UpsertBudget(Budget{Name: "app/egress", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	a, err := s.Attach(host, "app/egress", AttachOptions{Hook: HookPolice})
	if err != nil {
		t.Fatal(err)
	}
	if a.Hook != HookPolice || a.Budget != "app/egress" {
		t.Fatalf("attachment %+v, want the policer of app/egress", a)
	}
	want := []string{"tcx:" + policeName}
	if a.Mode == ModeLegacy {
		want = []string{"tc:" + policeName}
	}
	st := inspect(t, host)
	if !slices.Equal(st.ingressProgs, want) || len(st.egressProgs) != 0 || st.rootHandle != 0 {
		t.Fatalf("after attach (%s): %+v, want only %v at ingress and no qdisc", a.Mode, st, want)
	}
	if a.Mode == ModeTCX {
		if p := pins(t, s); len(p) != 1 || !strings.HasSuffix(p[0], "_police") {
			t.Fatalf("pins %v, want one policer pin", p)
		}
	}
	// Idempotent: the same attachment, nothing changed on the device.
	pinsBefore := pins(t, s)
	if a2, err := s.Attach(host, "app/egress", AttachOptions{Hook: HookPolice}); err != nil || !a2.Unchanged || a.Unchanged {
		t.Fatalf("second attach: %+v %v, want it Unchanged (the first not)", a2, err)
	} else if a2.Unchanged = false; a2 != a {
		t.Fatalf("second attach: %+v, want %+v", a2, a)
	}
	if got := inspect(t, host); !slices.Equal(got.ingressProgs, want) || !slices.Equal(pins(t, s), pinsBefore) {
		t.Fatalf("second attach changed the device: %+v", got)
	}
	atts, err := s.Attachments()
	if err != nil || len(atts) != 1 || atts[0] != a {
		t.Fatalf("attachments %+v %v, want just %+v", atts, err, a)
	}
	// Detaching the shaping hook leaves the policer alone.
	if err := s.DetachHook(host, HookShape); err != nil {
		t.Fatal(err)
	}
	if got := inspect(t, host); !slices.Equal(got.ingressProgs, want) {
		t.Fatalf("DetachHook(shape) touched the policer: %+v", got)
	}
	// A second process removes the budget: the policer goes with it.
	s2, err := Open(Options{PinDir: s.PinDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.RemoveBudget("app/egress"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s, app, host)

	// Unknown hooks are refused with nothing changed.
	if err := s.UpsertBudget(Budget{Name: "app/egress", Rate: 20e6}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(host, "app/egress", AttachOptions{Hook: 7}); err == nil {
		t.Fatal("attach with hook 7: no error")
	}
	// Prune forgets a policer whose device is gone, pin included.
	p := nettest.NewPair(t, nettest.NewNetns(t, "gone"), nil, 3)
	peer := Device{Name: p.NameB}
	if _, err := s.Attach(peer, "app/egress", AttachOptions{Hook: HookPolice}); err != nil {
		t.Fatal(err)
	}
	nettest.Run(t, "ip", "link", "del", p.NameB)
	pruned, err := s.Prune()
	if err != nil || len(pruned) != 1 || pruned[0].Hook != HookPolice {
		t.Fatalf("prune: %+v %v, want the policer", pruned, err)
	}
	if err := s.RemoveBudget("app/egress"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, s, host)
}

// The legacy path (Debian 6.1) at ingress, next to a foreign filter, and a
// clsact shared by the shaper and the policer of one host-side veth: whichever
// of ours goes last removes the clsact we added, never one we did not.
func TestRootPoliceLegacyAndSharedClsact(t *testing.T) {
	s := openTestShaper(t)
	_, host := testPair(t)
	for _, n := range []string{"app/egress", "app/ingress"} {
		if err := s.UpsertBudget(Budget{Name: n, Rate: 20e6}); err != nil {
			t.Fatal(err)
		}
	}
	eid, _, _ := s.lookupID("app/egress")
	iid, _, _ := s.lookupID("app/ingress")
	police, err := s.program(eid, "app/egress", HookPolice)
	if err != nil {
		t.Fatal(err)
	}
	shape, err := s.program(iid, "app/ingress", HookShape)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := openNetns(host)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.close()
	l, _ := ns.link(host)
	key := func(h Hook) devKey { return devKey{NetnsIno: ns.ino, Ifindex: uint32(l.Attrs().Index), Hook: h} }
	record := func(h Hook, id uint32, own bool) devVal {
		v := devVal{Budget: id, Mode: uint8(ModeLegacy)}
		if own {
			v.Flags = flagOwnClsact
		}
		v.setDevice(host)
		if err := s.devs.Update(key(h), v, ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Shaper first: it creates the clsact; the policer finds it there.
	created, err := attachLegacy(ns, l, shape, progName, host, HookShape, iid)
	if err != nil || !created {
		t.Fatalf("legacy shaper: created %v, %v", created, err)
	}
	shapeVal := record(HookShape, iid, true)
	created, err = attachLegacy(ns, l, police, policeName, host, HookPolice, eid)
	if err != nil || created {
		t.Fatalf("legacy policer: created %v, %v; want it to find the clsact", created, err)
	}
	record(HookPolice, eid, false)
	if st := inspect(t, host); !slices.Equal(st.egressProgs, []string{"tc:" + progName}) || !slices.Equal(st.ingressProgs, []string{"tc:" + policeName}) {
		t.Fatalf("both hooks attached: %+v", st)
	}
	// The shaper goes first: the clsact stays for the policer, which now owns it.
	if err := s.detachProg(ns, l, key(HookShape), shapeVal, host); err != nil {
		t.Fatal(err)
	}
	s.devs.Delete(key(HookShape))
	if st := inspect(t, host); !st.hasClsact || !slices.Equal(st.ingressProgs, []string{"tc:" + policeName}) || len(st.egressProgs) != 0 {
		t.Fatalf("after detaching the shaper: %+v, want the policer and its clsact", st)
	}
	pv, ok, err := s.lookupDev(key(HookPolice))
	if err != nil || !ok || pv.Flags&flagOwnClsact == 0 {
		t.Fatalf("policer record %+v %v %v, want it to own the clsact now", pv, ok, err)
	}
	if err := s.DetachHook(host, HookPolice); err != nil {
		t.Fatal(err)
	}
	if st := inspect(t, host); st.hasClsact || len(st.ingressProgs) != 0 {
		t.Fatalf("after detaching both: %+v, want no clsact", st)
	}

	// Beside a foreign ingress filter: ours goes, theirs and their clsact stay.
	foreign := foreignFilterAt(t, ns, l, netlink.HANDLE_MIN_INGRESS)
	if created, err := attachLegacy(ns, l, police, policeName, host, HookPolice, eid); err != nil || created {
		t.Fatalf("legacy policer beside a foreign filter: created %v, %v", created, err)
	}
	if st := inspect(t, host); !slices.Equal(st.ingressProgs, []string{"tc:" + policeName, "tc:" + foreign}) {
		t.Fatalf("legacy policer beside a foreign filter: %+v", st)
	}
	if err := s.DetachHook(host, HookPolice); err != nil {
		t.Fatal(err)
	}
	if st := inspect(t, host); !slices.Equal(st.ingressProgs, []string{"tc:" + foreign}) || !st.hasClsact {
		t.Fatalf("detach removed more than ours: %+v", st)
	}
}

func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}
