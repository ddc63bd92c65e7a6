package cells

import (
	"strings"
	"testing"
	"time"
)

func TestNamedMatrices(t *testing.T) {
	full, err := Named("", 0)
	if err != nil {
		t.Fatal(err)
	}
	// 7 schemes × 2 rates × 2 directions × 3 flow counts.
	sp := full.Specs()
	if n := len(sp); n != 7*2*2*3 || full.Cell != 5*time.Second {
		t.Errorf("full: %d cells of %s, want 84 of 5s", n, full.Cell)
	}
	// Interleaved: the schemes of one position run back to back, no-limit first.
	for i, s := range sp[:7] {
		if s.Scheme != Schemes[i] || s.Rate != 20e6 || s.Dir != Egress || s.Flows != 1 {
			t.Errorf("cell %d: %+v, want %s at the first position", i, s, Schemes[i])
		}
	}
	if s := sp[7]; s.Scheme != NoLimit || s.Flows != 4 {
		t.Errorf("cell 7: %+v, want no-limit at the second position", s)
	}
	// Under TCG one kernel's cells fit 15 minutes with room for boot and scheme changes.
	if e := full.Estimate(); e > 10*time.Minute {
		t.Errorf("full matrix estimate %s, want ≤ 10m", e)
	}
	ci, err := Named("ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ci.Specs()); n != 7*2*2 {
		t.Errorf("ci: %d cells, want 28", n)
	}
	if e := ci.Estimate(); e > 3*time.Minute {
		t.Errorf("ci estimate %s, want ≤ 3m (CI runs it on two kernels)", e)
	}
	if m, err := Named("ci", 8*time.Second); err != nil || m.Cell != 8*time.Second {
		t.Errorf("cell override: %v, %v", m.Cell, err)
	}
	for _, bad := range []struct {
		name string
		cell time.Duration
	}{{"huge", 0}, {"full", time.Second}, {"full", time.Hour}} {
		if _, err := Named(bad.name, bad.cell); err == nil {
			t.Errorf("Named(%q, %s) accepted", bad.name, bad.cell)
		}
	}
}

func good(s Scheme, d Dir, rate float64, flows int, mean float64) Cell {
	l := Latency{Count: 10, P50: 1, P90: 2, P99: 3}
	return Cell{Spec: Spec{Scheme: s, Dir: d, Rate: rate, Flows: flows}, Kernel: "6.12", MeanBps: mean, Ping: l, RR: l, Xfer: l}
}

func TestCheckCatchesSchemesThatDidNotDoWhatTheyClaim(t *testing.T) {
	ok := []Cell{
		good(NoLimit, Egress, 100e6, 1, 500e6),
		good(Netshape, Egress, 100e6, 1, 95e6),
		good(HTB, Egress, 100e6, 1, 99e6),
		good(TBFRuntime, Egress, 100e6, 1, 480e6),
	}
	if err := Check(ok); err != nil {
		t.Fatalf("a sound run failed the check: %v", err)
	}
	// Probes starved on an unlimited path are reported, not a harness error.
	starved := append([]Cell(nil), ok...)
	starved[0].RR.Count, starved[3].Xfer.Count = 0, 0
	if err := Check(starved); err != nil {
		t.Fatalf("probes starved on unlimited paths failed the check: %v", err)
	}
	cases := []struct {
		name string
		mod  func([]Cell) []Cell
		want string
	}{
		{"anchor did not limit", func(c []Cell) []Cell { c[2].MeanBps = 151e6; return c }, "htb/egress/100mbit/1flows: 151.0 Mbit/s over the cell, above 1.5×"},
		{"ours did not limit", func(c []Cell) []Cell { c[1].MeanBps = 200e6; return c }, "dokku-netshape/egress/100mbit/1flows"},
		{"runtime burst absent", func(c []Cell) []Cell { c[3].MeanBps = 100e6; return c }, "runtime burst (512 MiB) was not in effect"},
		{"path too slow to tell", func(c []Cell) []Cell { c[0].MeanBps = 150e6; return c }, "the unlimited path carried 150.0 Mbit/s"},
		{"reference from another position", func(c []Cell) []Cell { c[0].Rate = 20e6; return c }, "no no-limit cell at the same position"},
		{"no reference", func(c []Cell) []Cell { return c[1:] }, "no no-limit cell"},
		{"probe missing", func(c []Cell) []Cell { c[1].RR.Count = 0; return c }, "probes missing (ping 10, rr 0"},
		{"cell error", func(c []Cell) []Cell { c[2].Error = "apply: boom"; return c }, "htb/egress/100mbit/1flows: apply: boom"},
	}
	for _, tc := range cases {
		cs := tc.mod(append([]Cell(nil), ok...))
		err := Check(cs)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Check = %v, want it to say %q", tc.name, err, tc.want)
		}
	}
}

func TestSummarizeNearestRank(t *testing.T) {
	var s []float64
	for i := 100; i >= 1; i-- {
		s = append(s, float64(i))
	}
	l := Summarize(s, 2)
	if l.P50 != 50 || l.P90 != 90 || l.P99 != 99 || l.Count != 100 || l.Lost != 2 {
		t.Errorf("Summarize(100..1) = %+v", l)
	}
	if s[0] != 100 {
		t.Error("Summarize reordered the caller's samples")
	}
	if e := Summarize(nil, 0); e.Count != 0 || e.P99 != 0 {
		t.Errorf("empty: %+v", e)
	}
}
