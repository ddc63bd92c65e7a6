package reconcile

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// inspectingDocker also answers Inspect, as pkg/containers does.
type inspectingDocker struct{ fakeDocker }

func (f inspectingDocker) Inspect(_ context.Context, id string) (containers.Container, error) {
	for _, list := range f.fakeDocker {
		for _, c := range list {
			if c.ID == id {
				return c, nil
			}
		}
	}
	return containers.Container{}, fmt.Errorf("inspect container %s: %w", id, containers.ErrGone)
}

func TestRootContainerRefusesWhatIsNotAStartedDeployContainer(t *testing.T) {
	nettest.RequireRoot(t)
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	blog := containers.Container{ID: "b1", Name: "blog.web.1", App: "blog", Type: containers.TypeDeploy, ProcessType: "web", Running: true}
	run := containers.Container{ID: "r1", Name: "shop.run.1", App: "shop", Type: containers.TypeRun, Running: true}
	stopped := containers.Container{ID: "s1", Name: "shop.web.1", App: "shop", Type: containers.TypeDeploy, ProcessType: "web"}
	r := &Reconciler{Env: f.Env, Docker: inspectingDocker{fakeDocker{"blog": {blog}, "shop": {run, stopped}}}, Shaper: openShaper(t)}
	ctx := context.Background()
	for _, id := range []string{"b1", "r1"} {
		if _, err := r.Container(ctx, "shop", id); err == nil || !strings.Contains(err.Error(), "not a deploy container of shop") {
			t.Errorf("Container(shop, %s) = %v, want a refusal", id, err)
		}
	}
	for _, id := range []string{"s1", "gone"} {
		res, err := r.Container(ctx, "shop", id)
		if err != nil || len(res.Unshaped) != 1 || res.Unshaped[0].Err != nil || len(res.Shaped) != 0 {
			t.Errorf("Container(shop, %s) = %+v, %v: want one unshaped entry, no failure", id, res, err)
		}
	}
	if bs, _ := r.Shaper.Budgets(); len(bs) != 0 {
		t.Fatalf("budgets %v created for containers that were not shaped", bs)
	}
	if _, err := (&Reconciler{Env: f.Env, Docker: fakeDocker{}, Shaper: r.Shaper}).Container(ctx, "shop", "s1"); err == nil {
		t.Fatal("a Docker client without Inspect was accepted")
	}
}

// Container shapes exactly the started container, with the budgets App
// would give it; App afterwards finds it already in place.
func TestRootFqContainerShapesOneContainerAsAppWould(t *testing.T) {
	nettest.RequireFq(t)
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1, "worker", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	f.SetResource("shop", "worker", dokku.Limit, dokku.NetworkEgress, "1mbit")
	web, _ := fakeContainer(t, "shop", "web", 1, 31)
	worker, _ := fakeContainer(t, "shop", "worker", 1, 32)
	docker := inspectingDocker{fakeDocker{"shop": {web, worker}}}
	r := &Reconciler{Env: f.Env, Docker: docker, Shaper: openShaper(t)}

	res, err := r.Container(context.Background(), "shop", worker.ID)
	if err != nil || res.Err() != nil {
		t.Fatalf("Container: %v %v", err, res.Err())
	}
	got := map[string]string{}
	for _, s := range res.Shaped {
		if s.Container != worker.Name {
			t.Fatalf("shaped %+v: only %s was started", s, worker.Name)
		}
		what := string(s.Direction)
		if s.Backstop() {
			what += " backstop"
		}
		got[what] = s.Budget
	}
	if got["egress"] != "shop/worker/egress" || got["egress backstop"] != "shop/worker/egress" ||
		got["ingress"] != "shop/_default_/ingress" || len(got) != 3 {
		t.Fatalf("worker shaped with %v, want its own egress budget (at the source and as the host-side backstop) and the app-wide ingress one", got)
	}
	atts, _ := r.Shaper.Attachments()
	if len(atts) != 3 {
		t.Fatalf("attachments %v, want the worker's three (eth0, its host peer's backstop and shaper)", atts)
	}
	rates := map[string]uint64{}
	bs, _ := r.Shaper.Budgets()
	for _, b := range bs {
		rates[b.Name] = b.Rate
	}
	if rates["shop/worker/egress"] != 1e6 || rates["shop/_default_/ingress"] != 20e6 {
		t.Fatalf("budgets %v", rates)
	}

	// The whole-app reconcile agrees: the worker keeps its attachments, web gets its own.
	full, err := r.App(context.Background(), "shop")
	if err != nil || full.Err() != nil || len(full.Removed) != 0 {
		t.Fatalf("App after Container: %v %v, removed %v", err, full.Err(), full.Removed)
	}
	for _, s := range full.Shaped {
		what := string(s.Direction)
		if s.Backstop() {
			what += " backstop"
		}
		if s.Container == worker.Name && got[what] != s.Budget {
			t.Fatalf("App put %s %s on %s, Container on %s", s.Container, what, s.Budget, got[what])
		}
	}
	// Two containers, each: eth0, its host peer's backstop, the host peer.
	if after, _ := r.Shaper.Attachments(); len(after) != 6 {
		t.Fatalf("attachments after App %v, want six", after)
	}
}

