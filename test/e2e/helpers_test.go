//go:build vm

package e2e

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
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
	"github.com/dokku-netshape/dokku-netshape/test/e2e/guestdocker"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// binaries: dokku-netshape and the static loadgen, built once per test binary run.
var netshapeBin, loadgenBin string

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	if code >= 0 {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// setup finds or builds the binaries; -1 means "run the tests".
func setup() (int, error) {
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	tmp, err := os.MkdirTemp("", "netshape-e2e-bin")
	if err != nil {
		return 1, err
	}
	find := func(env, pkg, name string) (string, error) {
		if p := os.Getenv(env); p != "" {
			return p, nil
		}
		out := filepath.Join(tmp, name)
		t0 := time.Now()
		defer func() { fmt.Printf("e2e: built %s in %.1fs (set %s to skip)\n", pkg, time.Since(t0).Seconds(), env) }()
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s (or set %s): %w\n%s", pkg, env, err, b)
		}
		return out, nil
	}
	if netshapeBin, err = find("NETSHAPE_BIN", "./cmd/dokku-netshape", "dokku-netshape"); err != nil {
		return 1, err
	}
	if loadgenBin, err = find("NETSHAPE_LOADGEN", "./test/tools/loadgen", "loadgen"); err != nil {
		return 1, err
	}
	return -1, nil
}

// startDocker starts the guest's dockerd for one test and stops it at the end.
func startDocker(t *testing.T, ctx context.Context, bip string) (*guestdocker.Daemon, *client.Client) {
	t.Helper()
	t0 := time.Now()
	d, err := guestdocker.Start(ctx, guestdocker.Options{StateDir: "/run/nse2e", DataRoot: "/var/lib/docker/nse2e", Bip: bip})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dockerd up in %.1fs (%s, docker0 %s)", time.Since(t0).Seconds(), d.Host, bip)
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop dockerd: %v", err)
		}
	})
	cli, err := d.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return d, cli
}

// dokkuLabels are exactly the labels Dokku's docker-local scheduler puts on a deploy container.
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

// runApp starts APP.PROC.N as Dokku would (PORT=5000, restart on-failure:10) serving a sink on
// :5001 and HTTP /stats on :5000, and removes it at the end of the test.
func runApp(t *testing.T, ctx context.Context, cli *client.Client, img, app, proc string, n int) string {
	t.Helper()
	name := fmt.Sprintf("%s.%s.%d", app, proc, n)
	resp, err := cli.ContainerCreate(ctx,
		&container.Config{Image: img, Labels: dokkuLabels(app, proc, n), Env: []string{"PORT=5000"},
			Cmd: []string{"/loadgen", "serve", "-sink", ":5001", "-echo", ":5002", "-duration", "10m"}},
		&container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 10}},
		nil, nil, name)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true}); err != nil {
			t.Errorf("remove %s: %v", name, err)
		}
	})
	if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return resp.ID
}

// box is what the test knows about one running container.
type box struct {
	ID, Name string
	IP       string
	Pid      int
	NetnsIno uint64
	Pair     veth.Pair // eth0 and its host-side peer
}

func inspectBox(ctx context.Context, cli *client.Client, id string) (box, error) {
	ci, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		return box{}, fmt.Errorf("inspect %s: %w", id, err)
	}
	if ci.State == nil || !ci.State.Running || ci.State.Pid == 0 {
		return box{}, fmt.Errorf("container %s is not running", ci.Name)
	}
	b := box{ID: id, Name: strings.TrimPrefix(ci.Name, "/"), Pid: ci.State.Pid}
	if nw, ok := ci.NetworkSettings.Networks["bridge"]; ok {
		b.IP = nw.IPAddress
	}
	if b.IP == "" {
		return box{}, fmt.Errorf("container %s has no bridge address", b.Name)
	}
	nsPath := veth.PidNetns(b.Pid)
	if b.NetnsIno, err = inode(nsPath); err != nil {
		return box{}, err
	}
	pairs, err := veth.Interfaces(nsPath)
	if err != nil {
		return box{}, fmt.Errorf("veths of %s: %w", b.Name, err)
	}
	if len(pairs) != 1 || pairs[0].ContainerIf.Name != "eth0" || pairs[0].Peer != veth.PeerHost {
		return box{}, fmt.Errorf("container %s: want one eth0 with a host-side peer, got %+v", b.Name, pairs)
	}
	b.Pair = pairs[0]
	return b, nil
}

