package containers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// Event is a change that can alter what an app's containers look like on the network.
type Event struct {
	App    string
	ID     string // container ID
	Name   string // container events: the container's name
	Action string // ActionStart, ActionRestart, ActionDie, ActionDestroy, ActionConnect, ActionDisconnect
	// ContainerType and ProcessType are the container's Dokku labels (TypeDeploy, "web", ...).
	ContainerType string
	ProcessType   string
	Network       string // connect/disconnect: the network's name
	Time          time.Time
}

// Event actions passed on.
const (
	ActionStart      = "start"
	ActionRestart    = "restart"
	ActionDie        = "die"
	ActionDestroy    = "destroy"
	ActionConnect    = "connect"    // a network was attached: a new interface in the container
	ActionDisconnect = "disconnect" // an interface went away
)

// Events streams changes to Dokku containers (those with the app label): container start,
// restart, die and destroy, and network connect/disconnect (e.g. Dokku's attach-post-deploy
// networks, or a dockerd restart re-creating networks).
//
// Both Docker subscriptions are open when Events returns, so a caller that subscribes first
// and lists containers second misses nothing in between.
//
// When the stream ends (daemon gone, ctx cancelled) exactly one error is sent on the error
// channel (ctx.Err() after cancellation), then both channels are closed. Callers re-subscribe
// and re-list.
func (c *Client) Events(ctx context.Context) (<-chan Event, <-chan error) {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan Event, 16)
	errc := make(chan error, 1)

	// Subscribing negotiates the API version first, unbounded: a daemon that accepts and
	// never answers would block here for ever. Negotiate within the call timeout instead;
	// only the stream itself is long-lived.
	if err := c.call(ctx, func(ctx context.Context) error {
		if _, err := c.api.Ping(ctx); err != nil {
			return err
		}
		c.api.NegotiateAPIVersion(ctx)
		return nil
	}); err != nil {
		cancel()
		errc <- fmt.Errorf("docker events: %w", err)
		close(errc)
		close(out)
		return out, errc
	}

	// Container events carry the container's labels, so Docker can filter them on the app
	// label. Network events carry the network's, so those are filtered here after an inspect.
	cmsgs, cerrs := c.api.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelApp),
		filters.Arg("event", ActionStart),
		filters.Arg("event", ActionRestart),
		filters.Arg("event", ActionDie),
		filters.Arg("event", ActionDestroy),
	)})
	nmsgs, nerrs := c.api.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.NetworkEventType)),
		filters.Arg("event", ActionConnect),
		filters.Arg("event", ActionDisconnect),
	)})

	// Network events need an inspect to find their app; that runs in its own
	// goroutine so a slow inspect never holds up a container start behind it
	// (the watcher shapes a container the moment its start event arrives).
	netEvents, netErr := make(chan Event), make(chan error, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-nerrs:
				netErr <- streamErr(ctx, "network", err)
				return
			case m := <-nmsgs:
				id := m.Actor.Attributes["container"]
				if id == "" {
					continue
				}
				ct, err := c.Inspect(ctx, id)
				if errors.Is(err, ErrGone) {
					continue // removed already: its destroy event says enough
				}
				if err != nil {
					if ctx.Err() == nil {
						err = fmt.Errorf("docker events: %w", err)
					} else {
						err = ctx.Err()
					}
					netErr <- err
					return
				}
				if ct.App == "" {
					continue
				}
				select {
				case netEvents <- Event{
					App: ct.App, ID: ct.ID, Action: string(m.Action),
					ContainerType: ct.Type, ProcessType: ct.ProcessType,
					Network: m.Actor.Attributes["name"], Time: eventTime(m),
				}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	go func() {
		defer cancel()
		defer close(errc)
		defer close(out)
		send := func(e Event) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
				errc <- ctx.Err()
				return false
			}
		}
		for {
			select {
			case m := <-cmsgs:
				a := m.Actor.Attributes
				if a[LabelApp] == "" {
					continue
				}
				if !send(Event{
					App: a[LabelApp], ID: m.Actor.ID, Name: a["name"], Action: string(m.Action),
					ContainerType: a[LabelContainerType], ProcessType: a[LabelProcessType],
					Time: eventTime(m),
				}) {
					return
				}
			case e := <-netEvents:
				if !send(e) {
					return
				}
			case err := <-cerrs:
				errc <- streamErr(ctx, "container", err)
				return
			case err := <-netErr:
				errc <- err
				return
			}
		}
	}()
	return out, errc
}

func streamErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		err = errors.New("stream closed")
	}
	return fmt.Errorf("docker %s events: %w", what, err)
}

func eventTime(m events.Message) time.Time {
	if m.TimeNano != 0 {
		return time.Unix(0, m.TimeNano)
	}
	return time.Unix(m.Time, 0)
}
