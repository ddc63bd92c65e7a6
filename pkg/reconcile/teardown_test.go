package reconcile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// The longest names Dokku allows: a 255-byte app (NAME_MAX of DOKKU_ROOT/APP)
// and a long process type (Procfile names have no limit; its resource key
// file "<proc>.limit.network-egress" must still fit in 255 bytes).
var (
	longApp  = strings.Repeat("a", 250) + "-long"
	longProc = "worker-" + strings.Repeat("x", 193)
)

func TestBudgetNames(t *testing.T) {
	if len(longApp) != 255 || dokku.ValidateAppName(longApp) != nil || dokku.ValidateProcessType(longProc) != nil {
		t.Fatalf("test names: app %d bytes (%v), process type %v", len(longApp), dokku.ValidateAppName(longApp), dokku.ValidateProcessType(longProc))
	}
	fits := strings.Repeat("b", MaxBudgetName-len("/_default_/ingress")) // exactly MaxBudgetName with ingress
	for _, tc := range []struct {
		app, scope string
		plainApp   bool // the app part is the app's own name
		plainScope bool
		only       Direction // "" for both directions
	}{
		{"shop", "_default_", true, true, ""},
		{"shop", "web", true, true, ""},
		{fits, "_default_", true, true, Ingress},
		{fits + "c", "_default_", false, true, Ingress},
		{fits + "c", "_default_", true, true, Egress}, // "egress" is one byte shorter
		{longApp, "_default_", false, true, ""},
		{longApp, "web", false, true, ""},
		{longApp, longProc, false, false, ""},
		{"shop", longProc, false, false, ""},
	} {
		for _, dir := range []Direction{Egress, Ingress} {
			if tc.only != "" && dir != tc.only {
				continue
			}
			name := BudgetName(tc.app, tc.scope, dir)
			if len(name) > MaxBudgetName {
				t.Errorf("BudgetName(%.12s…, %.12s…, %s) is %d bytes", tc.app, tc.scope, dir, len(name))
			}
			ref, ok := ParseBudgetName(name)
			if !ok || ref.Direction != dir || ref.String() != name {
				t.Errorf("ParseBudgetName(%q) = %+v, %v", name, ref, ok)
			}
			if (ref.App == tc.app) != tc.plainApp || (ref.Scope == tc.scope) != tc.plainScope {
				t.Errorf("%q: app plain %v scope plain %v, want %v %v", name, ref.App == tc.app, ref.Scope == tc.scope, tc.plainApp, tc.plainScope)
			}
			if !ownedBy(name, tc.app) {
				t.Errorf("%q not owned by its app", name)
			}
			for _, other := range []string{tc.app + "x", "shop2", strings.TrimSuffix(tc.app, "g")} {
				if other != tc.app && ownedBy(name, other) {
					t.Errorf("%q owned by %.20s…", name, other)
				}
			}
		}
	}
	// Distinct apps and scopes never share a budget, hashed or not.
	seen := map[string]string{}
	for _, app := range []string{"shop", longApp, longApp[:254], longApp[1:], fits, fits + "c"} {
		for _, scope := range []string{"_default_", "web", longProc, longProc[:199]} {
			name := BudgetName(app, scope, Egress)
			key := app + "|" + scope
			if prev, dup := seen[name]; dup {
				t.Errorf("%q and %q share budget %q", prev, key, name)
			}
			seen[name] = key
		}
	}
	// apply prints the real names, hashed or not.
	res := Result{App: longApp, Wants: []Want{{Scope: longProc, Direction: Egress, Budget: shaper.Budget{Name: BudgetName(longApp, longProc, Egress)}}}}
	for name, want := range map[string]string{
		BudgetName(longApp, longProc, Egress):      longApp + "/" + longProc + "/egress",
		BudgetName(longApp, DefaultScope, Ingress): longApp + "/_default_/ingress",
		BudgetName(longApp, longProc, Ingress):     longApp + "/" + hashed(longProc) + "/ingress", // not configured: scope unknown
		BudgetName("shop", "web", Egress):          "shop/web/egress",                             // another app's: as it is
	} {
		if got := res.BudgetLabel(name); got != want {
			t.Errorf("BudgetLabel(%q) = %q, want %q", name, got, want)
		}
	}
	for _, bad := range []string{"", "shop", "shop/web", "shop/web/sideways", "/web/egress", "shop//egress", "shop/web/egress/x"} {
		if ref, ok := ParseBudgetName(bad); ok {
			t.Errorf("ParseBudgetName(%q) = %+v, want not ours", bad, ref)
		}
	}
}

