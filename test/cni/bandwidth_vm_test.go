//go:build vm

package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/k3s"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

const (
	// containerd's CRI (toCNIBandWidth) sets this burst, in bits, for every
	// direction that has a rate; libcni passes it on as runtimeConfig.
	runtimeBurst = math.MaxUint32
	// Ethernet+IPv4+TCP around each segment's payload (timestamps added below).
	ethIPTCPHeader = 14 + 20 + 20
	tcpTimestamp   = 12
	// psched ticks are 64 ns (PSCHED_SHIFT 6).
	tickNs = 64
)

// podAnnotations merges the scheduler-k3s maps of one process type the way
// the chart does: the --global map, then the process type's over it.
func podAnnotations(t *testing.T, env dokku.Env, app, proc string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, prop := range []string{dokku.PodAnnotationsProperty(""), dokku.PodAnnotationsProperty(proc)} {
		m, err := env.Properties(dokku.K3sPlugin).GetMap(app, prop)
		if err != nil {
			t.Fatal(err)
		}
		maps.Copy(out, m)
	}
	return out
}

// runtimeBandwidth is what kubelet + containerd make of a pod's annotations
// (kubernetes pkg/util/bandwidth ExtractPodBandwidthResources, then
// toCNIBandWidth): rates in bits per second, the fixed burst.
func runtimeBandwidth(t *testing.T, ann map[string]string) map[string]uint64 {
	t.Helper()
	bw := map[string]uint64{}
	for key, dir := range map[string]string{k3s.IngressAnnotation: "ingress", k3s.EgressAnnotation: "egress"} {
		v, ok := ann[key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			t.Fatalf("kubelet cannot parse %s=%q: %v", key, v, err)
		}
		if q.Value() < 1000 || q.Value() > 1e15 {
			t.Fatalf("kubelet refuses %s=%q (outside 1k..1P)", key, v)
		}
		bw[dir+"Rate"] = uint64(q.Value())
		bw[dir+"Burst"] = runtimeBurst
	}
	return bw
}

// cniAdd runs the plugin as libcni runs a chained plugin: the previous
// plugin's result (host veth, container eth0 in the sandbox) on stdin with
// the runtimeConfig of the "bandwidth" capability.
func cniInvoke(t *testing.T, plugin, command, containerID, netnsPath, hostIf string, bw map[string]uint64) []byte {
	t.Helper()
	conf := map[string]any{
		"cniVersion":   "1.0.0",
		"name":         "cbr0",
		"type":         "bandwidth",
		"capabilities": map[string]bool{"bandwidth": true},
		"runtimeConfig": map[string]any{
			"bandwidth": bw,
		},
		"prevResult": map[string]any{
			"cniVersion": "1.0.0",
			"interfaces": []map[string]any{
				{"name": hostIf},
				{"name": "eth0", "sandbox": netnsPath},
			},
			"ips": []map[string]any{{"address": "10.233.7.2/30", "interface": 1}},
		},
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(plugin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + containerID, "CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(plugin), "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("CNI %s: %v\nstdin: %s\nstdout: %s\nstderr: %s", command, err, stdin, stdout.String(), stderr.String())
	}
	return stdout.Bytes()
}

// tbfOf returns the TBF qdisc at the root of a device: its rate (bytes/s)
// and bucket depth in ns as the kernel holds them.
func tbfOf(t *testing.T, dev string) (rateBytes uint64, bucketNs uint64) {
	t.Helper()
	link, err := netlink.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s: %v", dev, err)
	}
	qs, err := netlink.QdiscList(link)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if tbf, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
			return tbf.Rate, uint64(tbf.Buffer) * tickNs
		}
	}
	t.Fatalf("no root tbf on %s: %v", dev, qs)
	return 0, 0
}

type sample struct {
	at    time.Time
	bytes int64
}

// discardSink accepts one connection and counts what arrives, discarding it
// in the kernel (recv with MSG_TRUNC: no copy to user space), so that the
// guest's CPU goes into moving bytes: the runtime's burst is 512 MiB.
type discardSink struct {
	ln    net.Listener
	bytes atomic.Int64
	done  chan struct{}
}

func newDiscardSink(t *testing.T, ln net.Listener) *discardSink {
	s := &discardSink{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			return
		}
		buf := make([]byte, 4<<20) // never written: MSG_TRUNC only counts
		for {
			var n int
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
				return !errors.Is(rerr, unix.EAGAIN)
			})
			if err != nil || rerr != nil || n == 0 {
				return
			}
			s.bytes.Add(int64(n))
		}
	}()
	t.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

