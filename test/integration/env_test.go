//go:build vm

package integration

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// Direction is named from the app's point of view.
type Direction string

const (
	Egress  Direction = "egress"  // the app sends; shaper on the app-side veth (app netns)
	Ingress Direction = "ingress" // the app receives; shaper on the host-side veth (root netns)
)

var directions = []Direction{Egress, Ingress}

// Targets the project holds itself to; reported next to every result, asserted only through the
// honest tolerances below.
const (
	targetRateRatio   = 0.01                 // achieved within 1% of the rate over 10 s
	targetAddedP99    = 5 * time.Millisecond // p99 added RTT for a sparse flow sharing a loaded budget
	targetWindow      = 10 * time.Second     // the window the rate target is stated for
	warmup            = 1500 * time.Millisecond
	ethIPTCPHeader    = 14 + 20 + 20 // bytes on the wire around a segment's payload, before TCP options
	tcpTimestampBytes = 12           // the timestamp option as Linux pads it
	maxGSO            = 64 << 10
	frame             = 1514
	tcpiOptTimestamps = 1 // TCPI_OPT_TIMESTAMPS in linux/tcp.h
)

// ---------------------------------------------------------------------------------------------
// Topology: the guest's root netns plays the host. Each app is a netns with a veth to the root
// netns (app side "a…" inside the app, host side "b…" in root), like a Docker container on a
// bridge. A "client" netns, also behind a veth, plays the rest of the world: the root netns
// forwards between it and the apps. So app ingress arrives forwarded, as it does through docker0
// (no sending socket on the shaped device: no TCP Small Queues backpressure, only drops/CE), and
// app egress is shaped while the packet is still in the app's own netns, next to its socket.

type app struct {
	ns      *nettest.Netns
	dev     string // app side, inside ns
	hostDev string // host side, in the root netns
	ip      string
}

type world struct {
	client    *nettest.Netns
	clientIP  string
	clientDev string // the client's end of its veth, inside client
	apps      []*app
}

var subnetSeq atomic.Int32

func nextSubnet() int { return 100 + int(subnetSeq.Add(1)) } // 10.200.101.0/24 on, clear of other tests

var forwardOnce sync.Once

func newWorld(t *testing.T, apps int) *world {
	t.Helper()
	forwardOnce.Do(func() {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			t.Fatalf("enable forwarding in the root netns: %v", err)
		}
	})
	w := &world{client: newNetns(t, "cli")}
	cv := newVeth(t, w.client, nextSubnet())
	w.clientIP, w.clientDev = cv.innerIP, cv.inner
	for i := 0; i < apps; i++ {
		ns := newNetns(t, "app")
		v := newVeth(t, ns, nextSubnet())
		w.apps = append(w.apps, &app{ns: ns, dev: v.inner, hostDev: v.outer, ip: v.innerIP})
	}
	return w
}

// device is where a direction of an app is shaped.
func (a *app) device(d Direction) shaper.Device {
	if d == Egress {
		return shaper.Device{Netns: a.ns.Path, Name: a.dev}
	}
	return shaper.Device{Name: a.hostDev}
}

// backstop is the host-side device where the app's egress is policed a second time (the
// container cannot reach it), as reconcile attaches it next to every app-egress shaper.
func (a *app) backstop() shaper.Device { return shaper.Device{Name: a.hostDev} }

// attachBackstop attaches budget's policer at the app's host-side veth ingress.
func attachBackstop(t *testing.T, s *shaper.Shaper, a *app, budget string) {
	t.Helper()
	at, err := s.Attach(a.backstop(), budget, shaper.AttachOptions{Hook: shaper.HookPolice})
	if err != nil {
		t.Fatalf("attach backstop of %s on %s: %v", budget, a.hostDev, err)
	}
	// clsact + cls_bpf on every kernel: nothing else here attaches with TCX (shaper.Options.TCX).
	want := shaper.ModeLegacy
	if at.Mode != want || at.Hook != shaper.HookPolice {
		t.Errorf("backstop on %s: mode %s hook %s on kernel %s, want %s police", a.hostDev, at.Mode, at.Hook, vmresult.Kernel(), want)
	}
}

