package k3s_test

import (
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/k3s"
	"github.com/dokku-netshape/dokku-netshape/pkg/rate"
)

// Every unit tc (and so `dokku resource:limit`) accepts → annotation →
// what Kubernetes reads back → the bits per second the local shaper enforces.
func TestQuantityRoundTripsThroughParseQuantity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // annotation value
		bps  int64
	}{
		{"1kbit", "1k", 1e3},
		{"10kbit", "10k", 1e4},
		{"20mbit", "20M", 20e6},
		{"1.5mbit", "1500k", 1.5e6},
		{"2gbit", "2G", 2e9},
		{"1tbit", "1T", 1e12},
		{"1000000000000000bit", "1P", 1e15},
		{"64000", "64k", 64000},  // bare number: bits, as tc
		{"125bps", "1k", 1000},   // bps is BYTES per second
		{"5mbps", "40M", 40e6},   // megaBYTES
		{"1kibit", "1024", 1024}, // IEC: 2^10 bits
		{"3mibit", "3145728", 3 << 20},
		{"1gibps", "8589934592", 8 << 30},
		{"12345678bit", "12345678", 12345678},
	} {
		r, err := rate.Parse(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if int64(r) != tc.bps {
			t.Fatalf("%s: rate %d, want %d", tc.in, r, tc.bps)
		}
		got, err := k3s.Quantity(r)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("%s: annotation %q, want %q", tc.in, got, tc.want)
		}
		q, err := resource.ParseQuantity(got)
		if err != nil {
			t.Fatalf("%s: ParseQuantity(%q): %v", tc.in, got, err)
		}
		if q.Value() != int64(r) {
			t.Errorf("%s: Kubernetes reads %q as %d bit/s, we enforce %d locally", tc.in, got, q.Value(), r)
		}
	}
}

func TestQuantityBoundsAreKubelets(t *testing.T) {
	for _, tc := range []struct {
		r     rate.Rate
		bound string
	}{{999, "1kbit"}, {1, "1kbit"}, {k3s.MaxRate + 1, "1Pbit"}} {
		_, err := k3s.Quantity(tc.r)
		if err == nil || !strings.Contains(err.Error(), tc.bound) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Quantity(%d) = %v, want a one-line error naming %s", tc.r, err, tc.bound)
		}
	}
	for _, r := range []rate.Rate{k3s.MinRate, k3s.MaxRate} {
		if _, err := k3s.Quantity(r); err != nil {
			t.Errorf("Quantity(%d): %v (kubelet accepts it)", r, err)
		}
	}
}

func k3sApp(t *testing.T, global bool) (*dokkutest.Fixture, string) {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1, "worker", 1)
	if global {
		f.SetScheduler(dokku.GlobalApp, "k3s")
	} else {
		f.SetScheduler("shop", "k3s")
	}
	return f, "shop"
}

func fileIs(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if string(b) != want {
		t.Errorf("%s = %q, want %q", path, b, want)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", path, fi.Mode().Perm())
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != os.Getuid() || int(st.Gid) != os.Getgid() {
		t.Errorf("%s owned by %d:%d, want the fixture's Dokku user %d:%d", path, st.Uid, st.Gid, os.Getuid(), os.Getgid())
	}
}

func sync(t *testing.T, env dokku.Env, app string) error {
	t.Helper()
	return env.Change(5e9, func(env dokku.Env) error {
		_, err := k3s.Sync(env, app)
		return err
	})
}

func TestSchedulerDetection(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("a")
	f.AddApp("b")
	for _, step := range []struct {
		set  func()
		a, b string
	}{
		{func() {}, "docker-local", "docker-local"},
		{func() { f.SetScheduler(dokku.GlobalApp, "k3s") }, "k3s", "k3s"},
		{func() { f.SetScheduler("b", "docker-local") }, "k3s", "docker-local"},
		{func() { f.SetScheduler("a", "") }, "k3s", "docker-local"},                  // empty: falls through
		{func() { f.SetScheduler(dokku.GlobalApp, "k3s\n") }, "k3s", "docker-local"}, // trigger output is trimmed
		{func() { f.SetScheduler(dokku.GlobalApp, "") }, "docker-local", "docker-local"},
	} {
		step.set()
		for app, want := range map[string]string{"a": step.a, "b": step.b} {
			got, err := f.Env.Scheduler(app)
			if err != nil || got != want {
				t.Fatalf("Scheduler(%s) = %q, %v; want %q", app, got, err, want)
			}
		}
	}
}

// resource:limit keys → the exact maps `scheduler-k3s:annotations:set` would
// hold, per scope, with the operator's own annotations left byte for byte.
func TestSyncWritesScopesAndKeepsOperatorAnnotations(t *testing.T) {
	for _, global := range []bool{false, true} {
		f, app := k3sApp(t, global)
		f.SetPodAnnotation(app, "", "prometheus.io/scrape", "true")
		f.SetPodAnnotation(app, "worker", "kubernetes.io/ingress-bandwidth", "7M") // the operator's
		f.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, "20mbit")
		f.SetResource(app, "web", dokku.Limit, dokku.Network, "5mbps")
		f.SetResource(app, "worker", dokku.Limit, dokku.NetworkEgress, "1gibit")
		if err := sync(t, f.Env, app); err != nil {
			t.Fatal(err)
		}
		fileIs(t, f.PropertyPath("scheduler-k3s", app, "--global.pod"), `{"kubernetes.io/egress-bandwidth":"20M","prometheus.io/scrape":"true"}`)
		fileIs(t, f.PropertyPath("scheduler-k3s", app, "web.pod"), `{"kubernetes.io/egress-bandwidth":"40M","kubernetes.io/ingress-bandwidth":"40M"}`)
		fileIs(t, f.PropertyPath("scheduler-k3s", app, "worker.pod"), `{"kubernetes.io/egress-bandwidth":"1073741824","kubernetes.io/ingress-bandwidth":"7M"}`)
		fileIs(t, f.PropertyPath("netshape", app, "owned-annotations.--global.pod"), `{"kubernetes.io/egress-bandwidth":"20M"}`)
		fileIs(t, f.PropertyPath("netshape", app, "owned-annotations.worker.pod"), `{"kubernetes.io/egress-bandwidth":"1073741824"}`)

		// Again: nothing changes (idempotent).
		before := readAll(t, f)
		if err := sync(t, f.Env, app); err != nil {
			t.Fatal(err)
		}
		if after := readAll(t, f); after != before {
			t.Fatalf("second sync changed files:\n%s\n->\n%s", before, after)
		}

		// Limits cleared: our keys go, the operator's stay; an emptied map
		// stays "{}" as PropertyMapDelete leaves it.
		for _, k := range []string{"_default_.limit.network-egress", "web.limit.network", "worker.limit.network-egress"} {
			os.Remove(f.PropertyPath("resource", app, k))
		}
		if err := sync(t, f.Env, app); err != nil {
			t.Fatal(err)
		}
		fileIs(t, f.PropertyPath("scheduler-k3s", app, "--global.pod"), `{"prometheus.io/scrape":"true"}`)
		fileIs(t, f.PropertyPath("scheduler-k3s", app, "web.pod"), `{}`)
		fileIs(t, f.PropertyPath("scheduler-k3s", app, "worker.pod"), `{"kubernetes.io/ingress-bandwidth":"7M"}`)
		for _, k := range []string{"owned-annotations.--global.pod", "owned-annotations.web.pod", "owned-annotations.worker.pod"} {
			if _, err := os.Stat(f.PropertyPath("netshape", app, k)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("record %s left behind: %v", k, err)
			}
		}
	}
}

