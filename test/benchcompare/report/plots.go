package report

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
)

// Plots draws, for every kernel, direction and rate, the receiver rate over time of each scheme
// (at the matrix's fewest flows) and the CDF of each scheme's ping round trips beside the bulk flows
// (at the most flows; 20 Hz whatever the delay, where the one-at-a-time RR flow gets few samples once
// the queue is a second long), as PNGs in dir. It returns the files' paths.
func Plots(run Run, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("plots: %w", err)
	}
	var out []string
	for _, k := range run.Kernels {
		for _, d := range []cells.Dir{cells.Egress, cells.Ingress} {
			for _, rate := range rates(run.Cells, k.Series, d) {
				rs := rows(run.Cells, k.Series, d, rate)
				var flows []int
				for _, c := range rs {
					if !slices.Contains(flows, c.Flows) {
						flows = append(flows, c.Flows)
					}
				}
				if len(flows) == 0 {
					continue
				}
				slices.Sort(flows)
				base := fmt.Sprintf("%s-%s-%gmbit", k.Series, d, rate/1e6)
				p, err := ratePlot(rs, flows[0], rate, fmt.Sprintf("%s %s, %g Mbit/s limit, %d flow(s): receiver rate", k.Series, d, rate/1e6, flows[0]))
				if err != nil {
					return nil, err
				}
				f := filepath.Join(dir, fmt.Sprintf("%s-%dflows-rate.png", base, flows[0]))
				if err := p.Save(20*vg.Centimeter, 11*vg.Centimeter, f); err != nil {
					return nil, fmt.Errorf("plot %s: %w", f, err)
				}
				out = append(out, f)
				last := flows[len(flows)-1]
				p, err = cdfPlot(rs, last, fmt.Sprintf("%s %s, %g Mbit/s limit, %d flows: ping round trip beside the bulk flows", k.Series, d, rate/1e6, last))
				if err != nil {
					return nil, err
				}
				f = filepath.Join(dir, fmt.Sprintf("%s-%dflows-rtt-cdf.png", base, last))
				if err := p.Save(20*vg.Centimeter, 11*vg.Centimeter, f); err != nil {
					return nil, fmt.Errorf("plot %s: %w", f, err)
				}
				out = append(out, f)
			}
		}
	}
	return out, nil
}

// ratePlot: Mbit/s per series step against seconds since the bulk flows started; the y axis stops
// at 3× the limit (schemes that do not limit run off the top, as the table says).
func ratePlot(rs []cells.Cell, flows int, rate float64, title string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds since the bulk flows started (mean over each half second)"
	p.Y.Label.Text = "Mbit/s (payload at the receiver)"
	p.Legend.Top = true
	for _, c := range rs {
		if c.Flows != flows || len(c.SeriesBps) == 0 {
			continue
		}
		// Half-second bins: under TCG the guest delivers in bursts, and 100 ms bins mostly show those.
		per := max(1, int(0.5/c.SeriesStep+0.5))
		var pts plotter.XYs
		for j := 0; j+per <= len(c.SeriesBps); j += per {
			sum := 0.0
			for _, v := range c.SeriesBps[j : j+per] {
				sum += v
			}
			pts = append(pts, plotter.XY{X: float64(j+per) * c.SeriesStep, Y: sum / float64(per) / 1e6})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, fmt.Errorf("rate plot %s: %w", c.Scheme, err)
		}
		style(l, c)
		p.Add(l)
		p.Legend.Add(c.Label(), l)
	}
	limit, err := plotter.NewLine(plotter.XYs{{X: 0, Y: rate / 1e6}, {X: maxSeconds(rs), Y: rate / 1e6}})
	if err != nil {
		return nil, err
	}
	limit.Width = vg.Points(0.5)
	p.Add(limit)
	p.Legend.Add("limit (wire)", limit)
	// After Add, which widens the axes to the data: lines above are clipped.
	p.Y.Min, p.Y.Max = 0, 3*rate/1e6
	return p, nil
}

func maxSeconds(rs []cells.Cell) float64 {
	m := 1.0
	for _, c := range rs {
		m = max(m, float64(len(c.SeriesBps))*c.SeriesStep)
	}
	return m
}

// style gives a scheme the same colour and dashes in every plot.
func style(l *plotter.Line, c cells.Cell) {
	i := slices.Index(cells.Schemes, c.Scheme)
	l.Color, l.Width = plotutil.Color(i), vg.Points(1.5)
	if i > 0 {
		l.Dashes = plotutil.Dashes(i)
	}
}

// cdfPlot: the share of round trips at or below x ms, x on a log scale.
func cdfPlot(rs []cells.Cell, flows int, title string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "ms (log scale)"
	p.Y.Label.Text = "share of round trips ≤ x"
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top, p.Legend.Left = true, true
	n := 0
	for _, c := range rs {
		if c.Flows != flows || len(c.Ping.Samples) == 0 {
			continue
		}
		s := slices.Sorted(slices.Values(c.Ping.Samples))
		pts := make(plotter.XYs, len(s))
		for j, v := range s {
			pts[j].X, pts[j].Y = max(v, 0.01), float64(j+1)/float64(len(s))
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, fmt.Errorf("cdf plot %s: %w", c.Scheme, err)
		}
		style(l, c)
		p.Add(l)
		p.Legend.Add(c.Label(), l)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("cdf plot %q: no round-trip samples", title)
	}
	return p, nil
}