// assertNoBypass: TCP paced by the EDT program never trips the backstop; any frame it dropped
// would be a false positive (a lost segment of a well-behaved sender).
func assertNoBypass(t *testing.T, s *shaper.Shaper, budget string) {
	t.Helper()
	if st := stats(t, s, budget); st.Bypassed != 0 || st.Credited != 0 {
		t.Errorf("budget %s: the backstop dropped %d and credited %d frames of paced TCP, want 0", budget, st.Bypassed, st.Credited)
	}
}

// ends returns the sender's netns and the receiver's netns and IP for traffic of app a in direction d.
func (w *world) ends(a *app, d Direction) (sender *nettest.Netns, receiver *nettest.Netns, receiverIP string) {
	if d == Egress {
		return a.ns, w.client, w.clientIP
	}
	return w.client, a.ns, a.ip
}

// ---------------------------------------------------------------------------------------------
// Shaper per test, under its own pin directory; everything it made is removed and checked at the end.

func openShaper(t *testing.T) *shaper.Shaper {
	t.Helper()
	vmresult.RequireVM(t)
	s, err := shaper.Open(shaper.Options{PinDir: "/sys/fs/bpf/netshape-it-" + nettest.Suffix()})
	if err != nil {
		t.Fatalf("open shaper: %v", err)
	}
	t.Cleanup(func() {
		bs, err := s.Budgets()
		if err != nil {
			t.Errorf("list budgets at cleanup: %v", err)
		}
		for _, b := range bs {
			if err := s.RemoveBudget(b.Name); err != nil {
				t.Errorf("remove budget %s at cleanup: %v", b.Name, err)
			}
		}
		if err := s.Destroy(); err != nil {
			t.Errorf("destroy shaper: %v", err)
		}
	})
	return s
}

func upsert(t *testing.T, s *shaper.Shaper, b shaper.Budget) {
	t.Helper()
	if err := s.UpsertBudget(b); err != nil {
		t.Fatalf("upsert budget %s: %v", b.Name, err)
	}
}

func attach(t *testing.T, s *shaper.Shaper, dev shaper.Device, budget string) shaper.Attachment {
	t.Helper()
	a, err := s.Attach(dev, budget, shaper.AttachOptions{})
	if err != nil {
		t.Fatalf("attach %s to %s: %v", dev, budget, err)
	}
	want := shaper.ModeLegacy
	if a.Mode != want {
		t.Errorf("attach %s: mode %s on kernel %s, want %s", dev, a.Mode, vmresult.Kernel(), want)
	}
	return a
}

func kernelAtLeast(major, minor int) bool {
	var uts unix.Utsname
	if unix.Uname(&uts) != nil {
		return false
	}
	var ma, mi int
	fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &ma, &mi)
	return ma > major || ma == major && mi >= minor
}

func stats(t *testing.T, s *shaper.Shaper, name string) shaper.Stats {
	t.Helper()
	b, err := s.Budget(name)
	if err != nil {
		t.Fatalf("read budget %s: %v", name, err)
	}
	return b.Stats
}

func statsDelta(a, b shaper.Stats) shaper.Stats {
	return shaper.Stats{Bytes: b.Bytes - a.Bytes, Packets: b.Packets - a.Packets, Delayed: b.Delayed - a.Delayed,
		Dropped: b.Dropped - a.Dropped, Marked: b.Marked - a.Marked, Express: b.Express - a.Express,
		Bypassed: b.Bypassed - a.Bypassed, Credited: b.Credited - a.Credited}
}

func statsFields(st shaper.Stats) map[string]any {
	return map[string]any{"packets": st.Packets, "delayed": st.Delayed, "dropped": st.Dropped,
		"marked": st.Marked, "express": st.Express, "shaper_bytes": st.Bytes, "bypassed": st.Bypassed}
}

// ---------------------------------------------------------------------------------------------
// Device state: "nothing left" means no fq root of any kind that we could have put there, no
// clsact we added, no cls_bpf filter and no TCX program at egress, no pinned link, no record.

type devState struct {
	rootQdisc string
	clsact    bool
	filters   []string // cls_bpf filters at egress and ingress, by name
	tcxProgs  int      // TCX programs at egress and ingress
}