func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// netshape runs the binary under the name argv0 (a path; its base name selects the role, as
// Dokku's plugin symlinks do) and returns its combined output.
func netshape(ctx context.Context, env []string, argv0 string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv0, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", filepath.Base(argv0), strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// checkShaped verifies, from the pinned state the CLI left in pinDir, that every box's eth0
// enforces the app's egress budget and its host peer the ingress budget and the egress budget's
// backstop — one budget per direction for all of them — and that the devices carry fq as root qdisc.
func checkShaped(pinDir, app string, boxes []box) error {
	byDev, perBudget, hostIno, err := appAttachments(pinDir, app)
	if err != nil {
		return err
	}
	egress, ingress := app+"/_default_/egress", app+"/_default_/ingress"
	var errs []error
	for _, b := range boxes {
		errs = append(errs, boxErrs(byDev, hostIno, app, b)...)
		if err := rootFq("nsenter", "--net="+veth.PidNetns(b.Pid), "tc", "qdisc", "show", "dev", "eth0", "root"); err != nil {
			errs = append(errs, fmt.Errorf("%s eth0: %w", b.Name, err))
		}
		if err := rootFq("tc", "qdisc", "show", "dev", b.Pair.HostIf.Name, "root"); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", b.Name, b.Pair.HostIf.Name, err))
		}
	}
	// Exactly the live devices: no second budget per direction, no stale attachment left on a
	// veth that is gone.
	if len(perBudget) != 3 || perBudget[egress+" shape"] != len(boxes) || perBudget[ingress+" shape"] != len(boxes) || perBudget[egress+" police"] != len(boxes) {
		errs = append(errs, fmt.Errorf("attachments per budget %v, want %d on each of %s, its backstop and %s", perBudget, len(boxes), egress, ingress))
	}
	return errors.Join(errs...)
}

// attKey is one device and hook in the pinned registry.
type attKey struct {
	ino  uint64
	idx  int
	hook shaper.Hook
}

// appAttachments reads the app's attachments from the pinned state: budget by device and hook,
// the count per "budget hook", and the host namespace's inode.
func appAttachments(pinDir, app string) (map[attKey]string, map[string]int, uint64, error) {
	s, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		return nil, nil, 0, err
	}
	defer s.Close()
	atts, err := s.Attachments()
	if err != nil {
		return nil, nil, 0, err
	}
	hostIno, err := inode("/proc/1/ns/net")
	if err != nil {
		return nil, nil, 0, err
	}
	byDev := map[attKey]string{}
	perBudget := map[string]int{}
	for _, a := range atts {
		if strings.HasPrefix(a.Budget, app+"/") {
			byDev[attKey{a.NetnsIno, a.Ifindex, a.Hook}] = a.Budget
			perBudget[a.Budget+" "+a.Hook.String()]++
		}
	}
	return byDev, perBudget, hostIno, nil
}

// boxErrs checks the three attachments of one box: eth0 shapes the app's egress budget, its host
// peer polices that budget (the backstop) and shapes the ingress one.
func boxErrs(byDev map[attKey]string, hostIno uint64, app string, b box) []error {
	egress, ingress := app+"/_default_/egress", app+"/_default_/ingress"
	var errs []error
	if got := byDev[attKey{b.NetnsIno, b.Pair.ContainerIf.Index, shaper.HookShape}]; got != egress {
		errs = append(errs, fmt.Errorf("%s eth0: budget %q, want %q", b.Name, got, egress))
	}
	if got := byDev[attKey{hostIno, b.Pair.HostIf.Index, shaper.HookShape}]; got != ingress {
		errs = append(errs, fmt.Errorf("%s host peer %s: budget %q, want %q", b.Name, b.Pair.HostIf.Name, got, ingress))
	}
	if got := byDev[attKey{hostIno, b.Pair.HostIf.Index, shaper.HookPolice}]; got != egress {
		errs = append(errs, fmt.Errorf("%s host peer %s: backstop of budget %q, want %q", b.Name, b.Pair.HostIf.Name, got, egress))
	}
	return errs
}

func rootFq(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	if !strings.HasPrefix(strings.TrimSpace(string(out)), "qdisc fq ") {
		return fmt.Errorf("root qdisc is not fq: %s", bytes.TrimSpace(out))
	}
	return nil
}

// counter reads a byte count at the receiver.
type counter func(context.Context) (int64, error)

func sinkCounter(s *traffic.Sink) counter {
	return func(context.Context) (int64, error) { return s.Bytes(), nil }
}

