//go:build vm

package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestVMFaultDockerdRestart restarts dockerd under a running `dokku-netshape watch`. The
// daemon's shutdown kills the app's containers and its restart policy (Dokku's on-failure:10)
// starts them again in new namespaces with new veths, with no Dokku trigger. The watcher must
// reconnect and shape them; the time each container ran unshaped (from its new start to all
// three of its attachments whole again: eth0, the egress backstop, the host peer) is measured and reported. At the end every device is shaped and
// nothing of the old containers is left.
func TestVMFaultDockerdRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	r := newRig(t, ctx, "dockerd", "10.242.1.1/24")
	const app = "restartapp"
	r.limitApp(app, "20mbit", "50mbit", "web", 2)
	r.runApp(app, "web", 1)
	r.runApp(app, "web", 2)

	w := r.startWatch()
	var before []ctr
	err := waitFor(ctx, 60*time.Second, 200*time.Millisecond, func() error {
		cs, err := r.running(app)
		if err != nil {
			return err
		}
		if len(cs) != 2 {
			return fmt.Errorf("%d containers running, want 2", len(cs))
		}
		v, err := r.takeInventory(cs)
		if err != nil {
			return err
		}
		before = cs
		return r.expectClean(v, cs, defaultBudget)
	})
	if err != nil {
		t.Fatalf("watch did not shape the app at start: %v\nwatch log:\n%s", err, w.log)
	}

	stopped := r.restartDocker()
	up := time.Now()
	t.Logf("dockerd down %.1fs (stopped → answering again)", up.Sub(stopped).Seconds())

	// Poll until every container runs again (a new start after the stop) with all three
	// attachments whole; remember when each first was.
	// A container counts as shaped at the moment of the first registry read that finds all
	// three of its attachments whole; the gap between reads bounds how early it may have been.
	shapedAt := map[string]time.Time{}
	var after []ctr
	var lastRead time.Time
	var gap time.Duration
	err = waitFor(ctx, 90*time.Second, 100*time.Millisecond, func() error {
		cs, err := r.running(app)
		if err != nil {
			return err
		}
		now := time.Now()
		if !lastRead.IsZero() {
			gap = max(gap, now.Sub(lastRead))
		}
		lastRead = now
		for _, c := range cs {
			if !c.Started.After(stopped) {
				continue
			}
			if _, seen := shapedAt[c.Name]; !seen && r.shapedNow([]ctr{c}, defaultBudget) == nil {
				shapedAt[c.Name] = now
			}
		}
		after = cs
		if len(cs) != 2 || len(shapedAt) != 2 {
			return fmt.Errorf("%d containers running, %d shaped since their new start", len(cs), len(shapedAt))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("containers not back and shaped after the dockerd restart: %v\ndockerd log:\n%s\nwatch log:\n%s", err, r.d.LogTail(30), w.log)
	}
	if w.exited() {
		t.Fatalf("the watcher exited across the dockerd restart (%v):\n%s", w.err, w.log)
	}

	// The fault was hit: each container really was restarted into a new namespace and veth.
	var worst, afterUp time.Duration
	per := map[string]float64{}
	for i, c := range after {
		b := before[i]
		if c.Name != b.Name || c.Pid == b.Pid || c.Pair.HostIf.Index == b.Pair.HostIf.Index || !c.Started.After(stopped) {
			t.Fatalf("%s was not restarted by the dockerd restart: pid %d → %d, host veth #%d → #%d, started %s (daemon stopped %s)",
				c.Name, b.Pid, c.Pid, b.Pair.HostIf.Index, c.Pair.HostIf.Index, c.Started.Format(time.RFC3339Nano), stopped.Format(time.RFC3339Nano))
		}
		unshaped := shapedAt[c.Name].Sub(c.Started)
		per[c.Name] = unshaped.Seconds()
		worst = max(worst, unshaped)
		afterUp = max(afterUp, shapedAt[c.Name].Sub(up))
		// dockerd starts restored containers before its API answers: until then no client,
		// the watcher included, can learn of them.
		t.Logf("%s: pid %d → %d, host veth %s → %s; started %.2fs after the daemon stopped, unshaped for %.2fs (shaped %.2fs after dockerd answered)",
			c.Name, b.Pid, c.Pid, b.Pair.HostIf.Name, c.Pair.HostIf.Name, c.Started.Sub(stopped).Seconds(), unshaped.Seconds(),
			shapedAt[c.Name].Sub(up).Seconds())
	}
	vmresult.Report(t, "dockerd_restart_unshaped", map[string]any{
		"unshaped_seconds_max": worst.Seconds(), "unshaped_seconds": per, "shaped_after_dockerd_answered_seconds_max": afterUp.Seconds(),
		"dockerd_down_seconds": up.Sub(stopped).Seconds(), "containers": len(after), "poll_gap_seconds_max": gap.Seconds(),
	})

	// Nothing of the old containers is left: no stale record, pin, fq or filter; exactly the
	// new devices, whole.
	var v *inventory
	err = waitFor(ctx, 20*time.Second, 250*time.Millisecond, func() error {
		var err error
		if v, err = r.takeInventory(after); err != nil {
			return err
		}
		return r.expectClean(v, after, defaultBudget)
	})
	if err != nil {
		t.Fatalf("after the dockerd restart: %v\n%s\nwatch log:\n%s", err, v, w.log)
	}
	t.Logf("end state: %s", v)
	vmresult.Report(t, "dockerd_restart_end_state", v.Summary())
	w.stop()
	t.Logf("watch log:\n%s", w.log)
}
