package shaper

import (
	"errors"
	"fmt"
	"strings"
	"testing"

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