// MaxBudgetName is the shaper's cap, not a guess: the shaper takes a name of
// exactly that length and refuses one byte more.
func TestRootMaxBudgetNameIsTheShapersCap(t *testing.T) {
	nettest.RequireRoot(t)
	s := openShaper(t)
	if err := s.UpsertBudget(shaper.Budget{Name: strings.Repeat("n", MaxBudgetName), Rate: 1e6}); err != nil {
		t.Fatalf("a %d-byte name: %v", MaxBudgetName, err)
	}
	if err := s.UpsertBudget(shaper.Budget{Name: strings.Repeat("n", MaxBudgetName+1), Rate: 1e6}); !errors.Is(err, shaper.ErrBadBudget) {
		t.Fatalf("a %d-byte name: %v, want ErrBadBudget", MaxBudgetName+1, err)
	}
}

// A 255-byte app with a long process type reconciles like any other: its
// budgets are made (hashed names), its devices attached where the kernel has
// fq (the VM guests; on the dev/CI host every device is enforced degraded, as a
// policer without fq), report sees the real names, and once the app is deleted
// RemoveGone finds its budgets by the hashed name and removes them and their
// attachments, leaving the other app alone.
func TestRootLongAppAndProcessNames(t *testing.T) {
	nettest.RequireRoot(t)
	fq := nettest.HaveFq(t)
	ctx := context.Background()
	f := dokkutest.NewFixture(t)
	f.AddApp(longApp, "web", 1, longProc, 1)
	f.AddApp("shop", "web", 1)
	f.SetResource(longApp, "", dokku.Limit, dokku.Network, "20mbit")
	f.SetResource(longApp, longProc, dokku.Limit, dokku.NetworkEgress, "5mbit")
	f.SetResource("shop", "", dokku.Limit, dokku.NetworkEgress, "1mbit")
	web, _ := fakeContainer(t, longApp, "web", 1, 31)
	wrk, _ := fakeContainer(t, longApp, longProc, 1, 32)
	shop, _ := fakeContainer(t, "shop", "web", 1, 33)
	docker := fakeDocker{longApp: {web, wrk}, "shop": {shop}}
	r := &Reconciler{Env: f.Env, Docker: docker, Shaper: openShaper(t)}

	for _, app := range []string{longApp, "shop"} {
		res, err := r.App(ctx, app)
		if err != nil {
			t.Fatalf("reconcile %.16s…: %v", app, err)
		}
		checkEnforced(t, res, fq)
	}
	budgets := budgetNames(t, r.Shaper)
	want := []string{
		BudgetName(longApp, DefaultScope, Egress), BudgetName(longApp, DefaultScope, Ingress),
		BudgetName(longApp, longProc, Egress), BudgetName("shop", DefaultScope, Egress),
	}
	slices.Sort(want)
	if !slices.Equal(budgets, want) {
		t.Fatalf("budgets %q, want %q", budgets, want)
	}
	if b, err := r.Shaper.Budget(BudgetName(longApp, longProc, Egress)); err != nil || b.Rate != 5e6 {
		t.Fatalf("process type's budget: %+v %v", b, err)
	}
	// What report reads: the real scope names, and (with fq) every device shaped.
	st, err := r.Status(ctx, longApp)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(st.Wants, func(w Want) bool { return w.Scope == longProc && w.Direction == Egress }) {
		t.Fatalf("status wants %+v: no %s egress", st.Wants, longProc)
	}
	// Per interface: egress at the source, its host-side backstop, ingress on the host peer.
	if len(st.Shaped) != 6 || len(st.Unshaped) != 0 {
		t.Fatalf("status: shaped %d unshaped %+v, want 6 and none", len(st.Shaped), st.Unshaped)
	}
	if n := attachmentsOf(t, r.Shaper, longApp); n != 6 {
		t.Fatalf("%d attachments of the long app (fq %v)", n, fq)
	}

	// apps:destroy: the app's directory goes, its budgets stay until cleaned up.
	if err := os.RemoveAll(f.AppDir(longApp)); err != nil {
		t.Fatal(err)
	}
	gone, err := r.RemoveGone()
	if err != nil || !slices.Equal(gone, []string{hashed(longApp)}) {
		t.Fatalf("RemoveGone = %q, %v; want the long app's hashed name", gone, err)
	}
	if got := budgetNames(t, r.Shaper); !slices.Equal(got, []string{BudgetName("shop", DefaultScope, Egress)}) {
		t.Fatalf("budgets after RemoveGone: %q", got)
	}
	if n := attachmentsOf(t, r.Shaper, longApp); n != 0 {
		t.Fatalf("%d attachments of the deleted app left", n)
	}
	// shop's egress: at the source and its host-side backstop.
	if n := attachmentsOf(t, r.Shaper, "shop"); n != 2 {
		t.Fatalf("shop lost its attachments: %d, want 2", n)
	}
	if err := r.Remove("shop"); err != nil {
		t.Fatal(err)
	}
	if got := budgetNames(t, r.Shaper); len(got) != 0 {
		t.Fatalf("budgets after Remove(shop): %q", got)
	}
	if atts, err := r.Shaper.Attachments(); err != nil || len(atts) != 0 {
		t.Fatalf("attachments after Remove(shop): %v %v", atts, err)
	}
}

