// Package watch re-applies an app's limits when Docker changes its containers
// behind Dokku's back: restart policies, dockerd restarts and network
// connects re-create veths that no Dokku trigger sees.
package watch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
)

// Source streams container events (pkg/containers in production).
type Source interface {
	Events(ctx context.Context) (<-chan containers.Event, <-chan error)
}

// Watcher calls Reconcile for every app whose containers changed. Events
// come in bursts (a deploy starts and stops several containers), so each app
// is reconciled once per Settle period after its last event.
type Watcher struct {
	Source    Source
	Reconcile func(ctx context.Context, app string) error
	// Resync reconciles everything; called at start and after every
	// reconnect, since events may have been missed while disconnected.
	Resync func(ctx context.Context) error
	Settle time.Duration // default 500ms
	Retry  time.Duration // wait before re-subscribing; default 2s
	Log    io.Writer
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	settle, retry := w.Settle, w.Retry
	if settle == 0 {
		settle = 500 * time.Millisecond
	}
	if retry == 0 {
		retry = 2 * time.Second
	}
	for {
		events, errs := w.Source.Events(ctx)
		// Subscribed first, resync second: nothing between is missed.
		if w.Resync != nil {
			if err := w.Resync(ctx); err != nil {
				w.logf("netshape watch: resync: %v", err)
			}
		}
		err := w.consume(ctx, events, errs, settle)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.logf("netshape watch: event stream ended (%v); re-subscribing in %s", err, retry)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry):
		}
	}
}

func (w *Watcher) consume(ctx context.Context, events <-chan containers.Event, errs <-chan error, settle time.Duration) error {
	due := map[string]time.Time{}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.App == "" || (ev.ContainerType != "" && ev.ContainerType != containers.TypeDeploy) {
				continue
			}
			due[ev.App] = time.Now().Add(settle)
			// Fire at the earliest due app, so a busy app cannot starve a quiet one.
			timer.Reset(time.Until(earliest(due)))
		case err, ok := <-errs:
			if !ok {
				return errors.New("closed")
			}
			w.flush(ctx, due, time.Time{})
			return err
		case <-timer.C:
			next := w.flush(ctx, due, time.Now())
			if !next.IsZero() {
				timer.Reset(time.Until(next))
			}
		}
	}
}

// flush reconciles the apps due by now (all of them if now is zero) and
// returns when the next one is due.
func (w *Watcher) flush(ctx context.Context, due map[string]time.Time, now time.Time) time.Time {
	var next time.Time
	for app, at := range due {
		if !now.IsZero() && at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		delete(due, app)
		if err := w.Reconcile(ctx, app); err != nil {
			w.logf("netshape watch: %s: %v", app, err)
		}
	}
	return next
}

func (w *Watcher) logf(format string, args ...any) {
	if w.Log != nil {
		fmt.Fprintf(w.Log, format+"\n", args...)
	}
}

func earliest(due map[string]time.Time) time.Time {
	var first time.Time
	for _, at := range due {
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	return first
}
