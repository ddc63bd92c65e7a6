package dokku_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/rate"
)

func TestResourceKey(t *testing.T) {
	if got := dokku.ResourceKey("", dokku.Limit, dokku.NetworkEgress); got != "_default_.limit.network-egress" {
		t.Errorf("ResourceKey = %q", got)
	}
	cases := []struct {
		key  string
		proc string
		kind dokku.ResourceKind
		typ  dokku.ResourceType
		ok   bool
	}{
		{"_default_.limit.network-egress", "_default_", dokku.Limit, dokku.NetworkEgress, true},
		{"web.reserve.memory", "web", dokku.Reserve, dokku.Memory, true},
		{"worker-2.limit.memory-swap", "worker-2", dokku.Limit, dokku.MemorySwap, true},
		{"build.limit.cpu", "build", dokku.Limit, dokku.CPU, true},
		{"web.limit.bogus", "", "", "", false},
		{"web.cap.cpu", "", "", "", false},
		{"limit.cpu", "", "", "", false},
		{".limit.cpu", "", "", "", false},
		{"cpu", "", "", "", false},
	}
	for _, c := range cases {
		proc, kind, typ, ok := dokku.ParseResourceKey(c.key)
		if proc != c.proc || kind != c.kind || typ != c.typ || ok != c.ok {
			t.Errorf("ParseResourceKey(%q) = %q %q %q %v", c.key, proc, kind, typ, ok)
		}
	}
}

func TestResourcePrecedence(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 2, "worker", 1, "clock", 0)
	set := func(proc string, kind dokku.ResourceKind, typ dokku.ResourceType, v string) {
		f.SetResource("myapp", proc, kind, typ, v)
	}
	set("", dokku.Limit, dokku.Network, "10mbit")
	set("", dokku.Limit, dokku.NetworkEgress, "20mbit")
	set("", dokku.Limit, dokku.Memory, "512")
	set("", dokku.Limit, dokku.CPU, "1")
	set("web", dokku.Limit, dokku.Memory, "1g")
	set("web", dokku.Limit, dokku.NetworkIngress, "50mbit")
	set("worker", dokku.Limit, dokku.Network, "5mbit")
	set("worker", dokku.Limit, dokku.CPU, "") // empty value = unset, as in Dokku
	set("", dokku.Reserve, dokku.Memory, "256")
	set("build", dokku.Limit, dokku.Memory, "2g")

	type want struct{ cpu, mem, in, out, inKey, outKey string }
	cases := map[string]want{
		"":          {"1", "512", "10mbit", "20mbit", "_default_.limit.network", "_default_.limit.network-egress"},
		"_default_": {"1", "512", "10mbit", "20mbit", "_default_.limit.network", "_default_.limit.network-egress"},
		"web":       {"1", "1g", "50mbit", "20mbit", "web.limit.network-ingress", "_default_.limit.network-egress"},
		// worker's own "network" beats _default_'s direction-specific egress key.
		"worker": {"1", "512", "5mbit", "5mbit", "worker.limit.network", "worker.limit.network"},
		"clock":  {"1", "512", "10mbit", "20mbit", "_default_.limit.network", "_default_.limit.network-egress"},
	}
	for proc, w := range cases {
		r, err := f.Env.ResourceLimits("myapp", proc)
		if err != nil {
			t.Fatalf("%s: %v", proc, err)
		}
		got := want{r.CPU.Value, r.Memory.Value, r.NetworkIngress.Value, r.NetworkEgress.Value, r.NetworkIngress.Key, r.NetworkEgress.Key}
		if got != w {
			t.Errorf("ResourceLimits(%q) = %+v, want %+v", proc, got, w)
		}
	}
	r, _ := f.Env.ResourceLimits("myapp", "web")
	if r.MemorySwap.IsSet() || r.NvidiaGPU.IsSet() {
		t.Errorf("unset values reported: %+v", r)
	}
	in, ok, err := r.IngressRate()
	if err != nil || !ok || in != 50*rate.Mbit {
		t.Errorf("IngressRate = %v %v %v", in, ok, err)
	}
	res, err := f.Env.Resources("myapp", "web", dokku.Reserve)
	if err != nil || res.Memory.Value != "256" || res.NetworkEgress.IsSet() {
		t.Errorf("reservations = %+v %v", res, err)
	}

	procs, err := f.Env.ResourceProcessTypes("myapp")
	if err != nil || !reflect.DeepEqual(procs, []string{"web", "worker"}) {
		t.Errorf("ResourceProcessTypes = %v %v (build and _default_ excluded)", procs, err)
	}
}

func TestResourceBadRateNamesKey(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp")
	f.SetResource("myapp", "", dokku.Limit, dokku.NetworkEgress, "20mbps ")
	r, err := f.Env.ResourceLimits("myapp", "")
	if err != nil {
		t.Fatal(err)
	}
	_, ok, err := r.EgressRate()
	if !ok || !errors.Is(err, rate.ErrWhitespace) {
		t.Fatalf("EgressRate: ok=%v err=%v", ok, err)
	}
	want := `resource _default_.limit.network-egress of app myapp: invalid rate "20mbps ": whitespace is not allowed`
	if err.Error() != want {
		t.Errorf("error = %q", err)
	}
	if _, ok, err := r.IngressRate(); ok || err != nil {
		t.Errorf("unset ingress: %v %v", ok, err)
	}
}

func TestSetResource(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp")
	if err := f.Env.SetResource("myapp", "", dokku.Limit, dokku.NetworkEgress, "20mbit"); err != nil {
		t.Fatal(err)
	}
	path := f.PropertyPath("resource", "myapp", "_default_.limit.network-egress")
	if got := f.Read(path); got != "20mbit" {
		t.Errorf("content %q", got)
	}
	if err := f.Env.SetResource("myapp", "", dokku.Limit, dokku.NetworkEgress, "clear"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := f.Env.Properties("resource").Get("myapp", "_default_.limit.network-egress"); ok {
		t.Error("clear did not delete")
	}
	if err := f.Env.SetResource("myapp", "web", dokku.Limit, "bandwidth", "1"); !errors.Is(err, dokku.ErrInvalidResourceType) {
		t.Errorf("bad type: %v", err)
	}
	if err := f.Env.SetResource("myapp", "web", "cap", dokku.CPU, "1"); !errors.Is(err, dokku.ErrInvalidResourceKind) {
		t.Errorf("bad kind: %v", err)
	}
	if err := f.Env.SetResource("myapp", "we.b", dokku.Limit, dokku.CPU, "1"); !errors.Is(err, dokku.ErrInvalidProcessType) {
		t.Errorf("bad proc: %v", err)
	}
}