// checkEnforced: everything attached; with fq as EDT, without it every
// shaping device degraded to the policer (the backstop is a policer anyway).
func checkEnforced(t *testing.T, res Result, fq bool) {
	t.Helper()
	if err := res.Err(); err != nil {
		t.Fatalf("reconcile %.16s…: %v", res.App, err)
	}
	for _, s := range res.Shaped {
		if s.Hook == shaper.HookShape && s.Degraded() == fq {
			t.Fatalf("reconcile %.16s…: %s %s degraded=%v on a kernel with fq=%v", res.App, s.Interface, s.Direction, s.Degraded(), fq)
		}
	}
}

func budgetNames(t *testing.T, s *shaper.Shaper) []string {
	t.Helper()
	bs, err := s.Budgets()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range bs {
		out = append(out, b.Name)
	}
	slices.Sort(out)
	return out
}

func attachmentsOf(t *testing.T, s *shaper.Shaper, app string) int {
	t.Helper()
	atts, err := s.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range atts {
		if ownedBy(a.Budget, app) {
			n++
		}
	}
	return n
}

// RemoveGone keeps every live app's budgets, removes the deleted apps' (plain
// and hashed names) and names that are not ours; Remove takes one app's; RemoveAll
// everything and the pins. No devices needed: budgets only.
func TestRootTeardown(t *testing.T) {
	nettest.RequireRoot(t)
	f := dokkutest.NewFixture(t)
	f.AddApp("shop")
	f.AddApp(longApp)
	deletedLong := strings.Repeat("d", 255)
	// With TCX each budget has instances of its own, pinned (cls_bpf
	// filters share four, which stay until the pins go).
	s, err := shaper.Open(shaper.Options{PinDir: "/sys/fs/bpf/netshape-test-" + nettest.Suffix(), TCX: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Destroy() })
	const shared = 4
	for _, name := range []string{
		BudgetName("shop", DefaultScope, Egress), BudgetName("shop", "web", Ingress),
		BudgetName(longApp, longProc, Egress), BudgetName(longApp, DefaultScope, Ingress),
		BudgetName("deleted", DefaultScope, Egress), BudgetName(deletedLong, longProc, Ingress),
		BudgetName(deletedLong, "web", Egress), "garbage",
	} {
		if err := s.UpsertBudget(shaper.Budget{Name: name, Rate: 1e6}); err != nil {
			t.Fatal(err)
		}
		// Its verified programs, pinned for later processes: they go with it.
		if err := s.Preload(name); err != nil {
			t.Fatal(err)
		}
	}
	progPins := func() int {
		t.Helper()
		ents, err := os.ReadDir(filepath.Join(s.PinDir(), "progs"))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	if n := progPins(); n != shared+2*8 {
		t.Fatalf("%d pinned programs, want the shared 4 and two per budget (16)", n)
	}
	r := &Reconciler{Env: f.Env, Shaper: s}
	gone, err := r.RemoveGone()
	slices.Sort(gone)
	wantGone := []string{"deleted", "garbage", hashed(deletedLong)}
	slices.Sort(wantGone)
	if err != nil || !slices.Equal(gone, wantGone) {
		t.Fatalf("RemoveGone = %q, %v; want %q", gone, err, wantGone)
	}
	kept := []string{BudgetName("shop", DefaultScope, Egress), BudgetName("shop", "web", Ingress),
		BudgetName(longApp, longProc, Egress), BudgetName(longApp, DefaultScope, Ingress)}
	slices.Sort(kept)
	if got := budgetNames(t, s); !slices.Equal(got, kept) {
		t.Fatalf("after RemoveGone: %q, want %q", got, kept)
	}
	if n := progPins(); n != shared+2*len(kept) {
		t.Fatalf("%d pinned programs after RemoveGone, want the shared 4 and the kept budgets' %d", n, 2*len(kept))
	}
	if err := r.Remove(longApp); err != nil {
		t.Fatal(err)
	}
	if got := budgetNames(t, s); len(got) != 2 || !strings.HasPrefix(got[0], "shop/") || !strings.HasPrefix(got[1], "shop/") {
		t.Fatalf("after Remove(long app): %q", got)
	}
	if n := progPins(); n != shared+4 {
		t.Fatalf("%d pinned programs after Remove(long app), want the shared 4 and shop's 4", n)
	}
	// A DOKKU_ROOT that is not there is an error, not "every app is gone".
	r.Env.DokkuRoot = f.Path("missing")
	if _, err := r.RemoveGone(); err == nil || len(budgetNames(t, s)) != 2 {
		t.Fatalf("RemoveGone with a missing Dokku root: %v, budgets %q", err, budgetNames(t, s))
	}
	pins := s.PinDir()
	if err := r.RemoveAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Fatalf("pins after RemoveAll: %v", err)
	}
}