func inspectDev(t *testing.T, d shaper.Device) devState {
	t.Helper()
	var ns *nettest.Netns
	if d.Netns != "" {
		ns = &nettest.Netns{Name: filepath.Base(d.Netns), Path: d.Netns}
	}
	var st devState
	withHandle(t, ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(d.Name)
		if err != nil {
			return err
		}
		qs, err := h.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT {
				st.rootQdisc = q.Type()
			}
			if q.Type() == "clsact" {
				st.clsact = true
			}
		}
		if !st.clsact {
			return nil
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_EGRESS, netlink.HANDLE_MIN_INGRESS} {
			fs, err := h.FilterList(l, parent)
			if err != nil {
				return err
			}
			for _, f := range fs {
				name := f.Type()
				if bf, ok := f.(*netlink.BpfFilter); ok {
					name = bf.Name
				}
				st.filters = append(st.filters, name)
			}
		}
		return nil
	})
	if kernelAtLeast(6, 6) {
		query := func() error {
			ifc, err := net.InterfaceByName(d.Name)
			if err != nil {
				return err
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXEgress, ebpf.AttachTCXIngress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: at})
				if err != nil {
					return err
				}
				st.tcxProgs += len(res.Programs)
			}
			return nil
		}
		var err error
		if d.Netns == "" {
			err = query()
		} else {
			err = traffic.InNetns(d.Netns, query)
		}
		if err != nil {
			t.Errorf("query TCX programs on %s: %v", d, err)
		}
	}
	return st
}

// assertShaped: our fq at the root and exactly one program of ours at egress.
func assertShaped(t *testing.T, d shaper.Device) {
	t.Helper()
	st := inspectDev(t, d)
	progs := st.tcxProgs
	for _, f := range st.filters {
		if strings.HasPrefix(f, "netshape_edt") {
			progs++
		}
	}
	if st.rootQdisc != "fq" || progs != 1 {
		t.Errorf("%s while attached: %+v, want fq root and one netshape program", d, st)
	}
}

// assertClean: the device is as a fresh veth is (noqueue root, no clsact, no programs) and the
// shaper has no record and no pinned link left.
func assertClean(t *testing.T, s *shaper.Shaper, devs ...shaper.Device) {
	t.Helper()
	for _, d := range devs {
		st := inspectDev(t, d)
		if st.rootQdisc != "noqueue" || st.clsact || len(st.filters) != 0 || st.tcxProgs != 0 {
			t.Errorf("%s after removal: %+v, want noqueue root, no clsact, no programs", d, st)
		}
	}
	atts, err := s.Attachments()
	if err != nil || len(atts) != 0 {
		t.Errorf("attachments after removal: %v %v, want none", atts, err)
	}
	ents, err := os.ReadDir(filepath.Join(s.PinDir(), "links"))
	if err != nil || len(ents) != 0 {
		t.Errorf("pinned links after removal: %d (%v), want none", len(ents), err)
	}
}

// ---------------------------------------------------------------------------------------------
// Traffic: a bulk flow we own (so its socket's TCP_INFO and errors are ours to check), a sink at
// the receiver, and a sampler of the sink's byte count.

type flow struct {
	conn   *net.TCPConn
	local  string
	sent   atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// startFlow connects from netns from to addr and writes as fast as the socket takes data until
// stopped or maxDur passes (the bound every load loop has).
func startFlow(t *testing.T, from *nettest.Netns, addr string, maxDur time.Duration) *flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), maxDur)
	c, err := traffic.DialIn(from.Path)(ctx, "tcp", addr)
	if err != nil {
		cancel()
		t.Fatalf("dial %s from %s: %v", addr, from.Name, err)
	}
	f := &flow{conn: c.(*net.TCPConn), local: c.LocalAddr().String(), cancel: cancel, done: make(chan struct{})}
	deadline, _ := ctx.Deadline()
	_ = f.conn.SetWriteDeadline(deadline)
	go func() {
		defer close(f.done)
		buf := make([]byte, maxGSO)
		for ctx.Err() == nil {
			n, err := f.conn.Write(buf)
			f.sent.Add(int64(n))
			if err != nil {
				if ctx.Err() == nil && !isTimeout(err) {
					f.err = err
				}
				return
			}
		}
	}()
	t.Cleanup(func() { f.stop() })
	return f
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// stop ends the flow and returns the write error it met, if any (a reset, a broken pipe).
func (f *flow) stop() error {
	f.cancel()
	_ = f.conn.SetWriteDeadline(time.Now())
	<-f.done
	f.conn.Close()
	return f.err
}

