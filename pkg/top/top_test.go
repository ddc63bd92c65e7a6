package top

import (
	"strings"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/usage"
)

// Narrow terminals lose USE, then LIMIT, then PROCESS before the bar; app,
// direction, rate, drops and bypassed always stay.
func TestFitDropsColumnsInOrder(t *testing.T) {
	head := headerCells(layout{app: 8, proc: 9})
	full := 0
	for _, c := range head {
		full += len(c) + 2
	}
	for _, c := range []struct {
		width int
		gone  []int
		bar   bool
	}{
		{full + 1 + minBar, nil, true},
		{full + minBar, []int{colUse}, true},
		{80, []int{colUse, colLimit}, true},
		{72, []int{colUse, colLimit, colProc}, true},
		{40, []int{colUse, colLimit, colProc}, false},
	} {
		show, bar := fit(head, c.width)
		for _, i := range []int{colApp, colDir, colRate, colDropped, colBypassed} {
			if !show[i] {
				t.Errorf("width %d: column %d dropped", c.width, i)
			}
		}
		for _, i := range c.gone {
			if show[i] {
				t.Errorf("width %d: column %d kept", c.width, i)
			}
		}
		if (bar > 0) != c.bar || (bar > 0 && bar < minBar) {
			t.Errorf("width %d: bar %d", c.width, bar)
		}
		// What is drawn fits the terminal.
		w := bar
		for i, cell := range head {
			if show[i] {
				w += len(cell) + 2
			}
		}
		if bar > 0 && w >= c.width {
			t.Errorf("width %d: row of %d columns", c.width, w)
		}
	}
}

func TestFractionAgainstLimitOrBusiest(t *testing.T) {
	rows := []usage.Usage{{Rate: 15e6, Limit: 20e6}, {Rate: 40e6}, {Rate: 10e6}}
	top := busiest(rows)
	for i, want := range []float64{0.75, 1, 0.25} {
		if got := fraction(rows[i], top); got != want {
			t.Errorf("row %d: %v, want %v", i, got, want)
		}
	}
	if fraction(usage.Usage{}, 0) != 0 {
		t.Error("idle host: non-zero bar")
	}
}

func TestPlainFrame(t *testing.T) {
	f := frame{at: time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC), rows: []usage.Usage{
		{Budget: "shop/_default_/egress", App: "shop", ProcessType: "_default_", Direction: "egress", Limit: 20e6, Rate: 19.2e6,
			Counters: usage.Counters{Dropped: 12, Bypassed: 3}},
	}, grown: map[string][2]uint64{"shop/_default_/egress": {2, 0}}}
	got := plainFrame(f)
	want := "# 2026-11-30T08:00:00Z netshape top: 1 budgets\n" +
		"APP   DIR      PROCESS           RATE        LIMIT   USE       DROPPED      BYPASSED\n" +
		"shop  egress   _default_  19.2 Mbit/s  20.0 Mbit/s   96%         12 +2             3\n"
	if got != want {
		t.Errorf("plain frame:\n%q\nwant\n%q", got, want)
	}
	if strings.ContainsRune(got, 0x1b) {
		t.Error("escape code in plain output")
	}
}
