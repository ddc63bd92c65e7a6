//go:build vm

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/metrics/promtest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/usage"
	"github.com/dokku-netshape/dokku-netshape/test/e2e/guestdocker"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// usageJSONFields are report's JSON fields that are not strings.
var usageJSONFields = map[string]bool{"netshape-usage": true, "netshape-egress-rate": true, "netshape-ingress-rate": true}

// usageReport is the part of `report APP --format json` issue 9 added.
type usageReport struct {
	Usage       []usage.Usage `json:"netshape-usage"`
	EgressRate  float64       `json:"netshape-egress-rate"`
	IngressRate float64       `json:"netshape-ingress-rate"`
	From        time.Time     `json:"netshape-sampled-from"`
	To          time.Time     `json:"netshape-sampled-to"`
}

// series is a receiver's byte count sampled every few milliseconds, so its
// rate can be taken over any window after the fact (the report's own).
type series struct {
	mu  sync.Mutex
	at  []time.Time
	val []int64
}

func follow(ctx context.Context, s *traffic.Sink) *series {
	sr := &series{}
	go func() {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			sr.mu.Lock()
			sr.at, sr.val = append(sr.at, time.Now()), append(sr.val, s.Bytes())
			sr.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	return sr
}

// at is the byte count at t, interpolated between the samples around it.
func (sr *series) valueAt(t time.Time) (float64, error) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	for i := 1; i < len(sr.at); i++ {
		if !sr.at[i].Before(t) {
			a, b := sr.at[i-1], sr.at[i]
			if t.Before(a) {
				return 0, fmt.Errorf("%s is before the first sample %s", t, a)
			}
			f := float64(t.Sub(a)) / float64(b.Sub(a))
			return float64(sr.val[i-1]) + f*float64(sr.val[i]-sr.val[i-1]), nil
		}
	}
	return 0, fmt.Errorf("%s is after the last sample", t)
}

