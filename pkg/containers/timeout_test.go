package containers

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// silentDaemon is a unix socket that accepts connections and never answers.
func silentDaemon(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "unix://" + sock
}

// Every call gives up after Timeout with a message naming the wait and the
// daemon; the event stream is not cut by it.
func TestCallsTimeOutOnASilentDaemon(t *testing.T) {
	host := silentDaemon(t)
	api, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	c := NewFromAPI(api)
	defer c.Close()
	c.Timeout = 300 * time.Millisecond
	ctx := context.Background()
	want := "Docker did not answer within 300ms on " + host
	for name, call := range map[string]func() error{
		"ping":    func() error { return c.Ping(ctx) },
		"list":    func() error { _, err := c.ListApp(ctx, "myapp"); return err },
		"inspect": func() error { _, err := c.Inspect(ctx, "abc"); return err },
		"update":  func() error { return c.UpdateResources(ctx, "abc", Resources{Memory: 64 << 20}) },
	} {
		start := time.Now()
		err := call()
		if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s took %v", name, d)
		}
	}

	// The caller's own cancellation is reported as such, not as a timeout.
	cctx, cancel := context.WithCancel(ctx)
	c.Timeout = time.Minute
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := c.ListApp(cctx, "myapp"); errors.Is(err, ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled list: %v, want context.Canceled", err)
	}

	// Subscribing to events is bounded too (the client negotiates the API version first).
	c.Timeout = 300 * time.Millisecond
	start := time.Now()
	_, errc := c.Events(ctx)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), want) {
			t.Errorf("events: %v, want %q", err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events: no error within 10s")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("events took %v", d)
	}
}

// A daemon that answers the ping and then streams nothing: the event stream
// outlives the per-call timeout and ends only when cancelled.
func TestEventStreamIsNotCutByTheCallTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/_ping") {
			w.Header().Set("Api-Version", "1.41")
			w.Write([]byte("OK"))
			return
		}
		if strings.HasSuffix(r.URL.Path, "/events") {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done() // a quiet stream
			return
		}
		http.NotFound(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	api, err := client.NewClientWithOpts(client.WithHost("unix://"+sock), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	c := NewFromAPI(api)
	defer c.Close()
	c.Timeout = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	_, errc := c.Events(ctx)
	select {
	case err := <-errc:
		t.Fatalf("event stream ended within 1s (10 call timeouts): %v", err)
	case <-time.After(time.Second):
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("event stream ended with %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("event stream did not end after cancel")
	}
}