// info is the sending socket's TCP_INFO.
func (f *flow) info() (*unix.TCPInfo, error) {
	rc, err := f.conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	return info, serr
}

// tcpCAOpen is TCP_CA_Open (include/net/tcp.h): no loss, SACK or ECN reduction under way.
const tcpCAOpen = 0

// recovering: the flow's sender knows of a lost or out-of-order segment (a stopped or broken
// flow recovers nothing).
func (f *flow) recovering() bool {
	info, err := f.info()
	return err == nil && info.Ca_state != tcpCAOpen
}

// wireFactor converts received payload to bytes on the wire, which is what a budget's rate counts
// (as tc does): each full segment of snd_mss payload carries Ethernet+IPv4+TCP headers and,
// when negotiated, the timestamp option. Bulk writes of 64 KiB keep segments full-sized.
func (f *flow) wireFactor(t *testing.T) float64 {
	t.Helper()
	info, err := f.info()
	if err != nil {
		t.Fatalf("TCP_INFO of %s: %v", f.local, err)
	}
	hdr := ethIPTCPHeader
	if info.Options&tcpiOptTimestamps != 0 {
		hdr += tcpTimestampBytes
	}
	mss := float64(info.Snd_mss)
	if mss == 0 {
		t.Fatalf("TCP_INFO of %s: snd_mss 0", f.local)
	}
	return (mss + float64(hdr)) / mss
}

