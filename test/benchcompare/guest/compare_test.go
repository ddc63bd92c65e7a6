//go:build vmbench

package guest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
	"github.com/dokku-netshape/dokku-netshape/test/e2e/guestdocker"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

const app = "benchapp"

// TestVMBenchCompare measures the matrix NETSHAPE_COMPARE_SET (full|ci) with cells of
// NETSHAPE_COMPARE_CELL (a duration; default the matrix's) on one container, and fails when
// cells.Check finds a scheme that did not limit as its row claims or a cell that could not be
// measured. It stops starting cells after NETSHAPE_COMPARE_MINUTES (default 14); cells left out
// are errors.
func TestVMBenchCompare(t *testing.T) {
	vmresult.RequireVM(t)
	var cellLen time.Duration
	if v := os.Getenv("NETSHAPE_COMPARE_CELL"); v != "" {
		var err error
		if cellLen, err = time.ParseDuration(v); err != nil {
			t.Fatalf("NETSHAPE_COMPARE_CELL=%q: %v", v, err)
		}
	}
	m, err := cells.Named(os.Getenv("NETSHAPE_COMPARE_SET"), cellLen)
	if err != nil {
		t.Fatal(err)
	}
	budget := 14 * time.Minute
	if v, err := strconv.Atoi(os.Getenv("NETSHAPE_COMPARE_MINUTES")); err == nil && v > 0 {
		budget = time.Duration(v) * time.Minute
	}
	bin, loadgen := os.Getenv("NETSHAPE_BIN"), os.Getenv("NETSHAPE_LOADGEN")
	if bin == "" || loadgen == "" {
		t.Fatal("NETSHAPE_BIN and NETSHAPE_LOADGEN must name the binaries (make bench-compare sets them)")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), budget+3*time.Minute)
	defer cancel()

	d, err := guestdocker.Start(ctx, guestdocker.Options{StateDir: "/run/nscompare", DataRoot: "/var/lib/docker/nscompare", Bip: "10.242.0.1/24",
		Wait: 3 * time.Minute}) // a loaded host slows a TCG guest's dockerd start well past a minute
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop() })
	cli, err := d.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	img := "netshape-compare-app:latest"
	if err := guestdocker.ImportBinary(ctx, cli, loadgen, img, `["/loadgen","serve"]`); err != nil {
		t.Fatal(err)
	}
	f := dokkutest.NewFixture(t)
	f.AddApp(app, "web", 1)
	labels := map[string]string{"com.dokku.app-name": app, "com.dokku.container-type": "deploy",
		"com.dokku.process-type": "web", "com.dokku.dyno": "web.1", "dokku": "", "org.label-schema.vendor": "dokku"}
	resp, err := cli.ContainerCreate(ctx, &container.Config{Image: img, Labels: labels, Env: []string{"PORT=5000"},
		Cmd: []string{"/loadgen", "serve", "-duration", "1h"}}, &container.HostConfig{}, nil, nil, app+".web.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true}) })
	if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	f.AddContainer(app, "web", 1, resp.ID)
	ci, err := cli.ContainerInspect(ctx, resp.ID)
	if err != nil {
		t.Fatal(err)
	}
	nsPath := veth.PidNetns(ci.State.Pid)
	pairs, err := veth.Interfaces(nsPath)
	if err != nil || len(pairs) != 1 || pairs[0].Peer != veth.PeerHost {
		t.Fatalf("container veths: %+v, %v; want one eth0 with a host peer", pairs, err)
	}
	pair := pairs[0]
	raw, err := os.ReadFile("/sys/class/net/" + pair.HostIf.Name + "/mtu")
	if err != nil {
		t.Fatal(err)
	}
	mtu, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	devs := map[cells.Dir]dev{
		cells.Egress:  {ns: nsPath, name: pair.ContainerIf.Name}, // app egress leaves through eth0
		cells.Ingress: {name: pair.HostIf.Name},                  // app ingress leaves the host peer
	}
	r := &rig{t: t, m: m, pid: ci.State.Pid, ns: nsPath, ip: ci.NetworkSettings.Networks["bridge"].IPAddress,
		gw: d.Gateway(), mtu: mtu, devs: devs}
	if r.ip == "" {
		t.Fatal("container has no bridge address")
	}
	pinDir := fmt.Sprintf("/sys/fs/bpf/netshape-compare-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	env := d.Env("NETSHAPE_PIN_DIR="+pinDir, "NETSHAPE_LOCK="+filepath.Join(t.TempDir(), "netshape.lock"))

	schemes := map[cells.Scheme]scheme{
		cells.Netshape:  &netshapeScheme{bin: bin, app: app, pinDir: pinDir, env: env, devs: devs},
		cells.CiliumEDT: &ciliumScheme{devs: devs},
		cells.NoLimit:   noScheme{},
	}
	for _, s := range []cells.Scheme{cells.TBFRuntime, cells.TBFSane, cells.DockerTC, cells.HTB} {
		schemes[s] = newTCScheme(s, []dev{devs[cells.Egress], devs[cells.Ingress]})
	}
	specs := m.Specs()
	t.Logf("matrix %s: %d cells of %s (+%s settle), probes from %s; estimate %s; container %s eth0 %s, host peer %s, MTU %d",
		m.Name, len(specs), m.Cell, m.Settle, m.Probe, m.Estimate(), r.ip, pair.ContainerIf.Name, pair.HostIf.Name, mtu)
	vmresult.Report(t, "compare_matrix", map[string]any{"set": m.Name, "cells": len(specs), "cell_seconds": m.Cell.Seconds(),
		"settle_seconds": m.Settle.Seconds(), "probe_start_seconds": m.Probe.Seconds(), "mtu": mtu,
		"setup_seconds": time.Since(start).Seconds()})

	var all []cells.Cell
	var cur struct {
		s    cells.Scheme
		rate float64
		on   bool
	}
	// off takes the current scheme off; false when the devices are not bare afterwards.
	off := func() bool {
		if !cur.on {
			return true
		}
		cur.on = false
		if err := schemes[cur.s].remove(ctx); err != nil {
			t.Errorf("remove %s: %v", cur.s, err)
		}
		clean := true
		for _, dv := range devs {
			if err := dv.bare(ctx); err != nil {
				t.Errorf("after removing %s: %v", cur.s, err)
				clean = false
			}
		}
		return clean
	}
	for _, sp := range specs {
		if time.Since(start) > budget {
			c := cells.Cell{Spec: sp, Kernel: vmresult.Kernel(), Error: fmt.Sprintf("not run: the %s budget was spent", budget)}
			all = append(all, c)
			report(t, c)
			continue
		}
		if !cur.on || cur.s != sp.Scheme || cur.rate != sp.Rate {
			if !off() {
				t.Fatal("a scheme left state behind; later cells would measure it")
			}
			t0 := time.Now()
			if err := schemes[sp.Scheme].apply(ctx, sp.Rate); err != nil {
				t.Errorf("apply %s at %g: %v", sp.Scheme, sp.Rate, err)
				cur.s, cur.rate, cur.on = sp.Scheme, sp.Rate, true
				off()
				c := cells.Cell{Spec: sp, Kernel: vmresult.Kernel(), Error: "apply: " + err.Error()}
				all = append(all, c)
				report(t, c)
				continue
			}
			cur.s, cur.rate, cur.on = sp.Scheme, sp.Rate, true
			t.Logf("%s at %.0f Mbit/s on (%.2fs)", sp.Scheme, sp.Rate/1e6, time.Since(t0).Seconds())
		}
		c := r.cell(ctx, sp, schemes[sp.Scheme])
		all = append(all, c)
		report(t, c)
	}
	off()
	if err := cells.Check(all); err != nil {
		t.Errorf("the comparison is not trustworthy as measured:\n%v", err)
	}
	t.Logf("%d cells in %s", len(all), time.Since(start).Round(time.Second))
}

// report prints the cell as a NETSHAPE-RESULT line, samples rounded to 10 µs to keep it short.
func report(t *testing.T, c cells.Cell) {
	t.Helper()
	for _, l := range []*cells.Latency{&c.Ping, &c.RR, &c.Xfer} {
		for i, v := range l.Samples {
			l.Samples[i] = float64(int64(v*100+0.5)) / 100
		}
	}
	for i, v := range c.SeriesBps {
		c.SeriesBps[i] = float64(int64(v/1e3+0.5)) * 1e3
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	vmresult.Report(t, "compare_cell", fields)
	t.Logf("%s: mean %.2f Mbit/s (first s %.2f), ping p50/p99 %.2f/%.2f ms (%d, lost %d), rr p50/p99 %.2f/%.2f (%d), 256K p50/p90 %.0f/%.0f ms (%d), retrans %d, drops %d, cpu %.2f s/GB %s",
		c.Name(), c.MeanBps/1e6, c.FirstBps/1e6, c.Ping.P50, c.Ping.P99, c.Ping.Count, c.Ping.Lost, c.RR.P50, c.RR.P99, c.RR.Count,
		c.Xfer.P50, c.Xfer.P90, c.Xfer.Count, c.Retrans, c.Drops, c.CPUPerGB, c.Error)
}

// rig is the container and what a cell needs of it.
type rig struct {
	t      *testing.T
	m      cells.Matrix
	pid    int
	ns     string // container netns
	ip, gw string // container address, docker0's
	mtu    int
	devs   map[cells.Dir]dev
}

// ends: who sends and who receives in a direction. Egress: the container to a receiver in the
// guest's root namespace on docker0's address; ingress: the root namespace to the container.
func (r *rig) ends(d cells.Dir) (sndNS, rcvNS, rcvIP string, sndPid int) {
	if d == cells.Egress {
		return r.ns, "", r.gw, r.pid
	}
	return "", r.ns, r.ip, 1
}

func addr(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// tcpRetrans reads TcpRetransSegs of the namespace process pid lives in.
func tcpRetrans(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		return 0, err
	}
	var hdr []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "Tcp:") {
			continue
		}
		f := strings.Fields(l)
		if hdr == nil {
			hdr = f
			continue
		}
		for i, h := range hdr {
			if h == "RetransSegs" && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no Tcp RetransSegs in /proc/%d/net/snmp", pid)
}

// sysCPU is the guest's system+irq+softirq time in seconds (USER_HZ 100).
func sysCPU() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", f)
	}
	var sum float64
	for _, i := range []int{3, 6, 7} {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum / 100, nil
}
