package report

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
)

// cell makes a measured cell: mean rate in Mbit/s, RR p99 and 256 KiB p50 in ms.
func cell(k string, s cells.Scheme, d cells.Dir, rate float64, flows int, meanMbit, rrP99, xferP50 float64) cells.Cell {
	c := cells.Cell{Spec: cells.Spec{Scheme: s, Dir: d, Rate: rate * 1e6, Flows: flows}, Kernel: k, CellSeconds: 5,
		MeanBps: meanMbit * 1e6, FirstBps: meanMbit * 1e6, BulkBps: 15e6, Bytes: int64(meanMbit * 1e6 / 8 * 5), SeriesStep: 0.1,
		SysCPUSec: 1, CPUPerGB: 2}
	if rate > 0 && s != cells.NoLimit {
		c.ExpectedBps = rate * 1e6 * cells.Goodput(1500)
	}
	for i := range 50 {
		c.SeriesBps = append(c.SeriesBps, meanMbit*1e6*(0.9+0.2*float64(i%2)))
	}
	lat := func(p float64) cells.Latency {
		var s []float64
		for i := 1; i <= 100; i++ {
			s = append(s, p*float64(i)/99)
		}
		return cells.Summarize(s, 0)
	}
	c.Ping, c.RR = lat(rrP99), lat(rrP99)
	c.Xfer = cells.Summarize([]float64{xferP50, xferP50, xferP50 * 2}, 0)
	return c
}

func sampleRun() Run {
	const k = "6.12"
	exp := 20 * cells.Goodput(1500)
	cs := []cells.Cell{
		cell(k, cells.NoLimit, cells.Egress, 20, 1, 600, 2, 10),
		cell(k, cells.Netshape, cells.Egress, 20, 1, exp*1.001, 3, 120),
		cell(k, cells.CiliumEDT, cells.Egress, 20, 1, exp*0.99, 60, 900),
		cell(k, cells.TBFSane, cells.Egress, 20, 1, exp*0.97, 30, 1300),
		cell(k, cells.DockerTC, cells.Egress, 20, 1, exp*0.96, 40, 110),
		cell(k, cells.HTB, cells.Egress, 20, 1, exp*0.995, 80, 1600),
		// Not limiting: never the best anchor, even with the lowest latencies.
		cell(k, cells.TBFRuntime, cells.Egress, 20, 1, 500, 1, 5),
	}
	return Run{Date: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC), Command: "make bench-compare BENCH_COMPARE_SET=full",
		Kernels: []Kernel{{Series: k, Release: "6.12.117+deb12-amd64", Set: "full", CellSeconds: 5, Settle: 1, ProbeStart: 1, MTU: 1500, Passed: true}},
		Cells:   cs}
}

func find(t *testing.T, rs []Ratio, metric string) Ratio {
	t.Helper()
	for _, r := range rs {
		if r.Metric == metric {
			return r
		}
	}
	t.Fatalf("no ratio for %s in %+v", metric, rs)
	return Ratio{}
}

func TestRatiosAgainstBestAnchor(t *testing.T) {
	rs := Ratios(sampleRun().Cells)
	rr := find(t, rs, "rr_p99")
	// Best limiting anchor on RR p99 is TBF 32kb (30 ms), not the runtime TBF (1 ms).
	if rr.Anchor != cells.TBFSane || rr.Best != 30 || math.Abs(rr.Ratio-0.1) > 1e-9 {
		t.Errorf("rr_p99 ratio %+v, want 3/30 = 0.1 against tbf-32kb", rr)
	}
	x := find(t, rs, "xfer_p50")
	if x.Anchor != cells.DockerTC || math.Abs(x.Ratio-120.0/110) > 1e-9 {
		t.Errorf("xfer_p50 ratio %+v, want 120/110 against docker-tc", x)
	}
	re := find(t, rs, "rate_error")
	// HTB's 0.5% is the smallest anchor error; ours is 0.1%.
	if re.Anchor != cells.HTB || math.Abs(re.Ratio-0.2) > 1e-6 {
		t.Errorf("rate_error ratio %+v, want 0.001/0.005 = 0.2 against htb", re)
	}
	for _, r := range rs {
		if r.Anchor == cells.TBFRuntime || r.Anchor == cells.NoLimit || r.Anchor == cells.Netshape {
			t.Errorf("%s: anchor %s may not be the best anchor", r.Metric, r.Anchor)
		}
	}
}

