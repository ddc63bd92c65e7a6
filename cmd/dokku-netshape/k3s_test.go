package main

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/test/docker/dockertest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// wantOwner checks a file's owner is the fixture's Dokku user and group.
func wantOwner(t *testing.T, path string, uid, gid int) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s owned by %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, gid)
	}
}

// On a k3s app (selected for the app, or globally), set and clear write the
// pod annotations scheduler-k3s deploys, byte for byte as its
// annotations:set would, next to the operator's own, and attach nothing here
// (no root needed: nothing runs through sudo).
func TestK3sSetClearWritePodAnnotations(t *testing.T) {
	for _, global := range []bool{false, true} {
		e := newCLIEnv(t)
		e.AddApp("shop", "web", 1, "worker", 1)
		if global {
			e.SetScheduler(dokku.GlobalApp, "k3s")
		} else {
			e.SetScheduler(dokku.GlobalApp, "docker-local")
			e.SetScheduler("shop", "k3s")
		}
		e.SetPodAnnotation("shop", "", "prometheus.io/scrape", "true")
		e.SetPodAnnotation("shop", "worker", "kubernetes.io/ingress-bandwidth", "7M")

		o := mustRun(t, "dokku-netshape", "set", "shop", "--egress", "20mbit")
		want := "-----> Set app-wide network-egress limit for shop to 20mbit\n" +
			"-----> shop runs on k3s: pod annotations kubernetes.io/egress-bandwidth=20M (app-wide)\n" +
			"       enforced by the cluster's CNI at the next deploy (`dokku ps:rebuild shop`)\n"
		if o.stdout != want || o.stderr != "" {
			t.Errorf("set output\n%s\nwant stdout\n%s", o, want)
		}
		mustRun(t, "dokku-netshape", "set", "shop", "--process-type", "web", "--network", "5mbps")
		mustRun(t, "dokku-netshape", "set", "shop", "--process-type", "worker", "--egress", "1kibit")
		wantProp(t, e, "resource", "shop", "_default_.limit.network-egress", "20mbit")
		wantProp(t, e, "resource", "shop", "web.limit.network", "40mbit")
		wantProp(t, e, "scheduler-k3s", "shop", "--global.pod", `{"kubernetes.io/egress-bandwidth":"20M","prometheus.io/scrape":"true"}`)
		wantProp(t, e, "scheduler-k3s", "shop", "web.pod", `{"kubernetes.io/egress-bandwidth":"40M","kubernetes.io/ingress-bandwidth":"40M"}`)
		wantProp(t, e, "scheduler-k3s", "shop", "worker.pod", `{"kubernetes.io/egress-bandwidth":"1024","kubernetes.io/ingress-bandwidth":"7M"}`)
		wantProp(t, e, "netshape", "shop", "owned-annotations.--global.pod", `{"kubernetes.io/egress-bandwidth":"20M"}`)
		for _, p := range []string{"--global.pod", "web.pod", "worker.pod"} {
			wantOwner(t, e.PropertyPath("scheduler-k3s", "shop", p), os.Getuid(), os.Getgid())
		}

		// An operator's annotation on a key set would write: one line,
		// exit 1, not a byte changed (the resource key included).
		e.SetPodAnnotation("shop", "", "kubernetes.io/ingress-bandwidth", "3M")
		before := treeSnapshot(t, e.LibRoot)
		o = capture(t, "dokku-netshape", "set", "shop", "--ingress", "10mbit")
		if o.code == 0 || strings.Count(strings.TrimSpace(o.stderr), "\n") != 0 ||
			!strings.Contains(o.stderr, "kubernetes.io/ingress-bandwidth=3M") || !strings.Contains(o.stderr, "set by the operator") {
			t.Errorf("set over an operator annotation:\n%s", o)
		}
		if d := diffSnapshots(before, treeSnapshot(t, e.LibRoot)); len(d) > 0 {
			t.Errorf("refused set changed files: %v", d)
		}

		// Kubelet's bounds, not the local shaper's: 1kibit (worker,
		// above) is below the local 10kbit but a valid annotation; 500bit
		// is refused before anything is written.
		o = capture(t, "dokku-netshape", "set", "shop", "--egress", "500bit")
		if o.code == 0 || !strings.Contains(o.stderr, "below 1kbit, the smallest bandwidth Kubernetes accepts") {
			t.Errorf("set above kubelet's bound:\n%s", o)
		}

		// clear: our keys go; the operator's stay byte for byte.
		o = mustRun(t, "dokku-netshape", "clear", "shop", "--egress")
		if !strings.Contains(o.stdout, "enforced by the cluster's CNI at the next deploy (`dokku ps:rebuild shop`)") {
			t.Errorf("clear output:\n%s", o)
		}
		wantProp(t, e, "scheduler-k3s", "shop", "--global.pod", `{"kubernetes.io/ingress-bandwidth":"3M","prometheus.io/scrape":"true"}`)
		wantProp(t, e, "netshape", "shop", "owned-annotations.--global.pod", "")
		mustRun(t, "dokku-netshape", "clear", "shop", "--process-type", "web", "--all")
		wantProp(t, e, "scheduler-k3s", "shop", "web.pod", `{}`)
		wantProp(t, e, "scheduler-k3s", "shop", "worker.pod", `{"kubernetes.io/egress-bandwidth":"1024","kubernetes.io/ingress-bandwidth":"7M"}`)
	}
}

