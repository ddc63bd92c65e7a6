//go:build vmbench

package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

const (
	sinkPort, echoPort, xferPort = 7001, 7002, 7003
	xferBytes                    = 256 << 10
	step                         = 100 * time.Millisecond
	pingEvery                    = 50 * time.Millisecond
	rrEvery                      = 10 * time.Millisecond
)

// cell measures one spec with the scheme already on: Flows bulk TCP flows for the whole cell, and
// from m.Probe on, beside them, a 20 Hz ping, a request/response flow and sequential 256 KiB
// transfers, all from the sending side through the loaded direction. Receiver bytes are sampled
// every 100 ms; counters are read before and after.
func (r *rig) cell(ctx context.Context, sp cells.Spec, sc scheme) cells.Cell {
	c := cells.Cell{Spec: sp, Kernel: vmresult.Kernel(), CellSeconds: r.m.Cell.Seconds(), SeriesStep: step.Seconds()}
	if sp.Scheme != cells.NoLimit {
		c.ExpectedBps = sp.Rate * cells.Goodput(r.mtu)
	}
	if err := r.measure(ctx, sp, sc, &c); err != nil {
		c.Error = err.Error()
	}
	return c
}

func (r *rig) measure(ctx context.Context, sp cells.Spec, sc scheme, c *cells.Cell) error {
	sndNS, rcvNS, rcvIP, sndPid := r.ends(sp.Dir)
	d := r.devs[sp.Dir]
	listen := func(port int) (net.Listener, error) { return traffic.ListenIn(rcvNS, addr(anyIf(rcvNS, rcvIP), port)) }
	sl, err := listen(sinkPort)
	if err != nil {
		return err
	}
	sink := traffic.NewSink(sl)
	defer sink.Close()
	el, err := listen(echoPort)
	if err != nil {
		return err
	}
	echo := traffic.NewEcho(el)
	defer echo.Close()
	xl, err := listen(xferPort)
	if err != nil {
		return err
	}
	defer xl.Close()
	var xferGot atomic.Int64
	go xferServer(xl, &xferGot)
	// The shaped direction carries the bulk flows and the transfers; the rate is what both delivered
	// (a scheme that lets new flows through quickly moves bytes from the bulk flows to them).
	received := func() int64 { return sink.Bytes() + xferGot.Load() }

	re0, err := tcpRetrans(sndPid)
	if err != nil {
		return err
	}
	qd0, err := d.qdiscDrops(ctx)
	if err != nil {
		return err
	}
	bd0, err := sc.bpfDrops(sp.Dir)
	if err != nil {
		return err
	}
	cpu0, err := sysCPU()
	if err != nil {
		return err
	}

	t0 := time.Now()
	end := t0.Add(r.m.Cell)
	grace := end.Add(r.m.Settle) // probes in flight at the end may finish until here
	var wg sync.WaitGroup
	var sendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, sendErr = traffic.Send(ctx, traffic.SendOptions{Addr: addr(rcvIP, sinkPort), Duration: r.m.Cell, Conns: sp.Flows, Dial: traffic.DialIn(sndNS)})
	}()
	pctx, pcancel := context.WithDeadline(ctx, end)
	defer pcancel()
	var ping, rr, xfer cells.Latency
	var pingErr, rrErr, xferErr error
	probes := func() {
		if err := sleepUntil(ctx, t0.Add(r.m.Probe)); err != nil {
			return
		}
		var pw sync.WaitGroup
		pw.Add(3)
		go func() { defer pw.Done(); ping, pingErr = pingProbe(pctx, sndNS, rcvIP, grace) }()
		go func() {
			defer pw.Done()
			l, err := traffic.RR(pctx, traffic.RROptions{Addr: addr(rcvIP, echoPort), Count: 100000, Size: 64, Interval: rrEvery,
				Timeout: time.Until(grace), Dial: traffic.DialIn(sndNS), KeepSamples: true})
			if err != nil && pctx.Err() != nil {
				err = nil // the cell ended
			}
			rr, rrErr = cells.Summarize(l.Samples, 0), err
		}()
		go func() { defer pw.Done(); xfer, xferErr = xferProbe(pctx, sndNS, addr(rcvIP, xferPort), grace) }()
		pw.Wait()
	}
	wg.Add(1)
	go func() { defer wg.Done(); probes() }()

	// Receiver bytes every step until the end of the cell.
	var at []time.Time
	var got []int64
	var bulk int64
	for now := t0; !now.After(end); now = now.Add(step) {
		if err := sleepUntil(ctx, now); err != nil {
			return err
		}
		at, got, bulk = append(at, time.Now()), append(got, received()), sink.Bytes()
	}
	cpu1, err := sysCPU()
	if err != nil {
		return err
	}
	wg.Wait()
	for i := 1; i < len(got); i++ {
		c.SeriesBps = append(c.SeriesBps, float64(got[i]-got[i-1])*8/at[i].Sub(at[i-1]).Seconds())
	}
	first := int(time.Second / step)
	if len(got) <= first+1 {
		return fmt.Errorf("only %d samples", len(got))
	}
	c.Bytes = got[len(got)-1]
	c.BulkBps = float64(bulk) * 8 / at[len(at)-1].Sub(t0).Seconds() // not what drains after the end
	c.FirstBps = float64(got[first]) * 8 / at[first].Sub(t0).Seconds()
	c.MeanBps = float64(got[len(got)-1]-got[first]) * 8 / at[len(at)-1].Sub(at[first]).Seconds()
	c.Ping, c.RR, c.Xfer = ping, rr, xfer
	re1, err := tcpRetrans(sndPid)
	if err != nil {
		return err
	}
	c.Retrans = re1 - re0
	qd1, err := d.qdiscDrops(ctx)
	if err != nil {
		return err
	}
	bd1, err := sc.bpfDrops(sp.Dir)
	if err != nil {
		return err
	}
	c.Drops = qd1 - qd0 + bd1 - bd0
	c.SysCPUSec = cpu1 - cpu0
	if c.Bytes > 0 {
		c.CPUPerGB = c.SysCPUSec / (float64(c.Bytes) / 1e9)
	}
	// What is still queued drains before the next cell starts.
	if err := sleepUntil(ctx, grace); err != nil {
		return err
	}
	return errors.Join(wrap("bulk", sendErr), wrap("ping", pingErr), wrap("rr", rrErr), wrap("256 KiB transfers", xferErr))
}

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// anyIf: a receiver inside the container listens on every address; in the root namespace only on
// docker0's.
func anyIf(ns, ip string) string {
	if ns != "" {
		return "0.0.0.0"
	}
	return ip
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// xferServer reads 256 KiB per connection, counting what it reads, and answers one byte.
func xferServer(ln net.Listener, got *atomic.Int64) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			n, err := io.CopyN(io.Discard, c, xferBytes)
			got.Add(n)
			if err == nil {
				_, _ = c.Write([]byte{1})
			}
		}()
	}
}