func TestAnchorThatOvershotIsNotBest(t *testing.T) {
	run := sampleRun()
	for i, c := range run.Cells {
		if c.Scheme == cells.TBFSane {
			run.Cells[i].MeanBps = 31e6 // above 1.5× 20 Mbit/s: it did not limit
		}
	}
	if rr := find(t, Ratios(run.Cells), "rr_p99"); rr.Anchor != cells.DockerTC {
		t.Errorf("rr_p99 against %s, want docker-tc once tbf-32kb overshot", rr.Anchor)
	}
}

func TestRatioOfZeroBest(t *testing.T) {
	run := sampleRun()
	for i := range run.Cells {
		run.Cells[i].Retrans = 0
		if run.Cells[i].Scheme == cells.HTB {
			run.Cells[i].MeanBps = run.Cells[i].ExpectedBps // exact: error 0
		}
	}
	re := find(t, Ratios(run.Cells), "rate_error")
	if !math.IsInf(re.Ratio, 1) {
		t.Errorf("ours > 0 against a best of 0: ratio %v, want +Inf", re.Ratio)
	}
	h := Headlines(Ratios(run.Cells), []string{"6.12"})
	if h[0].Metric != "rate_error" || h[0].Infinite != 1 || h[0].AtLeast != 0 {
		t.Errorf("headline %+v, want the infinite ratio counted, not averaged", h[0])
	}
}

func TestHeadlineGeometricMean(t *testing.T) {
	rs := []Ratio{{Kernel: "6.1", Metric: "rr_p99", Ratio: 0.1}, {Kernel: "6.1", Metric: "rr_p99", Ratio: 10}, {Kernel: "6.1", Metric: "rr_p99", Ratio: 1}}
	h := Headlines(rs, []string{"6.1"})
	if len(h) != 1 || math.Abs(h[0].GeoMean-1) > 1e-9 || h[0].Worst != 10 || h[0].AtLeast != 2 || h[0].Cells != 3 {
		t.Errorf("headline %+v, want geomean 1, worst 10, 2 of 3 at least as good", h)
	}
}

