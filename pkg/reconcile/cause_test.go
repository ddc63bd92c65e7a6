package reconcile

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// causesOf maps "container iface direction" (or "container") to the code.
func causesOf(res Result) map[string]Cause {
	out := map[string]Cause{}
	for _, u := range res.Unshaped {
		k := u.Container
		if u.Interface != "" {
			k += " " + u.Interface + " " + string(u.Direction)
		}
		out[k] = u.Cause
	}
	return out
}

// Each cause report and apply give comes from the state of the device or
// the container: a foreign root qdisc put on the host veth, the kernel's
// own fq (absent on the dev/CI host, present in the VM guests), a host
// network container, one sharing another's netns, one Dokku is retiring.
func TestRootCausesFromRealState(t *testing.T) {
	nettest.RequireRoot(t)
	fq := nettest.HaveFq(t)
	ctx := context.Background()
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 3)
	f.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	plain, pp := fakeContainer(t, "shop", "web", 1, 51)
	foreign, fp := fakeContainer(t, "shop", "web", 2, 52)
	retiring, rp := fakeContainer(t, "shop", "web", 3, 53)
	retiring.Name = "shop.web.3.1764460800"
	host := containers.Container{ID: "h1", Name: "shop.web.4", App: "shop", Type: "deploy", ProcessType: "web", Running: true, HostNetwork: true, NetworkMode: "host"}
	shared := containers.Container{ID: "s1", Name: "shop.web.5", App: "shop", Type: "deploy", ProcessType: "web", Running: true, NetworkMode: "container:" + plain.ID}
	nettest.Run(t, "tc", "qdisc", "add", "dev", fp.NameB, "root", "handle", "1:", "htb")
	docker := inspectingDocker{fakeDocker{"shop": {plain, foreign, retiring, host, shared}}}
	r := &Reconciler{Env: f.Env, Docker: docker, Shaper: openShaper(t)}

	check := func(what string, res Result) {
		t.Helper()
		got := causesOf(res)
		want := map[string]Code{
			"shop.web.2 " + fp.NameA + " ingress": CodeForeignQdisc,
			"shop.web.4":                          CodeHostNetwork,
			"shop.web.5":                          CodeSharedNetns,
		}
		// Before apply, apply is the fix, with fq or without (then it polices,
		// degraded); after it, those are limited and have no cause.
		if what == "status" {
			for _, k := range []string{"shop.web.1 " + pp.NameA + " egress", "shop.web.1 " + pp.NameA + " ingress", "shop.web.2 " + fp.NameA + " egress"} {
				want[k] = CodeNotAttached
			}
			want[retiring.Name+" "+rp.NameA+" egress"] = CodeRetiring
			want[retiring.Name+" "+rp.NameA+" ingress"] = CodeRetiring
		}
		for k, code := range want {
			if got[k].Code != code {
				t.Errorf("%s: %s: cause %+v, want %s", what, k, got[k], code)
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("%s: unexpected cause for %s: %+v", what, k, got[k])
			}
		}
		for k, c := range got {
			if c.Code == CodeRetiring && (c.Problem || !strings.Contains(c.Summary, "replaced by shop.web.3")) {
				t.Errorf("%s: %s: %+v, want retiring, no problem, naming shop.web.3", what, k, c)
			}
		}
		fc := got["shop.web.2 "+fp.NameA+" ingress"]
		if !strings.Contains(fc.Summary, "htb 1: on "+fp.NameB) || !strings.Contains(fc.Action, "--force") || !fc.Problem {
			t.Errorf("%s: foreign qdisc cause %+v: want it named (htb 1: on %s), --force as the fix", what, fc, fp.NameB)
		}
		if hc := got["shop.web.4"]; !hc.Problem || !strings.Contains(hc.Summary, "cannot be shaped per app") || strings.Contains(hc.Action, "netshape:apply") {
			t.Errorf("%s: host network cause %+v: want a problem apply cannot fix", what, hc)
		}
		if sc := got["shop.web.5"]; sc.Problem {
			t.Errorf("%s: shared netns is shaped through the other container, not a problem: %+v", what, sc)
		}
		if nc, ok := got["shop.web.1 "+pp.NameA+" egress"]; ok && nc.Code == CodeNoFq {
			if !nc.Problem || !strings.Contains(nc.Action, "apply alone cannot help") && !strings.Contains(nc.Action, "modprobe sch_fq") {
				t.Errorf("%s: no-fq cause %+v: want what helps beyond apply", what, nc)
			}
		}
	}

	st, err := r.Status(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	check("status", st)
	// The root qdisc is what --force would replace. (On kernels without TCX
	// the egress backstop adds a clsact beside it: that is ours, not a change
	// of the root.)
	// Kind, handle and parent only: its counters move with any stray packet (an IPv6 solicitation).
	rootOf := func() string {
		f := strings.Fields(nettest.Run(t, "tc", "qdisc", "show", "dev", fp.NameB, "root"))
		return strings.Join(f[:min(len(f), 4)], " ")
	}
	before := rootOf()

	res, err := r.App(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	check("apply", res)
	// Without fq the limits hold as policers, and each says so: its caveat, its fix.
	for _, sh := range res.Shaped {
		if deg := sh.Note != nil && sh.Note.Code == CodeDegraded && !sh.Note.Problem; deg != (!fq && !sh.Backstop()) {
			t.Errorf("apply: %s %s %s (%s): note %+v, want degraded exactly without fq", sh.Container, sh.Interface, sh.Direction, sh.Hook, sh.Note)
		}
	}
	if got := rootOf(); got != before || !strings.HasPrefix(got, "qdisc htb 1: root") {
		t.Errorf("apply without --force changed the foreign root qdisc:\n%s\n---\n%s", before, got)
	}
	if fq {
		// Now attached: Status has nothing to say of what apply shaped.
		st, err = r.Status(ctx, "shop")
		if err != nil {
			t.Fatal(err)
		}
		for k, c := range causesOf(st) {
			if c.Code == CodeNotAttached || c.Code == CodeBackstopMissing {
				t.Errorf("status after apply: %s %+v", k, c)
			}
		}
		for _, s := range res.Shaped {
			if !s.Changed {
				t.Errorf("first apply: %s %s %s not marked changed", s.Container, s.Interface, s.Direction)
			}
		}
		again, err := r.App(ctx, "shop")
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range again.Shaped {
			if s.Changed {
				t.Errorf("second apply changed %s %s %s", s.Container, s.Interface, s.Direction)
			}
		}
	}
}

// A container whose namespace vanishes between planning and attaching is
// gone, not a problem, when Docker says it stopped; while it still runs the
// same failure is a vanished interface, a problem that apply fixes.
func TestRootVanishedDeviceIsGoneOnlyWhenTheContainerIs(t *testing.T) {
	nettest.RequireRoot(t)
	ctx := context.Background()
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.NetworkIngress, "20mbit")
	c, p := fakeContainer(t, "shop", "web", 1, 54)
	pairs, err := veth.Interfaces(c.SandboxKey)
	if err != nil {
		t.Fatal(err)
	}
	// The host end is deleted after the interfaces were listed.
	interfaces := func(string) ([]veth.Pair, error) {
		nettest.Run(t, "ip", "link", "del", p.NameB)
		return pairs, nil
	}
	stoppedC := c
	stoppedC.Running = false
	for _, tc := range []struct {
		name    string
		inspect containers.Container
		want    Code
		problem bool
	}{
		{"still-running", c, CodeVanished, true},
		{"stopped", stoppedC, CodeGone, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "stopped" {
				p = nettest.NewPair(t, p.A, nil, 55)
				if pairs, err = veth.Interfaces(c.SandboxKey); err != nil {
					t.Fatal(err)
				}
			}
			docker := listAndInspect{list: []containers.Container{c}, inspect: tc.inspect}
			r := &Reconciler{Env: f.Env, Docker: docker, Shaper: openShaper(t), Interfaces: interfaces}
			res, err := r.App(ctx, "shop")
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Unshaped) != 1 || res.Unshaped[0].Cause.Code != tc.want || res.Unshaped[0].Cause.Problem != tc.problem {
				t.Fatalf("unshaped %+v, want one %s (problem %v)", res.Unshaped, tc.want, tc.problem)
			}
		})
	}
}

