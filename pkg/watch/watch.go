// Package watch keeps an app's limits in force between Dokku triggers: it
// shapes a container the moment Docker starts it (deploys, restart policies,
// dockerd restarts), re-applies when Docker changes an app's containers
// behind Dokku's back, and applies `dokku resource:limit` changes, which fire
// no trigger, as soon as the resource plugin writes them.
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

// ConfigSource reports apps whose configured limits may have changed
// (ResourceFiles in production). The channel stays open until ctx ends; a
// source that cannot follow changes says so on its own log and sends nothing.
type ConfigSource interface {
	Changes(ctx context.Context) <-chan string
}

// Watcher turns Docker events and property changes into reconciles.
//
// A container start is shaped at once (Shape), so a new netns is never left
// unshaped for a settle period, and its app reconciled after it settles. Everything else comes in bursts (a deploy
// stops old containers, Dokku writes several keys), so an app is reconciled
// once per quiet period after its last event: Settle for Docker events,
// ConfigSettle for property writes, and never later than MaxDelay after the
// first pending event.
type Watcher struct {
	Source Source
	// Config, if set, reports property changes (nil: Docker events only).
	Config ConfigSource
	// Shape shapes the container a start event names (reconcile.Started)
	// and sums up what it did for the log. nil means Reconcile the app at
	// once. An error schedules a Reconcile.
	Shape     func(ctx context.Context, ev containers.Event) (string, error)
	Reconcile func(ctx context.Context, app string) error
	// Resync reconciles everything; called at start and after every
	// reconnect, since events may have been missed while disconnected.
	Resync       func(ctx context.Context) error
	Settle       time.Duration // Docker events other than start; default 500ms
	ConfigSettle time.Duration // property writes; default 150ms
	MaxDelay     time.Duration // default 2s
	Retry        time.Duration // wait before re-subscribing; default 2s
	Log          io.Writer
}

// Reasons a reconcile is due, for the log.
const (
	whyDocker = "container events"
	whyConfig = "resource property change"
	whyRetry  = "start not shaped at once"
)

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	w.defaults()
	var changes <-chan string
	if w.Config != nil {
		// Before the first resync, so no change between the two is missed.
		changes = w.Config.Changes(ctx)
	}
	for {
		events, errs := w.Source.Events(ctx)
		// Subscribed first, resync second: nothing between is missed.
		if w.Resync != nil {
			t0 := time.Now()
			if err := w.Resync(ctx); err != nil {
				w.logf("netshape watch: resync: %v", err)
			} else {
				w.logf("netshape watch: resync done in %.1fms", float64(time.Since(t0))/1e6)
			}
		}
		err := w.consume(ctx, events, errs, changes)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.logf("netshape watch: event stream ended (%v); re-subscribing in %s", err, w.Retry)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(w.Retry):
		}
	}
}

func (w *Watcher) defaults() {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&w.Settle, 500 * time.Millisecond}, {&w.ConfigSettle, 150 * time.Millisecond},
		{&w.MaxDelay, 2 * time.Second}, {&w.Retry, 2 * time.Second}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
}

// pending is an app's scheduled reconcile.
type pending struct {
	due, first time.Time
	why        string
}

type schedule map[string]pending

// add (re)schedules app after a quiet period d, capped at maxDelay after
// its first pending event so a busy app cannot postpone itself forever.
func (s schedule) add(app string, d, maxDelay time.Duration, why string) {
	now := time.Now()
	p, ok := s[app]
	if !ok {
		p = pending{first: now, why: why}
	}
	p.due = now.Add(d)
	if limit := p.first.Add(maxDelay); p.due.After(limit) {
		p.due = limit
	}
	s[app] = p
}

// next is when the earliest app is due (zero when none is).
func (s schedule) next() time.Time {
	var first time.Time
	for _, p := range s {
		if first.IsZero() || p.due.Before(first) {
			first = p.due
		}
	}
	return first
}

func (w *Watcher) consume(ctx context.Context, events <-chan containers.Event, errs <-chan error, changes <-chan string) error {
	due := schedule{}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	rearm := func() {
		if at := due.next(); !at.IsZero() {
			timer.Reset(time.Until(at))
		}
	}
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
			if ev.Action == containers.ActionStart && ev.ID != "" {
				// Shaped at once, and reconciled once the burst settles:
				// the start path may have found the container from its
				// event and cgroup alone, and the app's view comes from
				// Docker (names, capabilities, the container it replaced).
				why := whyDocker
				if !w.shape(ctx, ev) {
					why = whyRetry
				}
				due.add(ev.App, w.Settle, w.MaxDelay, why)
			} else {
				due.add(ev.App, w.Settle, w.MaxDelay, whyDocker)
			}
			rearm()
		case app, ok := <-changes:
			if !ok {
				changes = nil
				continue
			}
			due.add(app, w.ConfigSettle, w.MaxDelay, whyConfig)
			rearm()
		case err, ok := <-errs:
			if !ok {
				err = errors.New("closed")
			}
			w.flush(ctx, due, time.Time{})
			return err
		case <-timer.C:
			w.flush(ctx, due, time.Now())
			rearm()
		}
	}
}

// shape handles a start event at once; false means it must be retried by a
// whole-app reconcile.
func (w *Watcher) shape(ctx context.Context, ev containers.Event) bool {
	t0 := time.Now()
	summary, err := "app reconciled", error(nil)
	if w.Shape != nil {
		summary, err = w.Shape(ctx, ev)
	} else {
		err = w.Reconcile(ctx, ev.App)
	}
	done := time.Now()
	id := ev.ID
	if len(id) > 12 {
		id = id[:12]
	}
	if err != nil {
		w.logf("netshape watch: %s: start of %s not shaped at once (%v); reconciling the app", ev.App, id, err)
		return false
	}
	// The completion time and the delay after Docker's own event time are
	// what an operator (and the latency benchmark) needs to see the window
	// in which the new container ran unshaped.
	since := ""
	if !ev.Time.IsZero() {
		since = fmt.Sprintf(", %.1fms after Docker's event", float64(done.Sub(ev.Time))/1e6)
	}
	w.logf("netshape watch: %s: start of %s: %s in %.1fms%s (done %s)", ev.App, id, summary,
		float64(done.Sub(t0))/1e6, since, done.UTC().Format(time.RFC3339Nano))
	return true
}

// flush reconciles the apps due by now (all of them if now is zero).
func (w *Watcher) flush(ctx context.Context, due schedule, now time.Time) {
	for app, p := range due {
		if !now.IsZero() && p.due.After(now) {
			continue
		}
		delete(due, app)
		t0 := time.Now()
		if err := w.Reconcile(ctx, app); err != nil {
			w.logf("netshape watch: %s: %v", app, err)
			continue
		}
		done := time.Now()
		w.logf("netshape watch: %s: reconciled (%s) in %.1fms (done %s)", app, p.why,
			float64(done.Sub(t0))/1e6, done.UTC().Format(time.RFC3339Nano))
	}
}

func (w *Watcher) logf(format string, args ...any) {
	if w.Log != nil {
		fmt.Fprintf(w.Log, format+"\n", args...)
	}
}
