// Package traffic generates and measures TCP test traffic in-process: a byte-counting sink, a bulk
// sender, an echo server and a request/response latency probe, plus helpers to open sockets inside a
// network namespace. Every loop here is bounded by a duration or a count and stops by itself.
//
// It is the library behind test/tools/loadgen; tests can use it directly.
package traffic

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// MaxDuration caps every timed loop, whatever a caller asks for.
const MaxDuration = 10 * time.Minute

const bufSize = 64 << 10

// server is the connection bookkeeping shared by Sink and Echo: accept until closed, run handle per
// connection, count what handle reports, close everything on Close.
type server struct {
	ln     net.Listener
	handle func(c net.Conn, count *atomic.Int64)
	bytes  atomic.Int64
	conns  atomic.Int64
	mu     sync.Mutex
	open   map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newServer(ln net.Listener, handle func(net.Conn, *atomic.Int64)) *server {
	s := &server{ln: ln, handle: handle, open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // listener closed
		}
		s.conns.Add(1)
		s.mu.Lock()
		s.open[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c, &s.bytes)
			s.mu.Lock()
			delete(s.open, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

func (s *server) close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// Sink accepts TCP connections and counts every byte it reads from them.
type Sink struct{ s *server }

// NewSink starts serving ln in the background; Close stops it.
func NewSink(ln net.Listener) *Sink {
	return &Sink{newServer(ln, func(c net.Conn, count *atomic.Int64) {
		buf := make([]byte, bufSize)
		for {
			n, err := c.Read(buf)
			count.Add(int64(n))
			if err != nil {
				return
			}
		}
	})}
}

// Addr is the address the sink listens on.
func (s *Sink) Addr() net.Addr { return s.s.ln.Addr() }

// Bytes received so far, over all connections.
func (s *Sink) Bytes() int64 { return s.s.bytes.Load() }

// Conns is the number of connections accepted so far.
func (s *Sink) Conns() int64 { return s.s.conns.Load() }

// Close stops accepting, closes open connections and waits for the handlers.
func (s *Sink) Close() error { return s.s.close() }

// Rate is an amount of data over a time span.
type Rate struct {
	Bytes      int64   `json:"bytes"`
	Seconds    float64 `json:"seconds"`
	BitsPerSec float64 `json:"bits_per_sec"`
}

func rateOf(bytes int64, d time.Duration) Rate {
	r := Rate{Bytes: bytes, Seconds: d.Seconds()}
	if d > 0 {
		r.BitsPerSec = float64(bytes) * 8 / d.Seconds()
	}
	return r
}

// MeasureRate waits warmup (to skip slow start and any initial burst), then returns the rate the sink
// received at over the following window.
func (s *Sink) MeasureRate(ctx context.Context, warmup, window time.Duration) (Rate, error) {
	if warmup+window > MaxDuration || window <= 0 {
		return Rate{}, fmt.Errorf("measure window %s after %s: out of range", window, warmup)
	}
	if err := sleep(ctx, warmup); err != nil {
		return Rate{}, err
	}
	b0, t0 := s.Bytes(), time.Now()
	if err := sleep(ctx, window); err != nil {
		return Rate{}, err
	}
	return rateOf(s.Bytes()-b0, time.Since(t0)), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// DialFunc opens a connection; net.Dialer.DialContext fits, and so does DialIn bound to a namespace.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// SendOptions describe a bulk transfer.
type SendOptions struct {
	Addr     string
	Duration time.Duration // required, at most MaxDuration
	Conns    int           // parallel connections, default 1
	Dial     DialFunc      // default: net.Dialer
	// OnSecond, if set, is called once per elapsed second with that second's sending rate.
	OnSecond func(second int, bitsPerSec float64)
}

// SendResult is what a bulk sender wrote. Sender-side figures include what is still sitting in socket
// buffers, so they over-read for the first second; measure at the receiver for rate conformance.
type SendResult struct {
	Rate
	PerSecond []float64 `json:"per_second_bits"`
}

// Send writes as fast as the connections accept for o.Duration, then closes them.
func Send(ctx context.Context, o SendOptions) (SendResult, error) {
	if o.Duration <= 0 || o.Duration > MaxDuration {
		return SendResult{}, fmt.Errorf("send duration %s: must be in (0, %s]", o.Duration, MaxDuration)
	}
	if o.Conns <= 0 {
		o.Conns = 1
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	}
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	conns := make([]net.Conn, 0, o.Conns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < o.Conns; i++ {
		c, err := o.Dial(ctx, "tcp", o.Addr)
		if err != nil {
			return SendResult{}, fmt.Errorf("dial %s: %w", o.Addr, err)
		}
		conns = append(conns, c)
	}
	deadline, _ := ctx.Deadline()
	start := time.Now()
	var sent atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for _, c := range conns {
		// The write deadline ends a write blocked on a full (e.g. shaped) path at the end of the run.
		_ = c.SetWriteDeadline(deadline)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bufSize)
			for ctx.Err() == nil {
				n, err := c.Write(buf)
				sent.Add(int64(n))
				if err != nil {
					if !errors.Is(err, net.ErrClosed) && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
						errs <- err
					}
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	var res SendResult
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := int64(0)
loop:
	for {
		select {
		case <-tick.C:
			now := sent.Load()
			bps := float64(now-last) * 8
			last = now
			res.PerSecond = append(res.PerSecond, bps)
			if o.OnSecond != nil {
				o.OnSecond(len(res.PerSecond), bps)
			}
		case <-done:
			break loop
		}
	}
	res.Rate = rateOf(sent.Load(), time.Since(start))
	select {
	case err := <-errs:
		return res, fmt.Errorf("send to %s: %w", o.Addr, err)
	default:
	}
	return res, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Echo writes back whatever each connection sends; the server side of RR.
type Echo struct{ s *server }

// NewEcho starts echoing on ln.
func NewEcho(ln net.Listener) *Echo {
	return &Echo{newServer(ln, func(c net.Conn, count *atomic.Int64) {
		n, _ := io.Copy(c, c)
		count.Add(n)
	})}
}

// Addr is the address the echo server listens on.
func (e *Echo) Addr() net.Addr { return e.s.ln.Addr() }

// Close stops the echo server.
func (e *Echo) Close() error { return e.s.close() }

// RROptions describe a request/response probe.
type RROptions struct {
	Addr     string
	Count    int           // requests, 1..1_000_000
	Size     int           // bytes per request (echoed back), default 64
	Interval time.Duration // pause between requests
	Timeout  time.Duration // per request, default 5s
	Dial     DialFunc
	// KeepSamples returns every round trip in Latency.Samples (for a CDF).
	KeepSamples bool
}

// Latency summarises round-trip times.
type Latency struct {
	Count int     `json:"count"`
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// Samples are the round trips in ms, in order, when RROptions.KeepSamples is set.
	Samples []float64 `json:"samples_ms,omitempty"`
}

// RR sends Count requests of Size bytes over one connection to an Echo server, one at a time, and
// returns round-trip latency percentiles.
func RR(ctx context.Context, o RROptions) (Latency, error) {
	if o.Count <= 0 || o.Count > 1_000_000 {
		return Latency{}, fmt.Errorf("rr count %d: must be in 1..1000000", o.Count)
	}
	if o.Size <= 0 {
		o.Size = 64
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	}
	ctx, cancel := context.WithTimeout(ctx, MaxDuration)
	defer cancel()
	c, err := o.Dial(ctx, "tcp", o.Addr)
	if err != nil {
		return Latency{}, fmt.Errorf("dial %s: %w", o.Addr, err)
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	req := make([]byte, o.Size)
	resp := make([]byte, o.Size)
	rtts := make([]time.Duration, 0, o.Count)
	summarize := func(rtts []time.Duration) Latency {
		l := summarize(rtts)
		if o.KeepSamples {
			for _, d := range rtts {
				l.Samples = append(l.Samples, float64(d.Microseconds())/1000)
			}
		}
		return l
	}
	for i := 0; i < o.Count; i++ {
		if i > 0 && o.Interval > 0 {
			if err := sleep(ctx, o.Interval); err != nil {
				return summarize(rtts), err
			}
		}
		_ = c.SetDeadline(time.Now().Add(o.Timeout))
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			return summarize(rtts), fmt.Errorf("rr request %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return summarize(rtts), fmt.Errorf("rr response %d: %w", i, err)
		}
		rtts = append(rtts, time.Since(t0))
	}
	return summarize(rtts), nil
}

func summarize(rtts []time.Duration) Latency {
	l := Latency{Count: len(rtts)}
	if len(rtts) == 0 {
		return l
	}
	s := append([]time.Duration(nil), rtts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	// Nearest-rank percentile.
	pct := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return ms(s[min(max(i, 0), len(s)-1)])
	}
	l.P50Ms, l.P90Ms, l.P99Ms, l.MaxMs = pct(0.50), pct(0.90), pct(0.99), ms(s[len(s)-1])
	return l
}