// statsCounter asks a container's loadgen (HTTP /stats on :5000) how much its sink received.
func statsCounter(ip string) counter {
	url := "http://" + net.JoinHostPort(ip, "5000") + "/stats"
	hc := &http.Client{Timeout: 3 * time.Second}
	return func(ctx context.Context) (int64, error) {
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
}

// measure waits warmup, then returns each counter's rate (bit/s) over the same window.
func measure(ctx context.Context, warmup, window time.Duration, cs ...counter) ([]float64, error) {
	if warmup+window > 30*time.Second {
		return nil, fmt.Errorf("measure %s + %s: too long", warmup, window)
	}
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	read := func() ([]int64, time.Time, error) {
		out := make([]int64, len(cs))
		for i, c := range cs {
			v, err := c(ctx)
			if err != nil {
				return nil, time.Time{}, err
			}
			out[i] = v
		}
		return out, time.Now(), nil
	}
	b0, t0, err := read()
	if err != nil {
		return nil, err
	}
	select {
	case <-time.After(window):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	b1, t1, err := read()
	if err != nil {
		return nil, err
	}
	rates := make([]float64, len(cs))
	for i := range cs {
		rates[i] = float64(b1[i]-b0[i]) * 8 / t1.Sub(t0).Seconds()
	}
	return rates, nil
}

func sum(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s
}

// gsoMax is the largest packet a veth hands the shaper (64 KiB GSO), the unit in which a
// window edge can miscount.
const gsoMax = 65536

// goodput is the share of a shaped rate that reaches a TCP receiver as payload. The shaper
// counts whole frames (skb wire length: Ethernet + IP + TCP headers); a full segment on a
// link of this MTU carries MTU-52 bytes of payload (IPv4 20, TCP 20, timestamps 12) in a
// MTU+14-byte frame: 1448/1514 = 95.6% at MTU 1500. Measured here: 19.12 of 20 Mbit/s.
func goodput(mtu int) float64 { return float64(mtu-52) / float64(mtu+14) }

// bounds for the payload rate of a limit measured at the receivers over window with flows
// TCP flows: the expected goodput ± 3% (EDT + fq held 19.9 of 20 Mbit/s on the wire in these
// guests, datapath.md; the rest is room for emulation jitter), widened by one GSO packet per
// flow at each end of the window.
func bounds(limit float64, mtu int, window time.Duration, flows int) (lo, hi float64) {
	want := limit * goodput(mtu)
	edge := float64(2*flows*gsoMax*8) / window.Seconds()
	return 0.97*want - edge, 1.03*want + edge
}

func mbit(x float64) float64 { return float64(int64(x/1e4+0.5)) / 100 }

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}

// reportJSON is `report APP --format json`: text fields and the bypassed numbers.
type reportJSON struct {
	fields   map[string]string
	bypassed map[string]uint64
}

func readReport(t *testing.T, ctx context.Context, env []string) reportJSON {
	t.Helper()
	out, err := netshape(ctx, env, netshapeBin, "report", app, "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out)
	}
	rep := reportJSON{fields: map[string]string{}}
	for k, v := range raw {
		if k == "netshape-bypassed" {
			if err := json.Unmarshal(v, &rep.bypassed); err != nil {
				t.Fatalf("report netshape-bypassed %s: %v", v, err)
			}
			continue
		}
		if usageJSONFields[k] {
			continue // numbers, read by readUsage (usage_test.go)
		}
		if k == "netshape-causes" {
			var causes []struct {
				Code    string `json:"code"`
				Problem bool   `json:"problem"`
			}
			if err := json.Unmarshal(v, &causes); err != nil {
				t.Fatalf("report netshape-causes %s: %v", v, err)
			}
			for _, c := range causes {
				if c.Code == "" {
					t.Fatalf("report netshape-causes %s: a cause without a code", v)
				}
			}
			continue
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			t.Fatalf("report %s = %s: not a string: %v", k, v, err)
		}
		rep.fields[k] = s
	}
	return rep
}

// assertNoBypass: the app's own TCP, paced at its eth0, never trips the host-side backstop.
func assertNoBypass(t *testing.T, ctx context.Context, phase string) {
	t.Helper()
	n, ok := readReport(t, ctx, counterEnv).bypassed["_default_/egress"]
	if !ok || n != 0 {
		t.Errorf("%s: report bypassed _default_/egress = %d (present %v), want 0: the backstop dropped paced TCP", phase, n, ok)
	}
}

// counterEnv is the environment the CLI runs with, for logCounters.
var counterEnv []string

// logCounters logs the app's budget counters (delayed, dropped, CE-marked): what explains a
// rate that misses its limit.
func logCounters(t *testing.T, ctx context.Context) {
	t.Helper()
	out, err := netshape(ctx, counterEnv, netshapeBin, "report", app, "--netshape-counters")
	if err != nil {
		t.Errorf("report counters: %v", err)
		return
	}
	t.Logf("counters: %s", strings.TrimSpace(out))
}
