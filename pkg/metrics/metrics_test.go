package metrics

import (
	"context"
	"fmt"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/dokku-netshape/dokku-netshape/pkg/metrics/promtest"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// fakeBudgets is what the kernel would list; tests change it between scrapes.
type fakeBudgets struct {
	mu sync.Mutex
	bs []shaper.BudgetStatus
}

func (f *fakeBudgets) Budgets() ([]shaper.BudgetStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]shaper.BudgetStatus(nil), f.bs...), nil
}

func (f *fakeBudgets) set(bs ...shaper.BudgetStatus) {
	f.mu.Lock()
	f.bs = bs
	f.mu.Unlock()
}

func scrape(t *testing.T, url string) promtest.Families {
	t.Helper()
	f, err := promtest.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestMetricsServeCountersLimitsAndForgetDeletedBudgets(t *testing.T) {
	src := &fakeBudgets{}
	st := func(name string, rate uint64, bytes uint64) shaper.BudgetStatus {
		return shaper.BudgetStatus{Budget: shaper.Budget{Name: name, Rate: rate},
			Stats: shaper.Stats{Bytes: bytes, Packets: bytes / 1500, Dropped: 7, Delayed: 11, Bypassed: 5, Marked: 1, Express: 9}}
	}
	src.set(st("web1/_default_/egress", 20e6, 3_000_000), st("web1/worker/ingress", 5e6, 10), st("gone/_default_/egress", 1e6, 42))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0", &Collector{Src: src}, nil)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s/metrics", addr)
	fams := scrape(t, url)
	for _, c := range []struct {
		fam       string
		app, d, p string
		want      float64
	}{
		{"netshape_bytes_total", "web1", "egress", "_default_", 3_000_000},
		{"netshape_packets_total", "web1", "egress", "_default_", 2000},
		{"netshape_dropped_packets_total", "web1", "egress", "_default_", 7},
		{"netshape_delayed_packets_total", "web1", "egress", "_default_", 11},
		{"netshape_bypassed_packets_total", "web1", "egress", "_default_", 5},
		{"netshape_ce_marked_packets_total", "web1", "egress", "_default_", 1},
		{"netshape_express_packets_total", "web1", "egress", "_default_", 9},
		{"netshape_limit_bits_per_second", "web1", "egress", "_default_", 20e6},
		{"netshape_limit_bits_per_second", "web1", "ingress", "worker", 5e6},
		{"netshape_bytes_total", "gone", "egress", "_default_", 42},
	} {
		got, ok := fams.Value(c.fam, c.app, c.d, c.p)
		if !ok || got != c.want {
			t.Errorf("%s{app=%s,direction=%s,process_type=%s} = %v (present %v), want %v", c.fam, c.app, c.d, c.p, got, ok, c.want)
		}
	}
	if ty := fams["netshape_bytes_total"].GetType(); ty != dto.MetricType_COUNTER {
		t.Errorf("netshape_bytes_total is a %s", ty)
	}

	// The app is deleted: its budget goes, and so do its series.
	src.set(st("web1/_default_/egress", 20e6, 4_000_000), st("web1/worker/ingress", 5e6, 10))
	fams = scrape(t, url)
	if fams.HasApp("gone") {
		t.Error("the deleted app's series are still there")
	}
	if got, _ := fams.Value("netshape_bytes_total", "web1", "egress", "_default_"); got != 4_000_000 {
		t.Errorf("bytes after more traffic = %v", got)
	}
}

func TestMetricsAddrChecked(t *testing.T) {
	for _, a := range []string{"9479", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:0x10", "127.0.0.1:70000", "example.com:9479", ":", "127.0.0.1:-1"} {
		if err := CheckAddr(a); err == nil {
			t.Errorf("CheckAddr(%q) accepted", a)
		}
	}
	for _, a := range []string{"127.0.0.1:9479", "[::1]:9479", ":9479", "localhost:9479"} {
		if err := CheckAddr(a); err != nil {
			t.Errorf("CheckAddr(%q): %v", a, err)
		}
	}
	if _, err := Serve(context.Background(), "127.0.0.1:http", &Collector{}, nil); err == nil {
		t.Error("Serve took a named port")
	}
}
