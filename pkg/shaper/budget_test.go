package shaper

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// With every budget slot taken the kernel refuses a new name with E2BIG ("argument list
// too long"); the error must say what is full, and nothing of the refused budget may remain.
func TestRootBudgetSlotsFull(t *testing.T) {
	s := openTestShaper(t)
	var raw [maxNameLen + 1]byte
	for id := uint32(1); id <= maxBudgets; id++ {
		copy(raw[:], fmt.Sprintf("filler%d/_default_/egress", id))
		if err := s.names.Update(id, raw, ebpf.UpdateNoExist); err != nil {
			t.Fatalf("fill slot %d: %v", id, err)
		}
	}
	err := s.UpsertBudget(Budget{Name: "app/_default_/egress", Rate: 10_000_000})
	if !errors.Is(err, errSlotsFull) || !strings.Contains(err.Error(), `"app/_default_/egress"`) {
		t.Fatalf("upsert with every slot taken: %v; want the budget named and %q", err, errSlotsFull)
	}
	if _, found, lerr := s.lookupID("app/_default_/egress"); lerr != nil || found {
		t.Errorf("refused budget registered anyway (found=%v, %v)", found, lerr)
	}
	var k uint32
	var cfg edtBudgetCfg
	it := s.maps.NetshapeCfg.Iterate()
	for it.Next(&k, &cfg) {
		if cfg != (edtBudgetCfg{}) {
			t.Errorf("refused budget left config in slot %d: %+v", k, cfg)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
}

// The default horizon holds two 64 KiB packets (a GSO burst of a local TCP
// sender, a GRO train of a forwarded one) where 20 ms would not, never less
// than 20 ms or 8 full frames, and stretches for them to at most 250 ms.
func TestDefaultHorizonHoldsTwoGSOPackets(t *testing.T) {
	for _, c := range []struct {
		rate uint64
		want time.Duration
	}{
		{1_000_000_000, 20 * time.Millisecond},
		{100_000_000, 20 * time.Millisecond},       // two GSO packets take 10.5 ms
		{20_000_000, 52_428_800 * time.Nanosecond}, // one takes 26.2 ms
		{10_000_000, 104_857_600 * time.Nanosecond},
		{1_000_000, 250 * time.Millisecond},                        // capped (two would take 1.05 s)
		{MinRate, time.Duration(8*1514*8) * time.Second / MinRate}, // 8 frames: 9.7 s
	} {
		if got := DefaultHorizon(c.rate); got != c.want {
			t.Errorf("DefaultHorizon(%d bit/s) = %s, want %s", c.rate, got, c.want)
		}
	}
}
