//go:build vm

package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestVMFaultKillMidApply SIGKILLs dokku-netshape in the middle of shaping many containers,
// twice: the watcher during its start-up resync, then a one-shot `apply --all`. The kill
// lands when the first attachment of the batch is recorded, so the process had more to do; the
// test checks it did not finish. Meanwhile an app shaped earlier keeps its limit (its pinned
// TCX links or legacy filters outlive the process: measured at its receiver). After a
// restart every recorded attachment is whole, nothing is attached that is not recorded, and
// the budget maps agree.
func TestVMFaultKillMidApply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	r := newRig(t, ctx, "kill", "10.242.2.1/24")

	// The app whose limit must hold throughout: shaped before any kill.
	const steady = "steady"
	r.limitApp(steady, "10mbit", "10mbit", "web", 1)
	r.runApp(steady, "web", 1)
	r.mustApply(steady)
	// The batch: 3 apps × 4 containers = 36 attachments (eth0, backstop, host peer) to make.
	batch := []string{"bulka", "bulkb", "bulkc"}
	for _, app := range batch {
		r.limitApp(app, "30mbit", "40mbit", "web", 4)
		for n := 1; n <= 4; n++ {
			r.runApp(app, "web", n)
		}
	}
	st, err := r.running(steady)
	if err != nil || len(st) != 1 {
		t.Fatalf("steady app: %v (%d containers)", err, len(st))
	}
	v0, err := r.takeInventory(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.expectClean(v0, st, defaultBudget); err != nil {
		t.Fatalf("steady app not shaped before the kill: %v", err)
	}

	rounds := []struct {
		name    string
		start   func() *proc
		restart func() *proc
	}{
		{"watch", func() *proc { return r.start("watch") }, func() *proc { return r.startWatch() }},
		{"apply --all", func() *proc { return r.start("apply", "--all") }, func() *proc { return r.start("apply", "--all") }},
	}
	for i, round := range rounds {
		if i > 0 {
			// New veths for the batch, unshaped, with no process running that could shape them.
			zero := 0
			for _, app := range batch {
				for n := 1; n <= 4; n++ {
					if err := r.cli.ContainerRestart(ctx, fmt.Sprintf("%s.web.%d", app, n), container.StopOptions{Timeout: &zero}); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		killRound(t, ctx, r, round.name, batch, st, round.start, round.restart)
		if t.Failed() {
			return
		}
	}
}

func killRound(t *testing.T, ctx context.Context, r *rig, name string, batch []string, steady []ctr, start, restart func() *proc) {
	t.Helper()
	bc, err := r.running(batch...)
	if err != nil || len(bc) != 4*len(batch) {
		t.Fatalf("%s: batch containers: %v (%d running)", name, err, len(bc))
	}
	target := map[devKey]bool{}
	for _, c := range bc {
		for _, k := range c.devs(r.hostNetnsIno) {
			target[k] = true
		}
	}
	recorded := func() int {
		atts, err := r.attachments()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, a := range atts {
			if target[keyOf(a)] {
				n++
			}
		}
		return n
	}
	if n := recorded(); n != 0 {
		t.Fatalf("%s: %d batch attachments recorded before the process started", name, n)
	}

	// Kill at the first recorded batch attachment. Polling the registry is a few syscalls; one
	// attach is several netlink round trips and, with TCX, a namespace switch.
	p := start()
	t0 := time.Now()
	atKill := 0
	for deadline := t0.Add(90 * time.Second); time.Now().Before(deadline) && !p.exited(); time.Sleep(2 * time.Millisecond) {
		if atKill = recorded(); atKill > 0 {
			p.kill()
			break
		}
	}
	if !p.exited() {
		p.kill()
		t.Fatalf("%s: no batch attachment recorded within 90s:\n%s", name, p.log)
	}
	afterKill := recorded()
	killedAt := time.Since(t0)
	t.Logf("%s: SIGKILL %.2fs after start with %d of %d batch attachments recorded (%d once it was dead)",
		name, killedAt.Seconds(), atKill, len(target), afterKill)
	// Killed by our signal, not exited by itself, and with work left.
	if ws := p.cmd.ProcessState; ws == nil || ws.ExitCode() != -1 {
		t.Fatalf("%s: the process exited by itself (%v) before the kill:\n%s", name, p.err, p.log)
	}
	if afterKill == 0 || afterKill >= len(target) {
		t.Fatalf("%s: %d of %d batch attachments recorded at the kill: not mid-way", name, afterKill, len(target))
	}

	// What the kill left, before anything repairs it (reported, not judged: one device may be
	// mid-attach, its fq installed and no program yet).
	all := append(append([]ctr{}, steady...), bc...)
	left, err := r.takeInventory(all)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: left by the kill: %s", name, left)
	vmresult.Report(t, "kill_mid_apply", map[string]any{"round": name, "killed_after_seconds": killedAt.Seconds(),
		"batch_devices": len(target), "recorded_at_kill": afterKill, "unrecorded_left": len(left.Unrecorded()),
		"broken_left": len(left.Broken)})

	// The limit in force before stays in force with the process gone: still recorded and
	// whole, and its receiver sees no more than the limit.
	if err := r.expectShaped(left, steady, defaultBudget); err != nil {
		t.Fatalf("%s: steady app lost its limit with the process: %v", name, err)
	}
	const window = 3 * time.Second
	got, err := ingressRate(ctx, steady[0], time.Second, window)
	if err != nil {
		t.Fatalf("%s: measure steady app: %v", name, err)
	}
	t.Logf("%s: steady app receives %.2f Mbit/s through its 10mbit ingress limit with the process dead", name, got/1e6)
	if hi := goodputHi(10e6, window); got > hi || got <= 0 {
		t.Errorf("%s: steady app received %.2f Mbit/s with its 10mbit limit, want (0, %.2f]", name, got/1e6, hi/1e6)
	}

	// Restart: everything becomes whole and exactly recorded.
	p2 := restart()
	oneShot := strings.HasPrefix(name, "apply")
	if oneShot {
		if code, err := p2.wait(3 * time.Minute); err != nil || code != 0 {
			t.Fatalf("%s: the apply after the kill: exit %d, %v:\n%s", name, code, err, p2.log)
		}
	}
	var v *inventory
	err = waitFor(ctx, 2*time.Minute, time.Second, func() error {
		cs, err := r.running()
		if err != nil {
			return err
		}
		if v, err = r.takeInventory(cs); err != nil {
			return err
		}
		return r.expectClean(v, cs, defaultBudget)
	})
	if err != nil {
		t.Fatalf("%s: after the restart: %v\n%s\nlog:\n%s", name, err, v, p2.log)
	}
	if !oneShot {
		p2.stop()
	}
	t.Logf("%s: after the restart: %s", name, v)
	vmresult.Report(t, "kill_mid_apply_after_restart", map[string]any{"round": name, "state": v.Summary()})
}
