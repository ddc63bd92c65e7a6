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
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// soakPlan is how many container events the soak drives and how long it may take for them:
// NETSHAPE_SOAK_EVENTS and NETSHAPE_SOAK_MINUTES (make bench: 1000 in 45), else a CI size
// that takes about a minute on an idle host under TCG. On a saturated host one Docker call
// was seen to take 50 s; the time bound then ends the soak early, and at least minEvents
// must have run for its counts to mean anything.
func soakPlan(t *testing.T) (events int, budget time.Duration) {
	events, minutes := 72, 6
	for _, v := range []struct {
		env      string
		out      *int
		min, max int
	}{{"NETSHAPE_SOAK_EVENTS", &events, 36, 5000}, {"NETSHAPE_SOAK_MINUTES", &minutes, 1, 120}} {
		if s := os.Getenv(v.env); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < v.min || n > v.max {
				t.Fatalf("%s=%q: want %d..%d", v.env, s, v.min, v.max)
			}
			*v.out = n
		}
	}
	return events, time.Duration(minutes) * time.Minute
}

// minEvents after the warm-up (12 events): two full restart/stop/start cycles of every
// container. NETSHAPE_SOAK_EVENTS must leave room for both.
const minEvents = 24

// TestVMSoakWatch drives container restarts, stops and starts against a running watcher, then
// counts what is left: attachments of devices that are gone, TCX link pins, legacy filters
// (egress and backstop), fq roots, pins, budget map entries (the policer's too), flow entries of deleted budgets, kernel programs, and
// the watcher's goroutines and descriptors. Against a baseline taken after a warm-up, none
// may grow, and the end state must be exactly the running containers' devices, whole.
func TestVMSoakWatch(t *testing.T) {
	n, timeBudget := soakPlan(t)
	const cycle = 12 // 4 containers × (restart, stop, start): every container runs after each cycle
	n = (n + cycle - 1) / cycle * cycle
	warm := cycle
	// The events' time budget, plus set-up, settling, and one cycle (3 slow calls) to finish.
	ctx, cancel := context.WithTimeout(context.Background(), timeBudget+8*time.Minute)
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
	var slowest, callTime time.Duration
	calls := 0
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
		callTime += time.Since(t0)
		calls++
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
	// through events j, j+4, j+8, ...; past the deadline it stops at the end of a cycle, so
	// every container is left running. drive returns how many events ran.
	drive := func(from, to int, deadline time.Time) (int, time.Duration) {
		t.Helper()
		t0 := time.Now()
		type done struct {
			events int
			err    error
		}
		res := make(chan done, len(names))
		for j := range names {
			go func() {
				ran := 0
				for i := from + j; i < to; i += len(names) {
					if (i/len(names))%3 == 0 && time.Now().After(deadline) {
						break
					}
					if err := event(i); err != nil {
						res <- done{ran, fmt.Errorf("event %d on %s: %w", i, names[j], err)}
						return
					}
					ran++
				}
				res <- done{ran, nil}
			}()
		}
		total := 0
		var first error
		for range names {
			d := <-res
			total += d.events
			if d.err != nil && first == nil {
				first = d.err
			}
		}
		if first != nil {
			t.Fatal(first)
		}
		if w.exited() {
			t.Fatalf("the watcher exited during the soak (%v):\n%s", w.err, tail(w.log.String(), 40))
		}
		return total, time.Since(t0)
	}

	_, warmTook := drive(0, warm, time.Now().Add(time.Hour))
	t.Logf("warm-up: %d events in %.1fs, slowest Docker call %.1fs", warm, warmTook.Seconds(), slowest.Seconds())
	base := settle("after warm-up")
	time.Sleep(time.Second)
	baseStats, err := w.quietStats(3, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baseline watcher: %+v", baseStats)

	baseCtrs := cs
	ran, took := drive(warm, n, time.Now().Add(timeBudget))
	final := settle(fmt.Sprintf("after %d events", warm+ran))
	if ran < minEvents {
		t.Fatalf("only %d events after the warm-up within %s (want at least %d): too few to count leaks", ran, timeBudget, minEvents)
	}
	if ran < n-warm {
		t.Logf("time budget %s reached after %d of %d planned events", timeBudget, warm+ran, n)
	}
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
		"pcfg":                     final.Pcfg - base.Pcfg,
		"pstate":                   final.Pstate - base.Pstate,
		"pstats":                   final.Pstats - base.Pstats,
		"police_attachments":       final.hookRecorded(shaper.HookPolice) - base.hookRecorded(shaper.HookPolice),
		"police_filters":           final.filters(shaper.HookPolice) - base.filters(shaper.HookPolice),
		"police_links":             final.PoliceLinks - base.PoliceLinks,
		"stray_link_pins":          len(final.StrayLinkPins),
		"flows_of_deleted_budgets": final.FlowsOfDeleted,
		"goroutines":               finalStats.Goroutines - baseStats.Goroutines,
		"fds":                      finalStats.FDs - baseStats.FDs,
		"proc_fds":                 finalStats.ProcFDs - baseStats.ProcFDs,
	}
	// Programs are held by what is attached: at most one per attachment beyond what other
	// tests left in this guest.
	ours := final.Progs - progs0.Progs
	vmresult.Report(t, "soak", map[string]any{
		"events": warm + ran, "events_planned": n, "warmup_events": warm, "seconds": took.Seconds(),
		"events_per_sec": float64(ran) / took.Seconds(), "time_budget_seconds": timeBudget.Seconds(),
		"growth": growth, "baseline": base.Summary(), "final": final.Summary(),
		"watcher_baseline": baseStats, "watcher_final": finalStats, "programs_held": ours,
		"flows": final.Flows, "flows_per_budget": len(final.FlowsPerBudget), "slowest_docker_call_seconds": slowest.Seconds(),
		"mean_docker_call_seconds": callTime.Seconds() / float64(max(calls, 1)),
	})
	t.Logf("%d events (%d after warm-up in %.0fs); growth against the warm-up baseline: %v; programs held %d for %d attachments",
		warm+ran, ran, took.Seconds(), growth, ours, len(final.Atts))
	for k, g := range growth {
		if g > 0 {
			t.Errorf("%s grew by %d over %d events", k, g, ran)
		}
	}
	if ours > len(final.Atts) {
		t.Errorf("%d netshape_edt/netshape_police programs held for %d attachments", ours, len(final.Atts))
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
