package containers_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
	"github.com/dokku-netshape/dokku-netshape/test/docker/dockertest"
)

func newClient(t *testing.T) *containers.Client {
	t.Helper()
	api := dockertest.Need(t)
	dockertest.EnsureImage(t, api)
	return containers.NewFromAPI(api)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func deploy(t *testing.T, c *containers.Client, app, proc string, n int, host func(*container.HostConfig)) string {
	t.Helper()
	return dockertest.Run(t, c.API(), dockertest.Spec{
		Name:   app + "." + proc + "." + strconv.Itoa(n),
		Labels: dockertest.DokkuLabels(app, proc, n, containers.TypeDeploy),
		Host:   host,
	})
}

func TestDockerListAppAndInspect(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app, other := dockertest.AppName(), dockertest.AppName()+"x"

	ids := map[string]string{
		"web.1":    deploy(t, c, app, "web", 1, nil),
		"web.2":    deploy(t, c, app, "web", 2, nil),
		"worker.1": deploy(t, c, app, "worker", 1, nil),
	}
	runID := dockertest.Run(t, c.API(), dockertest.Spec{
		Name: app + ".run.1234", Labels: dockertest.DokkuLabels(app, "", 0, containers.TypeRun)})
	otherID := deploy(t, c, other, "web", 1, nil)
	// A replaced container Dokku left behind (not running) must not be listed.
	dockertest.Run(t, c.API(), dockertest.Spec{
		Name: app + ".web.1.1764000000", Labels: dockertest.DokkuLabels(app, "web", 1, containers.TypeDeploy), NoStart: true})
	// Same app label value as a prefix must not match: label filters are exact.
	deploy(t, c, app+"-staging", "web", 1, nil)

	got, err := c.ListApp(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	wantNames := []string{app + ".web.1", app + ".web.2", app + ".worker.1"}
	if len(got) != len(wantNames) {
		t.Fatalf("ListApp: want %v, got %+v", wantNames, got)
	}
	for i, ct := range got {
		if ct.Name != wantNames[i] {
			t.Errorf("ListApp[%d] = %s, want %s (sorted by name)", i, ct.Name, wantNames[i])
		}
		dyno := strings.TrimPrefix(ct.Name, app+".")
		if ct.ID != ids[dyno] || ct.Dyno != dyno || ct.ProcessType != strings.Split(dyno, ".")[0] {
			t.Errorf("%s: id/dyno/process type wrong: %+v", ct.Name, ct)
		}
		if ct.App != app || ct.Type != containers.TypeDeploy || !ct.Running || ct.Pid <= 0 {
			t.Errorf("%s: %+v", ct.Name, ct)
		}
		if ct.SandboxKey == "" || ct.NetnsPath() != ct.SandboxKey {
			t.Errorf("%s: sandbox key %q, netns path %q", ct.Name, ct.SandboxKey, ct.NetnsPath())
		}
		if ct.HostNetwork || ct.Privileged || ct.HasNetAdmin || ct.SharesNetnsWith() != "" {
			t.Errorf("%s: flags wrong: %+v", ct.Name, ct)
		}
		if len(ct.Networks) != 1 || ct.Networks[0] != "bridge" {
			t.Errorf("%s: networks %v", ct.Name, ct.Networks)
		}
		if ct.Labels["org.label-schema.vendor"] != "dokku" {
			t.Errorf("%s: labels %v", ct.Name, ct.Labels)
		}
	}

	any, err := c.List(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	if len(any) != 4 {
		t.Errorf("List(app) any type: want 4, got %d", len(any))
	}
	runs, err := c.List(ctx, app, containers.TypeRun, containers.TypeCron)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 1 || runs[0].ID != runID || runs[0].Type != containers.TypeRun || runs[0].ProcessType != "" {
		t.Errorf("List(app, run, cron): %+v", runs)
	}

	all, err := c.ListAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ct := range all {
		seen[ct.ID] = true
		if ct.App == "" {
			t.Errorf("ListAll returned a container without the app label: %+v", ct)
		}
	}
	for _, id := range []string{ids["web.1"], ids["web.2"], ids["worker.1"], runID, otherID} {
		if !seen[id] {
			t.Errorf("ListAll misses %s", id)
		}
	}
	if _, err := c.ListApp(ctx, ""); err == nil {
		t.Error("ListApp(\"\") should be an error")
	}
}

func TestDockerInspectFlags(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app := dockertest.AppName()
	cases := []struct {
		name                                   string
		host                                   func(*container.HostConfig)
		privileged, netAdmin, hostNet, created bool
	}{
		{"plain", nil, false, false, false, false},
		{"netadmin", func(h *container.HostConfig) { h.CapAdd = []string{"NET_ADMIN"} }, false, true, false, false},
		{"capnetadmin", func(h *container.HostConfig) { h.CapAdd = []string{"cap_net_admin"} }, false, true, false, false},
		// Only created: runc cannot start CapAdd ALL or --privileged under a bounding set
		// that lacks a capability (this CI VM has no CAP_SYS_RESOURCE); the flags come from
		// the host config either way.
		{"all", func(h *container.HostConfig) { h.CapAdd = []string{"ALL"} }, false, true, false, true},
		{"allbutnetadmin", func(h *container.HostConfig) {
			h.CapAdd = []string{"ALL"}
			h.CapDrop = []string{"NET_ADMIN"}
		}, false, false, false, true},
		{"privileged", func(h *container.HostConfig) { h.Privileged = true }, true, true, false, true},
		{"hostnet", func(h *container.HostConfig) { h.NetworkMode = "host" }, false, false, true, false},
	}
	ids := map[string]string{}
	for i, tc := range cases {
		ids[tc.name] = dockertest.Run(t, c.API(), dockertest.Spec{
			Name:    app + "." + tc.name + "." + strconv.Itoa(i+1),
			Labels:  dockertest.DokkuLabels(app, tc.name, i+1, containers.TypeDeploy),
			Host:    tc.host,
			NoStart: tc.created,
		})
	}
	// Joins the plain container's netns.
	sharedID := dockertest.Run(t, c.API(), dockertest.Spec{
		Name:   app + ".shared.1",
		Labels: dockertest.DokkuLabels(app, "shared", 1, containers.TypeDeploy),
		Cmd:    []string{"/app", "-listen", ":8081"}, // :8080 is taken in that netns
		Host: func(h *container.HostConfig) {
			h.NetworkMode = container.NetworkMode("container:" + ids["plain"])
		},
	})
	for _, tc := range cases {
		ct, err := c.Inspect(ctx, ids[tc.name])
		if err != nil {
			t.Fatal(err)
		}
		if ct.Running == tc.created {
			t.Errorf("%s: running=%v", tc.name, ct.Running)
		}
		if ct.Privileged != tc.privileged || ct.HasNetAdmin != tc.netAdmin || ct.HostNetwork != tc.hostNet {
			t.Errorf("%s: privileged=%v netadmin=%v hostnet=%v, want %v %v %v", tc.name,
				ct.Privileged, ct.HasNetAdmin, ct.HostNetwork, tc.privileged, tc.netAdmin, tc.hostNet)
		}
	}
	sh, err := c.Inspect(ctx, sharedID)
	if err != nil {
		t.Fatal(err)
	}
	if !sh.Running || sh.SharesNetnsWith() != ids["plain"] || sh.SandboxKey != "" || sh.NetnsPath() != veth.PidNetns(sh.Pid) {
		t.Errorf("shared netns container: %+v, netns path %q", sh, sh.NetnsPath())
	}
	// Its netns is the plain container's: same veth, same host peer.
	pc, err := c.Inspect(ctx, ids["plain"])
	if err != nil {
		t.Fatal(err)
	}
	a, errA := veth.Interfaces(sh.NetnsPath())
	b, errB := veth.Interfaces(pc.NetnsPath())
	if errA != nil || errB != nil || len(a) != 1 || len(b) != 1 || a[0].HostIf != b[0].HostIf {
		t.Errorf("shared netns veths differ: %v %+v / %v %+v", errA, a, errB, b)
	}
	// By name works too.
	if ct, err := c.Inspect(ctx, app+".plain.1"); err != nil || ct.ID != ids["plain"] {
		t.Errorf("inspect by name: %v %+v", err, ct)
	}
}

func TestDockerGone(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app := dockertest.AppName()
	id := deploy(t, c, app, "web", 1, nil)
	ct, err := c.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	dockertest.Remove(t, c.API(), id)

	if _, err := c.Inspect(ctx, id); !errors.Is(err, containers.ErrGone) {
		t.Errorf("inspect removed: want ErrGone, got %v", err)
	}
	if err := c.UpdateResources(ctx, id, containers.Resources{NanoCPUs: 5e8}); !errors.Is(err, containers.ErrGone) {
		t.Errorf("update removed: want ErrGone, got %v", err)
	}
	if _, err := c.Inspect(ctx, "netshape-no-such-container"); !errors.Is(err, containers.ErrGone) {
		t.Errorf("inspect unknown: want ErrGone, got %v", err)
	}
	// Its netns went with it, by either path.
	for _, p := range []string{ct.SandboxKey, veth.PidNetns(ct.Pid)} {
		if _, err := veth.Interfaces(p); !errors.Is(err, veth.ErrGone) {
			t.Errorf("veth.Interfaces(%s) of a removed container: want veth.ErrGone, got %v", p, err)
		}
	}
	if got, err := c.ListApp(ctx, app); err != nil || len(got) != 0 {
		t.Errorf("ListApp after removal: %v %+v", err, got)
	}
}

// cgroupValue reads a memory/cpu limit from the container's cgroup (v1 or v2), so the test
// sees what the kernel enforces, not only what Docker recorded.
func cgroupValue(t *testing.T, pid int, v1ctrl, v1file, v2file string) string {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var p string
		switch {
		case parts[1] == "" && parts[0] == "0" && v2file != "":
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
				continue // hybrid: the v2 tree holds no controllers
			}
			p = filepath.Join("/sys/fs/cgroup", parts[2], v2file)
		case hasCtrl(parts[1], v1ctrl):
			p = filepath.Join("/sys/fs/cgroup", v1ctrl, parts[2], v1file)
		default:
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		return strings.TrimSpace(string(b))
	}
	t.Fatalf("no %s cgroup for pid %d", v1ctrl, pid)
	return ""
}

func hasCtrl(list, ctrl string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == ctrl {
			return true
		}
	}
	return false
}

func TestDockerUpdateResources(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app := dockertest.AppName()
	id := deploy(t, c, app, "web", 1, nil)
	ct, err := c.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ct.Resources != (containers.Resources{}) {
		t.Fatalf("fresh container has limits: %+v", ct.Resources)
	}

	if err := c.UpdateResources(ctx, id, containers.Resources{}); err != nil {
		t.Errorf("empty update: %v", err)
	}

	// Memory with swap, and CPUs.
	want := containers.Resources{Memory: 96 << 20, MemorySwap: 192 << 20, NanoCPUs: 5e8}
	if err := c.UpdateResources(ctx, id, want); err != nil {
		t.Fatal(err)
	}
	ct, err = c.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ct.Resources != want {
		t.Errorf("after update: %+v, want %+v", ct.Resources, want)
	}
	if got := cgroupValue(t, ct.Pid, "memory", "memory.limit_in_bytes", "memory.max"); got != strconv.Itoa(96<<20) {
		t.Errorf("kernel memory limit %s, want %d", got, 96<<20)
	}
	if got := cgroupValue(t, ct.Pid, "cpu", "cpu.cfs_quota_us", "cpu.max"); !strings.HasPrefix(got, "50000") {
		t.Errorf("kernel cpu quota %q, want 50000 per 100000", got)
	}

	// Only what is set changes.
	if err := c.UpdateResources(ctx, id, containers.Resources{NanoCPUs: 15e8}); err != nil {
		t.Fatal(err)
	}
	ct, _ = c.Inspect(ctx, id)
	want.NanoCPUs = 15e8
	if ct.Resources != want {
		t.Errorf("after cpu-only update: %+v, want %+v", ct.Resources, want)
	}

	// Memory above the current memory+swap without raising swap: Docker refuses (seen with
	// 20.10 on cgroup v1); whatever the daemon does, the result must match what is recorded.
	err = c.UpdateResources(ctx, id, containers.Resources{Memory: 256 << 20})
	ct, _ = c.Inspect(ctx, id)
	if err != nil {
		t.Logf("memory above memory-swap refused: %v", err)
		if errors.Is(err, containers.ErrGone) || !strings.Contains(err.Error(), id) || ct.Resources.Memory != 96<<20 {
			t.Errorf("refused update: err %v, memory now %d", err, ct.Resources.Memory)
		}
	} else if ct.Resources.Memory != 256<<20 {
		t.Errorf("accepted update not applied: %+v", ct.Resources)
	}

	// More CPUs than the host has.
	err = c.UpdateResources(ctx, id, containers.Resources{NanoCPUs: int64(runtime.NumCPU()+1) * 1e9})
	if err == nil || errors.Is(err, containers.ErrNotApplied) {
		t.Errorf("nano-cpus above host CPUs: want a refusal, got %v", err)
	}

	// Block IO weight: applied, or refused as ErrNotApplied when the daemon discards it.
	err = c.UpdateResources(ctx, id, containers.Resources{BlkioWeight: 300})
	ct, _ = c.Inspect(ctx, id)
	switch {
	case err == nil:
		if ct.Resources.BlkioWeight != 300 {
			t.Errorf("blkio weight update reported success but is %d", ct.Resources.BlkioWeight)
		}
		t.Log("blkio weight applied")
	case errors.Is(err, containers.ErrNotApplied):
		if ct.Resources.BlkioWeight != 0 {
			t.Errorf("ErrNotApplied but weight is %d", ct.Resources.BlkioWeight)
		}
		t.Logf("blkio weight not supported by this daemon: %v", err)
	default:
		t.Errorf("blkio weight: %v", err)
	}
}

// Lowering memory below what the container holds: the kernel cannot reclaim anonymous memory
// without swap. cgroup v1 refuses the write (Docker reports an error); cgroup v2 accepts it and
// the OOM killer ends the container.
func TestDockerUpdateMemoryBelowUsage(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app := dockertest.AppName()
	id := dockertest.Run(t, c.API(), dockertest.Spec{
		Name:   app + ".web.1",
		Labels: dockertest.DokkuLabels(app, "web", 1, containers.TypeDeploy),
		Cmd:    []string{"/app", "-hold-mib", "64"},
		Host: func(h *container.HostConfig) {
			h.Memory = 256 << 20
			h.MemorySwap = 256 << 20
		},
	})
	// Wait until the 64 MiB are resident.
	ct, err := c.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		usage, _ := strconv.ParseInt(cgroupValue(t, ct.Pid, "memory", "memory.usage_in_bytes", "memory.current"), 10, 64)
		if usage >= 64<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container never reached 64 MiB (usage %d)", usage)
		}
		time.Sleep(50 * time.Millisecond)
	}

	err = c.UpdateResources(ctx, id, containers.Resources{Memory: 16 << 20, MemorySwap: 16 << 20})
	after, ierr := c.Inspect(ctx, id)
	if ierr != nil {
		t.Fatal(ierr)
	}
	if err != nil {
		t.Logf("refused: %v", err)
		if after.Resources.Memory != 256<<20 || !after.Running {
			t.Errorf("after a refused update: %+v", after)
		}
		return
	}
	// Accepted: then the container must not be running with 64 MiB inside a 16 MiB limit.
	time.Sleep(time.Second)
	after, _ = c.Inspect(ctx, id)
	if after.Running {
		t.Errorf("memory limit below usage accepted and container still running: %+v", after)
	}
}

