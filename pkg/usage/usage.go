// Package usage answers "who uses the network right now": it reads every
// budget's counters through pkg/shaper twice and turns the difference into a
// rate per app, direction and process type. It only reads the pinned maps;
// apart from the budget names (pkg/reconcile's naming) it knows nothing of
// Docker or Dokku.
package usage

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// Source lists the budgets in the kernel (a *shaper.Shaper).
type Source interface {
	Budgets() ([]shaper.BudgetStatus, error)
}

// Counters are a budget's totals since it was created.
type Counters struct {
	Bytes    uint64 `json:"bytes"`
	Packets  uint64 `json:"packets"`
	Delayed  uint64 `json:"delayed_packets"`
	Dropped  uint64 `json:"dropped_packets"`
	Bypassed uint64 `json:"bypassed_packets"`
	Marked   uint64 `json:"ce_marked_packets"`
	Express  uint64 `json:"express_packets"`
}

// Usage is one budget: an app's traffic in one direction for one process
// type (reconcile.DefaultScope: every process type without its own limit).
type Usage struct {
	Budget      string              `json:"budget"`
	App         string              `json:"app"`
	ProcessType string              `json:"process_type"`
	Direction   reconcile.Direction `json:"direction"`
	// Limit in bit/s; 0 when the budget only counts (no limit configured).
	Limit uint64 `json:"limit_bits_per_second"`
	// Rate is what passed over the sampling window, in bit/s.
	Rate     float64  `json:"rate_bits_per_second"`
	Counters Counters `json:"counters"`
}

// Snapshot is every budget's counters at one moment.
type Snapshot struct {
	At      time.Time
	Budgets map[string]shaper.BudgetStatus
}

// Take reads every budget once.
func Take(src Source) (Snapshot, error) {
	bs, err := src.Budgets()
	if err != nil {
		return Snapshot{}, fmt.Errorf("read budget counters: %w", err)
	}
	s := Snapshot{At: time.Now(), Budgets: make(map[string]shaper.BudgetStatus, len(bs))}
	for _, b := range bs {
		s.Budgets[b.Name] = b
	}
	return s, nil
}

// MaxWindow bounds a sampling window: long enough for any rate to settle,
// short enough that nobody holds a report open with it.
const MaxWindow = 10 * time.Second

// Sampled is what Sample read: the rows and the moments of its two reads.
type Sampled struct {
	Rows     []Usage
	From, To time.Time
}

// Sample reads every budget, waits window, reads again and returns the
// rates over that window (see Between). apps are the known app names, to
// show hashed budget names by their real app.
func Sample(ctx context.Context, src Source, window time.Duration, apps []string) (Sampled, error) {
	if window <= 0 || window > MaxWindow {
		return Sampled{}, fmt.Errorf("sampling window %s is outside (0, %s]", window, MaxWindow)
	}
	before, err := Take(src)
	if err != nil {
		return Sampled{}, err
	}
	t := time.NewTimer(window)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return Sampled{}, ctx.Err()
	case <-t.C:
	}
	after, err := Take(src)
	if err != nil {
		return Sampled{}, err
	}
	return Sampled{Rows: Between(before, after, apps), From: before.At, To: after.At}, nil
}

// Between is the usage of every budget in after, its rate taken from what
// it gained since before. A budget new in after counts from zero (everything
// it counted happened within the window); one whose counters went backwards
// was removed and made again in between, and its rate is unknown: 0. Sorted
// by rate, the busiest first, then by name.
func Between(before, after Snapshot, apps []string) []Usage {
	elapsed := after.At.Sub(before.At).Seconds()
	out := Totals(after, apps)
	for i, u := range out {
		prev := before.Budgets[u.Budget].Stats.Bytes // zero when new
		if elapsed > 0 && u.Counters.Bytes >= prev {
			out[i].Rate = float64(u.Counters.Bytes-prev) * 8 / elapsed
		}
	}
	Sort(out)
	return out
}

// Totals is every app budget of one snapshot with its counters (no rate),
// sorted by name. Budgets named otherwise (not an app's) are left out.
func Totals(s Snapshot, apps []string) []Usage {
	out := make([]Usage, 0, len(s.Budgets))
	for name, b := range s.Budgets {
		ref, ok := reconcile.ParseBudgetName(name)
		if !ok {
			continue
		}
		out = append(out, Usage{
			Budget:      name,
			App:         realApp(ref, apps),
			ProcessType: ref.Scope,
			Direction:   ref.Direction,
			Limit:       limitOf(b),
			Counters:    countersOf(b.Stats),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Budget < out[j].Budget })
	return out
}

// Sort orders rows by rate, the busiest first, then by app, process type and direction.
func Sort(rows []Usage) {
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Rate != b.Rate {
			return a.Rate > b.Rate
		}
		return a.Budget < b.Budget
	})
}

// limitOf is a budget's configured rate; a count-only budget has none.
func limitOf(b shaper.BudgetStatus) uint64 {
	if b.CountOnly {
		return 0
	}
	return b.Rate
}

func countersOf(s shaper.Stats) Counters {
	return Counters{Bytes: s.Bytes, Packets: s.Packets, Delayed: s.Delayed, Dropped: s.Dropped,
		Bypassed: s.Bypassed, Marked: s.Marked, Express: s.Express}
}

// realApp is the app a budget belongs to, by its real name when the budget
// uses the hashed form of one of apps.
func realApp(ref reconcile.BudgetRef, apps []string) string {
	if !strings.HasPrefix(ref.App, "~") {
		return ref.App
	}
	for _, a := range apps {
		if ref.OwnedBy(a) {
			return a
		}
	}
	return ref.App
}

// Human is a rate in bit/s as a person reads it: "0 bit/s", "850 kbit/s",
// "12.3 Mbit/s", three significant digits, SI units as tc counts them.
func Human(bps float64) string {
	units := []string{"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"}
	i := 0
	for bps >= 999.5 && i < len(units)-1 {
		bps /= 1000
		i++
	}
	switch {
	case i == 0 || bps >= 99.95:
		return fmt.Sprintf("%.0f %s", bps, units[i])
	case bps >= 9.995:
		return fmt.Sprintf("%.1f %s", bps, units[i])
	}
	return fmt.Sprintf("%.2f %s", bps, units[i])
}
