package report

import (
	"math"
	"slices"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
)

// Metric is one column the ratios are taken on. Lower is better for every metric.
type Metric struct {
	Key, Label string
	Value      func(c cells.Cell) (float64, bool)
}

// Metrics the headline compares dokku-netshape on.
var Metrics = []Metric{
	{"rate_error", "rate error: abs(mean − limit) ÷ limit, as payload", func(c cells.Cell) (float64, bool) {
		if c.ExpectedBps <= 0 {
			return 0, false
		}
		return math.Abs(c.MeanBps/c.ExpectedBps - 1), true
	}},
	{"ping_p99", "ping p99", func(c cells.Cell) (float64, bool) { return c.Ping.P99, c.Ping.Count > 0 }},
	{"rr_p99", "TCP RR p99", func(c cells.Cell) (float64, bool) { return c.RR.P99, c.RR.Count > 0 }},
	{"xfer_p50", "256 KiB transfer p50", func(c cells.Cell) (float64, bool) { return c.Xfer.P50, c.Xfer.Count > 0 }},
	{"xfer_p90", "256 KiB transfer p90", func(c cells.Cell) (float64, bool) { return c.Xfer.P90, c.Xfer.Count > 0 }},
	{"cpu_per_gb", "sys CPU per GB", func(c cells.Cell) (float64, bool) { return c.CPUPerGB, c.Bytes > 0 }},
}

// Anchor reports whether a cell may serve as the best anchor: a peer scheme (not dokku-netshape, not
// no-limit) that measured cleanly and held its limit (mean below 1.5× the rate). The runtime-burst
// TBF never qualifies: its latencies are those of an unshaped path.
func Anchor(c cells.Cell) bool {
	return c.Scheme != cells.Netshape && c.Scheme.Limits() && c.Error == "" && c.MeanBps <= 1.5*c.Rate
}

// Ratio is dokku-netshape's value on one metric in one cell of the matrix against the best anchor's.
type Ratio struct {
	Kernel string       `json:"kernel"`
	Dir    cells.Dir    `json:"dir"`
	Rate   float64      `json:"rate_bps"`
	Flows  int          `json:"flows"`
	Metric string       `json:"metric"`
	Ours   float64      `json:"ours"`
	Best   float64      `json:"best"`
	Anchor cells.Scheme `json:"anchor"`
	Ratio  float64      `json:"ratio"` // Ours / Best; +Inf when Best is 0 and Ours is not, 1 when both are 0
}

// Ratios computes, for every cell position where dokku-netshape was measured, its ratio to the best
// qualifying anchor on each metric.
func Ratios(cs []cells.Cell) []Ratio {
	type pos struct {
		k     string
		d     cells.Dir
		r     float64
		flows int
	}
	groups := map[pos][]cells.Cell{}
	var order []pos
	for _, c := range cs {
		p := pos{c.Kernel, c.Dir, c.Rate, c.Flows}
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], c)
	}
	var out []Ratio
	for _, p := range order {
		g := groups[p]
		i := slices.IndexFunc(g, func(c cells.Cell) bool { return c.Scheme == cells.Netshape && c.Error == "" })
		if i < 0 {
			continue
		}
		ours := g[i]
		for _, m := range Metrics {
			ov, ok := m.Value(ours)
			if !ok {
				continue
			}
			best, found := Ratio{}, false
			for _, c := range g {
				if !Anchor(c) {
					continue
				}
				v, ok := m.Value(c)
				if ok && (!found || v < best.Best) {
					best, found = Ratio{Best: v, Anchor: c.Scheme}, true
				}
			}
			if !found {
				continue
			}
			r := Ratio{Kernel: p.k, Dir: p.d, Rate: p.r, Flows: p.flows, Metric: m.Key, Ours: ov, Best: best.Best, Anchor: best.Anchor}
			switch {
			case best.Best == 0 && ov == 0:
				r.Ratio = 1
			case best.Best == 0:
				r.Ratio = math.Inf(1)
			default:
				r.Ratio = ov / best.Best
			}
			out = append(out, r)
		}
	}
	return out
}

// Headline is one metric's ratios on one kernel summarised: the geometric mean over the matrix's
// cells (infinite ratios left out and counted), the worst, and in how many cells dokku-netshape was
// at least as good as the best anchor.
type Headline struct {
	Kernel   string  `json:"kernel"`
	Metric   string  `json:"metric"`
	GeoMean  float64 `json:"geomean"`
	Worst    float64 `json:"worst"`
	Cells    int     `json:"cells"`
	AtLeast  int     `json:"at_least_as_good"`
	Infinite int     `json:"infinite"`
}

// Headlines summarises ratios per kernel and metric, in Metrics order.
func Headlines(rs []Ratio, kernels []string) []Headline {
	var out []Headline
	for _, k := range kernels {
		for _, m := range Metrics {
			h := Headline{Kernel: k, Metric: m.Key}
			logSum, n := 0.0, 0
			for _, r := range rs {
				if r.Kernel != k || r.Metric != m.Key {
					continue
				}
				h.Cells++
				if r.Ratio <= 1 {
					h.AtLeast++
				}
				if math.IsInf(r.Ratio, 1) {
					h.Infinite++
					continue
				}
				h.Worst = max(h.Worst, r.Ratio)
				if r.Ratio > 0 {
					logSum += math.Log(r.Ratio)
					n++
				}
			}
			if h.Cells == 0 {
				continue
			}
			if n > 0 {
				h.GeoMean = math.Exp(logSum / float64(n))
			}
			out = append(out, h)
		}
	}
	return out
}