// guestRmemMax is the most a TCP receiver in the guest may hold unread.
func guestRmemMax(t *testing.T) float64 {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_rmem")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	n, err := strconv.ParseFloat(f[len(f)-1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestVMDockerUsageReportAndMetrics: two apps in real containers, one limited (20 Mbit/s
// egress) and one only counted (monitor on, no limit). Each sends real TCP out of its
// container; `report APP --format json` must give a rate that is what its receiver got over
// the report's own sampling window (plus headers, ± what sockets can hold at the window's
// edges); the watcher's Prometheus counters must grow by the bytes sent; a deleted app's
// series must go.
func TestVMDockerUsageReportAndMetrics(t *testing.T) {
	vmresult.RequireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	d, cli := startDocker(t, ctx, "10.242.0.1/24")
	img := "netshape-e2e-usage:latest"
	if err := guestdocker.ImportBinary(ctx, cli, loadgenBin, img, `["/loadgen","serve"]`); err != nil {
		t.Fatal(err)
	}
	f := dokkutest.NewFixture(t)
	f.AddApp("limited", "web", 1)
	f.AddApp("counted", "web", 1)
	f.SetResource("limited", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	pinDir := fmt.Sprintf("/sys/fs/bpf/netshape-e2e-usage-%d", os.Getpid())
	env := d.Env("NETSHAPE_PIN_DIR="+pinDir, "NETSHAPE_LOCK="+filepath.Join(t.TempDir(), "netshape.lock"))
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	boxes := map[string]box{}
	for _, a := range []string{"limited", "counted"} {
		id := runApp(t, ctx, cli, img, a, "web", 1)
		f.AddContainer(a, "web", 1, id)
		b, err := inspectBox(ctx, cli, id)
		if err != nil {
			t.Fatal(err)
		}
		boxes[a] = b
	}
	// The operator's two settings, through the CLI as the plugin runs it; then the watcher
	// (as its unit runs it) reads the metrics address and reconciles every app.
	const metricsAddr = "127.0.0.1:19479"
	if out, err := netshape(ctx, env, netshapeBin, "set", "--global", "--monitor", "on", "--metrics-addr", metricsAddr); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("set --global:\n%s", out)
	}
	w := newWatchProc(t, env)
	url := "http://" + metricsAddr + "/metrics"
	var fams promtest.Families
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var err error
		fams, err = promtest.Scrape(url)
		_, ok1 := fams.Value("netshape_bytes_total", "counted", "egress", "_default_")
		_, ok2 := fams.Value("netshape_limit_bits_per_second", "limited", "egress", "_default_")
		if err == nil && ok1 && ok2 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no series of both apps within 30s (scrape error %v); watcher said:\n%s", err, strings.Join(w.lines(), "\n"))
		}
	}
	if v, _ := fams.Value("netshape_limit_bits_per_second", "limited", "egress", "_default_"); v != 20e6 {
		t.Errorf("netshape_limit_bits_per_second of limited egress = %v", v)
	}
	if _, ok := fams.Value("netshape_limit_bits_per_second", "counted", "egress", "_default_"); ok {
		t.Error("the counted app has a limit series")
	}

	rmem := guestRmemMax(t)
	for _, a := range []string{"limited", "counted"} {
		b := boxes[a]
		ln, err := net.Listen("tcp", net.JoinHostPort(d.Gateway(), "6101"))
		if err != nil {
			t.Fatal(err)
		}
		sink := traffic.NewSink(ln)
		before, err := promtest.Scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		sr := follow(sctx, sink)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Long enough that the report's window lies inside it even when the
			// guest is slow to start the sender or the report.
			out, err := d.Docker(ctx, "exec", b.Name, "/loadgen", "send", "-to", sink.Addr().String(), "-duration", "20s")
			if err != nil {
				t.Errorf("sender in %s: %v", b.Name, err)
			}
			t.Logf("sender in %s: %s", b.Name, lastLine(out))
		}()
		// Docker may take seconds to start the sender in a busy guest: wait for its
		// first bytes (bounded), then one more second, past slow start.
		for end := time.Now().Add(30 * time.Second); sink.Bytes() == 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: nothing received 30s after starting the sender", a)
			}
		}
		time.Sleep(time.Second)
		out, err := netshape(ctx, env, netshapeBin, "report", a, "--format", "json", "--sample-window", "8s")
		if err != nil {
			t.Fatal(err)
		}
		var rep usageReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("report: %v\n%s", err, out)
		}
		wg.Wait()
		// The transfer is over once the sink stops growing (bounded).
		for last, end := int64(-1), time.Now().Add(10*time.Second); sink.Bytes() != last && time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			last = sink.Bytes()
		}
		stop()
		sink.Close()
		after, err := promtest.Scrape(url)
		if err != nil {
			t.Fatal(err)
		}

		// Report rate vs the receiver over the same window.
		var row *usage.Usage
		for i := range rep.Usage {
			if rep.Usage[i].Direction == "egress" && rep.Usage[i].ProcessType == "_default_" {
				row = &rep.Usage[i]
			}
		}
		if row == nil {
			t.Fatalf("%s: no egress row in %s", a, out)
		}
		v0, err0 := sr.valueAt(rep.From)
		v1, err1 := sr.valueAt(rep.To)
		if err0 != nil || err1 != nil {
			t.Fatalf("%s: receiver over %s..%s: %v %v", a, rep.From, rep.To, err0, err1)
		}
		secs := rep.To.Sub(rep.From).Seconds()
		recv := (v1 - v0) * 8 / secs
		// The window must lie inside the transfer, or there is nothing to compare.
		if v0 <= 0 || v1 >= float64(sink.Bytes()) {
			t.Fatalf("%s: the report's window %s..%s is not inside the transfer (%.0f..%.0f of %d bytes received)", a, rep.From, rep.To, v0, v1, sink.Bytes())
		}
		// The budget counts frames, the receiver payload: 3..5.5 % more (headers: 66 bytes
		// per 1448-byte segment at EDT's hook, 54 per further GSO segment at the host
		// veth's ingress where a counted app is counted; pkg/shaper's real-TCP count
		// test). At each window edge what was counted but not yet read may differ: for an
		// unpaced flow up to a receive buffer (tcp_rmem max) plus one GSO packet.
		edge := 2 * (rmem + gsoMax) * 8 / secs
		if row.Limit > 0 {
			// A paced flow has at most the horizon's worth queued in fq and what the
			// veth delivery jitter holds (the backstop's own allowance, PoliceJitter)
			// between EDT's hook and the receiver.
			hold := shaper.DefaultHorizon(row.Limit) + shaper.PoliceJitter
			edge = 2 * (float64(row.Limit)/8*hold.Seconds() + gsoMax) * 8 / secs
		}
		lo, hi := recv*1.03-edge, recv*1.055+edge
		t.Logf("%s: report %.2f Mbit/s (limit %d) over %.2fs, receiver %.2f Mbit/s payload; allowed %.2f..%.2f", a, row.Rate/1e6, row.Limit, secs, recv/1e6, lo/1e6, hi/1e6)
		vmresult.Report(t, "usage_report_"+a, map[string]any{"report_bits_per_sec": row.Rate, "receiver_payload_bits_per_sec": recv,
			"window_seconds": secs, "min": lo, "max": hi, "limit": row.Limit})
		if row.Rate < lo || row.Rate > hi {
			t.Errorf("%s: report rate %.2f Mbit/s, receiver %.2f Mbit/s over the same %.2fs: outside %.2f..%.2f", a, row.Rate/1e6, recv/1e6, secs, lo/1e6, hi/1e6)
		}
		if math.Abs(rep.EgressRate-row.Rate) > 1 {
			t.Errorf("%s: netshape-egress-rate %v, row %v", a, rep.EgressRate, row.Rate)
		}
		if a == "limited" && (row.Limit != 20e6 || row.Rate > 20e6*1.05) {
			t.Errorf("limited: row %+v over its limit", row)
		}
		if a == "counted" && row.Limit != 0 {
			t.Errorf("counted: limit %d", row.Limit)
		}

		// Prometheus: the counter grew by what arrived, plus headers.
		b0, _ := before.Value("netshape_bytes_total", a, "egress", "_default_")
		b1, ok := after.Value("netshape_bytes_total", a, "egress", "_default_")
		got := float64(sink.Bytes())
		if r := (b1 - b0) / got; !ok || r < 1.03 || r > 1.055 {
			t.Errorf("%s: netshape_bytes_total grew by %.0f for %.0f bytes received: ratio %.4f (present %v), want 1.03..1.055", a, b1-b0, got, r, ok)
		}
		t.Logf("%s: netshape_bytes_total +%.0f for %.0f bytes received", a, b1-b0, got)
	}

	// Dokku deletes the counted app: post-delete runs `remove`; its series go.
	if out, err := netshape(ctx, env, netshapeBin, "remove", "counted"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("remove counted: %s", out)
	}
	gone, err := promtest.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	if gone.HasApp("counted") {
		t.Error("the deleted app's series are still scraped")
	}
	if !gone.HasApp("limited") {
		t.Error("the other app's series went too")
	}
	w.stop()
}
