package shaper

import (
	"fmt"
	"time"

	"testing"
)

// BenchmarkEDTPacketBudgets: the per-packet cost of the shaping program as the number of
// budgets in the maps grows (1, 100, 1,000), all measured in one run so they compare like
// with like; "x-at-1000" is the cost at 1,000 budgets over the cost at one. Every budget
// lookup is an array index by slot, so it should stay flat.
func BenchmarkEDTPacketBudgets(b *testing.B) {
	s := openBenchShaper(b)
	frame := packet(0x0800, 0, 1)
	per := map[int]float64{}
	made := 0
	for _, n := range []int{1, 100, 1000} {
		for ; made < n; made++ {
			if err := s.UpsertBudget(Budget{Name: fmt.Sprintf("bench-%d", made), Rate: 10_000_000_000, Horizon: 20 * time.Second}); err != nil {
				b.Fatal(err)
			}
		}
		// The newest budget: its entries went in last, behind every other.
		name := fmt.Sprintf("bench-%d", n-1)
		id, _, err := s.lookupID(name)
		if err != nil {
			b.Fatal(err)
		}
		prog, err := s.program(id, name, HookShape)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		_, d, err := prog.Benchmark(frame, b.N, func() {})
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		per[n] = float64(d.Nanoseconds())
	}
	// After the loop: ResetTimer drops metrics reported before it.
	for n, v := range per {
		b.ReportMetric(v, fmt.Sprintf("ns/packet-at-%d", n))
	}
	b.ReportMetric(per[1000]/per[1], "x-at-1000")
}
