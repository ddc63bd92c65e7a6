package reconcile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

func TestWantsScopes(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 2, "worker", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	f.SetResource("shop", "web", dokku.Limit, dokku.NetworkIngress, "50mbit")
	f.SetResource("shop", "worker", dokku.Limit, dokku.Network, "5mbit")
	r := &Reconciler{Env: f.Env}
	wants, err := r.Wants("shop", []string{"web", "worker"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, w := range wants {
		got[w.Budget.Name] = w.Budget.Rate
	}
	want := map[string]uint64{
		"shop/_default_/egress": 20e6,
		"shop/web/ingress":      50e6,
		"shop/worker/egress":    5e6,
		"shop/worker/ingress":   5e6,
	}
	if len(got) != len(want) {
		t.Fatalf("wants %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("wants %v, want %v", got, want)
		}
	}
	for _, tc := range []struct {
		proc string
		dir  Direction
		want string
	}{
		{"web", Egress, "shop/_default_/egress"},
		{"web", Ingress, "shop/web/ingress"},
		{"worker", Egress, "shop/worker/egress"},
		{"clock", Egress, "shop/_default_/egress"},
		{"clock", Ingress, ""},
	} {
		if b, _ := budgetFor(wants, tc.proc, tc.dir); b != tc.want {
			t.Errorf("budgetFor(%s, %s) = %q, want %q", tc.proc, tc.dir, b, tc.want)
		}
	}
}

func TestOwnedBy(t *testing.T) {
	for _, tc := range []struct {
		budget, app string
		want        bool
	}{
		{"shop/_default_/egress", "shop", true},
		{"shop/web/ingress", "shop", true},
		{"shop2/web/ingress", "shop", false},
		{"shop/web/ingress", "sho", false},
		{"shop/x/y/z", "shop", false},
	} {
		if got := ownedBy(tc.budget, tc.app); got != tc.want {
			t.Errorf("ownedBy(%q, %q) = %v", tc.budget, tc.app, got)
		}
	}
}

type fakeDocker map[string][]containers.Container

func (f fakeDocker) ListApp(_ context.Context, app string) ([]containers.Container, error) {
	return f[app], nil
}

// fakeContainer stands a named netns in for a container's sandbox; its eth
// end is in the namespace, its peer in the test's own (the host).
func fakeContainer(t *testing.T, app, proc string, n, subnet int) (containers.Container, *nettest.Pair) {
	ns := nettest.NewNetns(t, "ctr")
	p := nettest.NewPair(t, ns, nil, subnet)
	return containers.Container{
		ID: "id" + ns.Name, Name: app + "." + proc + "." + string(rune('0'+n)), App: app, Type: "deploy",
		ProcessType: proc, Running: true, SandboxKey: ns.Path, NetworkMode: "bridge",
	}, p
}

func openShaper(t *testing.T) *shaper.Shaper {
	s, err := shaper.Open(shaper.Options{PinDir: "/sys/fs/bpf/netshape-test-" + nettest.Suffix()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Destroy() })
	return s
}

// On a kernel without fq (the dev/CI host) a configured limit is enforced
// degraded: every shaping device gets the policer variant and no qdisc, the
// backstop as usual, the result and the log say "degraded". Only ErrNoFq
// degrades: a device refused for another reason (a foreign root qdisc) stays
// unshaped and fails open, loudly, with its own cause.
func TestRootReconcileWithoutFqPolices(t *testing.T) {
	nettest.RequireRoot(t)
	if nettest.HaveFq(t) {
		t.Skip("kernel has sch_fq; this is the fq-missing path of the dev/CI host")
	}
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 2)
	f.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	c, p := fakeContainer(t, "shop", "web", 1, 11)
	c2, p2 := fakeContainer(t, "shop", "web", 2, 12)
	nettest.Run(t, "tc", "qdisc", "add", "dev", p2.NameB, "root", "handle", "7:", "tbf", "rate", "1gbit", "burst", "64kb", "latency", "10ms")
	var log bytes.Buffer
	r := &Reconciler{Env: f.Env, Docker: fakeDocker{"shop": {c, c2}}, Shaper: openShaper(t), Log: &log}
	res, err := r.App(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range res.Shaped {
		got = append(got, fmt.Sprintf("%s %s %s %v", s.Container, s.Direction, s.Hook, s.Degraded()))
	}
	want := []string{
		"shop.web.1 egress police false", "shop.web.1 egress shape true", "shop.web.1 ingress shape true",
		"shop.web.2 egress police false", "shop.web.2 egress shape true",
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("shaped %q, want %q", got, want)
	}
	// web.2's host peer carries someone else's root qdisc: not ErrNoFq, so not degraded but refused.
	if len(res.Unshaped) != 1 || res.Unshaped[0].Container != c2.Name || res.Unshaped[0].Direction != Ingress ||
		!errors.Is(res.Unshaped[0].Err, shaper.ErrForeignQdisc) {
		t.Fatalf("unshaped %+v, want web.2 ingress refused for its foreign qdisc", res.Unshaped)
	}
	if errors.Is(res.Err(), shaper.ErrNoFq) {
		t.Fatalf("Err() = %v: ErrNoFq must have been handled by degrading", res.Err())
	}
	for _, w := range []string{
		"shop container shop.web.1 " + p.NameA + " egress: " + shaper.DegradedNoFq,
		"shop container shop.web.1 " + p.NameA + " ingress: " + shaper.DegradedNoFq,
		"LIMIT NOT ENFORCED for shop container shop.web.2 " + p2.NameA + " ingress",
	} {
		if !strings.Contains(log.String(), w) {
			t.Fatalf("log lacks %q: %q", w, log.String())
		}
	}
	atts, _ := r.Shaper.Attachments()
	if len(atts) != 5 {
		t.Fatalf("attachments %v, want 5", atts)
	}
	for _, a := range atts {
		if a.Degraded() != (a.Hook == shaper.HookShape) {
			t.Fatalf("attachment %+v: degraded %v", a, a.Degraded())
		}
	}
	// No qdisc of ours anywhere: the policer needs none.
	for _, args := range [][]string{
		{"ip", "netns", "exec", p.A.Name, "tc", "qdisc", "show", "dev", p.NameA},
		{"tc", "qdisc", "show", "dev", p.NameB},
	} {
		if out := nettest.Run(t, args...); !strings.Contains(out, "noqueue 0: root") {
			t.Fatalf("%v: root qdisc changed: %s", args, out)
		}
	}
	// report reads the same.
	st, err := r.Status(context.Background(), "shop")
	if err != nil || len(st.Shaped) != 5 {
		t.Fatalf("status %+v %v", st.Shaped, err)
	}
	for _, s := range st.Shaped {
		if s.Degraded() != (s.Hook == shaper.HookShape) {
			t.Fatalf("status %+v: degraded %v", s, s.Degraded())
		}
	}
	// A second run changes nothing.
	if res, err := r.App(context.Background(), "shop"); err != nil || len(res.Removed) != 0 || len(res.Shaped) != 5 {
		t.Fatalf("second run: %+v %v", res, err)
	}
}

func TestRootFqReconcileSharesOneBudgetAndCleansUp(t *testing.T) {
	nettest.RequireFq(t)
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 2, "worker", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	f.SetResource("shop", "worker", dokku.Limit, dokku.NetworkEgress, "1mbit")
	web1, web1Pair := fakeContainer(t, "shop", "web", 1, 21)
	web2, _ := fakeContainer(t, "shop", "web", 2, 22)
	worker, _ := fakeContainer(t, "shop", "worker", 1, 23)
	docker := fakeDocker{"shop": {web1, web2, worker}}
	r := &Reconciler{Env: f.Env, Docker: docker, Shaper: openShaper(t)}

	res, err := r.App(context.Background(), "shop")
	if err != nil || res.Err() != nil {
		t.Fatalf("reconcile: %v %v", err, res.Err())
	}
	budgets := map[string]int{}
	for _, s := range res.Shaped {
		budgets[s.Budget+" "+s.Hook.String()]++
		// Each egress shaper has its backstop on the interface's host-side peer.
		if s.Backstop() && (s.Direction != Egress || s.Device.Netns != "") {
			t.Errorf("backstop %+v: want app egress on a host-side device", s)
		}
		if s.Backstop() && s.Container == web1.Name && s.Device.Name != web1Pair.NameB {
			t.Errorf("backstop of %s on %s, want its peer %s", s.Container, s.Device.Name, web1Pair.NameB)
		}
	}
	want := map[string]int{
		"shop/_default_/egress shape": 2, "shop/_default_/egress police": 2,
		"shop/_default_/ingress shape": 3, "shop/worker/egress shape": 1, "shop/worker/egress police": 1,
	}
	if len(budgets) != len(want) {
		t.Fatalf("budgets used %v, want %v", budgets, want)
	}
	for k, v := range want {
		if budgets[k] != v {
			t.Fatalf("budgets used %v, want %v", budgets, want)
		}
	}
	// Idempotent: a second run changes nothing.
	before, _ := r.Shaper.Attachments()
	if res, err := r.App(context.Background(), "shop"); err != nil || len(res.Removed) != 0 {
		t.Fatalf("second reconcile removed %v (%v)", res.Removed, err)
	}
	after, _ := r.Shaper.Attachments()
	if !sameAttachments(before, after) {
		t.Fatalf("second reconcile changed attachments:\n%v\n%v", before, after)
	}

	// web.2 goes away and the worker's egress key is cleared.
	docker["shop"] = []containers.Container{web1, worker}
	if err := r.Env.Properties(dokku.ResourcePlugin).Delete("shop", "worker.limit.network-egress"); err != nil {
		t.Fatal(err)
	}
	res, err = r.App(context.Background(), "shop")
	if err != nil || res.Err() != nil {
		t.Fatal(err, res.Err())
	}
	atts, _ := r.Shaper.Attachments()
	if len(atts) != 6 { // web.1 and worker, both directions and the egress backstops, all _default_
		t.Fatalf("attachments after scale-down %v", atts)
	}
	for _, a := range atts {
		if !strings.HasPrefix(a.Budget, "shop/_default_/") {
			t.Fatalf("attachment %v still on a removed budget", a)
		}
	}
	if bs, _ := r.Shaper.Budgets(); len(bs) != 2 {
		t.Fatalf("budgets %v, want the two _default_ ones", bs)
	}
	if err := r.Remove("shop"); err != nil {
		t.Fatal(err)
	}
	if atts, _ := r.Shaper.Attachments(); len(atts) != 0 {
		t.Fatalf("attachments after Remove: %v", atts)
	}
}

func sameAttachments(a, b []shaper.Attachment) bool {
	key := func(x shaper.Attachment) string {
		return x.Device.String() + "=" + x.Budget + x.Mode.String() + x.Hook.String()
	}
	ka, kb := make([]string, len(a)), make([]string, len(b))
	for i := range a {
		ka[i] = key(a[i])
	}
	for i := range b {
		kb[i] = key(b[i])
	}
	slices.Sort(ka)
	slices.Sort(kb)
	return slices.Equal(ka, kb)
}

// A k3s app's limits are the cluster's (pkg/k3s): App attaches nothing and
// creates no budget even with a container of the app running here, Status
// reports the scheduler without asking Docker; the same app on docker-local
// is planned as usual.
func TestRootK3sAppIsNotShapedHere(t *testing.T) {
	nettest.RequireRoot(t)
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	f.SetScheduler(dokku.GlobalApp, "k3s")
	c, _ := fakeContainer(t, "shop", "web", 1, 12)
	var log bytes.Buffer
	r := &Reconciler{Env: f.Env, Docker: fakeDocker{"shop": {c}}, Shaper: openShaper(t), Log: &log}
	res, err := r.App(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	if res.Scheduler != "k3s" || len(res.Wants)+len(res.Shaped)+len(res.Unshaped) != 0 || log.Len() != 0 {
		t.Fatalf("k3s app reconciled locally: %+v, log %q", res, log.String())
	}
	if bs, _ := r.Shaper.Budgets(); len(bs) != 0 {
		t.Fatalf("budgets %v for a k3s app", bs)
	}
	st, err := (&Reconciler{Env: f.Env, Docker: noDocker{t}}).Status(context.Background(), "shop")
	if err != nil || st.Scheduler != "k3s" || len(st.Wants)+len(st.Unshaped) != 0 {
		t.Fatalf("Status = %+v, %v", st, err)
	}

	f.SetScheduler("shop", "docker-local")
	res, err = r.App(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	if res.Scheduler != "" || len(res.Wants) != 2 || len(res.Shaped)+len(res.Unshaped) == 0 {
		t.Fatalf("docker-local app not planned: %+v", res)
	}
}

// noDocker fails a test that lists containers.
type noDocker struct{ t *testing.T }

func (d noDocker) ListApp(_ context.Context, app string) ([]containers.Container, error) {
	d.t.Errorf("listed the containers of %s", app)
	return nil, errors.New("no Docker here")
}