func TestMarkdownTables(t *testing.T) {
	run := sampleRun()
	md := Markdown(run, []string{"docs/bench/x.png"})
	for _, want := range []string{
		"Written by `make bench-compare BENCH_COMPARE_SET=full` on 2026-11-30 09:00",
		"| 6.12 | 6.12.117+deb12-amd64 | full | 5s | 1s | 1s | yes |",
		"## 6.12, egress, 20 Mbit/s",
		"| 1 | dokku-netshape | 19.15 | 100.1% | 19.15 | 15.00 | 1.52 / 3.00 | 1.52 / 3.00 | 120 / 240 (3) | 0 | 0 | 2.00 |",
		"| 1 | no-limit | 600.00 | — |",
		"| 6.12 | TCP RR p99 | 0.10 | 0.10 | 1 of 1 |",
		"| 1 | 0.20 (htb) |",
		"![x](docs/bench/x.png)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	// Rows in scheme order: no-limit first, then dokku-netshape, the runtime TBF last.
	if i, j := strings.Index(md, "| 1 | no-limit"), strings.Index(md, "| 1 | tbf-cni-runtime"); i < 0 || j < i {
		t.Errorf("row order wrong (no-limit at %d, runtime tbf at %d)", i, j)
	}
	run.Kernels[0].Passed = false
	run.Cells[2].Error = "apply: tc: boom |x\ny"
	md = Markdown(run, nil)
	if !strings.Contains(md, "| **no** (see the run's log) |") || !strings.Contains(md, "error: apply: tc: boom /x y") {
		t.Errorf("a failed run or cell is not shown as such:\n%s", md)
	}
}

func TestWriteProducesDecodablePNGsAndJSON(t *testing.T) {
	dir := t.TempDir()
	run := sampleRun()
	md, js, plots := filepath.Join(dir, "BENCHMARKS.md"), filepath.Join(dir, "BENCHMARKS.json"), filepath.Join(dir, "docs", "bench")
	if err := Write(run, md, js, plots); err != nil {
		t.Fatal(err)
	}
	pngs, _ := filepath.Glob(filepath.Join(plots, "*.png"))
	// One kernel, one direction, one rate: a rate plot and an RTT CDF.
	if len(pngs) != 2 {
		t.Fatalf("plots %v, want 2", pngs)
	}
	for _, p := range pngs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s is not a PNG: %v", p, err)
		}
		if r := img.Bounds(); r.Dx() < 400 || r.Dy() < 200 {
			t.Errorf("%s is %v, too small to read", p, r)
		}
	}
	mdb, _ := os.ReadFile(md)
	for _, p := range pngs {
		if !strings.Contains(string(mdb), "(docs/bench/"+filepath.Base(p)+")") {
			t.Errorf("BENCHMARKS.md does not link %s", filepath.Base(p))
		}
	}
	var doc struct {
		Command string `json:"command"`
		Cells   []struct {
			Scheme string `json:"scheme"`
			RR     struct {
				P99     float64   `json:"p99_ms"`
				Samples []float64 `json:"samples_ms"`
			} `json:"rr"`
		} `json:"cells"`
		Ratios    []Ratio    `json:"ratios"`
		Headlines []Headline `json:"headlines"`
	}
	b, _ := os.ReadFile(js)
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("BENCHMARKS.json: %v", err)
	}
	if doc.Command != run.Command || len(doc.Cells) != len(run.Cells) || len(doc.Ratios) == 0 || len(doc.Headlines) == 0 {
		t.Errorf("BENCHMARKS.json: command %q, %d cells, %d ratios, %d headlines", doc.Command, len(doc.Cells), len(doc.Ratios), len(doc.Headlines))
	}
	if doc.Cells[1].RR.P99 != 3 || doc.Cells[1].RR.Samples != nil {
		t.Errorf("JSON cell rr %+v: want the percentiles without raw samples", doc.Cells[1].RR)
	}
	if len(run.Cells[1].RR.Samples) == 0 {
		t.Error("JSON rendering emptied the run's own samples")
	}
}

func TestLoadSummary(t *testing.T) {
	dir := t.TempDir()
	c := cell("6.1", cells.Netshape, cells.Ingress, 100, 4, 95, 2, 40)
	cb, _ := json.Marshal(c)
	var fields map[string]any
	_ = json.Unmarshal(cb, &fields)
	fields["metric"], fields["test"] = "compare_cell", "TestVMBenchCompare"
	cb, _ = json.Marshal(fields)
	sum := `{"started":"2026-11-30T08:00:00Z","kernels":[{"kernel":"6.1","release":"6.1.0-56-amd64","passed":true,"results":[` +
		`{"metric":"compare_matrix","set":"ci","cell_seconds":4,"settle_seconds":1,"probe_start_seconds":1,"mtu":1500},` +
		`{"metric":"docker_other"},` + string(cb) + `]}]}`
	p := filepath.Join(dir, "summary.json")
	if err := os.WriteFile(p, []byte(sum), 0o644); err != nil {
		t.Fatal(err)
	}
	run, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Kernels) != 1 || run.Kernels[0].Set != "ci" || run.Kernels[0].CellSeconds != 4 || !run.Kernels[0].Passed {
		t.Errorf("kernels %+v", run.Kernels)
	}
	if len(run.Cells) != 1 || run.Cells[0].Scheme != cells.Netshape || run.Cells[0].Flows != 4 || run.Cells[0].Kernel != "6.1" || run.Cells[0].RR.P99 != 2 {
		t.Errorf("cells %+v", run.Cells)
	}
	if _, err := Load(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("a missing summary loaded")
	}
}