// xferProbe runs 256 KiB transfers one after another until ctx ends: connect, write, wait for the
// receiver's one-byte answer. The transfer cut off by the end of the cell may finish until grace;
// if it does not, its elapsed time is kept only when it already exceeds every finished one (then it
// is a lower bound in the tail, where leaving it out would flatter the scheme).
func xferProbe(ctx context.Context, ns, to string, grace time.Time) (cells.Latency, error) {
	dial := traffic.DialIn(ns)
	var done []float64
	buf := make([]byte, xferBytes)
	for ctx.Err() == nil {
		t0 := time.Now()
		ms, err := func() (float64, error) {
			c, err := dial(context.Background(), "tcp", to)
			if err != nil {
				return 0, err
			}
			defer c.Close()
			_ = c.SetDeadline(grace)
			if _, err := c.Write(buf); err != nil {
				return 0, err
			}
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				return 0, err
			}
			return float64(time.Since(t0).Microseconds()) / 1000, nil
		}()
		if err != nil {
			if time.Now().After(grace.Add(-10 * time.Millisecond)) {
				cut := float64(time.Since(t0).Microseconds()) / 1000
				if len(done) == 0 || cut > slices.Max(done) {
					done = append(done, cut)
				}
				break
			}
			return cells.Summarize(done, 0), err
		}
		done = append(done, ms)
	}
	return cells.Summarize(done, 0), nil
}

// pingProbe sends ICMP echo requests every 50 ms from namespace ns to ip until ctx ends and collects
// replies until grace; requests without a reply by then are lost.
func pingProbe(ctx context.Context, ns, ip string, grace time.Time) (cells.Latency, error) {
	var pc *icmp.PacketConn
	err := traffic.InNetns(nsOrSelf(ns), func() (err error) {
		pc, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return cells.Latency{}, fmt.Errorf("icmp socket: %w", err)
	}
	defer pc.Close()
	dst := &net.IPAddr{IP: net.ParseIP(ip)}
	id := os.Getpid() & 0xffff
	var mu sync.Mutex
	sent := map[int]time.Time{}
	var rtts []float64
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 1500)
		_ = pc.SetReadDeadline(grace)
		for {
			n, _, err := pc.ReadFrom(buf)
			now := time.Now()
			if err != nil {
				return
			}
			msg, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || msg.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			e, ok := msg.Body.(*icmp.Echo)
			if !ok || e.ID != id {
				continue
			}
			mu.Lock()
			if t, ok := sent[e.Seq]; ok {
				rtts = append(rtts, float64(now.Sub(t).Microseconds())/1000)
				delete(sent, e.Seq)
			}
			mu.Unlock()
		}
	}()
	tick := time.NewTicker(pingEvery)
	defer tick.Stop()
	for seq := 0; ctx.Err() == nil && seq < 1<<15; seq++ {
		b, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, 56)}}).Marshal(nil)
		if err != nil {
			return cells.Latency{}, err
		}
		mu.Lock()
		sent[seq] = time.Now()
		mu.Unlock()
		if _, err := pc.WriteTo(b, dst); err != nil {
			return cells.Latency{}, fmt.Errorf("ping %s: %w", ip, err)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	return cells.Summarize(rtts, len(sent)), nil
}

// nsOrSelf: InNetns needs a path; "" means the test's own namespace.
func nsOrSelf(ns string) string {
	if ns == "" {
		return "/proc/self/ns/net"
	}
	return ns
}
