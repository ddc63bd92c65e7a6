//go:build vm

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/e2e/guestdocker"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// envBench switches on the long measurements that `make bench` runs (BENCH.md).
const envBench = "NETSHAPE_BENCH"

const watchApp = "watchapp"

// TestVMWatchShapesEveryStart: with `dokku-netshape watch` running and no Dokku trigger at all,
// every container start — a deploy's new container, a `docker restart` of a running one (new
// netns, new veth pair) — is shaped in both directions, and the settled reconcile that follows
// the old container's exit leaves exactly the live devices shaped. The start → shaped latency
// is reported; its p50/p99 over >= 100 starts is `make bench`'s TestVMBenchWatchStartToShaped.
func TestVMWatchShapesEveryStart(t *testing.T) {
	vmresult.RequireVM(t)
	watchStarts(t, 6, 10*time.Minute, "watch_start_to_shaped_small")
}

// TestVMBenchWatchStartToShaped is the >= 100-start latency measurement behind BENCH.md.
func TestVMBenchWatchStartToShaped(t *testing.T) {
	vmresult.RequireVM(t)
	if os.Getenv(envBench) != "1" {
		t.Skip("benchmark: run by `make bench` (" + envBench + "=1)")
	}
	// Under TCG on a shared 2-core host one start (create or restart in dockerd) took 5-50 s:
	// the run is bounded in time (NETSHAPE_BENCH_MINUTES, default 60) and reports how many
	// starts it measured; BENCH.md checks there were at least 100.
	budget := 60 * time.Minute
	if m, err := strconv.Atoi(os.Getenv("NETSHAPE_BENCH_MINUTES")); err == nil && m > 0 {
		budget = time.Duration(m) * time.Minute
	}
	watchStarts(t, 100, budget, "watch_start_to_shaped")
}

// TestVMWatchAppliesPropertyChanges: `resource:limit` fires no trigger; with the watcher
// running, a network key written in place (as Dokku does), renamed into place (as pkg/dokku
// does) or deleted (value "clear") is in force soon after: budget rate in the pinned map,
// attachment present or gone. The bound asserted is generous (10 s); the measured latency is
// reported, and `make bench` collects it over more rounds.
func TestVMWatchAppliesPropertyChanges(t *testing.T) {
	vmresult.RequireVM(t)
	watchProperties(t, 2, "watch_property_change_small")
}

// TestVMBenchWatchPropertyChange is the property-change latency behind BENCH.md.
func TestVMBenchWatchPropertyChange(t *testing.T) {
	vmresult.RequireVM(t)
	if os.Getenv(envBench) != "1" {
		t.Skip("benchmark: run by `make bench` (" + envBench + "=1)")
	}
	watchProperties(t, 10, "watch_property_change")
}

// watchRig is a guest dockerd, a Dokku tree with one app limited both ways, and a watcher.
type watchRig struct {
	t      *testing.T
	ctx    context.Context
	d      *guestdocker.Daemon
	cli    *client.Client
	img    string
	f      *dokkutest.Fixture
	pinDir string
	w      *watchProc
	n      int // containers created
}

func newWatchRig(t *testing.T, ctx context.Context, bip string) *watchRig {
	d, cli := startDocker(t, ctx, bip)
	r := &watchRig{t: t, ctx: ctx, d: d, cli: cli, img: "netshape-watch-app:latest"}
	if err := guestdocker.ImportBinary(ctx, cli, loadgenBin, r.img, `["/loadgen","serve"]`); err != nil {
		t.Fatal(err)
	}
	r.f = dokkutest.NewFixture(t)
	r.f.AddApp(watchApp, "web", 1)
	r.f.SetResource(watchApp, "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	r.f.SetResource(watchApp, "", dokku.Limit, dokku.NetworkIngress, "50mbit")
	r.pinDir = fmt.Sprintf("/sys/fs/bpf/netshape-watch-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(r.pinDir) })
	env := d.Env("NETSHAPE_PIN_DIR="+r.pinDir, "NETSHAPE_LOCK="+filepath.Join(t.TempDir(), "netshape.lock"))
	r.w = newWatchProc(t, env)
	if _, _, err := r.w.waitLine(0, 60*time.Second, func(l string) bool { return strings.Contains(l, "resync done") }); err != nil {
		t.Fatal(err)
	}
	return r
}

// create makes (not starts) a deploy container of watchApp named as Dokku names a new one.
func (r *watchRig) create() string {
	r.t.Helper()
	r.n++
	name := fmt.Sprintf("%s.web.1.upcoming-%d", watchApp, r.n)
	resp, err := r.cli.ContainerCreate(r.ctx,
		&container.Config{Image: r.img, Labels: dokkuLabels(watchApp, "web", 1), Env: []string{"PORT=5000"},
			Cmd: []string{"/loadgen", "serve", "-sink", ":5001", "-duration", "10m"}},
		&container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 10}},
		nil, nil, name)
	if err != nil {
		r.t.Fatalf("create %s: %v", name, err)
	}
	r.t.Cleanup(func() { r.cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true}) })
	return resp.ID
}

