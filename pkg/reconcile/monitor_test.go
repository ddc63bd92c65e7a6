package reconcile

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// attachmentKinds lists an app's attachments as "device hook datapath budget", sorted.
func attachmentKinds(t *testing.T, s *shaper.Shaper, app string) []string {
	t.Helper()
	atts, err := s.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range atts {
		if ownedBy(a.Budget, app) {
			out = append(out, a.Device.Name+" "+a.Hook.String()+" "+a.Datapath.String()+" "+a.Budget)
		}
	}
	slices.Sort(out)
	return out
}

// With Monitor, an app without limits is counted in both directions on its
// host-side veth (no qdisc, nothing enforced); Status reports it; a second
// run changes nothing; a run without Monitor removes the counting again.
func TestRootMonitorCountsAppsWithoutLimits(t *testing.T) {
	nettest.RequireRoot(t)
	ctx := context.Background()
	f := dokkutest.NewFixture(t)
	f.AddApp("calm", "web", 1)
	c, p := fakeContainer(t, "calm", "web", 1, 41)
	r := &Reconciler{Env: f.Env, Docker: fakeDocker{"calm": {c}}, Shaper: openShaper(t), Monitor: true}
	res, err := r.App(ctx, "calm")
	if err != nil || res.Err() != nil || len(res.Warnings) != 0 {
		t.Fatalf("reconcile: %v %v %v", err, res.Err(), res.Warnings)
	}
	for _, w := range res.Wants {
		if !w.Budget.CountOnly || w.Scope != DefaultScope {
			t.Fatalf("want %+v, want a count-only _default_ budget", w)
		}
	}
	if len(res.Shaped) != 2 || !res.Shaped[0].Counted() || !res.Shaped[1].Counted() || res.Shaped[0].Backstop() || res.Shaped[1].Backstop() {
		t.Fatalf("shaped %+v, want two counted devices", res.Shaped)
	}
	want := []string{
		p.NameB + " police count " + BudgetName("calm", DefaultScope, Egress),
		p.NameB + " shape count " + BudgetName("calm", DefaultScope, Ingress),
	}
	if got := attachmentKinds(t, r.Shaper, "calm"); !slices.Equal(got, want) {
		t.Fatalf("attachments %q, want %q", got, want)
	}
	for _, args := range [][]string{
		{"ip", "netns", "exec", p.A.Name, "tc", "qdisc", "show", "dev", p.NameA},
		{"tc", "qdisc", "show", "dev", p.NameB},
	} {
		if out := nettest.Run(t, args...); !strings.Contains(out, "noqueue 0: root") {
			t.Fatalf("%v: a root qdisc changed for counting: %s", args, out)
		}
	}
	st, err := r.Status(ctx, "calm")
	if err != nil || len(st.Shaped) != 2 || len(st.Unshaped) != 0 || len(st.Warnings) != 0 || !st.Shaped[0].Counted() {
		t.Fatalf("status %+v %v, want the two counted devices", st, err)
	}
	res, err = r.App(ctx, "calm")
	if err != nil || len(res.Removed) != 0 || !slices.Equal(attachmentKinds(t, r.Shaper, "calm"), want) {
		t.Fatalf("second run: removed %v (%v)", res.Removed, err)
	}
	r2 := &Reconciler{Env: f.Env, Docker: fakeDocker{"calm": {c}}, Shaper: r.Shaper}
	if res, err := r2.App(ctx, "calm"); err != nil || len(res.Removed) != 2 {
		t.Fatalf("without Monitor: removed %v (%v), want both count attachments", res.Removed, err)
	}
	if got := attachmentKinds(t, r.Shaper, "calm"); len(got) != 0 {
		t.Fatalf("attachments left: %q", got)
	}
	if got := budgetNames(t, r.Shaper); len(got) != 0 {
		t.Fatalf("budgets left: %q", got)
	}
}

