//go:build vm

package faults

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// soakEvents is how many container events the soak drives: NETSHAPE_SOAK_EVENTS (make bench
// sets 1000), else a count that keeps the CI run to a few minutes per kernel under TCG.
func soakEvents(t *testing.T) int {
	n := 72
	if s := os.Getenv("NETSHAPE_SOAK_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 24 || v > 5000 {
			t.Fatalf("NETSHAPE_SOAK_EVENTS=%q: want 24..5000", s)
		}
		n = v
	}
	return n
}

// TestVMSoakWatch drives container restarts, stops and starts against a running watcher, then
// counts what is left: attachments of devices that are gone, TCX link pins, legacy filters,
// fq roots, pins, budget map entries, flow entries of deleted budgets, kernel programs, and
// the watcher's goroutines and descriptors. Against a baseline taken after a warm-up, none
// may grow, and the end state must be exactly the running containers' devices, whole.
func TestVMSoakWatch(t *testing.T) {
	n := soakEvents(t)
	const cycle = 12 // 4 containers × (restart, stop, start): every container runs after each cycle
	n = (n + cycle - 1) / cycle * cycle
	warm := cycle
	// Under TCG one docker start/stop costs about a second; allow three per event.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute+time.Duration(n)*3*time.Second)
	defer cancel()
	r := newRig(t, ctx, "soak", "10.242.5.1/24")
	r.limitApp("soaka", "20mbit", "30mbit", "web", 2)
	r.limitApp("soakb", "20mbit", "30mbit", "web", 1, "worker", 1)
	r.f.SetResource("soakb", "worker", dokku.Limit, dokku.NetworkEgress, "15mbit")
	budget := func(c ctr, dir string) string {
		if c.App == "soakb" && c.Proc == "worker" && dir == "egress" {
			return "soakb/worker/egress"
		}
		return defaultBudget(c, dir)
	}
	progs0, err := r.takeInventory(nil) // programs of other tests in this guest, before ours
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"soaka.web.1", "soaka.web.2", "soakb.web.1", "soakb.worker.1"}
	r.runApp("soaka", "web", 1)
	r.runApp("soaka", "web", 2)
	r.runApp("soakb", "web", 1)
	r.runApp("soakb", "worker", 1)
	w := r.startWatch()

	zero := 0
	var slowest time.Duration
	var slowMu sync.Mutex
	event := func(i int) error {
		name := names[i%len(names)]
		t0 := time.Now()
		var err error
		switch (i / len(names)) % 3 {
		case 0:
			err = r.cli.ContainerRestart(ctx, name, container.StopOptions{Timeout: &zero})
		case 1:
			err = r.cli.ContainerStop(ctx, name, container.StopOptions{Timeout: &zero})
		default:
			err = r.cli.ContainerStart(ctx, name, container.StartOptions{})
		}
		slowMu.Lock()
		slowest = max(slowest, time.Since(t0))
		slowMu.Unlock()
		return err
	}
	var cs []ctr
	settle := func(phase string) *inventory {
		t.Helper()
		var v *inventory
		t0 := time.Now()
		err := waitFor(ctx, 90*time.Second, 250*time.Millisecond, func() error {
			var err error
			if cs, err = r.running(); err != nil {
				return err
			}
			if len(cs) != len(names) {
				return fmt.Errorf("%d of %d containers running", len(cs), len(names))
			}
			if v, err = r.takeInventory(cs); err != nil {
				return err
			}
			return r.expectClean(v, cs, budget)
		})
		if err != nil {
			t.Fatalf("%s: the watcher did not converge: %v\n%s\nwatch log (tail):\n%s", phase, err, v, tail(w.log.String(), 40))
		}
		t.Logf("%s: converged %.1fs after the last event: %s", phase, time.Since(t0).Seconds(), v)
		return v
	}
	// Each container has its own worker, so events on different containers overlap as they do
	// on a busy host (and four run in the time of one under TCG). Worker j drives container j
	// through events j, j+4, j+8, ...
	drive := func(from, to int) time.Duration {
		t.Helper()
		t0 := time.Now()
		errs := make(chan error, len(names))
		for j := range names {
			go func() {
				for i := from + j; i < to; i += len(names) {
					if err := event(i); err != nil {
						errs <- fmt.Errorf("event %d on %s: %w", i, names[j], err)
						return
					}
				}
				errs <- nil
			}()
		}
		var first error
		for range names {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		if first != nil {
			t.Fatal(first)
		}
		if w.exited() {
			t.Fatalf("the watcher exited during the soak (%v):\n%s", w.err, tail(w.log.String(), 40))
		}
		return time.Since(t0)
	}

	warmTook := drive(0, warm)
	t.Logf("warm-up: %d events in %.1fs, slowest Docker call %.1fs", warm, warmTook.Seconds(), slowest.Seconds())
	base := settle("after warm-up")
	time.Sleep(time.Second)
	baseStats, err := w.quietStats(3, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baseline watcher: %+v", baseStats)

	baseCtrs := cs
	took := drive(warm, n)
	final := settle(fmt.Sprintf("after %d events", n))
	// The events really replaced every container's veth, and the watcher shaped the new ones.
	for i, c := range cs {
		if c.Name != baseCtrs[i].Name || c.Pair.HostIf.Index == baseCtrs[i].Pair.HostIf.Index {
			t.Fatalf("%s kept host veth #%d through the soak: the events did not reach it", c.Name, c.Pair.HostIf.Index)
		}
	}
	time.Sleep(time.Second)
	finalStats, err := w.quietStats(3, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("final watcher: %+v", finalStats)

	growth := map[string]int{
		"attachments":              len(final.Atts) - len(base.Atts),
		"stale":                    len(final.Stale),
		"unrecorded":               len(final.Unrecorded()),
		"pins":                     final.Pins - base.Pins,
		"link_pins":                final.LinkPins - base.LinkPins,
		"legacy_filters":           len(final.FilterDevs) - len(base.FilterDevs),
		"fq_roots":                 len(final.FqDevs) - len(base.FqDevs),
		"tcx_links":                final.TCXLinks - base.TCXLinks,
		"names":                    final.Names - base.Names,
		"cfg":                      final.Cfg - base.Cfg,
		"state":                    final.State - base.State,
		"stats":                    final.Stats - base.Stats,
		"flows_of_deleted_budgets": final.FlowsOfDeleted,
		"goroutines":               finalStats.Goroutines - baseStats.Goroutines,
		"fds":                      finalStats.FDs - baseStats.FDs,
		"proc_fds":                 finalStats.ProcFDs - baseStats.ProcFDs,
	}
	// Programs are held by what is attached: at most one per attachment beyond what other
	// tests left in this guest.
	ours := final.Progs - progs0.Progs
	vmresult.Report(t, "soak", map[string]any{
		"events": n, "warmup_events": warm, "seconds": took.Seconds(), "events_per_sec": float64(n-warm) / took.Seconds(),
		"growth": growth, "baseline": base.Summary(), "final": final.Summary(),
		"watcher_baseline": baseStats, "watcher_final": finalStats, "programs_held": ours,
		"flows": final.Flows, "flows_per_budget": len(final.FlowsPerBudget), "slowest_docker_call_seconds": slowest.Seconds(),
	})
	t.Logf("%d events (%d after warm-up in %.0fs); growth against the warm-up baseline: %v; programs held %d for %d attachments",
		n, n-warm, took.Seconds(), growth, ours, len(final.Atts))
	for k, g := range growth {
		if g > 0 {
			t.Errorf("%s grew by %d over %d events", k, g, n-warm)
		}
	}
	if ours > len(final.Atts) {
		t.Errorf("%d netshape_edt programs held for %d attachments", ours, len(final.Atts))
	}
	if final.Flows > 65536 {
		t.Errorf("%d flow entries: beyond the map's bound", final.Flows)
	}
	w.stop()
}

func tail(s string, n int) string {
	lines := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			if lines++; lines == n {
				return s[i+1:]
			}
		}
	}
	return s
}