// startSample is one start: Docker's StartedAt (t0) to the moment both directions were
// attached (t1), and to the watcher's completion after the egress backstop (done).
type startSample struct {
	kind                    string
	latency                 time.Duration // t1 - t0: the unshaped window
	backstop                time.Duration // done - t0: until the backstop polices raw-socket egress too
	shapeMs, evtMs          float64       // the watcher's own: work for this start; completion after Docker's event
	inspectMs, attachFromMs float64       // ... and its parts: lock, limits and container known; the first attach began (after lock and plan)
	lockedMs                float64       // ... the reconcile lock held
	startedAt, shaped, done time.Time
}

// shapeLine: `netshape watch: APP: start of ID: N device(s) shaped (both directions by TS)
// [locked +Lms, container and limits known +Ams (cgroup|inspect), attaching from +Bms] in Xms, Yms after Docker's event (done TS)`.
var shapeLine = regexp.MustCompile(`start of (\w+): (\d+) device\(s\) shaped \(both directions by (\S+)\) \[locked \+([\d.]+)ms, container and limits known \+([\d.]+)ms \((\w+)\), attaching from \+([\d.]+)ms\] in ([\d.]+)ms, (-?[\d.]+)ms after Docker's event \(done (\S+)\)`)

// shaped waits for the watcher's line about this start of id (after line index from), checks
// the pinned registry really has both directions of the container's current veth, and
// returns the sample.
//
// t1 is the watcher's own completion timestamp, not a poll of the registry: polling under TCG
// competes for the same two vCPUs as the watcher and quantises t1 to its interval, while the
// line is stamped the moment the last attach returned. The registry check right after keeps
// the line honest. Both clocks are the guest's wall clock (dockerd's StartedAt, the
// watcher's time.Now).
func (r *watchRig) shaped(id string, from int, kind string) startSample {
	r.t.Helper()
	ci, err := r.cli.ContainerInspect(r.ctx, id)
	if err != nil {
		r.t.Fatal(err)
	}
	startedAt, err := time.Parse(time.RFC3339Nano, ci.State.StartedAt)
	if err != nil {
		r.t.Fatalf("StartedAt %q: %v", ci.State.StartedAt, err)
	}
	line, _, err := r.w.waitLine(from, 10*time.Second, func(l string) bool {
		m := shapeLine.FindStringSubmatch(l)
		return m != nil && strings.HasPrefix(id, m[1])
	})
	if err != nil {
		r.t.Fatalf("%s start of %s: %v", kind, id[:12], err)
	}
	m := shapeLine.FindStringSubmatch(line)
	// eth0 (egress), and on the host peer the egress backstop and the ingress shaper.
	if m[2] != "3" {
		r.t.Fatalf("%s start of %s: %s devices shaped, want eth0, its host peer's backstop and the host peer: %s", kind, id[:12], m[2], line)
	}
	shapedAt, err := time.Parse(time.RFC3339Nano, m[3])
	if err != nil {
		r.t.Fatal(err)
	}
	done, err := time.Parse(time.RFC3339Nano, m[10])
	if err != nil {
		r.t.Fatal(err)
	}
	b, err := inspectBox(r.ctx, r.cli, id)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := boxShaped(r.pinDir, watchApp, b); err != nil {
		r.t.Fatalf("%s start of %s: the watcher said shaped, the registry disagrees: %v", kind, b.Name, err)
	}
	if shapedAt.After(done) {
		r.t.Fatalf("%s start of %s: both directions at %s, after the watcher finished at %s", kind, b.Name, shapedAt, done)
	}
	s := startSample{kind: kind, latency: shapedAt.Sub(startedAt), backstop: done.Sub(startedAt), startedAt: startedAt, shaped: shapedAt, done: done}
	// The guest's dockerd puts containers where containers.FromStart looks: the start path
	// must not have waited for an inspect.
	if m[6] != "cgroup" {
		r.t.Errorf("%s start of %s found by %s, want from its cgroup: %s", kind, b.Name, m[6], line)
	}
	s.lockedMs, _ = strconv.ParseFloat(m[4], 64)
	s.inspectMs, _ = strconv.ParseFloat(m[5], 64)
	s.attachFromMs, _ = strconv.ParseFloat(m[7], 64)
	s.shapeMs, _ = strconv.ParseFloat(m[8], 64)
	s.evtMs, _ = strconv.ParseFloat(m[9], 64)
	return s
}

