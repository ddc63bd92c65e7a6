//go:build vm

// Package faults breaks things under the real dokku-netshape binary, driven as a black box
// against a real dockerd inside a VM guest (test/vm): dockerd restarted under the watcher,
// the watcher or an apply killed mid-way, a veth deleted mid-apply, the BPF side refusing a
// budget, and a soak of container events. Each test checks that the fault was really hit,
// then that limits in force stayed in force, nothing is half-made and nothing leaked.
package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
	"github.com/dokku-netshape/dokku-netshape/test/e2e/guestdocker"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// The binaries under test, built on the host by make vm-test (test/vm/vm.mk).
var netshapeBin, loadgenBin string

func TestMain(m *testing.M) {
	netshapeBin, loadgenBin = os.Getenv("NETSHAPE_BIN"), os.Getenv("NETSHAPE_LOADGEN")
	if netshapeBin == "" || loadgenBin == "" {
		fmt.Fprintln(os.Stderr, "faults: NETSHAPE_BIN and NETSHAPE_LOADGEN must name the built binaries (make vm-test sets both)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

const image = "netshape-faults-app:latest"

// rig is one test's world: its own dockerd, a Dokku tree, a pin directory and a lock.
type rig struct {
	t      *testing.T
	ctx    context.Context
	opts   guestdocker.Options
	d      *guestdocker.Daemon
	cli    *client.Client
	f      *dokkutest.Fixture
	pinDir string
	lock   string
	// hostNetnsIno identifies the guest's root namespace, where host-side veths live.
	hostNetnsIno uint64
}

// newRig starts a private dockerd (bridge bip), imports the app image and lays out a Dokku tree.
func newRig(t *testing.T, ctx context.Context, name, bip string) *rig {
	t.Helper()
	vmresult.RequireVM(t)
	r := &rig{t: t, ctx: ctx,
		// A generous wait: on a saturated host a TCG guest's dockerd took 60 s to restore two containers.
		opts: guestdocker.Options{StateDir: "/run/nsfaults-" + name, DataRoot: "/var/lib/docker/nsfaults-" + name, Bip: bip,
			Wait: 3 * time.Minute},
		pinDir: fmt.Sprintf("/sys/fs/bpf/netshape-faults-%s-%d", name, os.Getpid()),
		lock:   filepath.Join(t.TempDir(), "netshape.lock"),
	}
	var err error
	if r.hostNetnsIno, err = inode("/proc/self/ns/net"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if r.d, err = startDockerd(t, ctx, r.opts); err != nil {
		t.Fatal(err)
	}
	t.Logf("dockerd up in %.1fs (%s)", time.Since(t0).Seconds(), bip)
	t.Cleanup(func() {
		if err := r.d.Stop(); err != nil {
			t.Errorf("stop dockerd: %v", err)
		}
		// Containers are gone with the daemon; the pins (TCX links of dead devices, maps) go here.
		os.RemoveAll(r.pinDir)
	})
	if r.cli, err = r.d.Client(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.cli.Close() })
	if err := guestdocker.ImportBinary(ctx, r.cli, loadgenBin, image, `["/loadgen","serve"]`); err != nil {
		t.Fatal(err)
	}
	r.f = dokkutest.NewFixture(t)
	return r
}

// startDockerd starts dockerd, once more if the first attempt dies: on a saturated host
// dockerd was seen to give up on its own containerd ("timeout waiting for containerd to
// start") before the test had asked anything of it.
func startDockerd(t *testing.T, ctx context.Context, o guestdocker.Options) (*guestdocker.Daemon, error) {
	d, err := guestdocker.Start(ctx, o)
	if err == nil || ctx.Err() != nil {
		return d, err
	}
	t.Logf("dockerd did not start (%v); once more", firstLine(err.Error()))
	return guestdocker.Start(ctx, o)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// env is what every dokku-netshape process of this rig runs with.
func (r *rig) env() []string {
	return r.d.Env("NETSHAPE_PIN_DIR="+r.pinDir, "NETSHAPE_LOCK="+r.lock)
}

// restartDocker stops dockerd (SIGTERM, as `systemctl restart docker` does) and starts it
// again on the same state: containers come back through their restart policy.
func (r *rig) restartDocker() time.Time {
	r.t.Helper()
	if err := r.d.Stop(); err != nil {
		r.t.Fatalf("stop dockerd: %v", err)
	}
	stopped := time.Now()
	d, err := startDockerd(r.t, r.ctx, r.opts)
	if err != nil {
		r.t.Fatalf("restart dockerd: %v", err)
	}
	r.d = d
	r.cli.Close()
	if r.cli, err = d.Client(); err != nil {
		r.t.Fatal(err)
	}
	return stopped
}

// limitApp configures an app with network limits, as `dokku resource:limit` stores them.
func (r *rig) limitApp(app, egress, ingress string, procs ...any) {
	r.f.AddApp(app, procs...)
	r.f.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, egress)
	r.f.SetResource(app, "", dokku.Limit, dokku.NetworkIngress, ingress)
}

// runApp starts APP.PROC.N with Dokku's labels and restart policy (on-failure:10). Its stop
// signal is SIGKILL, like an app that does not handle SIGTERM: a daemon shutdown then ends it
// with a failure exit, so the restart policy brings it back when dockerd returns.
func (r *rig) runApp(app, proc string, n int) string {
	r.t.Helper()
	name := fmt.Sprintf("%s.%s.%d", app, proc, n)
	resp, err := r.cli.ContainerCreate(r.ctx,
		&container.Config{Image: image, Labels: dokkuLabels(app, proc, n), Env: []string{"PORT=5000"}, StopSignal: "SIGKILL",
			Cmd: []string{"/loadgen", "serve", "-sink", ":5001", "-echo", "", "-duration", "1h"}},
		&container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 10}},
		nil, nil, name)
	if err != nil {
		r.t.Fatalf("create %s: %v", name, err)
	}
	r.t.Cleanup(func() {
		if err := r.cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true}); err != nil {
			r.t.Logf("remove %s: %v", name, err)
		}
	})
	if err := r.cli.ContainerStart(r.ctx, resp.ID, container.StartOptions{}); err != nil {
		r.t.Fatalf("start %s: %v", name, err)
	}
	return resp.ID
}