func readAll(t *testing.T, f *dokkutest.Fixture) string {
	var b strings.Builder
	for _, plugin := range []string{"scheduler-k3s", "netshape"} {
		props := f.Env.Properties(plugin)
		all, err := props.GetAll("shop")
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range slices.Sorted(maps.Keys(all)) {
			b.WriteString(plugin + "/" + k + "=" + all[k] + "\n")
		}
	}
	return b.String()
}

// An operator's annotation on a key we would write: refused, one line,
// nothing written — and the same after the operator changes one of ours.
func TestSyncConflictChangesNothing(t *testing.T) {
	f, app := k3sApp(t, false)
	f.SetPodAnnotation(app, "", "kubernetes.io/egress-bandwidth", "3M")
	f.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	f.SetResource(app, "web", dokku.Limit, dokku.NetworkIngress, "5mbit")
	before := readAll(t, f)
	err := sync(t, f.Env, app)
	var fe *dokku.ForeignAnnotationError
	if !errors.As(err, &fe) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "kubernetes.io/egress-bandwidth=3M") {
		t.Fatalf("sync = %v, want a one-line ForeignAnnotationError naming the operator's value", err)
	}
	if after := readAll(t, f); after != before {
		t.Fatalf("a refused sync changed files:\n%s\n->\n%s", before, after)
	}
	if _, err := os.Stat(f.PropertyPath("scheduler-k3s", app, "web.pod")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("web.pod written by a refused sync: %v", err)
	}

	// Ours, then changed by hand: it is the operator's now.
	os.Remove(f.PropertyPath("scheduler-k3s", app, "--global.pod"))
	if err := sync(t, f.Env, app); err != nil {
		t.Fatal(err)
	}
	f.SetPodAnnotation(app, "", "kubernetes.io/egress-bandwidth", "9M")
	f.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, "30mbit")
	if err := sync(t, f.Env, app); !errors.As(err, &fe) {
		t.Fatalf("sync over a hand-changed annotation = %v, want ForeignAnnotationError", err)
	}
	os.Remove(f.PropertyPath("resource", app, "_default_.limit.network-egress"))
	if err := sync(t, f.Env, app); err != nil {
		t.Fatal(err)
	}
	fileIs(t, f.PropertyPath("scheduler-k3s", app, "--global.pod"), `{"kubernetes.io/egress-bandwidth":"9M"}`)
}

func TestSyncRefusesWhatKubeletRefuses(t *testing.T) {
	f, app := k3sApp(t, true)
	f.SetResource(app, "", dokku.Limit, dokku.NetworkIngress, "500bit")
	err := sync(t, f.Env, app)
	if err == nil || !strings.Contains(err.Error(), "below 1kbit") || !strings.Contains(err.Error(), "_default_.limit.network-ingress") {
		t.Fatalf("sync = %v, want an error naming the key and the 1kbit bound", err)
	}
	if _, err := os.Stat(f.PropertyPath("scheduler-k3s", app, "--global.pod")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("annotations written for a refused value: %v", err)
	}
}