// boxShaped: the box's three attachments (eth0, its host peer's backstop and shaper), without
// checkShaped's "nothing else" count: mid-sequence the old container may still be shaped.
func boxShaped(pinDir, app string, b box) error {
	byDev, _, hostIno, err := appAttachments(pinDir, app)
	if err != nil {
		return err
	}
	return errors.Join(boxErrs(byDev, hostIno, app, b)...)
}

// watchStarts alternates a deploy (new container started, old one removed) and a restart of
// the live container, n starts in all, and after each waits for the settled reconcile the old
// container's exit causes, so every start is measured on a quiet watcher as in production.
func watchStarts(t *testing.T, n int, budget time.Duration, metric string) {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	deadline, _ := ctx.Deadline()
	r := newWatchRig(t, ctx, "10.242.0.1/24")
	var samples []startSample
	live := ""
	for i := 0; i < n; i++ {
		if time.Until(deadline) < 2*time.Minute {
			t.Errorf("time budget %s spent after %d of %d starts (reported below)", budget, i, n)
			break
		}
		from := r.w.count()
		t0 := time.Now()
		var tStarted, tChecked time.Time
		var s startSample
		if i%2 == 0 {
			id := r.create()
			if err := r.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
				t.Fatal(err)
			}
			tStarted = time.Now()
			s = r.shaped(id, from, "deploy")
			tChecked = time.Now()
			if live != "" {
				if err := r.cli.ContainerRemove(ctx, live, container.RemoveOptions{Force: true}); err != nil {
					t.Fatal(err)
				}
			}
			live = id
		} else {
			zero := 0
			if err := r.cli.ContainerRestart(ctx, live, container.StopOptions{Timeout: &zero}); err != nil {
				t.Fatal(err)
			}
			tStarted = time.Now()
			s = r.shaped(live, from, "restart")
			tChecked = time.Now()
		}
		samples = append(samples, s)
		t1 := time.Now()
		if i > 0 { // the first has no old container: nothing to reconcile
			if _, _, err := r.w.waitLine(from, 10*time.Second, func(l string) bool { return strings.Contains(l, "reconciled (container events)") }); err != nil {
				t.Fatalf("start %d: no settled reconcile after the old container went: %v", i, err)
			}
		}
		t.Logf("start %d (%s): %.1f ms unshaped (watcher: locked +%.1f ms, container and limits known +%.1f ms, attaching from +%.1f, done +%.1f); docker start %.1fs, checks %.1fs, old container removed %.1fs, settled reconcile %.1fs",
			i, s.kind, float64(s.latency)/1e6, s.lockedMs, s.inspectMs, s.attachFromMs, s.shapeMs, tStarted.Sub(t0).Seconds(), tChecked.Sub(tStarted).Seconds(), t1.Sub(tChecked).Seconds(), time.Since(t1).Seconds())
	}
	b, err := inspectBox(ctx, r.cli, live)
	if err != nil {
		t.Fatal(err)
	}
	// The last old container's exit is reconciled asynchronously (coalesced, at most 2 s after
	// it): the settled-reconcile line above can be an earlier one. Wait, bounded, for the end state.
	var shapedErr error
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if shapedErr = checkShaped(r.pinDir, watchApp, []box{b}); shapedErr == nil || time.Now().After(end) {
			break
		}
	}
	if shapedErr != nil {
		t.Fatalf("after %d starts: %v", len(samples), shapedErr)
	}
	lat := make([]float64, len(samples))
	var shape, evt, back, insp, from, locked []float64
	for i, s := range samples {
		locked = append(locked, s.lockedMs)
		insp = append(insp, s.inspectMs)
		from = append(from, s.attachFromMs)
		lat[i] = float64(s.latency) / 1e6
		back = append(back, float64(s.backstop)/1e6)
		shape = append(shape, s.shapeMs)
		evt = append(evt, s.evtMs)
	}
	fields := map[string]any{
		"starts": len(samples), "t0": "docker State.StartedAt", "t1": "both directions attached (the watcher's timestamp)",
		"backstop_p50_ms": pct(back, 50), "backstop_p99_ms": pct(back, 99),
		"p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": pct(lat, 100), "min_ms": slices.Min(lat),
		"shape_work_p50_ms": pct(shape, 50), "shape_work_p99_ms": pct(shape, 99),
		"after_event_p50_ms": pct(evt, 50), "after_event_p99_ms": pct(evt, 99),
		"locked_p50_ms": pct(locked, 50), "locked_p99_ms": pct(locked, 99),
		"found_p50_ms": pct(insp, 50), "found_p99_ms": pct(insp, 99),
		"attach_from_p50_ms": pct(from, 50), "attach_from_p99_ms": pct(from, 99),
	}
	t.Logf("parts, from the watcher's receipt of the event: locked p50 %.1f / p99 %.1f ms; container and limits known p50 %.1f / p99 %.1f ms; first attach began p50 %.1f / p99 %.1f ms",
		pct(locked, 50), pct(locked, 99), pct(insp, 50), pct(insp, 99), pct(from, 50), pct(from, 99))
	t.Logf("start → shaped over %d starts: p50 %.1f ms, p90 %.1f, p99 %.1f, max %.1f; → backstop too p50 %.1f, p99 %.1f (watcher's work p50 %.1f, p99 %.1f; after Docker's event p50 %.1f)",
		len(samples), pct(lat, 50), pct(lat, 90), pct(lat, 99), pct(lat, 100), pct(back, 50), pct(back, 99), pct(shape, 50), pct(shape, 99), pct(evt, 50))
	vmresult.Report(t, metric, fields)
}