// dokkuLabels are the labels Dokku's docker-local scheduler puts on a deploy container.
func dokkuLabels(app, proc string, n int) map[string]string {
	return map[string]string{
		"com.dokku.app-name":       app,
		"com.dokku.container-type": "deploy",
		"com.dokku.process-type":   proc,
		"com.dokku.dyno":           fmt.Sprintf("%s.%d", proc, n),
		"dokku":                    "",
		"org.label-schema.vendor":  "dokku",
	}
}

// ctr is one running container as the test sees it.
type ctr struct {
	ID, Name, App, Proc string
	Pid                 int
	Started             time.Time
	IP                  string
	NetnsIno            uint64
	Pair                veth.Pair // eth0 and its host-side peer
}

// The container's attachments: app egress shaped at eth0, the egress backstop at the host
// peer's ingress, app ingress shaped at the host peer.
func (c ctr) egressDev() devKey {
	return devKey{c.NetnsIno, c.Pair.ContainerIf.Index, shaper.HookShape}
}
func (c ctr) policeDev(hostIno uint64) devKey {
	return devKey{hostIno, c.Pair.HostIf.Index, shaper.HookPolice}
}
func (c ctr) ingressDev(hostIno uint64) devKey {
	return devKey{hostIno, c.Pair.HostIf.Index, shaper.HookShape}
}

// devs are the keys of all three.
func (c ctr) devs(hostIno uint64) []devKey {
	return []devKey{c.egressDev(), c.policeDev(hostIno), c.ingressDev(hostIno)}
}

