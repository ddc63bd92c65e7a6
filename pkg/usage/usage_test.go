package usage

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

func status(name string, rate, bytes uint64) shaper.BudgetStatus {
	return shaper.BudgetStatus{Budget: shaper.Budget{Name: name, Rate: rate}, Stats: shaper.Stats{Bytes: bytes, Packets: bytes / 1000, Dropped: 3, Bypassed: 2}}
}

func countOnly(name string, bytes uint64) shaper.BudgetStatus {
	return shaper.BudgetStatus{Budget: shaper.Budget{Name: name, CountOnly: true}, Stats: shaper.Stats{Bytes: bytes}}
}

func snap(at time.Time, bs ...shaper.BudgetStatus) Snapshot {
	s := Snapshot{At: at, Budgets: map[string]shaper.BudgetStatus{}}
	for _, b := range bs {
		s.Budgets[b.Name] = b
	}
	return s
}

func TestBetweenRatesAndOrder(t *testing.T) {
	t0 := time.Unix(1000, 0)
	long := strings.Repeat("a", 120)
	longName := reconcile.BudgetName(long, reconcile.DefaultScope, reconcile.Egress)
	before := snap(t0,
		status("slow/_default_/egress", 20e6, 1_000_000),
		status("fast/web/ingress", 50e6, 5_000_000),
		status("reset/_default_/egress", 1e6, 9_000_000),
	)
	after := snap(t0.Add(500*time.Millisecond),
		status("slow/_default_/egress", 20e6, 1_250_000), // 250 kB in 0.5 s = 4 Mbit/s
		status("fast/web/ingress", 50e6, 7_500_000),      // 2.5 MB in 0.5 s = 40 Mbit/s
		status("reset/_default_/egress", 1e6, 10),        // made again in between
		status("new/_default_/ingress", 1e6, 50_000),     // new: counts from zero, 0.8 Mbit/s
		countOnly("counted/_default_/egress", 500_000),   // 8 Mbit/s, no limit
		status(longName, 1e6, 0),
		status("not-an-app-budget", 1e6, 1),
	)
	got := Between(before, after, []string{"other", long})
	want := []struct {
		app, proc string
		dir       reconcile.Direction
		rate      float64
	}{
		{"fast", "web", reconcile.Ingress, 40e6},
		{"counted", reconcile.DefaultScope, reconcile.Egress, 8e6},
		{"slow", reconcile.DefaultScope, reconcile.Egress, 4e6},
		{"new", reconcile.DefaultScope, reconcile.Ingress, 0.8e6},
		{"reset", reconcile.DefaultScope, reconcile.Egress, 0}, // ties by budget name: "~" sorts last
		{long, reconcile.DefaultScope, reconcile.Egress, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.App != w.app || g.ProcessType != w.proc || g.Direction != w.dir || g.Rate != w.rate {
			t.Errorf("row %d = %s %s %s %.0f, want %s %s %s %.0f", i, g.App, g.ProcessType, g.Direction, g.Rate, w.app, w.proc, w.dir, w.rate)
		}
	}
	if got[1].Limit != 0 {
		t.Errorf("a count-only budget has a limit: %+v", got[1])
	}
	if got[0].Limit != 50e6 || got[0].Counters.Bytes != 7_500_000 || got[0].Counters.Dropped != 3 || got[0].Counters.Bypassed != 2 {
		t.Errorf("fast's limit and counters: %+v", got[0])
	}
}

type fakeSource struct{ calls []time.Time }

func (f *fakeSource) Budgets() ([]shaper.BudgetStatus, error) {
	f.calls = append(f.calls, time.Now())
	return []shaper.BudgetStatus{status("a/_default_/egress", 1e6, uint64(len(f.calls))*1000)}, nil
}

func TestSampleWaitsTheWindowAndBoundsIt(t *testing.T) {
	src := &fakeSource{}
	got, err := Sample(context.Background(), src, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	rows := got.Rows
	if got.To.Sub(got.From) < 50*time.Millisecond || got.From.Before(src.calls[0]) || got.To.Before(src.calls[1]) {
		t.Errorf("window %s..%s", got.From, got.To)
	}
	if len(src.calls) != 2 || src.calls[1].Sub(src.calls[0]) < 50*time.Millisecond {
		t.Fatalf("reads at %v: want two, 50ms apart", src.calls)
	}
	// 1000 bytes over >= 50 ms: at most 160 kbit/s, and more than nothing.
	if len(rows) != 1 || rows[0].Rate <= 0 || rows[0].Rate > 160e3 {
		t.Fatalf("rows %+v", rows)
	}
	for _, w := range []time.Duration{0, -time.Second, MaxWindow + 1} {
		if _, err := Sample(context.Background(), src, w, nil); err == nil {
			t.Errorf("window %s accepted", w)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Sample(ctx, src, time.Second, nil); err == nil {
		t.Error("a cancelled sample returned rows")
	}
}

func TestHuman(t *testing.T) {
	for in, want := range map[float64]string{
		0: "0 bit/s", 999: "999 bit/s", 1000: "1.00 kbit/s", 12_345_678: "12.3 Mbit/s",
		20e6: "20.0 Mbit/s", 999.6e6: "1.00 Gbit/s", 150e3: "150 kbit/s", 2e15: "2000 Tbit/s",
	} {
		if got := Human(in); got != want {
			t.Errorf("Human(%v) = %q, want %q", in, got, want)
		}
	}
}
