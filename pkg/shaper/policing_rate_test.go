package shaper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
	"golang.org/x/sys/unix"
)

// The degraded datapath (no sch_fq: netshape_limit polices the budget) with
// real TCP, placed as pkg/reconcile places it: app egress on the app's own
// veth end (tc egress, next to the sending socket) with the backstop on the
// host end's ingress, app ingress on the host end (tc egress, forwarded
// traffic). The topology is all namespaces the test makes: a "host" netns that
// forwards between an app netns and a client netns (nothing of the machine's
// own configuration is touched). On a kernel without fq (the dev/CI host) the
// attach falls back exactly as reconcile does (only on ErrNoFq); in a VM guest,
// which has fq, the test forces the no-fq path with AttachOptions.NoFq.

const (
	policingWarmup = 2 * time.Second
	policingWindow = 10 * time.Second
	// policingTolerance: the long-run rate of TCP through the policer must be
	// within 5 % of the limit.
	policingTolerance = 0.05
	// policingHeadroom: the lower bound is asserted only when an unshaped
	// reference right before and after the window carried this many times
	// the rate (a starved emulated guest cannot keep any budget busy).
	policingHeadroom = 2.0
)

type polWorld struct {
	host, client, app, ref *nettest.Netns
	clientIP, appIP, refIP string
	appDev, appPeer        string // the app's end (in app) and its host end (in host)
}

func newPolWorld(t *testing.T) *polWorld {
	t.Helper()
	w := &polWorld{host: nettest.NewNetns(t, "phst"), client: nettest.NewNetns(t, "pcli"),
		app: nettest.NewNetns(t, "papp"), ref: nettest.NewNetns(t, "pref")}
	w.host.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	c := nettest.NewPair(t, w.client, w.host, 61)
	a := nettest.NewPair(t, w.app, w.host, 62)
	r := nettest.NewPair(t, w.ref, w.host, 63)
	for _, x := range []struct {
		ns *nettest.Netns
		gw string
	}{{w.client, c.IPB}, {w.app, a.IPB}, {w.ref, r.IPB}} {
		x.ns.Run(t, "ip", "route", "add", "default", "via", x.gw)
	}
	w.clientIP, w.appIP, w.refIP = c.IPA, a.IPA, r.IPA
	w.appDev, w.appPeer = a.NameA, a.NameB
	return w
}

// ends of a run in direction dir ("egress": the app sends to the client) for app netns x.
func (w *polWorld) ends(dir string, x *nettest.Netns, xIP string) (from, to *nettest.Netns, toIP string) {
	if dir == "egress" {
		return x, w.client, w.clientIP
	}
	return w.client, x, xIP
}

// tcpRun sends one bulk TCP flow for warm-up + window and returns the wire
// rate (bit/s) at the receiver over the window and the sender's retransmits.
func tcpRun(t *testing.T, from, to *nettest.Netns, toIP string, warm, window time.Duration) (float64, uint32) {
	t.Helper()
	ln, err := traffic.ListenIn(to.Path, net.JoinHostPort(toIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	sink := traffic.NewSink(ln)
	defer sink.Close()
	ctx, cancel := context.WithTimeout(context.Background(), warm+window+5*time.Second)
	defer cancel()
	c, err := traffic.DialIn(from.Path)(ctx, "tcp", sink.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := c.(*net.TCPConn)
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetWriteDeadline(deadline)
	var werr atomic.Value
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			if _, err := conn.Write(buf); err != nil {
				if ctx.Err() == nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						werr.Store(err)
					}
				}
				return
			}
		}
	}()
	r, err := sink.MeasureRate(ctx, warm, window)
	if err != nil {
		t.Fatal(err)
	}
	info := tcpInfo(t, conn)
	cancel()
	conn.SetWriteDeadline(time.Now())
	<-done
	if e := werr.Load(); e != nil {
		t.Fatalf("flow to %s: %v", toIP, e)
	}
	// Payload to wire: each full segment carries Ethernet+IPv4+TCP headers and the timestamp option.
	hdr := 14 + 20 + 20
	if info.Options&1 != 0 { // TCPI_OPT_TIMESTAMPS
		hdr += 12
	}
	mss := float64(info.Snd_mss)
	return r.BitsPerSec * (mss + float64(hdr)) / mss, info.Total_retrans
}

func tcpInfo(t *testing.T, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO) }); err != nil || ierr != nil {
		t.Fatalf("TCP_INFO: %v %v", err, ierr)
	}
	return info
}