func (r *rig) inspect(id string) (ctr, error) {
	ci, err := r.cli.ContainerInspect(r.ctx, id)
	if err != nil {
		return ctr{}, fmt.Errorf("inspect %s: %w", id, err)
	}
	c := ctr{ID: id, Name: strings.TrimPrefix(ci.Name, "/")}
	if ci.Config != nil {
		c.App, c.Proc = ci.Config.Labels["com.dokku.app-name"], ci.Config.Labels["com.dokku.process-type"]
	}
	if ci.State == nil || !ci.State.Running || ci.State.Pid == 0 {
		return c, fmt.Errorf("container %s is not running", c.Name)
	}
	c.Pid = ci.State.Pid
	if c.Started, err = time.Parse(time.RFC3339Nano, ci.State.StartedAt); err != nil {
		return c, fmt.Errorf("container %s start time %q: %w", c.Name, ci.State.StartedAt, err)
	}
	if nw, ok := ci.NetworkSettings.Networks["bridge"]; ok {
		c.IP = nw.IPAddress
	}
	ns := veth.PidNetns(c.Pid)
	if c.NetnsIno, err = inode(ns); err != nil {
		return c, err
	}
	pairs, err := veth.Interfaces(ns)
	if err != nil {
		return c, fmt.Errorf("veths of %s: %w", c.Name, err)
	}
	if len(pairs) != 1 || pairs[0].ContainerIf.Name != "eth0" || pairs[0].Peer != veth.PeerHost {
		return c, fmt.Errorf("container %s: want one eth0 with a host-side peer, got %+v", c.Name, pairs)
	}
	c.Pair = pairs[0]
	return c, nil
}

// running lists the running containers of the given apps (all Dokku apps when none given),
// sorted by name. A container that is not fully up yet is an error.
func (r *rig) running(apps ...string) ([]ctr, error) {
	args := filters.NewArgs(filters.Arg("label", "com.dokku.app-name"), filters.Arg("status", "running"))
	list, err := r.cli.ContainerList(r.ctx, container.ListOptions{Filters: args})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []ctr
	for _, l := range list {
		if len(apps) > 0 && !contains(apps, l.Labels["com.dokku.app-name"]) {
			continue
		}
		c, err := r.inspect(l.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	sortCtrs(out)
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortCtrs(cs []ctr) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].Name < cs[j-1].Name; j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// run is one finished dokku-netshape invocation.
type run struct {
	Stdout, Stderr string
	Code           int
	Took           time.Duration
}

// netshape runs the CLI to completion (bounded by ctx).
func (r *rig) netshape(args ...string) run {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, netshapeBin, args...)
	cmd.Env = r.env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err := cmd.Run()
	res := run{Stdout: out.String(), Stderr: errb.String(), Took: time.Since(t0)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	case err != nil:
		r.t.Fatalf("dokku-netshape %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// mustApply runs `apply ARGS` and fails the test unless it exits 0.
func (r *rig) mustApply(args ...string) run {
	r.t.Helper()
	res := r.netshape(append([]string{"apply"}, args...)...)
	if res.Code != 0 {
		r.t.Fatalf("apply %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), res.Code, res.Stdout, res.Stderr)
	}
	return res
}

// waitFor polls cond every interval until it returns nil or timeout passes; it returns the
// last error.
func waitFor(ctx context.Context, timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// ingressRate sends bulk TCP from the guest's root namespace to a container's sink for
// warmup+window and returns what the container's loadgen counted in the window (bit/s).
func ingressRate(ctx context.Context, c ctr, warmup, window time.Duration) (float64, error) {
	if c.IP == "" {
		return 0, fmt.Errorf("container %s has no address", c.Name)
	}
	done := make(chan error, 1)
	go func() {
		_, err := traffic.Send(ctx, traffic.SendOptions{Addr: net.JoinHostPort(c.IP, "5001"), Duration: warmup + window + time.Second})
		done <- err
	}()
	stats := "http://" + net.JoinHostPort(c.IP, "5000") + "/stats"
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	b0, err := sinkBytes(ctx, stats)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	b1, err := sinkBytes(ctx, stats)
	if err != nil {
		return 0, err
	}
	rate := float64(b1-b0) * 8 / time.Since(t0).Seconds()
	if err := <-done; err != nil {
		return rate, err
	}
	return rate, nil
}

func sinkBytes(ctx context.Context, url string) (int64, error) {
	hc := &http.Client{Timeout: 3 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("stats %s: %w", url, err)
	}
	defer resp.Body.Close()
	var st struct {
		Bytes int64 `json:"bytes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, fmt.Errorf("stats %s: %w", url, err)
	}
	return st.Bytes, nil
}

// goodputHi is the most payload a TCP receiver may see through a limit of bps over window:
// the whole limit (headers count against it, so payload is always less) plus one 64 KiB GSO
// packet at each end of the window and 3% for emulation jitter.
func goodputHi(bps float64, window time.Duration) float64 {
	return 1.03*bps + 2*65536*8/window.Seconds()
}