// Each app's reconcile prunes the records of its own vanished devices only:
// `apply APP` among many opens that app's namespaces, and `apply --all` opens
// each attachment's once — not once per app. Counted with the real
// PruneAttachments behind a hook; with fq (the VM guests) the attachments are
// real, three apps with two devices each. A vanished device of another app is
// left to that app's reconcile.
func TestRootPruneOnlyTheApp(t *testing.T) {
	nettest.RequireRoot(t)
	fq := nettest.HaveFq(t)
	ctx := context.Background()
	f := dokkutest.NewFixture(t)
	docker := fakeDocker{}
	var apps []string
	for i := range 3 {
		app := fmt.Sprintf("app%d", i)
		apps = append(apps, app)
		f.AddApp(app, "web", 1)
		f.SetResource(app, "", dokku.Limit, dokku.Network, "10mbit")
		c, _ := fakeContainer(t, app, "web", 1, 41+i)
		docker[app] = []containers.Container{c}
	}
	s := openShaper(t)
	run := func(apps ...string) (prunes, opens int) {
		r := &Reconciler{Env: f.Env, Docker: docker, Shaper: s}
		r.prune = func(atts []shaper.Attachment) ([]shaper.Attachment, error) {
			prunes++
			opens += len(atts) // PruneAttachments checks each listed attachment's device once
			return s.PruneAttachments(atts)
		}
		for _, app := range apps {
			res, err := r.App(ctx, app)
			if err != nil {
				t.Fatal(err)
			}
			checkEnforced(t, res, fq)
		}
		return prunes, opens
	}
	run(apps...) // attaches (degraded without fq)
	prunes, opens := run(apps...)
	if want := 9; prunes != len(apps) || opens != want { // 3 apps × (eth0, host peer's backstop, host peer)
		t.Fatalf("one run over %d apps: %d prunes checking %d devices, want %d and %d", len(apps), prunes, opens, len(apps), want)
	}
	if prunes, opens := run(apps[1]); prunes != 1 || opens != 3 {
		t.Fatalf("one app: %d prunes checking %d devices, want 1 and 3", prunes, opens)
	}
}

// A run over several apps reads the registry once for all of them, and still
// removes what an app no longer wants and keeps what others want: here app0
// loses its ingress limit and app1's container stopped, in one run.
func TestRootAllAppsRunRemovesWhatIsNoLongerWanted(t *testing.T) {
	nettest.RequireRoot(t)
	fq := nettest.HaveFq(t)
	ctx := context.Background()
	f := dokkutest.NewFixture(t)
	docker := fakeDocker{}
	apps := []string{"app0", "app1", "app2"}
	for i, app := range apps {
		f.AddApp(app, "web", 1)
		f.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, "10mbit")
		f.SetResource(app, "", dokku.Limit, dokku.NetworkIngress, "20mbit")
		c, _ := fakeContainer(t, app, "web", 1, 51+i)
		docker[app] = []containers.Container{c}
	}
	s := openShaper(t)
	run := func() map[string]int {
		t.Helper()
		r := &Reconciler{Env: f.Env, Docker: docker, Shaper: s}
		for _, app := range apps {
			res, err := r.App(ctx, app)
			if err != nil {
				t.Fatal(err)
			}
			checkEnforced(t, res, fq)
		}
		atts, err := s.Attachments()
		if err != nil {
			t.Fatal(err)
		}
		per := map[string]int{}
		for _, a := range atts {
			per[a.Budget]++
		}
		return per
	}
	eg := func(app string) string { return BudgetName(app, DefaultScope, Egress) }
	in := func(app string) string { return BudgetName(app, DefaultScope, Ingress) }
	per := run()
	for _, app := range apps {
		if per[eg(app)] != 2 || per[in(app)] != 1 {
			t.Fatalf("first run: %v, want per app 2 egress (shaper, backstop) and 1 ingress", per)
		}
	}
	f.SetResource("app0", "", dokku.Limit, dokku.NetworkIngress, "")
	docker["app1"] = nil // stopped
	per = run()
	want := map[string]int{eg("app0"): 2, eg("app2"): 2, in("app2"): 1}
	if len(per) != len(want) {
		t.Fatalf("second run: %v, want %v", per, want)
	}
	for b, n := range want {
		if per[b] != n {
			t.Fatalf("second run: %v, want %v", per, want)
		}
	}
}