// attachDegraded attaches a shaping budget as reconcile would on a kernel
// without fq: Attach, and on ErrNoFq only, again with NoFq. Where fq exists
// (a VM guest) it forces the no-fq path. It reports whether it forced.
func attachDegraded(t *testing.T, s *Shaper, dev Device, budget string) bool {
	t.Helper()
	forced := nettest.HaveFq(t)
	if !forced {
		_, err := s.Attach(dev, budget, AttachOptions{})
		if !errors.Is(err, ErrNoFq) {
			t.Fatalf("attach %s without fq: %v, want ErrNoFq", dev, err)
		}
	}
	a, err := s.Attach(dev, budget, AttachOptions{NoFq: true})
	if err != nil {
		t.Fatal(err)
	}
	if !a.Degraded() || a.Datapath != DatapathPolicing {
		t.Fatalf("attach %s with NoFq: %+v, want the policing datapath", dev, a)
	}
	if st := inspect(t, dev); st.rootHandle != 0 {
		t.Fatalf("%s degraded has root qdisc %s, want none", dev, st.rootKind)
	}
	return forced
}

// TestRootPolicingRateTCP: one bulk TCP flow through a 20 and a 100 Mbit/s
// budget enforced without fq, in each direction, measured at the receiver
// over 10 s: within 5 % of the limit. The upper bound always; the lower
// bound when an unshaped flow on another app of the same world carried at
// least twice the rate right before and after. The backstop on app egress
// must drop nothing of this TCP (0 bypassed).
func TestRootPolicingRateTCP(t *testing.T) {
	nettest.RequireRoot(t)
	for _, dir := range []string{"egress", "ingress"} {
		for _, rate := range []uint64{20e6, 100e6} {
			t.Run(fmt.Sprintf("%s/%dmbit", dir, rate/1e6), func(t *testing.T) {
				s := openTestShaper(t)
				w := newPolWorld(t)
				name := "pol/" + dir
				if err := s.UpsertBudget(Budget{Name: name, Rate: rate}); err != nil {
					t.Fatal(err)
				}
				var forced bool
				if dir == "egress" {
					forced = attachDegraded(t, s, Device{Netns: w.app.Path, Name: w.appDev}, name)
					if _, err := s.Attach(Device{Netns: w.host.Path, Name: w.appPeer}, name, AttachOptions{Hook: HookPolice}); err != nil {
						t.Fatal(err)
					}
				} else {
					forced = attachDegraded(t, s, Device{Netns: w.host.Path, Name: w.appPeer}, name)
				}
				refFrom, refTo, refIP := w.ends(dir, w.ref, w.refIP)
				before, _ := tcpRun(t, refFrom, refTo, refIP, 500*time.Millisecond, time.Second)
				st0, err := s.Budget(name)
				if err != nil {
					t.Fatal(err)
				}
				from, to, ip := w.ends(dir, w.app, w.appIP)
				got, retrans := tcpRun(t, from, to, ip, policingWarmup, policingWindow)
				st1, err := s.Budget(name)
				if err != nil {
					t.Fatal(err)
				}
				after, _ := tcpRun(t, refFrom, refTo, refIP, 500*time.Millisecond, time.Second)
				ref := min(before, after)
				ratio := got / float64(rate)
				lower := ref >= policingHeadroom*float64(rate)
				dropped := st1.Stats.Dropped - st0.Stats.Dropped
				vmresult.Report(t, "policing_rate_tcp", map[string]any{
					"direction": dir, "target_bps": rate, "achieved_bps": got, "ratio": ratio, "window_s": policingWindow.Seconds(),
					"reference_bps": ref, "lower_bound_asserted": lower, "retransmits": retrans, "dropped": dropped,
					"bypassed": st1.Stats.Bypassed, "forced_no_fq": forced, "tolerance_s": max(DefaultHorizon(rate), NoFqTolerance).Seconds(),
				})
				t.Logf("%s %d Mbit/s without fq (forced %v): %.2f Mbit/s (ratio %.4f), %d retransmits, %d policed, %d bypassed; unshaped reference %.0f Mbit/s",
					dir, rate/1e6, forced, got/1e6, ratio, retrans, dropped, st1.Stats.Bypassed, ref/1e6)
				if ratio > 1+policingTolerance {
					t.Errorf("%s: %.2f Mbit/s through a %d Mbit/s policer (ratio %.4f), want at most %.2f", dir, got/1e6, rate/1e6, ratio, 1+policingTolerance)
				}
				if lower && ratio < 1-policingTolerance {
					t.Errorf("%s: %.2f Mbit/s through a %d Mbit/s policer (ratio %.4f), want at least %.2f (unshaped reference %.0f Mbit/s)",
						dir, got/1e6, rate/1e6, ratio, 1-policingTolerance, ref/1e6)
				}
				if !lower {
					t.Logf("lower bound not asserted: the unshaped reference carried only %.0f Mbit/s", ref/1e6)
				}
				if st1.Stats.Bypassed != 0 {
					t.Errorf("the backstop dropped %d frames of TCP the degraded policer passed, want 0", st1.Stats.Bypassed)
				}
				if err := s.RemoveBudget(name); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