// countingDocker counts the inspects it answers.
type countingDocker struct {
	inspectingDocker
	inspects *int
}

func (f countingDocker) Inspect(ctx context.Context, id string) (containers.Container, error) {
	*f.inspects++
	return f.inspectingDocker.Inspect(ctx, id)
}

// A provisional start (the event and the cgroup, no inspect) is taken as it is
// for a netns new to the registry, and checked with Docker when the netns is
// already shaped: a container that joined another's netns (--network
// container:X) must not move X's devices to its own app's budgets.
func TestRootProvisionalStartIsCheckedWhenItsNetnsIsKnown(t *testing.T) {
	nettest.RequireRoot(t)
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	f.AddApp("blog", "web", 1)
	f.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	f.SetResource("blog", "", dokku.Limit, dokku.Network, "5mbit")
	web, _ := fakeContainer(t, "shop", "web", 1, 33)
	joiner := containers.Container{ID: "idjoiner", Name: "blog.web.1", App: "blog", Type: containers.TypeDeploy,
		ProcessType: "web", Running: true, SandboxKey: web.SandboxKey, NetworkMode: "container:" + web.ID}
	inspects := 0
	docker := countingDocker{inspectingDocker{fakeDocker{"shop": {web}, "blog": {joiner}}}, &inspects}
	r := &Reconciler{Env: f.Env, Docker: docker, Shaper: openShaper(t)}
	ctx := context.Background()

	// What the watcher knows from the start event and the cgroup: no network mode.
	provisional := func(c containers.Container) containers.Container {
		return containers.Container{ID: c.ID, Name: c.Name, App: c.App, Type: c.Type, ProcessType: c.ProcessType,
			Running: true, SandboxKey: c.SandboxKey}
	}
	res, err := r.Started(ctx, "shop", "web", Provisional(provisional(web)))
	if err != nil || res.Err() != nil || len(res.Shaped) != 3 {
		t.Fatalf("Started(shop, provisional) = %+v, %v", res, err)
	}
	if inspects != 0 {
		t.Fatalf("%d inspects for a netns new to the registry, want none", inspects)
	}
	res, err = r.Started(ctx, "blog", "web", Provisional(provisional(joiner)))
	if err != nil || len(res.Shaped) != 0 || len(res.Unshaped) != 1 || res.Unshaped[0].Cause.Code != CodeSharedNetns {
		t.Fatalf("Started(blog, provisional, shop's netns) = %+v, %v: want it inspected and skipped as sharing a netns", res, err)
	}
	if inspects != 1 {
		t.Fatalf("%d inspects for a netns already shaped, want one", inspects)
	}
	atts, _ := r.Shaper.Attachments()
	for _, a := range atts {
		if !strings.HasPrefix(a.Budget, "shop/") {
			t.Fatalf("attachment %+v: the joiner moved shop's device to another budget", a)
		}
	}
	if len(atts) != 3 {
		t.Fatalf("attachments %v, want shop's three", atts)
	}

	// Only the host-side peer recorded (an ingress-only app): still checked with Docker.
	f.AddApp("wiki", "web", 1)
	f.SetResource("wiki", "", dokku.Limit, dokku.NetworkIngress, "10mbit")
	wiki, _ := fakeContainer(t, "wiki", "web", 1, 34)
	joiner2 := joiner
	joiner2.ID, joiner2.SandboxKey, joiner2.NetworkMode = "idjoiner2", wiki.SandboxKey, "container:"+wiki.ID
	r.Docker = countingDocker{inspectingDocker{fakeDocker{"shop": {web}, "wiki": {wiki}, "blog": {joiner2}}}, &inspects}
	if res, err := r.Started(ctx, "wiki", "web", Provisional(provisional(wiki))); err != nil || len(res.Shaped) != 1 || inspects != 1 {
		t.Fatalf("Started(wiki, provisional) = %+v, %v, %d inspects: want its host peer shaped without one", res, err, inspects)
	}
	res, err = r.Started(ctx, "blog", "web", Provisional(provisional(joiner2)))
	if err != nil || len(res.Shaped) != 0 || inspects != 2 {
		t.Fatalf("Started(blog, provisional, wiki's netns) = %+v, %v, %d inspects: want it inspected and skipped", res, err, inspects)
	}
}