type listAndInspect struct {
	list    []containers.Container
	inspect containers.Container
}

func (d listAndInspect) ListApp(context.Context, string) ([]containers.Container, error) {
	return d.list, nil
}

func (d listAndInspect) Inspect(context.Context, string) (containers.Container, error) {
	return d.inspect, nil
}

// Degraded carries the text the datapath's policing-only mode is reported
// with, and is no problem: the limit holds.
func TestDegradedCause(t *testing.T) {
	c := Degraded("shop")
	if c.Code != CodeDegraded || c.Summary != "degraded: policing, no pacing (kernel lacks sch_fq)" || c.Problem || c.Action == "" {
		t.Fatalf("Degraded = %+v", c)
	}
}

func TestCauseOfTypedErrors(t *testing.T) {
	foreign := &shaper.ForeignQdiscError{Device: shaper.Device{Name: "veth1"}, Kind: "tbf", Handle: "8001:"}
	for _, tc := range []struct {
		err  error
		want Code
	}{
		{foreign, CodeForeignQdisc},
		{shaper.ErrNoFq, CodeNoFq},
		{shaper.ErrNoDevice, CodeVanished},
		{veth.ErrGone, CodeVanished},
		{context.DeadlineExceeded, CodeFailed},
	} {
		if got := causeOf("shop", tc.err); got.Code != tc.want || !got.Problem {
			t.Errorf("causeOf(%v) = %+v, want %s", tc.err, got, tc.want)
		}
	}
}

// With every budget slot taken (filled in the pinned names map as another
// tool's apps would), apply cannot make the app's budget, and report says
// that, not "run apply".
func TestRootStatusNamesFullBudgetSlots(t *testing.T) {
	nettest.RequireRoot(t)
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.NetworkIngress, "20mbit")
	c, p := fakeContainer(t, "shop", "web", 1, 56)
	s := openShaper(t)
	names, err := ebpf.LoadPinnedMap(filepath.Join(s.PinDir(), "netshape_names"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer names.Close()
	for id := uint32(1); id <= names.MaxEntries(); id++ {
		var raw [128]byte
		copy(raw[:], fmt.Sprintf("filler%d/_default_/egress", id))
		if err := names.Update(id, raw, ebpf.UpdateNoExist); err != nil {
			t.Fatalf("fill slot %d: %v", id, err)
		}
	}
	t.Cleanup(func() {
		for id := uint32(1); id <= names.MaxEntries(); id++ {
			names.Delete(id)
		}
	})
	r := &Reconciler{Env: f.Env, Docker: fakeDocker{"shop": {c}}, Shaper: s}
	if _, err := r.App(context.Background(), "shop"); err == nil {
		t.Fatal("apply with every slot taken succeeded")
	}
	st, err := r.Status(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	got := causesOf(st)
	if c := got["shop.web.1 "+p.NameA+" ingress"]; len(got) != 1 || c.Code != CodeSlotsFull || !c.Problem || strings.Contains(c.Action, "netshape:apply") {
		t.Fatalf("causes %+v, want one %s whose fix is not apply", got, CodeSlotsFull)
	}
}
