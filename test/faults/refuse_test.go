//go:build vm

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestVMFaultBudgetSlotsFull: the kernel refuses a new budget because the budget maps are full
// (4096 slots, bpf/edt.c). This is the refusal a real server reaches by itself — one budget
// per app, direction and process type, and every app with a limit holds some — and it can be
// produced exactly: the test fills the pinned names map, where every budget takes its slot,
// until the kernel says it is full. apply must then fail loudly (non-zero exit, stderr, and
// report listing the app's devices as unshaped), leave the app's traffic flowing unshaped
// (measured: well above the limit, not zero) and leave nothing behind. Once slots are free
// again, the same apply shapes the app.
func TestVMFaultBudgetSlotsFull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	r := newRig(t, ctx, "full", "10.242.4.1/24")
	const app = "fullapp"
	const limit = 10e6
	r.limitApp(app, "10mbit", "10mbit", "web", 1)
	r.runApp(app, "web", 1)
	cs, err := r.running(app)
	if err != nil || len(cs) != 1 {
		t.Fatalf("containers: %v (%d running)", err, len(cs))
	}

	// Create the pinned maps, then fill every budget slot with a name of another app.
	s, err := shaper.Open(shaper.Options{PinDir: r.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	names, err := ebpf.LoadPinnedMap(filepath.Join(r.pinDir, "netshape_names"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer names.Close()
	var filled []uint32
	var refusal error
	for id := uint32(1); id <= names.MaxEntries()+1; id++ {
		var raw [128]byte
		copy(raw[:], fmt.Sprintf("filler%d/_default_/egress", id))
		if err := names.Update(id, raw, ebpf.UpdateNoExist); err != nil {
			refusal = err
			break
		}
		filled = append(filled, id)
	}
	if refusal == nil || len(filled) != int(names.MaxEntries()) {
		t.Fatalf("filled %d of %d budget slots; the kernel's refusal: %v", len(filled), names.MaxEntries(), refusal)
	}
	t.Logf("%d budget slots filled; one more: %v", len(filled), refusal)
	before, err := r.takeInventory(cs)
	if err != nil {
		t.Fatal(err)
	}

	res := r.netshape("apply", app)
	t.Logf("apply with every slot taken: exit %d (%.1fs)\nstdout:\n%s\nstderr:\n%s", res.Code, res.Took.Seconds(), res.Stdout, res.Stderr)
	if res.Code == 0 {
		t.Errorf("apply exited 0 with no budget slot left")
	}
	if !strings.Contains(res.Stderr, app+"/_default_/") || !strings.Contains(res.Stderr, "budget") {
		t.Errorf("stderr does not name the budget that was refused:\n%s", res.Stderr)
	}
	rep := r.netshape("report", app, "--format", "json")
	// Not every report value is a string (bypassed is an object of counters): read the one we need.
	var fields map[string]json.RawMessage
	var unshaped string
	if err := json.Unmarshal([]byte(rep.Stdout), &fields); err != nil {
		t.Fatalf("report: exit %d: %v\n%s%s", rep.Code, err, rep.Stdout, rep.Stderr)
	}
	if err := json.Unmarshal(fields["netshape-unshaped"], &unshaped); err != nil {
		t.Fatalf("report's netshape-unshaped field %s: %v", fields["netshape-unshaped"], err)
	}
	t.Logf("report: unshaped %q", unshaped)
	// One entry per interface and direction (the backstop is left off with its
	// shaper), each naming the full slots, not advice apply cannot follow.
	for _, dir := range []string{"egress: not attached: its budget does not exist and every budget slot is in use",
		"ingress: not attached: its budget does not exist and every budget slot is in use"} {
		if want := cs[0].Name + "/eth0 " + dir; !strings.Contains(unshaped, want) {
			t.Errorf("report's unshaped field %q lacks %q", unshaped, want)
		}
	}

	// Nothing left behind: no record, pin, qdisc, filter or map entry beyond the filler.
	after, err := r.takeInventory(cs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before apply: %s\nafter apply: %s", before, after)
	if len(after.Atts) != 0 || len(after.FqDevs) != 0 || len(after.FilterDevs) != 0 || after.Pins != before.Pins ||
		after.Names != before.Names || after.Cfg != 0 || after.State != 0 || after.Stats != 0 || after.TCXLinks != before.TCXLinks ||
		after.Pcfg != 0 || after.Pstate != 0 || after.Pstats != 0 || after.LinkPins != 0 || after.PoliceProgs != before.PoliceProgs {
		t.Errorf("the refused apply left something behind:\nbefore %s\nafter  %s", before, after)
	}

	// Unshaped, not blackholed: traffic into the app flows well above its limit.
	const window = 3 * time.Second
	got, err := ingressRate(ctx, cs[0], time.Second, window)
	if err != nil {
		t.Fatalf("traffic into the refused app: %v", err)
	}
	t.Logf("refused app receives %.1f Mbit/s (limit %.0f, not enforced)", got/1e6, limit/1e6)
	if got < 3*limit {
		t.Errorf("refused app received %.1f Mbit/s: traffic must pass unshaped (well above the %.0f Mbit/s limit)", got/1e6, limit/1e6)
	}

	// Free the slots: the same apply now shapes the app, and the limit holds.
	for _, id := range filled {
		if err := names.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
	}
	r.mustApply(app)
	v, err := r.takeInventory(cs)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.expectClean(v, cs, defaultBudget); err != nil {
		t.Fatalf("apply with slots free again: %v\n%s", err, v)
	}
	shaped, err := ingressRate(ctx, cs[0], time.Second, window)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("with the budget: %.2f Mbit/s", shaped/1e6)
	if hi := goodputHi(limit, window); shaped > hi {
		t.Errorf("once shaped the app received %.2f Mbit/s, above %.2f", shaped/1e6, hi/1e6)
	}
	vmresult.Report(t, "budget_slots_full", map[string]any{
		"slots": len(filled), "refusal": refusal.Error(), "apply_exit": res.Code,
		"unshaped_bits_per_sec": got, "shaped_bits_per_sec": shaped, "limit_bits_per_sec": limit,
	})
}