// A monitored app gets a limit and loses it again, live: its devices switch
// from counting to enforcing (EDT with fq, the degraded policer without) and
// back, on the same links, and its counters keep counting throughout.
func TestRootMonitorSwitchesToLimitAndBack(t *testing.T) {
	nettest.RequireRoot(t)
	fq := nettest.HaveFq(t)
	ctx := context.Background()
	f := dokkutest.NewFixture(t)
	f.AddApp("calm", "web", 1)
	c, p := fakeContainer(t, "calm", "web", 1, 42)
	r := &Reconciler{Env: f.Env, Docker: fakeDocker{"calm": {c}}, Shaper: openShaper(t), Monitor: true, Log: io.Discard}
	eg, in := BudgetName("calm", DefaultScope, Egress), BudgetName("calm", DefaultScope, Ingress)
	counting := []string{p.NameB + " police count " + eg, p.NameB + " shape count " + in}
	if _, err := r.App(ctx, "calm"); err != nil {
		t.Fatal(err)
	}
	if got := attachmentKinds(t, r.Shaper, "calm"); !slices.Equal(got, counting) {
		t.Fatalf("monitored: %q, want %q", got, counting)
	}
	shaping := "edt"
	if !fq {
		shaping = "policing"
	}
	f.SetResource("calm", "", dokku.Limit, dokku.Network, "20mbit")
	res, err := r.App(ctx, "calm")
	if err != nil || res.Err() != nil {
		t.Fatalf("limit set: %v %v", err, res.Err())
	}
	limited := []string{
		p.NameA + " shape " + shaping + " " + eg,
		p.NameB + " police edt " + eg,
		p.NameB + " shape " + shaping + " " + in,
	}
	slices.Sort(limited)
	if got := attachmentKinds(t, r.Shaper, "calm"); !slices.Equal(got, limited) {
		t.Fatalf("limited: %q, want %q", got, limited)
	}
	if b, err := r.Shaper.Budget(in); err != nil || b.CountOnly || b.Rate != 20e6 {
		t.Fatalf("budget %+v %v, want 20 Mbit/s", b, err)
	}
	if err := r.Env.Properties(dokku.ResourcePlugin).Delete("calm", "_default_.limit.network"); err != nil {
		t.Fatal(err)
	}
	res, err = r.App(ctx, "calm")
	if err != nil || res.Err() != nil {
		t.Fatalf("limit cleared: %v %v", err, res.Err())
	}
	if got := attachmentKinds(t, r.Shaper, "calm"); !slices.Equal(got, counting) {
		t.Fatalf("cleared: %q, want %q", got, counting)
	}
	if len(res.Removed) != 1 || res.Removed[0].Device.Name != p.NameA {
		t.Fatalf("removed %+v, want only the container-side shaper", res.Removed)
	}
	for _, args := range [][]string{
		{"ip", "netns", "exec", p.A.Name, "tc", "qdisc", "show", "dev", p.NameA},
		{"tc", "qdisc", "show", "dev", p.NameB},
	} {
		if out := nettest.Run(t, args...); !strings.Contains(out, "noqueue 0: root") {
			t.Fatalf("%v: our fq left behind: %s", args, out)
		}
	}
	// Traffic after all that is still counted.
	before, _ := r.Shaper.Budget(in)
	ln, err := traffic.ListenIn(p.A.Path, p.IPA+":0")
	if err != nil {
		t.Fatal(err)
	}
	sink := traffic.NewSink(ln)
	defer sink.Close()
	if _, err := traffic.Send(ctx, traffic.SendOptions{Addr: sink.Addr().String(), Duration: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	after, err := r.Shaper.Budget(in)
	if err != nil || after.Stats.Bytes-before.Stats.Bytes < uint64(sink.Bytes()) {
		t.Fatalf("ingress counted %d bytes for %d received (%v)", after.Stats.Bytes-before.Stats.Bytes, sink.Bytes(), err)
	}
}
