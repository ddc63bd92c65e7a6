// Package metrics exports the budgets' counters (pkg/usage) to Prometheus.
// The collector reads the pinned maps at scrape time and keeps nothing
// between scrapes, so a deleted app's series vanish with its budgets and
// the number of series is bounded by the budgets that exist.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dokku-netshape/dokku-netshape/pkg/usage"
)

var labels = []string{"app", "direction", "process_type"}

type counter struct {
	desc *prometheus.Desc
	get  func(usage.Counters) uint64
}

func newCounter(name, help string, get func(usage.Counters) uint64) counter {
	return counter{prometheus.NewDesc(name, help, labels, nil), get}
}

var (
	counters = []counter{
		newCounter("netshape_bytes_total", "Bytes the app's budget counted in this direction: whole frames, headers included.",
			func(c usage.Counters) uint64 { return c.Bytes }),
		newCounter("netshape_packets_total", "Packets the app's budget counted in this direction.",
			func(c usage.Counters) uint64 { return c.Packets }),
		newCounter("netshape_dropped_packets_total", "Packets dropped because the budget's queue was past its horizon.",
			func(c usage.Counters) uint64 { return c.Dropped }),
		newCounter("netshape_delayed_packets_total", "Packets held back to keep the budget's rate.",
			func(c usage.Counters) uint64 { return c.Delayed }),
		newCounter("netshape_bypassed_packets_total", "Frames the host-side backstop dropped because they skipped the shaper (egress only).",
			func(c usage.Counters) uint64 { return c.Bypassed }),
		newCounter("netshape_ce_marked_packets_total", "Packets marked Congestion Experienced.",
			func(c usage.Counters) uint64 { return c.Marked }),
		newCounter("netshape_express_packets_total", "Small packets of sparse flows sent without waiting behind the budget's queue.",
			func(c usage.Counters) uint64 { return c.Express }),
	}
	limitDesc = prometheus.NewDesc("netshape_limit_bits_per_second",
		"The configured limit; absent for apps that are only counted.", labels, nil)
)

// Collector is a prometheus.Collector over the budgets of Src. Apps, when
// set, names the known apps so hashed budget names show the real app.
type Collector struct {
	Src  usage.Source
	Apps func() ([]string, error)
}

// Describe sends nothing: the series are only known at scrape time (an
// "unchecked" collector), which is what lets a deleted app's series go.
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Collect reads every budget once.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap, err := usage.Take(c.Src)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(counters[0].desc, err)
		return
	}
	var apps []string
	if c.Apps != nil {
		// Without the app list hashed names stay hashed: still one series per budget.
		apps, _ = c.Apps()
	}
	for _, u := range usage.Totals(snap, apps) {
		lv := []string{u.App, string(u.Direction), u.ProcessType}
		for _, m := range counters {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.get(u.Counters)), lv...)
		}
		if u.Limit > 0 {
			ch <- prometheus.MustNewConstMetric(limitDesc, prometheus.GaugeValue, float64(u.Limit), lv...)
		}
	}
}

// Handler serves c (and nothing else: no Go runtime metrics of the watcher).
func Handler(c *Collector) http.Handler {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// CheckAddr accepts HOST:PORT with a numeric port (host may be empty: every address).
func CheckAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: want HOST:PORT, e.g. 127.0.0.1:9479", addr)
	}
	// 0 (any free port) is for tests; a named port would mean a lookup.
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(p, 10) != port {
		return fmt.Errorf("metrics address %q: port must be a number 0..65535", addr)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("metrics address %q: host must be an IP address or localhost", addr)
	}
	return nil
}

// Serve listens on addr and serves /metrics until ctx ends. The listener is
// bound before it returns, so a bad or taken address fails at once.
func Serve(ctx context.Context, addr string, c *Collector, log io.Writer) (net.Addr, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serve metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(c))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(log, " !     netshape watch: metrics server on %s stopped: %v\n", addr, err)
		}
	}()
	return ln.Addr(), nil
}