// sendfileFlow sends zero pages of a memfd with sendfile (no copy from user
// space) until ctx ends.
func sendfileFlow(ctx context.Context, conn *net.TCPConn) (*sync.WaitGroup, error) {
	fd, err := unix.MemfdCreate("netshape-cni", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "memfd")
	if err := f.Truncate(16 << 20); err != nil {
		f.Close()
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer f.Close()
		for ctx.Err() == nil {
			if _, err := f.Seek(0, 0); err != nil {
				return
			}
			if _, err := conn.ReadFrom(f); err != nil { // sendfile(2)
				return
			}
		}
	}()
	return &wg, nil
}

// result is one direction's measurement.
type result struct {
	payloadBps float64 // at the receiver, over the window
	wire       float64 // wire bytes per payload byte
	burstSecs  float64 // how long the full bucket took to pass
}

// measure sends over dial to the sink for at most maxDur. The bucket starts
// full: bucket bytes go at line rate, while tokens keep coming at the rate,
// so shaping shows once the wire bytes received pass bucket + rate·t and the
// last second ran below twice the rate. Then it calls drained, and one
// second after allDrained is closed (every direction shaped: no line-rate
// flow competing for the guest's CPUs) it measures the payload rate at the
// receiver over window.
func measure(sink *discardSink, addr string, dial traffic.DialFunc, rateBits float64, bucket int64, window, maxDur time.Duration, drained func(), allDrained <-chan struct{}) (res result, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), maxDur)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return res, err
	}
	conn := c.(*net.TCPConn)
	defer conn.Close()
	if res.wire, err = wireFactor(conn); err != nil {
		return res, err
	}
	deadline, _ := ctx.Deadline()
	conn.SetWriteDeadline(deadline)
	wg, err := sendfileFlow(ctx, conn)
	if err != nil {
		return res, err
	}
	defer func() { cancel(); conn.SetWriteDeadline(time.Now()); wg.Wait() }()

	start := time.Now()
	var samples []sample
	var from time.Time
	shaped := false
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if shaped && from.IsZero() {
			select {
			case <-allDrained:
				from = time.Now().Add(time.Second)
			default:
			}
		}
		select {
		case <-ctx.Done():
			got := sink.bytes.Load()
			return res, fmt.Errorf("the %d-byte bucket had not drained after %s: %d bytes received, %.0f Mbit/s on average "+
				"(the guest's line rate minus the %.0f Mbit/s of tokens must carry the runtime's burst; guest load %s)",
				bucket, maxDur, got, float64(got)*8/maxDur.Seconds()/1e6, rateBits/1e6, guestLoad())
		case now := <-tick.C:
			b := sink.bytes.Load()
			samples = append(samples, sample{now, b})
			// A bucket under a second of tokens has nothing to drain: only the last second's rate counts.
			small := float64(bucket) < rateBits/8
			if !shaped && (small || float64(b)*res.wire >= float64(bucket)+rateBits/8*now.Sub(start).Seconds()) {
				// Rate over the last second, in wire bits.
				i := len(samples) - 1
				for i > 0 && now.Sub(samples[i].at) < time.Second {
					i--
				}
				if d := now.Sub(samples[i].at).Seconds(); d > 0.5 && float64(b-samples[i].bytes)*res.wire*8/d < 2*rateBits {
					shaped, res.burstSecs = true, now.Sub(start).Seconds()
					drained()
				}
			}
			if !from.IsZero() && now.Sub(from) >= window {
				first := samples[0]
				for _, s := range samples {
					if !s.at.Before(from) {
						first = s
						break
					}
				}
				last := samples[len(samples)-1]
				res.payloadBps = float64(last.bytes-first.bytes) * 8 / last.at.Sub(first.at).Seconds()
				return res, nil
			}
		}
	}
}

// guestLoad is the guest's load average (a slow host shows as a low line
// rate, not here).
func guestLoad() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return string(bytes.TrimSpace(b))
}

func wireFactor(conn *net.TCPConn) (float64, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var ierr error
	rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO) })
	if ierr != nil || info.Snd_mss == 0 {
		return 0, fmt.Errorf("TCP_INFO: %v (mss %d)", ierr, info.Snd_mss)
	}
	hdr := ethIPTCPHeader
	if info.Options&1 != 0 { // TCPI_OPT_TIMESTAMPS
		hdr += tcpTimestamp
	}
	return float64(info.Snd_mss+uint32(hdr)) / float64(info.Snd_mss), nil
}

