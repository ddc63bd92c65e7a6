package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/docker/docker/client"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
	"github.com/dokku-netshape/dokku-netshape/test/docker/dockertest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// dokkuApp runs one container labelled as Dokku's APP.web.1 and records it
// in the fixture as the docker-local scheduler would.
func dokkuApp(t *testing.T, e *cliEnv, cli *client.Client) (app, id string, pid int) {
	t.Helper()
	app = dockertest.AppName()
	id = dockertest.Run(t, cli, dockertest.Spec{Name: app + ".web.1", Labels: dockertest.DokkuLabels(app, "web", 1, "deploy")})
	e.AddApp(app, "web", 1)
	e.AddContainer(app, "web", 1, id)
	info, err := cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if info.State == nil || info.State.Pid == 0 {
		t.Fatalf("container %s not running: %+v", id, info.State)
	}
	return app, id, info.State.Pid
}

func TestDockerSetMemoryCPUsLive(t *testing.T) {
	cli := dockertest.Need(t)
	e := newCLIEnv(t)
	app, id, _ := dokkuApp(t, e, cli)
	before, err := cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if before.HostConfig.Memory != 0 || before.HostConfig.NanoCPUs != 0 {
		t.Fatalf("container starts limited: memory %d cpus %d", before.HostConfig.Memory, before.HostConfig.NanoCPUs)
	}
	o := capture(t, "dokku-netshape", "set", app, "--memory", "64m", "--cpus", "0.5")
	want := fmt.Sprintf("-----> Set app-wide memory limit 64m for %s\n-----> Set app-wide cpu limit 0.5 for %s\n"+
		"-----> %s.web.1 updated live: memory 64m, memory-swap 128m, cpus 0.5\n", app, app, app)
	if o.code != 0 || o.stdout != want || o.stderr != "" {
		t.Fatalf("set:\n%s\nwant stdout\n%s", o, want)
	}
	after, err := cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if hc := after.HostConfig; hc.Memory != 64<<20 || hc.MemorySwap != 128<<20 || hc.NanoCPUs != 5e8 {
		t.Fatalf("container after set: memory %d swap %d nanocpus %d", hc.Memory, hc.MemorySwap, hc.NanoCPUs)
	}
	wantProp(t, e, "resource", app, "_default_.limit.memory", "64m")
	wantProp(t, e, "resource", app, "_default_.limit.cpu", "0.5")

	// Raising memory above the current swap limit changes both together.
	mustRun(t, "dokku-netshape", "set", app, "--memory", "256m", "--memory-swap", "512m")
	after, err = cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if hc := after.HostConfig; hc.Memory != 256<<20 || hc.MemorySwap != 512<<20 || hc.NanoCPUs != 5e8 {
		t.Fatalf("container after second set: memory %d swap %d nanocpus %d", hc.Memory, hc.MemorySwap, hc.NanoCPUs)
	}
}

