package report

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
)

// Markdown renders BENCHMARKS.md. plots are the PNG paths relative to the markdown file.
func Markdown(run Run, plots []string) string {
	var b strings.Builder
	b.WriteString("# dokku-netshape against what users would pick instead\n\n")
	fmt.Fprintf(&b, "Written by `%s` on %s (UTC). Do not edit: the command regenerates it, with [BENCHMARKS.json](BENCHMARKS.json) and the plots in [docs/bench](docs/bench/).\n\n",
		run.Command, run.Date.UTC().Format("2006-01-02 15:04"))
	b.WriteString("One Docker container in a qemu TCG guest (2 vCPUs, its own dockerd); its two devices — eth0 inside the container for what the app sends (egress), " +
		"the host-side veth for what it receives (ingress) — get each scheme in turn, at the same rate in both directions. " +
		"Every anchor sits on the same devices as dokku-netshape, its best case. At each position of the matrix (rate, direction, flows) the schemes run back to back, each put on just for its cell, so that " +
		"what they are compared on — and the no-limit cell they are checked against — is measured seconds apart. In each cell bulk TCP flows run for the whole cell; " +
		"beside them, from the sending side through the loaded direction, a 20 Hz ICMP ping, a TCP request/response flow (64 B, one at a time, 10 ms apart) " +
		"and 256 KiB transfers one after another (connect to the receiver's answer). Rates are TCP payload at the receiver, of the bulk flows and the 256 KiB transfers together (\"bulk\": the bulk flows' part): the limit on the wire " +
		"is worth `limit × (MTU−52)/(MTU+14)` of payload (95.6% at MTU 1500), which is what \"% of limit\" compares with. " +
		"Under TCG the guest's throughput moves ±30% run to run, so only numbers from the same run are compared.\n\n")
	b.WriteString("| kernel | release | matrix | cell | probes from | settle between cells | all schemes checked |\n|---|---|---|---|---|---|---|\n")
	for _, k := range run.Kernels {
		fmt.Fprintf(&b, "| %s | %s | %s | %gs | %gs | %gs | %s |\n", k.Series, k.Release, k.Set, k.CellSeconds, k.ProbeStart, k.Settle, yesNo(k.Passed))
	}
	b.WriteString("\n\"All schemes checked\": the harness asserted that every shaping scheme's rate stayed below 1.5× its limit, the runtime-burst TBF's above 2× " +
		"(its burst really was in effect), and the no-limit path at the same position above 2× the limit (test/benchcompare/cells.Check).\n\n")

	b.WriteString("## Schemes\n\n")
	for _, s := range cells.Schemes {
		fmt.Fprintf(&b, "- **%s**: %s\n", s, s.Describe())
	}

	kernels := make([]string, len(run.Kernels))
	for i, k := range run.Kernels {
		kernels[i] = k.Series
	}
	rs := Ratios(run.Cells)
	b.WriteString("\n## Headline: dokku-netshape ÷ the best anchor\n\n")
	b.WriteString("For each cell (kernel, direction, rate, flows) and metric, dokku-netshape's value divided by the best value among the anchors that held their limit " +
		"(TBF with a sane burst, docker-tc, HTB, Cilium-style EDT; not the runtime-burst TBF, which does not limit, nor no-limit). Below 1: dokku-netshape is better. " +
		"Geometric mean over the cells, the worst cell, and in how many cells dokku-netshape was at least as good.\n\n")
	b.WriteString("| kernel | metric | geometric mean | worst | at least as good |\n|---|---|---|---|---|\n")
	for _, h := range Headlines(rs, kernels) {
		inf := ""
		if h.Infinite > 0 {
			inf = fmt.Sprintf(" (%d cells against a best of 0)", h.Infinite)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d of %d%s |\n", h.Kernel, metricLabel(h.Metric), ratio(h.GeoMean), ratio(h.Worst), h.AtLeast, h.Cells, inf)
	}

	if len(plots) > 0 {
		b.WriteString("\n## Plots\n\n")
		for _, p := range plots {
			fmt.Fprintf(&b, "![%s](%s)\n", strings.TrimSuffix(filepath.Base(p), ".png"), p)
		}
	}

	for _, k := range kernels {
		for _, d := range []cells.Dir{cells.Egress, cells.Ingress} {
			for _, rate := range rates(run.Cells, k, d) {
				fmt.Fprintf(&b, "\n## %s, %s, %g Mbit/s\n\n", k, d, rate/1e6)
				table(&b, run.Cells, k, d, rate)
				ratioTable(&b, rs, k, d, rate)
			}
		}
	}
	return b.String()
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "**no** (see the run's log)"
}

func metricLabel(key string) string {
	for _, m := range Metrics {
		if m.Key == key {
			return m.Label
		}
	}
	return key
}

func ratio(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "∞"
	case v == 0:
		return "—"
	case v < 0.1:
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// rates of the limited cells of a kernel and direction, ascending.
func rates(cs []cells.Cell, k string, d cells.Dir) []float64 {
	var out []float64
	for _, c := range cs {
		if c.Kernel == k && c.Dir == d && c.Rate > 0 && !slices.Contains(out, c.Rate) {
			out = append(out, c.Rate)
		}
	}
	slices.Sort(out)
	return out
}

// rows: the cells of one table (no-limit's measured beside that rate's), by flows then scheme order.
func rows(cs []cells.Cell, k string, d cells.Dir, rate float64) []cells.Cell {
	var out []cells.Cell
	for _, c := range cs {
		if c.Kernel == k && c.Dir == d && c.Rate == rate {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b cells.Cell) int {
		if a.Flows != b.Flows {
			return a.Flows - b.Flows
		}
		return slices.Index(cells.Schemes, a.Scheme) - slices.Index(cells.Schemes, b.Scheme)
	})
	return out
}

func table(b *strings.Builder, cs []cells.Cell, k string, d cells.Dir, rate float64) {
	b.WriteString("| flows | scheme | mean Mbit/s | % of limit | first s Mbit/s | bulk Mbit/s | ping p50 / p99 ms | RR p50 / p99 ms | 256 KiB p50 / p90 ms (n) | retrans | drops | sys CPU s/GB |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range rows(cs, k, d, rate) {
		if c.Error != "" {
			fmt.Fprintf(b, "| %d | %s | error: %s | | | | | | | | | |\n", c.Flows, c.Label(), oneLine(c.Error))
			continue
		}
		pct := "—"
		if c.Scheme != cells.NoLimit {
			pct = fmt.Sprintf("%.1f%%", 100*c.MeanBps/c.ExpectedBps)
		}
		lost := ""
		if c.Ping.Lost > 0 {
			lost = fmt.Sprintf(" (%d lost)", c.Ping.Lost)
		}
		fmt.Fprintf(b, "| %d | %s | %.2f | %s | %.2f | %s | %s / %s%s | %s / %s | %s / %s (%d) | %d | %d | %.2f |\n",
			c.Flows, c.Label(), c.MeanBps/1e6, pct, c.FirstBps/1e6, mbit(c.BulkBps), ms(c.Ping.P50), ms(c.Ping.P99), lost, ms(c.RR.P50), ms(c.RR.P99),
			ms(c.Xfer.P50), ms(c.Xfer.P90), c.Xfer.Count, c.Retrans, c.Drops, c.CPUPerGB)
	}
}

func ratioTable(b *strings.Builder, rs []Ratio, k string, d cells.Dir, rate float64) {
	var sel []Ratio
	for _, r := range rs {
		if r.Kernel == k && r.Dir == d && r.Rate == rate {
			sel = append(sel, r)
		}
	}
	if len(sel) == 0 {
		return
	}
	b.WriteString("\ndokku-netshape ÷ best anchor (which anchor):\n\n| flows |")
	for _, m := range Metrics {
		b.WriteString(" " + m.Key + " |")
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(Metrics)) + "\n")
	var flows []int
	for _, r := range sel {
		if !slices.Contains(flows, r.Flows) {
			flows = append(flows, r.Flows)
		}
	}
	slices.Sort(flows)
	for _, f := range flows {
		fmt.Fprintf(b, "| %d |", f)
		for _, m := range Metrics {
			i := slices.IndexFunc(sel, func(r Ratio) bool { return r.Flows == f && r.Metric == m.Key })
			if i < 0 {
				b.WriteString(" — |")
				continue
			}
			fmt.Fprintf(b, " %s (%s) |", ratio(sel[i].Ratio), sel[i].Anchor)
		}
		b.WriteString("\n")
	}
}

// mbit prints a rate, "—" when it was not measured.
func mbit(bps float64) string {
	if bps == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", bps/1e6)
}

func ms(v float64) string {
	switch {
	case v == 0:
		return "—"
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}
