package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
	"github.com/dokku-netshape/dokku-netshape/test/docker/dockertest"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// TestDockerOutputGolden runs set, apply, post-deploy, report and clear
// against real containers in dockerd, each cause made for real: web.1 plain
// (this kernel has no fq), web.2 on the host network, web.3 with a foreign
// htb root qdisc on its host veth, and web.1's predecessor still running
// under Dokku's retiring name APP.web.1.<epoch>. Stdout, stderr and the exit
// status of each are golden files (app and veth names normalised).
func TestDockerOutputGolden(t *testing.T) {
	nettest.RequireRoot(t)
	if nettest.HaveFq(t) {
		t.Skip("the goldens hold the causes of a kernel without sch_fq (the dev/CI host); with fq: TestRootFqOutputGolden")
	}
	cli := dockertest.Need(t)
	e := newCLIEnv(t)
	app := dockertest.AppName()
	e.AddApp(app, "web", 3)
	run := func(name string, n int, host func(*container.HostConfig)) (string, int) {
		id := dockertest.Run(t, cli, dockertest.Spec{Name: name, Labels: dockertest.DokkuLabels(app, "web", n, "deploy"), Host: host})
		info, err := cli.ContainerInspect(context.Background(), id)
		if err != nil || info.State == nil || info.State.Pid == 0 {
			t.Fatalf("container %s: %v %+v", name, err, info.State)
		}
		return id, info.State.Pid
	}
	id1, pid1 := run(app+".web.1", 1, nil)
	id2, _ := run(app+".web.2", 2, func(hc *container.HostConfig) { hc.NetworkMode = "host" })
	id3, pid3 := run(app+".web.3", 3, nil)
	_, pidOld := run(app+".web.1.1764460800", 1, nil)
	for n, id := range []string{id1, id2, id3} {
		e.AddContainer(app, "web", n+1, id)
	}
	names := map[string]string{app: "APP"}
	hostVeth := func(pid int, as string) string {
		pairs, err := veth.Interfaces(veth.PidNetns(pid))
		if err != nil || len(pairs) != 1 {
			t.Fatalf("interfaces of pid %d: %v %v", pid, pairs, err)
		}
		names[pairs[0].HostIf.Name] = as
		return pairs[0].HostIf.Name
	}
	hostVeth(pid1, "VETH1")
	foreignVeth := hostVeth(pid3, "VETH3")
	hostVeth(pidOld, "VETHOLD")
	nettest.Run(t, "tc", "qdisc", "add", "dev", foreignVeth, "root", "handle", "1:", "htb")
	t.Cleanup(func() { nettest.Output("tc", "qdisc", "del", "dev", foreignVeth, "root") })

	norm := func(s string) string {
		for from, to := range names {
			s = strings.ReplaceAll(s, from, to)
		}
		return sortRemoved(normStamps(s))
	}
	step := func(file string, wantCode int, argv ...string) outcome {
		t.Helper()
		o := capture(t, argv...)
		if o.code != wantCode {
			t.Errorf("%q: exit %d, want %d\n%s", argv, o.code, wantCode, o)
		}
		golden(t, file, norm(o.String()))
		return o
	}
	o := step("output-set.golden", exitNotEnforced, "dokku-netshape", "set", app, "--egress", "20mbit", "--ingress", "50mbit")
	for _, notThere := range []string{".1764460800", "VETHOLD"} {
		if strings.Contains(norm(o.stdout+o.stderr), notThere) {
			t.Errorf("set reports the retiring container (%s):\n%s", notThere, o)
		}
	}
	step("output-apply.golden", exitNotEnforced, "dokku-netshape", "apply", app)
	step("output-post-deploy.golden", 0, pluginDir+"post-deploy", app, "", "", "latest")
	step("output-report.golden", 0, "dokku-netshape", "report", app)
	step("output-report-json.golden", 0, "dokku-netshape", "report", app, "--format", "json")
	step("output-clear-ingress.golden", exitNotEnforced, "dokku-netshape", "clear", app, "--ingress")
	step("output-clear-ingress-again.golden", exitNotEnforced, "dokku-netshape", "clear", app, "--ingress")
	// Kind and handle as they were (its packet counters move with traffic).
	if got := nettest.Run(t, "tc", "qdisc", "show", "dev", foreignVeth, "root"); !strings.HasPrefix(got, "qdisc htb 1: root") || strings.Count(got, "qdisc ") != 1 {
		t.Errorf("the foreign root qdisc changed without --force:\n%s", got)
	}
	wantProp(t, e, "resource", app, "_default_.limit.network-egress", "20mbit")
	if _, _, ok := prop(t, e, "resource", app, "_default_.limit.network-ingress"); ok {
		t.Error("clear --ingress left the ingress limit")
	}
}

