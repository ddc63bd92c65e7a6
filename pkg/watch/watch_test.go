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

// fakeConfig is a ConfigSource fed by the test.
type fakeConfig struct{ ch chan string }

func (f *fakeConfig) Changes(context.Context) <-chan string { return f.ch }

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

// recorder counts what the watcher asked for.
type recorder struct {
	mu        sync.Mutex
	calls     map[string]int // app -> reconciles
	shaped    []string       // app/id per Shape call
	resyncs   int
	shapeErr  error
	reconcile []time.Time
}

func newRecorder() *recorder { return &recorder{calls: map[string]int{}} }

func (r *recorder) watcher(src Source) *Watcher {
	return &Watcher{
		Source: src,
		Shape: func(_ context.Context, ev containers.Event) (string, error) {
			app, id := ev.App, ev.ID
			r.mu.Lock()
			defer r.mu.Unlock()
			r.shaped = append(r.shaped, app+"/"+id)
			return "shaped", r.shapeErr
		},
		Reconcile: func(_ context.Context, app string) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.calls[app]++
			r.reconcile = append(r.reconcile, time.Now())
			return nil
		},
		Resync: func(context.Context) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.resyncs++
			return nil
		},
	}
}

func (r *recorder) get(app string) int { r.mu.Lock(); defer r.mu.Unlock(); return r.calls[app] }

func (r *recorder) shapes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.shaped...)
}

func run(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
}

func firstStream(t *testing.T, src *fakeSource) (chan containers.Event, chan error) {
	t.Helper()
	waitFor(t, "first subscription", func() bool { ev, _ := src.stream(0); return ev != nil })
	return src.stream(0)
}

func TestWatcherShapesStartsWithoutSettleDelay(t *testing.T) {
	src, rec := &fakeSource{}, newRecorder()
	w := rec.watcher(src)
	// Settle far beyond waitFor's 5 s: only a start handled at once passes.
	w.Settle, w.MaxDelay = time.Minute, time.Minute
	run(t, w)
	ev, _ := firstStream(t, src)
	ev <- containers.Event{App: "shop", ID: "c1", Action: containers.ActionDie, ContainerType: containers.TypeDeploy}
	ev <- containers.Event{App: "shop", ID: "c2", Action: containers.ActionStart, ContainerType: containers.TypeDeploy, Time: time.Now()}
	ev <- containers.Event{App: "shop", ID: "c3", Action: containers.ActionStart, ContainerType: containers.TypeDeploy}
	// Not deploy containers: nothing.
	ev <- containers.Event{App: "shop", ID: "r1", Action: containers.ActionStart, ContainerType: containers.TypeRun}
	waitFor(t, "both starts shaped", func() bool { return len(rec.shapes()) >= 2 })
	time.Sleep(50 * time.Millisecond)
	if got := rec.shapes(); len(got) != 2 || got[0] != "shop/c2" || got[1] != "shop/c3" {
		t.Fatalf("Shape calls %v, want shop/c2 then shop/c3 (run containers ignored)", got)
	}
	if n := rec.get("shop"); n != 0 {
		t.Fatalf("%d reconciles already: the die event must wait out its settle period", n)
	}
}

// A start shaped at once is still reconciled with Docker's full view once the
// burst settles (the start path may have had only the event and the cgroup).
func TestWatcherReconcilesAfterAShapedStart(t *testing.T) {
	src, rec := &fakeSource{}, newRecorder()
	w := rec.watcher(src)
	w.Settle = 30 * time.Millisecond
	run(t, w)
	ev, _ := firstStream(t, src)
	ev <- containers.Event{App: "shop", ID: "c1", Action: containers.ActionStart, ContainerType: containers.TypeDeploy}
	ev <- containers.Event{App: "shop", ID: "c2", Action: containers.ActionStart, ContainerType: containers.TypeDeploy}
	waitFor(t, "the settled reconcile", func() bool { return rec.get("shop") == 1 })
	time.Sleep(100 * time.Millisecond)
	if n, shapes := rec.get("shop"), rec.shapes(); n != 1 || len(shapes) != 2 {
		t.Fatalf("%d reconciles and shapes %v: want both starts shaped at once and one reconcile after them", n, shapes)
	}
}

