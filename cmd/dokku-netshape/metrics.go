package main

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/metrics"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// envMetricsAddr sets the watcher's metrics address (the systemd unit carries
// it when the install trigger had it); the --global property is the plugin's way.
const envMetricsAddr = "NETSHAPE_METRICS_ADDR"

// metricsAddr is where the watcher serves metrics: the flag (or its
// variable), else the plugin's global property, else nowhere.
func metricsAddr(c *cli.Context, env dokku.Env) (string, error) {
	if a := c.String("metrics-addr"); a != "" {
		return a, nil
	}
	return env.MetricsAddr()
}

// pinnedBudgets is the scrape's view of the budgets: its own handle on the
// pinned maps (scrapes run beside reconciles, which own theirs), re-opened
// when the pins were replaced.
type pinnedBudgets struct {
	mu sync.Mutex
	s  *shaper.Shaper
}

func (p *pinnedBudgets) Budgets() ([]shaper.BudgetStatus, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.s != nil && !p.s.Current() {
		p.s.Close()
		p.s = nil
	}
	if p.s == nil {
		s, err := shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)})
		if err != nil {
			return nil, err
		}
		p.s = s
	}
	return p.s.Budgets()
}

func (p *pinnedBudgets) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.s != nil {
		p.s.Close()
	}
}

// serveMetrics starts the endpoint when an address is configured; the
// returned func stops reading the maps.
func serveMetrics(ctx context.Context, addr string, env dokku.Env) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	src := &pinnedBudgets{}
	a, err := metrics.Serve(ctx, addr, &metrics.Collector{Src: src, Apps: env.Apps}, os.Stderr)
	if err != nil {
		return nil, err
	}
	fmt.Printf("-----> netshape: Prometheus metrics on http://%s/metrics\n", a)
	return src.close, nil
}