// renderResult on a result holding each kind of line: what changed (the
// backstop folded into its egress line), what is unchanged (no line), the
// problems (a line each on stderr, each fix once), a retiring or stopped
// container (no line), a removed attachment, a warning; and a re-apply that
// changed nothing (one summary line).
func TestRenderResultGolden(t *testing.T) {
	app := "shop"
	wants := []reconcile.Want{
		{Scope: reconcile.DefaultScope, Direction: reconcile.Egress, Budget: shaper.Budget{Name: "shop/_default_/egress", Rate: 20e6}},
		{Scope: "web", Direction: reconcile.Ingress, Budget: shaper.Budget{Name: "shop/web/ingress", Rate: 50e6}},
	}
	shaped := func(ctr, dir string, hook shaper.Hook, dev string, changed bool) reconcile.Shaped {
		b := "shop/_default_/egress"
		if dir == "ingress" {
			b = "shop/web/ingress"
		}
		return reconcile.Shaped{Container: ctr, Interface: "eth0", Direction: reconcile.Direction(dir), Budget: b,
			Hook: hook, Device: shaper.Device{Name: dev}, Changed: changed}
	}
	noFq := reconcile.NoFq(app)
	// What the datapath's policing-only mode will mark (the lead wires it).
	degraded := func(s reconcile.Shaped) reconcile.Shaped {
		c := reconcile.Degraded(app)
		s.Note = &c
		return s
	}
	problem := func(ctr, dir string, c reconcile.Cause) reconcile.Unshaped {
		return reconcile.Unshaped{Container: ctr, Interface: "eth0", Direction: reconcile.Direction(dir), Cause: c}
	}
	res := reconcile.Result{App: app, Wants: wants,
		Shaped: []reconcile.Shaped{
			shaped("shop.web.1", "egress", shaper.HookShape, "eth0", true),
			shaped("shop.web.1", "egress", shaper.HookPolice, "veth1", true),
			shaped("shop.web.1", "ingress", shaper.HookShape, "veth1", false),
			shaped("shop.web.2", "egress", shaper.HookShape, "eth0", false),
			shaped("shop.web.2", "egress", shaper.HookPolice, "veth2", true),
			degraded(shaped("shop.web.7", "ingress", shaper.HookShape, "veth7", false)),
		},
		Unshaped: []reconcile.Unshaped{
			problem("shop.web.3", "egress", noFq),
			problem("shop.web.4", "egress", noFq),
			{Container: "shop.web.5", Cause: reconcile.Cause{Code: reconcile.CodeHostNetwork, Problem: true, Summary: "host network", Action: "deploy it without --network host"}},
			{Container: "shop.web.1.1764460800", Cause: reconcile.Cause{Code: reconcile.CodeRetiring, Summary: "retiring"}},
			{Container: "shop.web.6", Cause: reconcile.Cause{Code: reconcile.CodeNotRunning, Summary: "not running"}},
		},
		Removed:  []shaper.Attachment{{Device: shaper.Device{Name: "veth9"}, Budget: "shop/worker/ingress"}},
		Warnings: []string{"shop.web.1 is privileged or has NET_ADMIN: it can remove its own egress limit"},
	}
	var out, errw bytes.Buffer
	renderResult(&out, &errw, res)
	// The fix for a missing fq depends on this kernel (a module to load, or a kernel to boot).
	fqFix := regexp.MustCompile("boot a kernel with sch_fq \\(CONFIG_NET_SCH_FQ; [^)]*\\)|load it: `modprobe sch_fq` \\([^)]*\\)")
	golden(t, "render-apply-mixed.golden", fqFix.ReplaceAllString("stdout:\n"+out.String()+"stderr:\n"+errw.String(), "<give this kernel sch_fq>"))
	if n := strings.Count(errw.String(), "To fix: "+noFq.Action); n != 1 {
		t.Errorf("the no-fq fix said %d times, want once", n)
	}

	out.Reset()
	errw.Reset()
	for i := range res.Shaped {
		res.Shaped[i].Changed = false
	}
	res.Shaped = res.Shaped[:5]                                          // not the degraded one: said every time
	res.Unshaped, res.Removed, res.Warnings = res.Unshaped[3:], nil, nil // only a retiring and a stopped container
	renderResult(&out, &errw, res)
	golden(t, "render-apply-unchanged.golden", "stdout:\n"+out.String()+"stderr:\n"+errw.String())
	if errw.Len() != 0 || strings.Count(out.String(), "\n") != 1 {
		t.Errorf("an apply that changed nothing printed more than one line:\n%s%s", out.String(), errw.String())
	}
}

// The exit status: 1 when something was refused and nothing changed, 3
// when what is saved is not (all) in force — also through sudo (the root
// side's own status) and when several apps all end that way.
func TestExitStatus(t *testing.T) {
	ne := notEnforced(errors.New("x"))
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("bad input"), exitRefused},
		{ne, exitNotEnforced},
		{fmt.Errorf("apply: %w", ne), exitNotEnforced},
		{exitError{code: exitNotEnforced}, exitNotEnforced},
		{notEnforced(exitError{code: 1}), exitNotEnforced},
		{errors.Join(ne, notEnforced(errors.New("y"))), exitNotEnforced},
		{errors.Join(ne, errors.New("refused")), exitRefused},
		{exitError{code: exitNotImplemented}, exitNotImplemented},
	} {
		if got := exitStatus(tc.err); got != tc.want {
			t.Errorf("exitStatus(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	// Documented where a user looks: --help (goldens) and the man page. Each
	// in a process of its own, as a user runs them: urfave/cli's help command
	// is shared by every app in a process, and once a help has run, ToMan
	// recurses into it without end.
	for _, args := range [][]string{{"man"}, {"apply", "--help"}, {"clear", "--help"}} {
		out, err := cliProcess(t, nil, args...).Output()
		if err != nil || !strings.Contains(string(out), "3 saved but not in force everywhere") || !strings.Contains(string(out), "1 refused") {
			t.Errorf("%q (%v) does not document the exit statuses:\n%s", args, err, out)
		}
	}
}

// vethName matches the names nettest gives veth ends.
var vethName = regexp.MustCompile(`nsb?a?[0-9a-f]{6,}`)

var _ = dokku.Limit

// sortRemoved orders each run of "Removed" lines: they are in the veths' real
// (random) names' order, which the normalised names do not keep.
func sortRemoved(s string) string {
	lines := strings.Split(s, "\n")
	for i := 0; i < len(lines); {
		j := i
		for j < len(lines) && strings.HasPrefix(lines[j], "-----> Removed ") {
			j++
		}
		if j > i {
			slices.Sort(lines[i:j])
			i = j
		} else {
			i++
		}
	}
	return strings.Join(lines, "\n")
}
