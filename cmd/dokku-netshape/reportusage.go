package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/usage"
)

// What report adds per app and direction: the limit, the rate right now
// (sampled over --sample-window, default defaultSampleWindow) and the
// counters. "usage" is the whole table; "egress-rate"/"ingress-rate" are one
// number each (bit/s, every process type summed) for scripts.
var usageFields = []string{"usage", "egress-rate", "ingress-rate"}

const defaultSampleWindow = 500 * time.Millisecond

// needsUsage: only these reports wait for a sample.
func (ra reportArgs) needsUsage() bool {
	return ra.field == "" || slices.Contains(usageFields, ra.field)
}

// sampleUsage reads the budgets over the window, before the reconcile lock
// is taken (reading counters needs no lock, and the wait must not hold it).
func sampleUsage(ctx context.Context, ra reportArgs, apps []string) (usage.Sampled, error) {
	if !ra.needsUsage() {
		return usage.Sampled{}, nil
	}
	s, err := shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)})
	if err != nil {
		return usage.Sampled{}, err
	}
	defer s.Close()
	got, err := usage.Sample(ctx, s, ra.sampleWindow(), apps)
	if err != nil {
		return usage.Sampled{}, fmt.Errorf("sample traffic: %w", err)
	}
	return got, nil
}

func (ra reportArgs) sampleWindow() time.Duration {
	if ra.window == 0 {
		return defaultSampleWindow
	}
	return ra.window
}

// parseSampleWindow checks --sample-window's value.
func parseSampleWindow(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 10*time.Millisecond || d > usage.MaxWindow {
		return 0, fmt.Errorf("--sample-window: %q is not a duration from 10ms to %s", v, usage.MaxWindow)
	}
	return d, nil
}

// addUsage puts an app's rows into its report.
func (a *appReport) addUsage(app string, sampled usage.Sampled) {
	a.usage = []usage.Usage{}
	a.sampledFrom, a.sampledTo = sampled.From, sampled.To
	var lines []string
	sum := map[reconcile.Direction]float64{}
	for _, u := range sampled.Rows {
		if u.App != app {
			continue
		}
		a.usage = append(a.usage, u)
		sum[u.Direction] += u.Rate
		limit := "no limit (counted only)"
		if u.Limit > 0 {
			limit = fmt.Sprintf("of %s (%.0f%%)", usage.Human(float64(u.Limit)), 100*u.Rate/float64(u.Limit))
		}
		c := u.Counters
		line := fmt.Sprintf("%s/%s %s %s: %d bytes, %d packets, %d delayed, %d dropped, %d marked, %d express",
			u.ProcessType, u.Direction, usage.Human(u.Rate), limit, c.Bytes, c.Packets, c.Delayed, c.Dropped, c.Marked, c.Express)
		if u.Direction == reconcile.Egress {
			line += fmt.Sprintf(", %d bypassed", c.Bypassed)
		}
		lines = append(lines, line)
	}
	slices.Sort(lines)
	a.fields["usage"] = strings.Join(lines, "; ")
	a.egressRate, a.ingressRate = sum[reconcile.Egress], sum[reconcile.Ingress]
	a.fields["egress-rate"] = fmt.Sprintf("%.0f", a.egressRate)
	a.fields["ingress-rate"] = fmt.Sprintf("%.0f", a.ingressRate)
}

// usageJSON adds the numbers to report's JSON: the rates as numbers, the
// table as objects of numbers (usage.Usage's fields).
func (a appReport) usageJSON(out map[string]any) {
	if a.usage == nil {
		return
	}
	out["netshape-usage"] = a.usage
	out["netshape-egress-rate"] = a.egressRate
	out["netshape-ingress-rate"] = a.ingressRate
	// When the rates were taken: the two reads of the counters.
	out["netshape-sampled-from"] = a.sampledFrom.UTC().Format(time.RFC3339Nano)
	out["netshape-sampled-to"] = a.sampledTo.UTC().Format(time.RFC3339Nano)
}