// Values stored by `dokku resource:limit` (no trigger fires) reach the pod
// annotations through apply, as post-deploy and the watcher run it; report
// shows them and who enforces them, and nothing is attached here.
func TestDockerK3sApplyAndReport(t *testing.T) {
	nettest.RequireRoot(t)
	dockertest.Need(t) // apply --all lists the local app's containers
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1, "worker", 1)
	e.SetScheduler(dokku.GlobalApp, "k3s")
	e.SetResource("shop", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	e.SetResource("shop", "worker", dokku.Limit, dokku.NetworkIngress, "50mbit")
	e.AddApp("zzz-local", "web", 1)
	e.SetScheduler("zzz-local", "docker-local")

	o := capture(t, "dokku-netshape", "report", "shop")
	if o.code != 0 || !strings.Contains(o.stdout, "k3s: limits not yet written as pod annotations: run `dokku netshape:apply shop`") {
		t.Errorf("report before apply:\n%s", o)
	}
	o = mustRun(t, "dokku-netshape", "apply", "--all")
	want := "-----> shop runs on k3s: pod annotations kubernetes.io/egress-bandwidth=20M (app-wide), kubernetes.io/ingress-bandwidth=50M (worker)\n" +
		"       enforced by the cluster's CNI at the next deploy (`dokku ps:rebuild shop`)\n"
	if o.stdout != want {
		t.Errorf("apply output\n%s\nwant stdout\n%s", o, want)
	}
	wantProp(t, e, "scheduler-k3s", "shop", "--global.pod", `{"kubernetes.io/egress-bandwidth":"20M"}`)
	wantProp(t, e, "scheduler-k3s", "shop", "worker.pod", `{"kubernetes.io/ingress-bandwidth":"50M"}`)
	wantProp(t, e, "scheduler-k3s", "zzz-local", "--global.pod", "")
	if st := e.shaperState(t); strings.Contains(st, "budget shop/") || strings.Contains(st, "attachment") {
		t.Errorf("shaper state for a k3s app:\n%s", st)
	}

	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"report-k3s-app.golden", []string{"report", "shop"}},
		{"report-k3s-app-json.golden", []string{"report", "shop", "--format", "json"}},
		{"report-k3s-all.golden", []string{"report"}},
	} {
		o := mustRun(t, append([]string{"dokku-netshape"}, tc.args...)...)
		golden(t, tc.golden, normStamps(o.stdout))
	}
}

// Run as root (apply through sudo, post-deploy, the watcher), the annotation
// maps and our records still belong to DOKKU_SYSTEM_USER/GROUP, mode 0600,
// or scheduler-k3s (running as that user) could not read them back.
func TestRootK3sAnnotationsOwnedByDokkuUser(t *testing.T) {
	nettest.RequireRoot(t)
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	e.SetScheduler("shop", "k3s")
	t.Setenv("DOKKU_SYSTEM_USER", "nobody")
	t.Setenv("DOKKU_SYSTEM_GROUP", "nogroup")
	mustRun(t, "dokku-netshape", "set", "shop", "--process-type", "web", "--egress", "3mbit")
	for _, p := range []string{
		e.PropertyPath("scheduler-k3s", "shop", "web.pod"),
		e.PropertyPath("netshape", "shop", "owned-annotations.web.pod"),
		e.Env.PropertyDir("scheduler-k3s", "shop"),
		e.Env.PluginConfigDir("scheduler-k3s"),
	} {
		wantOwner(t, p, 65534, 65534)
	}
	wantProp(t, e, "scheduler-k3s", "shop", "web.pod", `{"kubernetes.io/egress-bandwidth":"3M"}`)
}
