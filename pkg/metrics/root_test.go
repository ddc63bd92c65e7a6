package metrics

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// Real TCP through count-only budgets on a veth pair (as reconcile counts a
// monitored app): the scraped counters grow by what was sent plus its
// headers, and a removed budget's series are gone from the next scrape.
func TestRootMetricsCountRealTCPAndDropRemovedBudgets(t *testing.T) {
	nettest.RequireRoot(t)
	pinDir := "/sys/fs/bpf/netshape-test-" + nettest.Suffix()
	s, err := shaper.Open(shaper.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Destroy(); os.RemoveAll(pinDir) })
	appNs := nettest.NewNetns(t, "prom")
	p := nettest.NewPair(t, appNs, nil, 32)
	egress := reconcile.BudgetName("shop", reconcile.DefaultScope, reconcile.Egress)
	ingress := reconcile.BudgetName("shop", reconcile.DefaultScope, reconcile.Ingress)
	for _, n := range []string{egress, ingress} {
		if err := s.UpsertBudget(shaper.Budget{Name: n, CountOnly: true}); err != nil {
			t.Fatal(err)
		}
	}
	host := shaper.Device{Name: p.NameB}
	if _, err := s.Attach(host, egress, shaper.AttachOptions{Hook: shaper.HookPolice}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(host, ingress, shaper.AttachOptions{Hook: shaper.HookShape}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0", &Collector{Src: s}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s/metrics", addr)

	before := scrape(t, url)
	ln, err := traffic.ListenIn("", p.IPB+":0")
	if err != nil {
		t.Fatal(err)
	}
	sink := traffic.NewSink(ln)
	if _, err := traffic.Send(ctx, traffic.SendOptions{Addr: sink.Addr().String(), Duration: time.Second, Dial: traffic.DialIn(appNs.Path)}); err != nil {
		t.Fatal(err)
	}
	// The transfer is over once the sink stops growing (bounded wait).
	for last, end := int64(-1), time.Now().Add(10*time.Second); sink.Bytes() != last && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		last = sink.Bytes()
	}
	sink.Close()
	got := float64(sink.Bytes())
	after := scrape(t, url)

	delta := func(fam, dir string) float64 {
		a, ok1 := after.Value(fam, "shop", dir, "_default_")
		b, ok2 := before.Value(fam, "shop", dir, "_default_")
		if !ok1 || !ok2 {
			t.Fatalf("%s{app=shop,direction=%s} missing", fam, dir)
		}
		return a - b
	}
	// Payload plus every segment's headers: 3..5.5 % (pkg/shaper's real-TCP count test).
	if r := delta("netshape_bytes_total", "egress") / got; r < 1.03 || r > 1.055 {
		t.Errorf("netshape_bytes_total grew by %.0f for %.0f bytes received: ratio %.4f, want 1.03..1.055", delta("netshape_bytes_total", "egress"), got, r)
	}
	if n := delta("netshape_packets_total", "egress"); n < got/65536 {
		t.Errorf("netshape_packets_total grew by %.0f for %.0f bytes", n, got)
	}
	// The receiver's ACKs came back in: counted as app ingress.
	if n := delta("netshape_packets_total", "ingress"); n <= 0 {
		t.Errorf("no ingress packets counted (ACKs): %v", n)
	}
	if _, ok := after.Value("netshape_limit_bits_per_second", "shop", "egress", "_default_"); ok {
		t.Error("a count-only budget has a limit series")
	}
	t.Logf("received %.0f bytes, netshape_bytes_total +%.0f", got, delta("netshape_bytes_total", "egress"))

	if err := s.RemoveBudget(egress); err != nil {
		t.Fatal(err)
	}
	gone := scrape(t, url)
	if _, ok := gone.Value("netshape_bytes_total", "shop", "egress", "_default_"); ok {
		t.Error("the removed budget's series is still scraped")
	}
	if _, ok := gone.Value("netshape_bytes_total", "shop", "ingress", "_default_"); !ok {
		t.Error("the remaining budget's series went too")
	}
}
