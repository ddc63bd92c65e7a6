package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
)

// Inspector finds one container by ID (pkg/containers in production).
type Inspector interface {
	Inspect(ctx context.Context, id string) (containers.Container, error)
}

// Inspection is a container inspect already under way: the watcher starts
// it before it takes the reconcile lock, so Docker's answer (which waits for
// dockerd to finish the start) overlaps the lock and the property reads.
type Inspection struct {
	ID   string
	done chan struct{}
	c    containers.Container
	err  error
	// provisional: c was put together from the start event and the
	// container's cgroup, not by Docker (containers.FromStart).
	provisional bool
}

// Provisional is an answer already in hand about a started container that
// Docker did not give (containers.FromStart). Started uses it only for a
// network namespace nothing is recorded in yet, i.e. the container's own new
// one; anything else (a netns shared with another container) is inspected.
func Provisional(c containers.Container) *Inspection {
	in := &Inspection{ID: c.ID, done: make(chan struct{}), c: c, provisional: true}
	close(in.done)
	return in
}

// StartInspect begins inspecting container id on its own goroutine.
func StartInspect(ctx context.Context, insp Inspector, id string) *Inspection {
	in := &Inspection{ID: id, done: make(chan struct{})}
	go func() {
		defer close(in.done)
		in.c, in.err = insp.Inspect(ctx, id)
	}()
	return in
}

func (in *Inspection) wait(ctx context.Context) (containers.Container, error) {
	select {
	case <-in.done:
		return in.c, in.err
	case <-ctx.Done():
		return containers.Container{}, ctx.Err()
	}
}

// Container shapes one running container of app the moment it starts: the
// budgets its process type uses are upserted and every interface attached,
// planned exactly as App plans it. It removes nothing: what a start makes
// stale (the old container's records) is App's job at the next reconcile.
// r.Docker must also be an Inspector.
func (r *Reconciler) Container(ctx context.Context, app, id string) (Result, error) {
	insp, ok := r.Docker.(Inspector)
	if !ok {
		return Result{App: app}, errors.New("reconcile: Docker client cannot inspect containers")
	}
	return r.Started(ctx, app, "", StartInspect(ctx, insp, id))
}

// Started is Container for a start whose inspect is already under way. The
// watcher calls it so a new netns is not left unshaped while a whole app is
// reconciled. proc is the process type the start event's labels name ("" if
// unknown): the app's limits are read for it while Docker answers, and read
// again only if the container turns out to be of another type.
func (r *Reconciler) Started(ctx context.Context, app, proc string, in *Inspection) (Result, error) {
	res := Result{App: app}
	if r.Shaper == nil {
		return res, errors.New("reconcile: no shaper")
	}
	var err error
	if res.Scheduler, err = r.remote(app); err != nil || res.Scheduler != "" {
		return res, err // a k3s app: its cluster's CNI enforces the limits
	}
	var early []Want
	var earlyErr error
	if proc != "" {
		early, earlyErr = r.Wants(app, []string{proc})
	}
	c, err := in.wait(ctx)
	if err == nil && in.provisional {
		if c, err = r.confirm(ctx, c); err != nil {
			return res, err
		}
	}
	res.InspectedAt = time.Now()
	switch {
	case errors.Is(err, containers.ErrGone):
		res.Unshaped = append(res.Unshaped, Unshaped{Container: in.ID, Cause: gone()})
		return res, nil
	case err != nil:
		return res, err
	case c.App != app || c.Type != containers.TypeDeploy:
		return res, fmt.Errorf("container %s is not a deploy container of %s", c.Name, app)
	case !c.Running:
		res.Unshaped = append(res.Unshaped, Unshaped{Container: c.Name, Process: c.ProcessType, Cause: notRunning()})
		return res, nil
	}
	list := []containers.Container{c}
	if proc != "" && proc == c.ProcessType {
		res.Wants, err = early, earlyErr
	} else {
		res.Wants, err = r.Wants(app, processTypes(list))
	}
	if err != nil {
		return res, err
	}
	for _, w := range res.Wants {
		if err := r.Shaper.UpsertBudget(w.Budget); err != nil {
			return res, fmt.Errorf("%s: %w", app, err)
		}
	}
	r.attach(ctx, r.plan(list, res.Wants, &res), &res)
	return res, nil
}

// confirm takes a provisional container as it is when nothing is recorded
// on its interfaces or their host-side peers, i.e. its netns is its own new
// one, and otherwise asks Docker: a netns already shaped may be another
// container's (--network container:X), perhaps of another app, and only
// Docker knows whose. The check is a few key lookups, not a registry walk.
func (r *Reconciler) confirm(ctx context.Context, c containers.Container) (containers.Container, error) {
	if fresh, err := r.fresh(c.NetnsPath()); err != nil || fresh {
		return c, err
	}
	insp, ok := r.Docker.(Inspector)
	if !ok {
		return c, errors.New("reconcile: Docker client cannot inspect containers")
	}
	return StartInspect(ctx, insp, c.ID).wait(ctx)
}

// fresh: nothing is recorded on the veths of the netns at path (false, not
// an error, when they cannot be listed: Docker's view decides then).
func (r *Reconciler) fresh(path string) (bool, error) {
	if path == "" {
		return false, nil
	}
	pairs, err := r.interfaces(path)
	if err != nil {
		return false, nil
	}
	for _, p := range pairs {
		rec, err := r.Shaper.Recorded(shaper.Device{Netns: path, Name: p.ContainerIf.Name}, p.ContainerIf.Index)
		if err == nil && !rec && p.Peer == veth.PeerHost {
			rec, err = r.Shaper.Recorded(shaper.Device{Name: p.HostIf.Name}, p.HostIf.Index)
		}
		if err != nil || rec {
			return false, err
		}
	}
	return true, nil
}
