package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// listOnly is a Docker that lists fixed containers (the VM guests run no
// dockerd for this package; a named netns stands in for each sandbox).
type listOnly map[string][]containers.Container

func (l listOnly) ListApp(_ context.Context, app string) ([]containers.Container, error) {
	return l[app], nil
}

// counts masks the numbers of counters, which background packets (IPv6
// neighbour discovery on a fresh veth) make vary.
var digits = regexp.MustCompile(`\d+`)

var counts = regexp.MustCompile(`\d+ (bytes|packets|delayed|dropped|marked|express|bypassed)|: \d+`)

// TestRootFqOutputGolden: with fq (the VM guests), what report says before
// apply (not attached yet: apply is the advice), what apply prints (a line
// per container and direction it attached), what a second apply prints (one
// summary line) and what report says then (shaped, nothing unshaped).
func TestRootFqOutputGolden(t *testing.T) {
	nettest.RequireFq(t)
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 2)
	e.SetResource("shop", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	e.SetResource("shop", "web", dokku.Limit, dokku.NetworkIngress, "50mbit")
	names := map[string]string{}
	var list []containers.Container
	for i := 1; i <= 2; i++ {
		ns := nettest.NewNetns(t, "ctr")
		p := nettest.NewPair(t, ns, nil, 60+i)
		name := "shop.web." + string(rune('0'+i))
		names[p.NameA], names[p.NameB] = "eth0", "veth"+string(rune('0'+i))
		list = append(list, containers.Container{ID: "id" + ns.Name, Name: name, App: "shop", Type: containers.TypeDeploy,
			ProcessType: "web", Running: true, SandboxKey: ns.Path, NetworkMode: "bridge"})
	}
	norm := func(s string) string {
		for from, to := range names {
			s = strings.ReplaceAll(s, from, to)
		}
		return s
	}
	s := e.shaper(t)
	defer s.Close()
	r := &reconcile.Reconciler{Env: e.Env, Docker: listOnly{"shop": list}, Shaper: s}
	ctx := context.Background()
	check := func(file, got string) {
		t.Helper()
		got = norm(got)
		golden(t, file, got)
		if t.Failed() {
			t.Logf("%s as produced here:\n%s", file, got) // the guest cannot write the file back
		}
	}
	report := func(file string) appReport {
		t.Helper()
		rep, err := reportApp(ctx, r, "shop")
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := writeReport(&out, reportArgs{app: "shop", format: "stdout"}, []string{"shop"}, map[string]appReport{"shop": rep}, nil); err != nil {
			t.Fatal(err)
		}
		check(file, counts.ReplaceAllStringFunc(out.String(), func(m string) string {
			return digits.ReplaceAllString(m, "N")
		}))
		return rep
	}
	apply := func(file string) reconcile.Result {
		t.Helper()
		res, err := r.App(ctx, "shop")
		if err != nil {
			t.Fatal(err)
		}
		var out, errw bytes.Buffer
		renderResult(&out, &errw, res)
		check(file, "stdout:\n"+out.String()+"stderr:\n"+errw.String())
		return res
	}

	before := report("report-fq-not-attached.golden")
	for _, c := range before.causes {
		if c.Code != reconcile.CodeNotAttached || !strings.Contains(c.Action, "netshape:apply shop") {
			t.Errorf("before apply: %+v, want not attached, fixed by apply", c)
		}
	}
	if len(before.causes) != 4 {
		t.Errorf("before apply: %d causes, want 4 (2 containers × 2 directions)", len(before.causes))
	}
	if res := apply("render-fq-apply.golden"); len(res.Problems()) != 0 {
		t.Errorf("apply left problems: %+v", res.Problems())
	}
	apply("render-fq-reapply.golden")
	if after := report("report-fq-attached.golden"); len(after.causes) != 0 {
		t.Errorf("after apply: causes %+v, want none", after.causes)
	}
}