// qdiscs lists the qdiscs of every device in a namespace ("" = host, only dev).
func qdiscs(t *testing.T, pid int, dev string) string {
	t.Helper()
	if pid == 0 {
		return nettest.Run(t, "tc", "qdisc", "show", "dev", dev)
	}
	return nettest.Run(t, "nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "tc", "qdisc", "show")
}

// On this host (no sch_fq) an egress limit is enforced degraded: the budget
// policed by the program itself, no pacing and no queueing qdisc. set must say
// so on the device's line, exit 0, add nothing to either veth end but the
// clsact hook that holds our filter, and report must show the same; clear
// must leave both ends exactly as they were.
func TestDockerSetEgressWithoutFqDegrades(t *testing.T) {
	nettest.RequireRoot(t)
	if nettest.HaveFq(t) {
		t.Skip("kernel has sch_fq: this is the fq-missing path of the dev/CI host")
	}
	cli := dockertest.Need(t)
	e := newCLIEnv(t)
	app, _, pid := dokkuApp(t, e, cli)
	pairs, err := veth.Interfaces(veth.PidNetns(pid))
	if err != nil || len(pairs) != 1 {
		t.Fatalf("container interfaces: %v %v", pairs, err)
	}
	eth, host := pairs[0].ContainerIf.Name, pairs[0].HostIf.Name
	inside, outside := qdiscs(t, pid, ""), qdiscs(t, 0, host)

	o := capture(t, "dokku-netshape", "set", app, "--egress", "20mbit")
	t.Logf("%s", o)
	if o.code != 0 {
		t.Fatalf("set --egress without fq exited %d, want 0 (in force, degraded):\n%s", o.code, o)
	}
	// Enforced by policing: the change line, then the caveat and its fix once each.
	wantOut := fmt.Sprintf("-----> %s.web.1 %s egress: limited to 20mbit", app, eth)
	wantErr := fmt.Sprintf(" !     %s.web.1 %s egress: %s", app, eth, shaper.DegradedNoFq)
	if !strings.Contains(o.stdout, wantOut) || strings.Count(o.stderr, wantErr) != 1 || strings.Count(o.stderr, " !     To fix: ") != 1 ||
		strings.Contains(o.stderr, "NOT ENFORCED") {
		t.Errorf("output does not say the device is limited, degraded, once:\n%s\nwant stdout to contain %q and stderr %q once", o, wantOut, wantErr)
	}
	wantOnlyClsactAdded(t, "container", inside, qdiscs(t, pid, ""))
	wantOnlyClsactAdded(t, "host veth "+host, outside, qdiscs(t, 0, host))
	wantProp(t, e, "resource", app, "_default_.limit.network-egress", "20mbit")
	if st := e.shaperState(t); strings.Count(st, "attachment") != 2 {
		t.Errorf("want the degraded shaper and its backstop recorded:\n%s", st)
	}
	rep := mustRun(t, "dokku-netshape", "report", app, "--netshape-shaped")
	if want := fmt.Sprintf("%s.web.1/%s egress (%s)", app, eth, shaper.DegradedNoFq); !strings.Contains(rep.stdout, want) {
		t.Errorf("report --netshape-shaped:\n%s\nwant it to contain %q", rep.stdout, want)
	}
	mustRun(t, "dokku-netshape", "clear", app, "--egress")
	if got := qdiscs(t, pid, ""); got != inside {
		t.Errorf("container qdiscs after clear:\n%s\n---\n%s", inside, got)
	}
	if got := qdiscs(t, 0, host); got != outside {
		t.Errorf("host veth %s qdiscs after clear:\n%s\n---\n%s", host, outside, got)
	}
}

// wantOnlyClsactAdded: after is before plus one clsact qdisc (the hook our
// cls_bpf filters hang from), nothing that queues.
func wantOnlyClsactAdded(t *testing.T, where, before, after string) {
	t.Helper()
	var rest []string
	added := 0
	for _, line := range strings.Split(after, "\n") {
		if strings.HasPrefix(line, "qdisc clsact ffff:") {
			added++
			continue
		}
		rest = append(rest, line)
	}
	if added != 1 || strings.Join(rest, "\n") != before {
		t.Errorf("%s qdiscs: want the old ones plus one clsact:\n%s\n---\n%s", where, before, after)
	}
}

// A blkio weight the daemon cannot apply (cgroup v1 without CFQ, as on this
// host) must not make later sets of other limits fail.
func TestDockerBlkioDoesNotBlockLaterSets(t *testing.T) {
	cli := dockertest.Need(t)
	e := newCLIEnv(t)
	app, id, _ := dokkuApp(t, e, cli)
	o := capture(t, "dokku-netshape", "set", app, "--blkio-weight", "300")
	if o.code != 0 && !strings.Contains(o.stderr, "docker did not apply the update: blkio-weight is 0") {
		t.Fatalf("set --blkio-weight:\n%s", o)
	}
	wantProp(t, e, "netshape", app, "owned-docker-options._default_.deploy", "--blkio-weight=300\n")
	o = mustRun(t, "dokku-netshape", "set", app, "--cpus", "0.25")
	if want := fmt.Sprintf("-----> Set app-wide cpu limit 0.25 for %s\n-----> %s.web.1 updated live: cpus 0.25\n", app, app); o.stdout != want || o.stderr != "" {
		t.Fatalf("set --cpus after blkio:\n%s\nwant\n%s", o, want)
	}
	o = mustRun(t, "dokku-netshape", "set", app, "--device-write-bps", "/dev/sda:1mb")
	if !strings.Contains(o.stdout, "device read/write limits apply at the next deploy (`dokku ps:rebuild "+app+"`)") {
		t.Fatalf("no next-deploy note:\n%s", o)
	}
	info, err := cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if info.HostConfig.NanoCPUs != 25e7 || len(info.HostConfig.BlkioDeviceWriteBps) != 0 {
		t.Fatalf("container: cpus %d device limits %v", info.HostConfig.NanoCPUs, info.HostConfig.BlkioDeviceWriteBps)
	}
}

// normStamps replaces report's sampling moments (new on every run) by TIME,
// and the traffic it counted by N: on a kernel without fq the limits are
// enforced (policing), so the stray packets of a new veth (IPv6 neighbour
// discovery) are counted, a different few on every run.
func normStamps(s string) string {
	s = regexp.MustCompile(`"\d{4}-\d\d-\d\dT[0-9:.]+Z"`).ReplaceAllString(s, `"TIME"`)
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`("(?:rate_bits_per_second|netshape-egress-rate|netshape-ingress-rate|bytes|packets|delayed_packets|dropped_packets|ce_marked_packets|express_packets)": )[0-9.e+-]+`),
		regexp.MustCompile(`(Netshape (?:egress|ingress) rate:\s+)\S+`),
	} {
		s = re.ReplaceAllString(s, "${1}N")
	}
	s = regexp.MustCompile(`\d+( bytes| packets)`).ReplaceAllString(s, "N$1")
	s = regexp.MustCompile(`[0-9.]+ [kMG]?bit/s of`).ReplaceAllString(s, "N bit/s of")
	return regexp.MustCompile(`\(\d+%\)`).ReplaceAllString(s, "(N%)")
}