func TestWatcherCoalescesOtherEventsAndResyncsAfterReconnect(t *testing.T) {
	src, rec := &fakeSource{}, newRecorder()
	w := rec.watcher(src)
	w.Settle, w.Retry = 50*time.Millisecond, 10*time.Millisecond
	run(t, w)
	ev, errs := firstStream(t, src)
	// A burst for one app, one event of another, one run container (ignored).
	for _, a := range []string{containers.ActionDie, containers.ActionDestroy, containers.ActionConnect, containers.ActionRestart, containers.ActionDie} {
		ev <- containers.Event{App: "shop", ID: "c1", Action: a, ContainerType: containers.TypeDeploy}
	}
	ev <- containers.Event{App: "blog", Action: containers.ActionRestart, ContainerType: containers.TypeDeploy}
	ev <- containers.Event{App: "cron", Action: containers.ActionDie, ContainerType: containers.TypeRun}
	waitFor(t, "reconciles", func() bool { return rec.get("shop") == 1 && rec.get("blog") == 1 })
	time.Sleep(100 * time.Millisecond)
	if rec.get("shop") != 1 || rec.get("cron") != 0 || len(rec.shapes()) != 0 {
		t.Fatalf("calls %v, shapes %v: want one reconcile per app per burst, none for run containers", rec.calls, rec.shapes())
	}
	// Docker goes away: the watcher re-subscribes and resyncs everything.
	errs <- errors.New("daemon gone")
	waitFor(t, "re-subscription", func() bool { ev, _ := src.stream(1); return ev != nil })
	waitFor(t, "resync after reconnect", func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return rec.resyncs == 2 })
}

func TestWatcherReconcilesWhenAStartCannotBeShaped(t *testing.T) {
	src, rec := &fakeSource{}, newRecorder()
	rec.shapeErr = errors.New("inspect: connection reset")
	w := rec.watcher(src)
	w.Settle = 20 * time.Millisecond
	run(t, w)
	ev, _ := firstStream(t, src)
	ev <- containers.Event{App: "shop", ID: "c1", Action: containers.ActionStart, ContainerType: containers.TypeDeploy}
	waitFor(t, "the fallback reconcile", func() bool { return rec.get("shop") == 1 })
	if got := rec.shapes(); len(got) != 1 {
		t.Fatalf("Shape calls %v, want one", got)
	}
}

func TestWatcherDebouncesPropertyChangesPerApp(t *testing.T) {
	src, rec := &fakeSource{}, newRecorder()
	cfg := &fakeConfig{ch: make(chan string)}
	w := rec.watcher(src)
	w.Config = cfg
	// Docker's settle period is far away: property changes use their own.
	w.Settle, w.ConfigSettle, w.MaxDelay = time.Minute, 30*time.Millisecond, time.Minute
	run(t, w)
	firstStream(t, src)
	for i := 0; i < 5; i++ {
		cfg.ch <- "shop"
	}
	cfg.ch <- "blog"
	waitFor(t, "one reconcile per app", func() bool { return rec.get("shop") == 1 && rec.get("blog") == 1 })
	time.Sleep(100 * time.Millisecond)
	if rec.get("shop") != 1 {
		t.Fatalf("%d reconciles of shop for one burst of writes, want 1", rec.get("shop"))
	}
	cfg.ch <- "shop"
	waitFor(t, "a later write reconciles again", func() bool { return rec.get("shop") == 2 })
}

func TestWatcherMaxDelayBoundsABusyApp(t *testing.T) {
	src, rec := &fakeSource{}, newRecorder()
	w := rec.watcher(src)
	// Events every 10 ms never leave a 1 s quiet period: only MaxDelay lets
	// the reconcile through while they keep coming.
	w.Settle, w.MaxDelay = time.Second, 100*time.Millisecond
	run(t, w)
	ev, _ := firstStream(t, src)
	deadline := time.Now().Add(3 * time.Second)
	for rec.get("shop") == 0 && time.Now().Before(deadline) {
		ev <- containers.Event{App: "shop", ID: "c1", Action: containers.ActionDie, ContainerType: containers.TypeDeploy}
		time.Sleep(10 * time.Millisecond)
	}
	if rec.get("shop") == 0 {
		t.Fatal("no reconcile while events kept coming for 3s: MaxDelay not honoured")
	}
}
