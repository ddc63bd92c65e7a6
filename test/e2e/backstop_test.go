//go:build vm

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/e2e/guestdocker"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

const (
	bypassWarm   = 2 * time.Second
	bypassWindow = 6 * time.Second // the policer's tolerance (~0.3 s) is spent in the warm-up
)

// docker0Wire is what the bridge passed up to the host, on the wire: its rx counters count frames
// without their Ethernet header.
func docker0Wire(t *testing.T) uint64 {
	t.Helper()
	l, err := netlink.LinkByName("docker0")
	if err != nil {
		t.Fatal(err)
	}
	st := l.Attrs().Statistics
	return st.RxBytes + 14*st.RxPackets
}

// TestVMDockerBypassSender: a real container with Docker's default capabilities (NET_RAW, no
// NET_ADMIN) sends raw frames with PACKET_QDISC_BYPASS past its eth0's EDT shaper, towards the
// host through docker0. The backstop `apply` puts on its host-side veth holds what reaches the
// host to the app's egress limit and counts the rest as bypassed; with the backstop detached (the
// same container, the same run) the frames go through at whatever the guest carries.
func TestVMDockerBypassSender(t *testing.T) {
	vmresult.RequireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d, cli := startDocker(t, ctx, bip)
	img := "netshape-e2e-app:latest"
	if err := guestdocker.ImportBinary(ctx, cli, loadgenBin, img, `["/loadgen","serve"]`); err != nil {
		t.Fatal(err)
	}
	f := dokkutest.NewFixture(t)
	f.AddApp(app, "web", 1)
	f.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	pinDir := fmt.Sprintf("/sys/fs/bpf/netshape-e2e-bypass-%d", os.Getpid())
	env := d.Env("NETSHAPE_PIN_DIR="+pinDir, "NETSHAPE_LOCK="+filepath.Join(t.TempDir(), "netshape.lock"))
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	counterEnv = env
	id := runApp(t, ctx, cli, img, app, "web", 1)
	f.AddContainer(app, "web", 1, id)
	b, err := inspectBox(ctx, cli, id)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ci.HostConfig.Privileged || len(ci.HostConfig.CapAdd) != 0 {
		t.Fatalf("container runs with extra privileges (%v %v): the test is about Docker's defaults", ci.HostConfig.Privileged, ci.HostConfig.CapAdd)
	}
	out, err := netshape(ctx, env, netshapeBin, "apply", app)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("apply: %s", strings.TrimSpace(out))
	bridge, err := net.InterfaceByName("docker0")
	if err != nil {
		t.Fatal(err)
	}
	peer := shaper.Device{Name: b.Pair.HostIf.Name}

	flood := func(phase string) (received float64, sent string) {
		t.Helper()
		done := make(chan string, 1)
		go func() {
			out, err := d.Docker(ctx, "exec", b.Name, "/loadgen", "bypass", "-dev", "eth0",
				"-to", net.JoinHostPort(d.Gateway(), "9"), "-dstmac", bridge.HardwareAddr.String(),
				"-duration", (bypassWarm + bypassWindow + 4*time.Second).String())
			if err != nil {
				t.Errorf("%s: bypass sender in %s: %v", phase, b.Name, err)
			}
			done <- lastLine(out)
		}()
		// `docker exec` takes seconds to start a process in a TCG guest: the window starts once the
		// flood is seen on the host-side veth (its rx counter counts before any tc ingress).
		hostRx := func() uint64 {
			l, err := netlink.LinkByName(b.Pair.HostIf.Name)
			if err != nil {
				t.Fatal(err)
			}
			return l.Attrs().Statistics.RxBytes
		}
		rx0 := hostRx()
		for deadline := time.Now().Add(30 * time.Second); hostRx()-rx0 < 1<<20; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the bypass sender sent nothing within 30s", phase)
			}
		}
		time.Sleep(bypassWarm)
		w0, t0 := docker0Wire(t), time.Now()
		time.Sleep(bypassWindow)
		w1 := docker0Wire(t)
		received = float64(w1-w0) * 8 / time.Since(t0).Seconds()
		return received, <-done
	}

	// Without the backstop: detach only the policer, as a host without this fix would be.
	s, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DetachHook(peer, shaper.HookPolice); err != nil {
		t.Fatal(err)
	}
	s.Close()
	without, sentWithout := flood("without backstop")
	// apply puts it back (it is part of what the app's limits mean on this host).
	if _, err := netshape(ctx, env, netshapeBin, "apply", app); err != nil {
		t.Fatal(err)
	}
	if shaped := readReport(t, ctx, env).fields["netshape-shaped"]; !strings.Contains(shaped, b.Name+"/eth0 egress backstop") {
		t.Fatalf("after apply the report shows no backstop: %q", shaped)
	}
	with, sentWith := flood("with backstop")
	bypassed := readReport(t, ctx, env).bypassed["_default_/egress"]

	vmresult.Report(t, "docker_bypass_sender", map[string]any{
		"limit_bits_per_sec": egressBps, "window_seconds": bypassWindow.Seconds(),
		"without_backstop_received_bps": without, "with_backstop_received_bps": with,
		"with_ratio": with / egressBps, "without_ratio": without / egressBps, "bypassed": bypassed,
		"sender_without": sentWithout, "sender_with": sentWith,
	})
	t.Logf("default-capability container, PACKET_QDISC_BYPASS, 20 Mbit/s egress: host got %.2f Mbit/s without the backstop (sender %s), %.2f with it (sender %s); %d bypassed",
		mbit(without), sentWithout, mbit(with), sentWith, bypassed)
	if with > 1.05*egressBps {
		t.Errorf("with the backstop the host got %.2f Mbit/s from the app, limit 20", mbit(with))
	}
	// Only "nothing passes" is a failure here: a starved guest's bursty flood loses the gaps.
	if with < 0.25*egressBps {
		t.Errorf("with the backstop the host got only %.2f Mbit/s: the policer must not blackhole the budget", mbit(with))
	}
	if without < 2*egressBps {
		t.Errorf("without the backstop the host got only %.2f Mbit/s: the sender does not bypass eth0's shaper", mbit(without))
	}
	if bypassed == 0 {
		t.Error("report counts no bypassed frames")
	}
	if _, err := netshape(ctx, env, netshapeBin, "remove", app); err != nil {
		t.Errorf("remove: %v", err)
	}
}
