package shaper

import (
	"errors"
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
	rootKind    string
	rootHandle  uint32
	egressProgs []string // TCX programs and legacy filters at egress, by name
	hasClsact   bool
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
	if st.hasClsact {
		fs, err := ns.nl.FilterList(l, netlink.HANDLE_MIN_EGRESS)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok {
				st.egressProgs = append(st.egressProgs, "tc:"+bf.Name)
			}
		}
	}
	ns.do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return nil // no TCX on this kernel
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				t.Errorf("open attached program %d: %v", p.ID, err)
				continue
			}
			info, _ := prog.Info()
			st.egressProgs = append(st.egressProgs, "tcx:"+info.Name)
			prog.Close()
		}
		return nil
	})
	slices.Sort(st.egressProgs)
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
		if st.rootHandle != 0 || len(st.egressProgs) != 0 || st.hasClsact {
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
	prog, err := s.program(id, "modes")
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

	mode, _, err := s.attachProg(ns, l, key, prog, app)
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
	created, err := attachLegacy(ns, l, prog, app)
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

// foreignFilter puts another tool's cls_bpf filter at egress (prio 10).
func foreignFilter(t *testing.T, ns *nsRef, l netlink.Link) string {
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
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_EGRESS, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 10},
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
	if a1 != a2 || !slices.Equal(pins(t, s), pinsBefore) {
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
