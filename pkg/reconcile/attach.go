package reconcile

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// parallelAttaches bounds how many devices are attached at once. Most of an
// attach is the kernel's (a TCX attach waits out an RCU grace period, and
// they all queue on the RTNL lock), so more goroutines would only wait longer.
const parallelAttaches = 4

// attach makes each planned device enforce its budget, recording failures in
// res, and returns the devices (with hook) now enforcing which budget. App
// and Container share it, so a start is shaped exactly as a reconcile would.
//
// Two waves, each device of a wave on its own goroutine: a started container
// runs unshaped until both its directions are attached, and one device's
// netns and netlink work overlaps the kernel's wait on another. The first
// wave shapes (EDT on every interface, both directions); res.ShapedAt marks
// its end. The second adds the egress backstops, only where the first wave
// shaped the interface's egress: the backstop's tolerance assumes EDT paces
// the traffic, so alone it would become the limit (fail open instead). A
// device's hooks are never attached at once (without TCX they share one
// clsact qdisc), so counting at a host veth's ingress (Monitor) also waits
// for the second wave, unguarded.
func (r *Reconciler) attach(ctx context.Context, planned []Shaped, res *Result) map[devID]string {
	res.AttachFrom = time.Now()
	var shapes, backstops, counts []Shaped
	for _, p := range planned {
		switch {
		case p.Backstop():
			backstops = append(backstops, p)
		case p.Counted() && p.Hook == shaper.HookPolice:
			counts = append(counts, p)
		default:
			shapes = append(shapes, p)
		}
	}
	want := map[devID]string{} // device and hook -> budget it must enforce
	egressShaped := map[[2]string]bool{}
	for _, o := range r.attachAll(shapes) {
		if r.record(ctx, o, res, want) && o.p.Direction == Egress {
			egressShaped[[2]string{o.p.Container, o.p.Interface}] = true
		}
	}
	res.ShapedAt = time.Now()
	guarded := counts
	for _, p := range backstops {
		if egressShaped[[2]string{p.Container, p.Interface}] {
			guarded = append(guarded, p)
		}
	}
	for _, o := range r.attachAll(guarded) {
		r.record(ctx, o, res, want)
	}
	return want
}

type attached struct {
	p   Shaped
	a   shaper.Attachment
	err error
}

// attachAll attaches planned (each device at most once) in parallel and
// returns the outcomes in planned's order. Attaches start in planned's order
// (a slot is taken before the goroutine starts), so a run's progress is
// predictable: the devices of the first containers by name come first.
func (r *Reconciler) attachAll(planned []Shaped) []attached {
	out := make([]attached, len(planned))
	slots := make(chan struct{}, parallelAttaches)
	var wg sync.WaitGroup
	for i, p := range planned {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			opts := shaper.AttachOptions{Force: r.Force, Hook: p.Hook}
			a, err := r.Shaper.Attach(p.Device, p.Budget, opts)
			if errors.Is(err, shaper.ErrNoFq) && p.Hook == shaper.HookShape {
				// Only a kernel without sch_fq degrades a device: the same
				// budget enforced by the program as a policer (no pacing).
				// Any other failure leaves the device unshaped (record).
				opts.NoFq = true
				a, err = r.Shaper.Attach(p.Device, p.Budget, opts)
			}
			out[i] = attached{p, a, err}
		}()
	}
	wg.Wait()
	return out
}

// record notes one outcome in res and want; true if the device is attached.
func (r *Reconciler) record(ctx context.Context, o attached, res *Result, want map[devID]string) bool {
	p := o.p
	if o.err != nil && o.a.NetnsIno != 0 {
		// Failed after recording the attachment (a step after the program
		// swap): App removes it, as it is not wanted.
		r.recorded = append(r.recorded, o.a)
	}
	if o.err != nil && p.Counted() {
		// Nothing is limited here, so nothing fails open: say it, carry on.
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s %s %s: not counted: %v", p.Container, p.Interface, p.Direction, o.err))
		return false
	}
	if o.err != nil {
		cause := causeOf(res.App, o.err)
		if cause.Code == CodeVanished && r.stopped(ctx, p.ContainerID) {
			cause = gone()
		}
		if p.Backstop() && cause.Problem {
			cause.Summary = "egress backstop: " + cause.Summary + " (egress stays shaped at the source)"
		}
		res.Unshaped = append(res.Unshaped, Unshaped{Container: p.Container, Process: p.Process,
			Interface: p.Interface, Direction: p.Direction, Err: o.err, Cause: forContainer(res.App, p.Container, cause)})
		return false
	}
	want[devID{o.a.NetnsIno, o.a.Ifindex, o.a.Hook}] = p.Budget
	p.Changed = !o.a.Unchanged
	p.Datapath = o.a.Datapath
	if p.Degraded() {
		// Enforced, with a caveat apply and report say every time.
		d := Degraded(res.App)
		p.Note = &d
	}
	res.Shaped = append(res.Shaped, p)
	return true
}