// pct is the nearest-rank percentile p of xs (100 = max).
func pct(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// watchProperties changes watchApp's egress limit `rounds` times in each of three ways and
// waits, polling the pinned state, until each change is in force.
func watchProperties(t *testing.T, rounds int, metric string) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	r := newWatchRig(t, ctx, "10.243.0.1/24")
	from := r.w.count()
	id := r.create()
	if err := r.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	r.shaped(id, from, "deploy")
	b, err := inspectBox(ctx, r.cli, id)
	if err != nil {
		t.Fatal(err)
	}
	s, err := shaper.Open(shaper.Options{PinDir: r.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	key := dokku.ResourceKey("", dokku.Limit, dokku.NetworkEgress)
	path := r.f.PropertyPath(dokku.ResourcePlugin, watchApp, key)
	budget := watchApp + "/_default_/egress"
	// inForce: the egress budget has rate bps (0: no such budget) and eth0 is attached iff it exists.
	inForce := func(bps uint64) bool {
		bs, err := s.Budgets()
		if err != nil {
			return false
		}
		var rate uint64
		for _, x := range bs {
			if x.Name == budget {
				rate = x.Rate
			}
		}
		atts, err := s.Attachments()
		if err != nil {
			return false
		}
		attached := slices.ContainsFunc(atts, func(a shaper.Attachment) bool {
			return a.NetnsIno == b.NetnsIno && a.Ifindex == b.Pair.ContainerIf.Index && a.Budget == budget
		})
		return rate == bps && attached == (bps != 0)
	}
	lat := map[string][]float64{}
	for round := 0; round < rounds; round++ {
		rate := uint64(21+round) * 1e6
		for _, c := range []struct {
			how   string
			bps   uint64
			write func() error
		}{
			// Dokku's PropertyWrite: truncate and write in place.
			{"in_place", rate, func() error { return os.WriteFile(path, []byte(fmt.Sprintf("%dmbit", rate/1e6)), 0o600) }},
			// pkg/dokku's (and so `netshape:set`'s) writer: temp file renamed over the key.
			{"rename", rate + 5e5, func() error {
				return r.f.Env.SetResource(watchApp, "", dokku.Limit, dokku.NetworkEgress, fmt.Sprintf("%dkbit", (rate+5e5)/1e3))
			}},
			// `resource:limit --network-egress clear APP`: the key is deleted.
			{"clear", 0, func() error { return r.f.Env.SetResource(watchApp, "", dokku.Limit, dokku.NetworkEgress, "clear") }},
		} {
			t0 := time.Now()
			if err := c.write(); err != nil {
				t.Fatal(err)
			}
			for !inForce(c.bps) {
				if time.Since(t0) > 10*time.Second {
					t.Fatalf("round %d, %s write (%d bit/s): not in force after 10s; watcher log:\n%s", round, c.how, c.bps, strings.Join(r.w.lines(), "\n"))
				}
				time.Sleep(5 * time.Millisecond)
			}
			lat[c.how] = append(lat[c.how], float64(time.Since(t0))/1e6)
		}
	}
	fields := map[string]any{"rounds": rounds, "t0": "before the property write", "t1": "pinned budget rate / attachment as written (5 ms poll)"}
	var all []float64
	for how, xs := range lat {
		fields[how+"_p50_ms"], fields[how+"_max_ms"] = pct(xs, 50), pct(xs, 100)
		all = append(all, xs...)
	}
	fields["p50_ms"], fields["p99_ms"], fields["max_ms"] = pct(all, 50), pct(all, 99), pct(all, 100)
	t.Logf("property change → in force over %d changes: p50 %.0f ms, max %.0f ms (%v)", len(all), pct(all, 50), pct(all, 100), lat)
	vmresult.Report(t, metric, fields)
}

// watchProc is a running `dokku-netshape watch` and every line it printed.
type watchProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	readers *sync.WaitGroup
	mu      sync.Mutex
	all     []string
	once    sync.Once
}

// newWatchProc runs `dokku-netshape watch` as its systemd unit would, until the test ends,
// once it says it is watching.
func newWatchProc(t *testing.T, env []string) *watchProc {
	t.Helper()
	w := &watchProc{t: t, cmd: exec.Command(netshapeBin, "watch")}
	w.cmd.Env = env
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := w.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	for _, r := range []io.Reader{stdout, stderr} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				w.mu.Lock()
				w.all = append(w.all, sc.Text())
				w.mu.Unlock()
			}
		}()
	}
	w.readers = &readers
	if _, _, err := w.waitLine(0, 20*time.Second, func(l string) bool { return strings.Contains(l, "watching Docker events") }); err != nil {
		w.cmd.Process.Kill()
		w.cmd.Wait()
		t.Fatalf("watch did not start: %v", err)
	}
	t.Cleanup(w.stop)
	return w
}

func (w *watchProc) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.all)
}

func (w *watchProc) count() int { w.mu.Lock(); defer w.mu.Unlock(); return len(w.all) }

// waitLine waits for a line at index >= from that matches.
func (w *watchProc) waitLine(from int, timeout time.Duration, match func(string) bool) (string, int, error) {
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		ls := slices.Clone(w.all[min(from, len(w.all)):])
		w.mu.Unlock()
		for i, l := range ls {
			if match(l) {
				return l, from + i, nil
			}
		}
		if time.Now().After(deadline) {
			return "", 0, fmt.Errorf("no such watcher line within %s; output:\n%s", timeout, strings.Join(w.lines(), "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop sends SIGTERM (as systemd does) and expects a clean exit.
func (w *watchProc) stop() {
	w.once.Do(func() {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { w.readers.Wait(); done <- w.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				w.t.Errorf("watch exited with %v after SIGTERM", err)
			}
		case <-time.After(10 * time.Second):
			w.cmd.Process.Kill()
			<-done
			w.t.Errorf("watch ignored SIGTERM for 10s")
		}
		w.t.Logf("watch output:\n%s", strings.Join(w.lines(), "\n"))
	})
}
