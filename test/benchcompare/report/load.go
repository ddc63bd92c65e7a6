// Package report turns the comparison's measured cells (from vmrun summary files) into what a user
// reads: BENCHMARKS.md (tables per kernel, direction and rate; ratios against the best anchor on
// each metric), PNG plots (receiver rate over time per scheme, RTT CDF per scheme) and a JSON file.
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
)

// Kernel is one guest the cells were measured in.
type Kernel struct {
	Series      string    `json:"series"`  // "6.12"
	Release     string    `json:"release"` // uname -r
	Started     time.Time `json:"started"`
	Set         string    `json:"set"`
	CellSeconds float64   `json:"cell_seconds"`
	Settle      float64   `json:"settle_seconds"`
	ProbeStart  float64   `json:"probe_start_seconds"`
	MTU         int       `json:"mtu"`
	Passed      bool      `json:"passed"` // the guest test passed: every scheme checked
}

// Run is everything one report is drawn from.
type Run struct {
	Date    time.Time    `json:"date"`
	Command string       `json:"command"`
	Kernels []Kernel     `json:"kernels"`
	Cells   []cells.Cell `json:"cells"`
}

// Load reads vmrun summary files and collects their compare_matrix and compare_cell results.
func Load(paths ...string) (Run, error) {
	var run Run
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return Run{}, fmt.Errorf("read summary: %w", err)
		}
		var sum struct {
			Started time.Time `json:"started"`
			Kernels []struct {
				Kernel  string            `json:"kernel"`
				Release string            `json:"release"`
				Passed  bool              `json:"passed"`
				Results []json.RawMessage `json:"results"`
			} `json:"kernels"`
		}
		if err := json.Unmarshal(b, &sum); err != nil {
			return Run{}, fmt.Errorf("%s: %w", p, err)
		}
		for _, k := range sum.Kernels {
			kr := Kernel{Series: k.Kernel, Release: k.Release, Started: sum.Started, Passed: k.Passed}
			n := 0
			for _, raw := range k.Results {
				var head struct {
					Metric      string  `json:"metric"`
					Set         string  `json:"set"`
					CellSeconds float64 `json:"cell_seconds"`
					Settle      float64 `json:"settle_seconds"`
					Probe       float64 `json:"probe_start_seconds"`
					MTU         int     `json:"mtu"`
				}
				if err := json.Unmarshal(raw, &head); err != nil {
					return Run{}, fmt.Errorf("%s: result: %w", p, err)
				}
				switch head.Metric {
				case "compare_matrix":
					kr.Set, kr.CellSeconds, kr.Settle, kr.ProbeStart, kr.MTU = head.Set, head.CellSeconds, head.Settle, head.Probe, head.MTU
				case "compare_cell":
					var c cells.Cell
					if err := json.Unmarshal(raw, &c); err != nil {
						return Run{}, fmt.Errorf("%s: cell: %w", p, err)
					}
					c.Kernel = k.Kernel
					run.Cells = append(run.Cells, c)
					n++
				}
			}
			if n > 0 {
				run.Kernels = append(run.Kernels, kr)
			}
		}
	}
	if len(run.Cells) == 0 {
		return Run{}, fmt.Errorf("no compare_cell results in %v", paths)
	}
	// Newest kernel first, as the tables list them.
	slices.SortStableFunc(run.Kernels, func(a, b Kernel) int { return compareSeries(b.Series, a.Series) })
	return run, nil
}

// compareSeries orders "6.1" < "6.12" < "6.6" numerically.
func compareSeries(a, b string) int {
	var a1, a2, b1, b2 int
	fmt.Sscanf(a, "%d.%d", &a1, &a2)
	fmt.Sscanf(b, "%d.%d", &b1, &b2)
	if a1 != b1 {
		return a1 - b1
	}
	return a2 - b2
}
