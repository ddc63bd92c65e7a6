//go:build vm

package integration

import (
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestVMNothingLeftAfterRemoval: every way an attachment ends leaves its device as a fresh veth
// is, after real traffic went through it: Detach of one device, RemoveBudget of a budget with
// several devices, and Prune after the app's netns vanished (a container that exited).
func TestVMNothingLeftAfterRemoval(t *testing.T) {
	vmresult.RequireVM(t)
	s := openShaper(t)
	w := newWorld(t, 3)
	a, b, c := w.apps[0], w.apps[1], w.apps[2]
	for _, bd := range []shaper.Budget{{Name: "x/egress", Rate: 20e6}, {Name: "x/ingress", Rate: 30e6}, {Name: "y/egress", Rate: 10e6}} {
		upsert(t, s, bd)
	}
	attach(t, s, a.device(Egress), "x/egress")
	attach(t, s, b.device(Egress), "x/egress")
	attach(t, s, a.device(Ingress), "x/ingress")
	attach(t, s, b.device(Ingress), "x/ingress")
	attach(t, s, c.device(Egress), "y/egress")
	all := []shaper.Device{a.device(Egress), b.device(Egress), a.device(Ingress), b.device(Ingress), c.device(Egress)}
	for _, dev := range all {
		assertShaped(t, dev)
	}
	// Traffic through every attachment, so queues and flow state exist when they are removed.
	var fs []*flow
	for _, x := range w.apps {
		for _, d := range directions {
			snd, rcv, rip := w.ends(x, d)
			fs = append(fs, startFlow(t, snd, newSink(t, rcv, rip).Addr().String(), 5*time.Second))
		}
	}
	time.Sleep(time.Second)

	// 1. Detach one device of a shared budget: that device is clean, the other still shaped.
	if err := s.Detach(a.device(Egress)); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if st := inspectDev(t, a.device(Egress)); st.rootQdisc != "noqueue" || st.clsact || len(st.filters) != 0 || st.tcxProgs != 0 {
		t.Errorf("%s after Detach: %+v", a.device(Egress), st)
	}
	assertShaped(t, b.device(Egress))

	// 2. RemoveBudget with two devices attached.
	if err := s.RemoveBudget("x/ingress"); err != nil {
		t.Fatalf("remove budget: %v", err)
	}
	for _, dev := range []shaper.Device{a.device(Ingress), b.device(Ingress)} {
		if st := inspectDev(t, dev); st.rootQdisc != "noqueue" || st.clsact || len(st.filters) != 0 || st.tcxProgs != 0 {
			t.Errorf("%s after RemoveBudget: %+v", dev, st)
		}
	}

	// 3. The netns of app c disappears while attached (its veth pair goes with it): Prune forgets it.
	for _, f := range fs {
		f.stop() // flows of a vanished netns end with errors; that is not what is tested here
	}
	if err := netns.DeleteNamed(c.ns.Name); err != nil {
		t.Fatalf("delete netns of app c: %v", err)
	}
	var pruned []shaper.Attachment
	deadline := time.Now().Add(5 * time.Second) // the netns is freed asynchronously
	for len(pruned) == 0 && time.Now().Before(deadline) {
		p, err := s.Prune()
		if err != nil {
			t.Fatalf("prune: %v", err)
		}
		pruned = append(pruned, p...)
		time.Sleep(100 * time.Millisecond)
	}
	if len(pruned) != 1 || pruned[0].Budget != "y/egress" {
		t.Errorf("prune removed %+v, want the one attachment of app c", pruned)
	}
	for _, bd := range []string{"x/egress", "y/egress"} {
		if err := s.RemoveBudget(bd); err != nil {
			t.Fatalf("remove budget %s: %v", bd, err)
		}
	}
	assertClean(t, s, a.device(Egress), b.device(Egress), a.device(Ingress), b.device(Ingress))
	if bs, err := s.Budgets(); err != nil || len(bs) != 0 {
		t.Errorf("budgets left: %v %v", bs, err)
	}
	vmresult.Report(t, "cleanup", map[string]any{"devices": len(all), "pruned": len(pruned), "clean": !t.Failed()})
}