func TestDockerVethInterfaces(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app := dockertest.AppName()
	netID, netName := dockertest.Network(t, c.API())
	id := deploy(t, c, app, "web", 1, nil)
	hostID := deploy(t, c, app, "hostnet", 1, func(h *container.HostConfig) { h.NetworkMode = "host" })
	noneID := deploy(t, c, app, "nonet", 1, func(h *container.HostConfig) { h.NetworkMode = "none" })

	ct, err := c.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	pairs, err := veth.Interfaces(ct.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != 1 {
		t.Fatalf("want one veth, got %+v", pairs)
	}
	p := pairs[0]
	if p.ContainerIf.Name != "eth0" || p.Peer != veth.PeerHost || p.HostMaster != "docker0" || !strings.HasPrefix(p.HostIf.Name, "veth") {
		t.Errorf("default bridge: %+v", p)
	}
	// Same answer through /proc/PID.
	byPid, err := veth.Interfaces(veth.PidNetns(ct.Pid))
	if err != nil || len(byPid) != 1 || byPid[0].HostIf != p.HostIf || byPid[0].ContainerIf != p.ContainerIf {
		t.Errorf("via /proc/%d: %v %+v", ct.Pid, err, byPid)
	}

	// A second network: a second interface, its peer on that network's bridge.
	dockertest.Connect(t, c.API(), netID, id)
	ct, err = c.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(ct.Networks) != 2 || ct.Networks[0] != "bridge" || ct.Networks[1] != netName {
		t.Errorf("networks after connect: %v", ct.Networks)
	}
	pairs, err = veth.Interfaces(ct.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != 2 {
		t.Fatalf("after connect: want two veths, got %+v", pairs)
	}
	masters := map[string]string{}
	for _, p := range pairs {
		if p.Peer != veth.PeerHost {
			t.Errorf("peer not on host: %+v", p)
		}
		masters[p.ContainerIf.Name] = p.HostMaster
	}
	if masters["eth0"] != "docker0" || masters["eth1"] != "br-"+netID[:12] {
		t.Errorf("masters %v, want eth0→docker0, eth1→br-%s", masters, netID[:12])
	}

	hc, err := c.Inspect(ctx, hostID)
	if err != nil {
		t.Fatal(err)
	}
	if !hc.HostNetwork {
		t.Errorf("host network container: %+v", hc)
	}
	for _, path := range []string{hc.NetnsPath(), veth.PidNetns(hc.Pid)} {
		if _, err := veth.Interfaces(path); !errors.Is(err, veth.ErrHostNetwork) {
			t.Errorf("host network via %s: want ErrHostNetwork, got %v", path, err)
		}
	}

	nc, err := c.Inspect(ctx, noneID)
	if err != nil {
		t.Fatal(err)
	}
	if pairs, err := veth.Interfaces(nc.NetnsPath()); err != nil || len(pairs) != 0 {
		t.Errorf("--network none: want no veths and no error, got %v %+v", err, pairs)
	}
}

func TestDockerEvents(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app := dockertest.AppName()
	netID, netName := dockertest.Network(t, c.API())

	ectx, cancel := context.WithCancel(ctx)
	evs, errs := c.Events(ectx)

	// Not Dokku's: must produce no events.
	stranger := dockertest.Run(t, c.API(), dockertest.Spec{Name: app + "-stranger"})
	id := deploy(t, c, app, "web", 1, nil)
	dockertest.Connect(t, c.API(), netID, stranger)
	dockertest.Connect(t, c.API(), netID, id)
	dockertest.Remove(t, c.API(), id)

	// Container and network events come on two Docker streams, so only the order within each
	// is fixed: start, die, destroy; and connects (bridge at start, then netName) before the
	// disconnects of the removal.
	var got []containers.Event
	timeout := time.After(20 * time.Second)
loop:
	for {
		select {
		case e, ok := <-evs:
			if !ok {
				t.Fatalf("events closed early: %v", <-errs)
			}
			if e.ID == stranger {
				t.Errorf("event for a container without Dokku labels: %+v", e)
			}
			if e.App != app {
				continue // other tests' containers
			}
			got = append(got, e)
			if e.Action == containers.ActionDestroy {
				break loop
			}
		case err := <-errs:
			t.Fatalf("events: %v", err)
		case <-timeout:
			t.Errorf("no destroy event within 20s")
			break loop
		}
	}
	var lifecycle, net []string
	for _, e := range got {
		if e.ID != id || e.ContainerType != containers.TypeDeploy || e.ProcessType != "web" || e.Time.IsZero() {
			t.Errorf("event fields: %+v", e)
		}
		switch e.Action {
		case containers.ActionConnect, containers.ActionDisconnect:
			net = append(net, e.Action+":"+e.Network)
		default:
			lifecycle = append(lifecycle, e.Action)
		}
	}
	if strings.Join(lifecycle, ",") != "start,die,destroy" {
		t.Errorf("container events %v, want start,die,destroy", lifecycle)
	}
	// Disconnects may be missed: the container can be gone before they are inspected.
	if len(net) < 2 || net[0] != "connect:bridge" || net[1] != "connect:"+netName {
		t.Errorf("network events %v, want connect:bridge, connect:%s first", net, netName)
	}
	t.Logf("events: %v / %v", lifecycle, net)

	cancel()
	select {
	case err := <-errs:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error after cancel")
	}
	// Both channels close.
	for range evs {
	}
	if _, ok := <-errs; ok {
		t.Error("error channel not closed")
	}
}

// The start event and the container's cgroup give what an inspect would: the
// process (so the netns), the name and the Dokku labels.
func TestDockerFromStartMatchesInspect(t *testing.T) {
	c := newClient(t)
	ctx := ctxT(t)
	app := dockertest.AppName()
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, errs := c.Events(ectx)
	id := deploy(t, c, app, "web", 1, nil)
	timeout := time.After(20 * time.Second)
	for {
		select {
		case e := <-evs:
			if e.App != app || e.Action != containers.ActionStart {
				continue
			}
			got, err := containers.FromStart(containers.CgroupRoot, e)
			if err != nil {
				t.Fatalf("FromStart: %v", err)
			}
			want, err := c.Inspect(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != want.ID || got.Name != want.Name || got.App != want.App || got.Type != want.Type ||
				got.ProcessType != want.ProcessType || got.Pid != want.Pid || !got.Running {
				t.Fatalf("from the event and cgroup %+v\nfrom inspect %+v", got, want)
			}
			return
		case err := <-errs:
			t.Fatalf("events: %v", err)
		case <-timeout:
			t.Fatal("no start event within 20s")
		}
	}
}
