package watch

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
)

type fakeSource struct {
	mu      sync.Mutex
	streams []chan containers.Event
	errs    []chan error
}

func (f *fakeSource) Events(ctx context.Context) (<-chan containers.Event, <-chan error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ev, errs := make(chan containers.Event, 16), make(chan error, 1)
	f.streams = append(f.streams, ev)
	f.errs = append(f.errs, errs)
	return ev, errs
}

func (f *fakeSource) stream(i int) (chan containers.Event, chan error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i >= len(f.streams) {
		return nil, nil
	}
	return f.streams[i], f.errs[i]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatcherDebouncesPerAppAndResyncsAfterReconnect(t *testing.T) {
	src := &fakeSource{}
	var mu sync.Mutex
	calls := map[string]int{}
	resyncs := 0
	w := &Watcher{
		Source: src,
		Reconcile: func(_ context.Context, app string) error {
			mu.Lock()
			defer mu.Unlock()
			calls[app]++
			return nil
		},
		Resync: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			resyncs++
			return nil
		},
		Settle: 50 * time.Millisecond,
		Retry:  10 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, "first subscription", func() bool { ev, _ := src.stream(0); return ev != nil })
	ev, errs := src.stream(0)
	// A burst for one app, one event of another, one run container (ignored).
	for i := 0; i < 5; i++ {
		ev <- containers.Event{App: "shop", Action: containers.ActionStart, ContainerType: containers.TypeDeploy}
	}
	ev <- containers.Event{App: "blog", Action: containers.ActionRestart, ContainerType: containers.TypeDeploy}
	ev <- containers.Event{App: "cron", Action: containers.ActionStart, ContainerType: containers.TypeRun}
	get := func(app string) int { mu.Lock(); defer mu.Unlock(); return calls[app] }
	waitFor(t, "reconciles", func() bool { return get("shop") == 1 && get("blog") == 1 })
	time.Sleep(100 * time.Millisecond)
	if get("shop") != 1 || get("cron") != 0 {
		t.Fatalf("calls %v: want one reconcile per app per burst, none for run containers", calls)
	}
	// Docker goes away: the watcher re-subscribes and resyncs everything.
	errs <- errors.New("daemon gone")
	waitFor(t, "re-subscription", func() bool { ev, _ := src.stream(1); return ev != nil })
	waitFor(t, "resync after reconnect", func() bool { mu.Lock(); defer mu.Unlock(); return resyncs == 2 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}
