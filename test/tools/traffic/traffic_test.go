package traffic

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"
)

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return ln
}

func TestSendToSinkCountsEveryByte(t *testing.T) {
	sink := NewSink(listenLoopback(t))
	defer sink.Close()
	seconds := 0
	res, err := Send(context.Background(), SendOptions{
		Addr: sink.Addr().String(), Duration: 1500 * time.Millisecond, Conns: 2,
		OnSecond: func(int, float64) { seconds++ },
	})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if res.Bytes <= 0 || res.BitsPerSec <= 0 {
		t.Fatalf("sent nothing: %+v", res)
	}
	if seconds != 1 || len(res.PerSecond) != 1 {
		t.Errorf("per-second callbacks %d, samples %d; want 1 each for 1.5 s", seconds, len(res.PerSecond))
	}
	if res.Seconds < 1.4 || res.Seconds > 3 {
		t.Errorf("send took %.2fs, want about 1.5s", res.Seconds)
	}
	// The sender closed its connections; the sink must end up with exactly what was written.
	deadline := time.Now().Add(3 * time.Second)
	for sink.Bytes() != res.Bytes && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if sink.Bytes() != res.Bytes {
		t.Errorf("sink counted %d bytes, sender wrote %d", sink.Bytes(), res.Bytes)
	}
	if sink.Conns() != 2 {
		t.Errorf("sink saw %d connections, want 2", sink.Conns())
	}
}

func TestMeasureRateSeesOngoingTransfer(t *testing.T) {
	sink := NewSink(listenLoopback(t))
	defer sink.Close()
	ctx := context.Background()
	done := make(chan error, 1)
	go func() {
		_, err := Send(ctx, SendOptions{Addr: sink.Addr().String(), Duration: 1200 * time.Millisecond})
		done <- err
	}()
	r, err := sink.MeasureRate(ctx, 200*time.Millisecond, 500*time.Millisecond)
	if err != nil {
		t.Fatalf("measure: %v", err)
	}
	if r.BitsPerSec < 1e6 {
		t.Errorf("loopback rate %.0f bit/s, want > 1 Mbit/s", r.BitsPerSec)
	}
	if r.Seconds < 0.45 || r.Seconds > 1.5 {
		t.Errorf("window %.2fs, want about 0.5s", r.Seconds)
	}
	if err := <-done; err != nil {
		t.Fatalf("send: %v", err)
	}
	// Nothing is sending any more: a new window must read zero.
	time.Sleep(100 * time.Millisecond)
	idle, err := sink.MeasureRate(ctx, 0, 200*time.Millisecond)
	if err != nil || idle.Bytes != 0 {
		t.Errorf("idle window: %+v, %v; want 0 bytes", idle, err)
	}
}

func TestRRAgainstEcho(t *testing.T) {
	echo := NewEcho(listenLoopback(t))
	defer echo.Close()
	l, err := RR(context.Background(), RROptions{Addr: echo.Addr().String(), Count: 50, Size: 100})
	if err != nil {
		t.Fatalf("rr: %v", err)
	}
	if l.Count != 50 {
		t.Fatalf("count %d, want 50", l.Count)
	}
	if !(l.P50Ms > 0 && l.P50Ms <= l.P90Ms && l.P90Ms <= l.P99Ms && l.P99Ms <= l.MaxMs) {
		t.Errorf("percentiles out of order: %+v", l)
	}
	if l.MaxMs > 1000 {
		t.Errorf("loopback max RTT %.1f ms", l.MaxMs)
	}
	if l.Samples != nil {
		t.Errorf("samples kept without KeepSamples: %d", len(l.Samples))
	}
	k, err := RR(context.Background(), RROptions{Addr: echo.Addr().String(), Count: 20, KeepSamples: true})
	if err != nil {
		t.Fatalf("rr: %v", err)
	}
	if len(k.Samples) != 20 || slices.Max(k.Samples) != k.MaxMs {
		t.Errorf("KeepSamples: %d samples, max %v, want 20 with max %.3f", len(k.Samples), k.Samples, k.MaxMs)
	}
}

func TestBoundsRejected(t *testing.T) {
	ctx := context.Background()
	if _, err := Send(ctx, SendOptions{Addr: "127.0.0.1:1", Duration: 0}); err == nil {
		t.Error("Send with zero duration accepted")
	}
	if _, err := Send(ctx, SendOptions{Addr: "127.0.0.1:1", Duration: MaxDuration + time.Second}); err == nil {
		t.Error("Send beyond MaxDuration accepted")
	}
	if _, err := RR(ctx, RROptions{Addr: "127.0.0.1:1", Count: 0}); err == nil {
		t.Error("RR with zero count accepted")
	}
}

func TestSummarizePercentiles(t *testing.T) {
	var rtts []time.Duration
	for i := 1; i <= 100; i++ {
		rtts = append(rtts, time.Duration(i)*time.Millisecond)
	}
	l := summarize(rtts)
	if l.P50Ms != 50 || l.P90Ms != 90 || l.P99Ms != 99 || l.MaxMs != 100 {
		t.Errorf("summarize(1..100ms) = %+v, want 50/90/99/100", l)
	}
	if one := summarize([]time.Duration{7 * time.Millisecond}); one.P50Ms != 7 || one.P99Ms != 7 {
		t.Errorf("summarize(7ms) = %+v", one)
	}
}
