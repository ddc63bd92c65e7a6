package reconcile

import (
	"context"
	"errors"
	"fmt"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
)

// Inspector finds one container by ID (pkg/containers in production).
type Inspector interface {
	Inspect(ctx context.Context, id string) (containers.Container, error)
}

// Container shapes one running container of app the moment it starts: the
// budgets its process type uses are upserted and every interface attached,
// planned exactly as App plans it. It removes nothing: what a start makes
// stale (the old container's records) is App's job at the next reconcile.
// The watcher calls it so a new netns is not left unshaped while a whole
// app is reconciled. r.Docker must also be an Inspector.
func (r *Reconciler) Container(ctx context.Context, app, id string) (Result, error) {
	res := Result{App: app}
	if r.Shaper == nil {
		return res, errors.New("reconcile: no shaper")
	}
	insp, ok := r.Docker.(Inspector)
	if !ok {
		return res, errors.New("reconcile: Docker client cannot inspect containers")
	}
	c, err := insp.Inspect(ctx, id)
	switch {
	case errors.Is(err, containers.ErrGone):
		res.Unshaped = append(res.Unshaped, Unshaped{Container: id, Cause: gone()})
		return res, nil
	case err != nil:
		return res, err
	case c.App != app || c.Type != containers.TypeDeploy:
		return res, fmt.Errorf("container %s is not a deploy container of %s", c.Name, app)
	case !c.Running:
		res.Unshaped = append(res.Unshaped, Unshaped{Container: c.Name, Process: c.ProcessType, Cause: notRunning()})
		return res, nil
	}
	if res.Scheduler, err = r.remote(app); err != nil || res.Scheduler != "" {
		return res, err // a k3s app: its cluster's CNI enforces the limits
	}
	list := []containers.Container{c}
	if res.Wants, err = r.Wants(app, processTypes(list)); err != nil {
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