func newSink(t *testing.T, in *nettest.Netns, ip string) *traffic.Sink {
	t.Helper()
	ln, err := traffic.ListenIn(in.Path, net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	s := traffic.NewSink(ln)
	t.Cleanup(func() { s.Close() })
	return s
}

func newEcho(t *testing.T, in *nettest.Netns, ip string) *traffic.Echo {
	t.Helper()
	ln, err := traffic.ListenIn(in.Path, net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	e := traffic.NewEcho(ln)
	t.Cleanup(func() { e.Close() })
	return e
}

// sampler records a byte counter every period, so rates over any sub-window can be read afterwards.
type sampler struct {
	mu    sync.Mutex
	at    []time.Time
	bytes []int64
	stopc chan struct{}
	done  chan struct{}
}

func startSampler(src func() int64, period, maxDur time.Duration) *sampler {
	s := &sampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		end := time.After(maxDur)
		for {
			s.mu.Lock()
			s.at, s.bytes = append(s.at, time.Now()), append(s.bytes, src())
			s.mu.Unlock()
			select {
			case <-tick.C:
			case <-end:
				return
			case <-s.stopc:
				return
			}
		}
	}()
	return s
}

func (s *sampler) stop() { close(s.stopc); <-s.done }

// between returns bytes and seconds between the first samples at or after from and to.
func (s *sampler) between(from, to time.Time) (int64, float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, j := -1, -1
	for k, a := range s.at {
		if i < 0 && !a.Before(from) {
			i = k
		}
		if j < 0 && !a.Before(to) {
			j = k
		}
	}
	if j < 0 {
		j = len(s.at) - 1
	}
	if i < 0 || j <= i {
		return 0, 0
	}
	return s.bytes[j] - s.bytes[i], s.at[j].Sub(s.at[i]).Seconds()
}

// ---------------------------------------------------------------------------------------------
// Tolerance of a rate measured at the receiver.
//
// A correct shaper at rate r (bit/s), measured over a window of w seconds, can still read off by
//
//	tol(r, w) = 2·(q + r/8·J) / (r/8·w) + m
//
// where
//   - q = clamp(4·r/8 · 1 ms, 2 frames, 64 KiB): data reaches the receiver one GSO packet at a
//     time, and each window edge can fall anywhere inside one. TCP sizes GSO packets to ~1 ms of
//     its pacing rate (tcp_tso_autosize), at least 2 segments, at most 64 KiB; its pacing rate is
//     at most 2× its delivery rate (slow start), which EDT holds at r — 4·r leaves margin.
//   - J = 10 ms: how late the receiving goroutine may read under TCG (2 emulated vCPUs shared by
//     sender, receiver, softirqs and fq's timers); it shifts each edge by r·J.
//   - m = 0.2%: the payload→wire conversion assumes full-sized segments.
//
// Overshoot beyond tol is a shaper bug: nothing but window edges lets a budget's departures run
// ahead of its clock (bulk packets never go express). Undershoot has one more cause the formula
// cannot bound: a TCG guest that starves the sender for longer than the budget's backlog lets the
// budget idle, and EDT does not give idle time back. That is emulation, not the shaper, so the
// lower bound adds tcgSlack, and is asserted only where the guest carried the rate with headroom
// unshaped right before and after the window (see bracket).
func tolerance(r float64, w time.Duration) float64 {
	const J = 10 * time.Millisecond
	bytesPerSec := r / 8
	q := math.Min(math.Max(4*bytesPerSec*0.001, 2*frame), maxGSO)
	return 2*(q+bytesPerSec*J.Seconds())/(bytesPerSec*w.Seconds()) + 0.002
}

// tcgSlack is the extra undershoot allowed for emulation stalls (see tolerance).
const tcgSlack = 0.02

// ---------------------------------------------------------------------------------------------
// What this guest carries unshaped, measured in the same moment as a shaped run: TCG throughput
// moves ±30% from one minute to the next (other guests and builds share the host's two cores),
// so a probe taken earlier says nothing about the window it would be compared with. A reference
// is a flow of its own on an app of the same world that nothing shapes, with the same sender and
// receiver code, run alone right before and right after the shaped window (alternating, never
// beside it: it would take the CPU the shaped flow needs).

// headroom: the undershoot bound of a rate is asserted only when the guest carried this many times
// the rate unshaped on both sides of the window, so TCG stalls left the sender enough margin to
// keep the budget busy. Overshoot is asserted always: no emulation stall makes a budget run ahead.
const headroom = 2.0

const (
	refWarmup = 500 * time.Millisecond
	refWindow = time.Second
)

// reference measures what the guest carries unshaped in direction d right now, on app x of w
// (which must have nothing attached).
func reference(t *testing.T, w *world, x *app, d Direction) float64 {
	t.Helper()
	snd, rcv, rip := w.ends(x, d)
	sink := newSink(t, rcv, rip)
	f := startFlow(t, snd, sink.Addr().String(), refWarmup+refWindow+5*time.Second)
	r, err := sink.MeasureRate(context.Background(), refWarmup, refWindow)
	if err != nil {
		t.Fatal(err)
	}
	wf := f.wireFactor(t)
	if err := f.stop(); err != nil {
		t.Fatalf("unshaped %s reference flow: %v", d, err)
	}
	return r.BitsPerSec * wf
}

// bracket is the unshaped reference on both sides of one shaped window.
type bracket struct {
	w             *world
	x             *app
	d             Direction
	before, after float64
}

// startBracket measures the reference right before a shaped run.
func startBracket(t *testing.T, w *world, x *app, d Direction) *bracket {
	t.Helper()
	return &bracket{w: w, x: x, d: d, before: reference(t, w, x, d)}
}

// end measures the reference right after the shaped run and returns the lower of the two: what
// the guest could carry throughout, as far as can be known.
func (b *bracket) end(t *testing.T) float64 {
	t.Helper()
	b.after = reference(t, b.w, b.x, b.d)
	t.Logf("unshaped %s reference around the window: %s / %s Mbit/s (wire, before / after)", b.d, mbit(b.before), mbit(b.after))
	return min(b.before, b.after)
}

// ---------------------------------------------------------------------------------------------
// TCP counters of a netns (the sender's): Tcp RetransSegs from /proc/net/snmp.

func retransSegs(t *testing.T, ns *nettest.Netns) int64 {
	t.Helper()
	out := readIn(t, ns, "/proc/net/snmp")
	var hdr []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "Tcp:") {
			continue
		}
		f := strings.Fields(line)
		if hdr == nil {
			hdr = f
			continue
		}
		for i, h := range hdr {
			if h == "RetransSegs" && i < len(f) {
				n, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					t.Fatalf("RetransSegs %q: %v", f[i], err)
				}
				return n
			}
		}
	}
	t.Fatalf("no Tcp RetransSegs in /proc/net/snmp of %s", ns.Name)
	return 0
}

func setECN(t *testing.T, ns *nettest.Netns, on bool) {
	t.Helper()
	v := "2" // the kernel default: accept ECN when asked, never ask
	if on {
		v = "1"
	}
	writeIn(t, ns, "/proc/sys/net/ipv4/tcp_ecn", v)
}

func mbit(bps float64) string { return strconv.FormatFloat(bps/1e6, 'f', 2, 64) }