// TestVMCNIBandwidthEnforcesTheAnnotations: `set --egress/--ingress` on a
// k3s app (here pkg/k3s.Sync over its resource keys, as set and apply run
// it) → the pod annotations → kubelet/containerd's runtimeConfig → the real
// CNI bandwidth plugin on a veth into a pod netns → TCP at the receiver runs
// at the configured rate, each direction.
func TestVMCNIBandwidthEnforcesTheAnnotations(t *testing.T) {
	nettest.RequireRoot(t)
	plugin := os.Getenv("NETSHAPE_CNI_BANDWIDTH")
	if plugin == "" {
		t.Fatal("NETSHAPE_CNI_BANDWIDTH (the CNI bandwidth plugin built by `make vm-tools`) is not set")
	}
	if _, err := os.Stat(plugin); err != nil {
		t.Fatalf("CNI bandwidth plugin: %v", err)
	}

	// Dokku side: a k3s app with different limits per direction.
	f := dokkutest.NewFixture(t)
	f.AddApp("shop", "web", 1)
	f.SetScheduler("shop", "k3s")
	f.SetResource("shop", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	f.SetResource("shop", "web", dokku.Limit, dokku.NetworkIngress, "4mbps") // 32 Mbit/s
	if err := f.Env.Change(time.Minute, func(env dokku.Env) error { _, err := k3s.Sync(env, "shop"); return err }); err != nil {
		t.Fatal(err)
	}
	ann := podAnnotations(t, f.Env, "shop", "web")
	if ann[k3s.EgressAnnotation] != "20M" || ann[k3s.IngressAnnotation] != "32M" {
		t.Fatalf("web pod annotations %v, want egress 20M, ingress 32M", ann)
	}
	bw := runtimeBandwidth(t, ann)
	want := map[string]uint64{"egressRate": 20e6, "egressBurst": runtimeBurst, "ingressRate": 32e6, "ingressBurst": runtimeBurst}
	if !maps.Equal(bw, want) {
		t.Fatalf("runtimeConfig.bandwidth %v, want %v", bw, want)
	}

	// The pod: a netns whose eth0 is a veth to this (the node's) namespace.
	pod := nettest.NewNetns(t, "k3spod")
	hostIf := "vk3s" + nettest.Suffix()
	nettest.Run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", pod.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	nettest.Run(t, "ip", "addr", "add", "10.233.7.1/30", "dev", hostIf)
	nettest.Run(t, "ip", "link", "set", hostIf, "up")
	pod.Run(t, "ip", "addr", "add", "10.233.7.2/30", "dev", "eth0")
	pod.Run(t, "ip", "link", "set", "eth0", "up")

	containerID := "netshape-" + nettest.Suffix()
	cniInvoke(t, plugin, "ADD", containerID, pod.Path, hostIf, bw)
	t.Cleanup(func() { cniInvoke(t, plugin, "DEL", containerID, pod.Path, hostIf, bw) })

	// Pod ingress is shaped on the host veth, pod egress on the ifb its
	// ingress is mirrored to: find them and the buckets the kernel holds.
	inRate, inBucket := tbfOf(t, hostIf)
	var ifb string
	links, _ := netlink.LinkList()
	for _, l := range links {
		if l.Type() == "ifb" && len(l.Attrs().Name) > 3 && l.Attrs().Name[:3] == "bwp" {
			ifb = l.Attrs().Name
		}
	}
	if ifb == "" {
		t.Fatal("the plugin made no bwp* ifb device for the egress limit")
	}
	outRate, outBucket := tbfOf(t, ifb)
	if inRate != 4_000_000 || outRate != 2_500_000 {
		t.Fatalf("tbf rates: ingress %d B/s on %s, egress %d B/s on %s; want 4000000 and 2500000", inRate, hostIf, outRate, ifb)
	}
	// What the runtime's burst makes: a bucket of bucketNs at the rate, 512 MiB.
	for _, b := range []struct {
		name     string
		ns       uint64
		rateBits float64
	}{{"egress", outBucket, 20e6}, {"ingress", inBucket, 32e6}} {
		if bucket := int64(float64(b.ns) / 1e9 * b.rateBits / 8); bucket < 500<<20 {
			t.Errorf("%s: bucket %d bytes, want the runtime's 4 Gibit burst (512 MiB)", b.name, bucket)
		}
	}
	// Measuring the rate behind a 512 MiB bucket means first moving 512 MiB at the guest's line
	// rate, which under TCG can take minutes. The rates are what the annotations decide; the
	// burst is the runtime's. So the same pod is set up again with the same rates and a 1 Mbit
	// burst, and TCP is measured through that.
	cniInvoke(t, plugin, "DEL", containerID, pod.Path, hostIf, bw)
	// DEL removes the plugin's ifb; its qdiscs on the host veth stay behind (the pod's veth would
	// normally go with the pod), and ADD would find them.
	for _, q := range []string{"root", "ingress"} {
		exec.Command("tc", "qdisc", "del", "dev", hostIf, q).Run()
	}
	small := maps.Clone(bw)
	small["egressBurst"], small["ingressBurst"] = 1_000_000, 1_000_000
	cniInvoke(t, plugin, "ADD", containerID, pod.Path, hostIf, small)
	inRate, inBucket = tbfOf(t, hostIf)
	outRate, outBucket = tbfOf(t, ifb)
	if inRate != 4_000_000 || outRate != 2_500_000 {
		t.Fatalf("tbf rates with a small burst: ingress %d B/s, egress %d B/s; want 4000000 and 2500000", inRate, outRate)
	}

	podListen, err := traffic.ListenIn(pod.Path, "10.233.7.2:0")
	if err != nil {
		t.Fatal(err)
	}
	podSink := newDiscardSink(t, podListen)
	hostListen, err := net.Listen("tcp", "10.233.7.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostSink := newDiscardSink(t, hostListen)

	// Both directions at once: each has its own bucket (host veth, ifb).
	const window = 6 * time.Second
	type dir struct {
		name     string
		sink     *discardSink
		addr     string
		dial     traffic.DialFunc
		rateBits float64
		bucketNs uint64
		res      result
		err      error
	}
	dirs := []*dir{
		{name: "egress", sink: hostSink, addr: hostListen.Addr().String(), dial: traffic.DialIn(pod.Path), rateBits: 20e6, bucketNs: outBucket},
		{name: "ingress", sink: podSink, addr: podListen.Addr().String(), dial: traffic.DialIn(""), rateBits: 32e6, bucketNs: inBucket},
	}
	var wg, drained sync.WaitGroup
	drained.Add(len(dirs))
	allDrained := make(chan struct{})
	go func() { drained.Wait(); close(allDrained) }()
	for _, d := range dirs {
		bucket := int64(float64(d.bucketNs) / 1e9 * d.rateBits / 8)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.res, d.err = measure(d.sink, d.addr, d.dial, d.rateBits, bucket, window, 60*time.Second, drained.Done, allDrained)
		}()
	}
	wg.Wait()
	for _, d := range dirs {
		if d.err != nil {
			t.Errorf("%s: %v", d.name, d.err)
			continue
		}
		got, wantPayload := d.res.payloadBps, d.rateBits/d.res.wire
		// TBF is exact over a busy window (TCP keeps its queue non-empty:
		// the plugin's limit is the burst plus 25 ms of rate). The slack is
		// timing at the receiver: a read or a sample late by up to 150 ms
		// at either end of the 6 s window under TCG (5 %), which also
		// covers a 64 KiB GSO segment leaving the bucket at once (<1 %).
		const tol = 2 * 0.150 / 6
		t.Logf("%s: configured %.0f bit/s; bucket %.2f s of it, passed at line rate in %.1f s; then payload %.3f Mbit/s, want %.3f ±%.1f%%",
			d.name, d.rateBits, float64(d.bucketNs)/1e9, d.res.burstSecs, got/1e6, wantPayload/1e6, tol*100)
		if got > wantPayload*(1+tol) {
			t.Errorf("%s: %.3f Mbit/s of payload exceeds the %.0f bit/s the annotation configures (want ≤ %.3f)", d.name, got/1e6, d.rateBits, wantPayload*(1+tol)/1e6)
		}
		if got < wantPayload*(1-tol) {
			t.Errorf("%s: %.3f Mbit/s of payload is below the configured %.0f bit/s (want ≥ %.3f); guest load %s", d.name, got/1e6, d.rateBits, wantPayload*(1-tol)/1e6, guestLoad())
		}
	}
}