// TestDockerReport checks report's three formats against golden files, for
// an app with limits and one running container (not shaped: the kernel has
// no fq, and report says that is why). The random app name is replaced by APP.
func TestDockerReport(t *testing.T) {
	nettest.RequireRoot(t)
	if nettest.HaveFq(t) {
		t.Skip("the goldens hold the causes of a kernel without sch_fq (the dev/CI host); with fq: TestRootFqOutputGolden")
	}
	cli := dockertest.Need(t)
	e := newCLIEnv(t)
	app, _, _ := dokkuApp(t, e, cli)
	e.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	e.SetResource(app, "web", dokku.Limit, dokku.NetworkIngress, "50mbit")
	e.SetResource(app, "", dokku.Limit, dokku.Memory, "256m")
	e.SetResource(app, "", dokku.Limit, dokku.CPU, "0.5")
	if err := e.Env.DockerOptions().SetOwned(app, "_default_", []string{"--blkio-weight=300"}); err != nil {
		t.Fatal(err)
	}
	e.AddApp("zzz-idle", "web", 1) // no limits, no containers
	norm := func(s string) string { return normStamps(strings.ReplaceAll(s, app, "APP")) }
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"report-app.golden", []string{"report", app}},
		{"report-app-json.golden", []string{"report", app, "--format", "json"}},
		{"report-app-egress.golden", []string{"report", app, "--netshape-egress"}},
		{"report-app-process-limits.golden", []string{"report", "--netshape-process-limits", app}},
		{"report-all.golden", []string{"report"}},
		{"report-all-json.golden", []string{"report", "--format=json"}},
	} {
		o := mustRun(t, append([]string{"dokku-netshape"}, tc.args...)...)
		if o.stderr != "" {
			t.Errorf("%v: stderr %q", tc.args, o.stderr)
		}
		golden(t, tc.golden, norm(o.stdout))
	}
	// Dokku's `report` trigger and the subcommand print the same.
	want := norm(mustRun(t, "dokku-netshape", "report", app).stdout)
	if got := norm(mustRun(t, pluginDir+"report", app).stdout); got != want {
		t.Errorf("report trigger:\n%s\nwant\n%s", got, want)
	}
	if got := norm(mustRun(t, pluginDir+"subcommands/report", "netshape:report", app).stdout); got != want {
		t.Errorf("netshape:report:\n%s\nwant\n%s", got, want)
	}
	if st := e.shaperState(t); strings.Contains(st, "budget") {
		t.Errorf("report changed the shaper:\n%s", st)
	}
}

// post-deploy APP "" "" TAG, as Dokku passes it: an app without network
// limits is a no-op; one whose limit can only be enforced degraded (no fq
// here) is warned about per device but does not fail the deploy.
func TestDockerPostDeploy(t *testing.T) {
	nettest.RequireRoot(t)
	cli := dockertest.Need(t)
	e := newCLIEnv(t)
	app, _, pid := dokkuApp(t, e, cli)
	o := mustRun(t, pluginDir+"post-deploy", app, "", "", "latest")
	if o.stdout != "" || o.stderr != "" {
		t.Errorf("post-deploy without limits printed:\n%s", o)
	}
	if st := e.shaperState(t); strings.Contains(st, "budget") || strings.Contains(st, "attachment") {
		t.Errorf("post-deploy without limits changed the shaper:\n%s", st)
	}
	if nettest.HaveFq(t) {
		return // the rest is the fq-missing path of the dev/CI host
	}
	e.SetResource(app, "", dokku.Limit, dokku.Network, "10mbit")
	inside := qdiscs(t, pid, "")
	o = capture(t, pluginDir+"post-deploy", app, "", "", "latest")
	if o.code != 0 {
		t.Fatalf("post-deploy failed the deploy:\n%s", o)
	}
	for _, want := range []string{
		" !     " + app + ".web.1 eth0 egress: " + shaper.DegradedNoFq,
		" !     " + app + ".web.1 eth0 ingress: " + shaper.DegradedNoFq,
	} {
		if strings.Count(o.stderr, want) != 1 {
			t.Errorf("post-deploy stderr lacks %q once:\n%s", want, o.stderr)
		}
	}
	wantOnlyClsactAdded(t, "container", inside, qdiscs(t, pid, ""))
}
