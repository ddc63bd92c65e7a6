package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

// threadSched is a thread's scheduling as /proc/self/task/TID/stat shows it.
type threadSched struct{ nice, rtPriority, policy int }

// threadScheds reads the scheduling of each of this process's threads
// (fields 19, 40 and 41 of /proc/self/task/TID/stat).
func threadScheds(t *testing.T) map[string]threadSched {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]threadSched{}
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/stat")
		if err != nil {
			continue // the thread ended
		}
		// The command name may hold spaces: count fields after its closing parenthesis (field 2).
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		var v [3]int
		for i, field := range []int{19, 40, 41} {
			if v[i], err = strconv.Atoi(f[field-3]); err != nil {
				t.Fatalf("stat of thread %s: %q", e.Name(), b)
			}
		}
		out[e.Name()] = threadSched{nice: v[0], rtPriority: v[1], policy: v[2]}
	}
	return out
}

// The watcher's policy reaches every thread it has, and every thread the Go
// runtime starts afterwards (each inherits its creator's): setting only the
// calling thread, as sched_setscheduler(0) and setpriority(PRIO_PROCESS, 0)
// do on Linux, would leave most of the watcher's work at the old priority.
// Real-time first, then back to the normal scheduler at a nice value, as the
// watcher does around a resync.
func TestRootSetSchedReachesEveryThread(t *testing.T) {
	nettest.RequireRoot(t)
	orig := threadScheds(t)
	var was threadSched
	for _, s := range orig {
		was = s
	}
	if was.policy != 0 {
		t.Fatalf("the test process runs under scheduling policy %d, want SCHED_NORMAL", was.policy)
	}
	t.Cleanup(func() { setSched(schedPolicy{nice: was.nice}) })
	const nice = -3
	for _, c := range []struct {
		p    schedPolicy
		want threadSched
	}{
		// SCHED_RR; the nice value a real-time thread keeps is the one it had.
		{schedPolicy{realtime: true, nice: nice}, threadSched{policy: 2, rtPriority: watchRTPriority, nice: was.nice}},
		{schedPolicy{nice: nice}, threadSched{nice: nice}},
	} {
		if err := setSched(c.p); err != nil {
			t.Fatal(err)
		}
		// More goroutines locked to their threads, while they wait, than there are threads: the
		// runtime must start new ones.
		locked := len(orig) + 4
		release := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < locked; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
				<-release
			}()
		}
		var got map[string]threadSched
		newThreads := func() int {
			n := 0
			for tid := range got {
				if _, ok := orig[tid]; !ok {
					n++
				}
			}
			return n
		}
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if got = threadScheds(t); newThreads() >= 2 || time.Now().After(end) {
				break
			}
		}
		if newThreads() < 2 {
			t.Errorf("%d threads before, %d after locking %d goroutines to threads, %d of them new", len(orig), len(got), locked, newThreads())
		}
		for tid, s := range got {
			if s != c.want {
				t.Errorf("%s: thread %s has %+v, want %+v (%d threads)", c.p, tid, s, c.want, len(got))
			}
		}
		close(release)
		wg.Wait()
	}
}

// The resync's lowering: from real-time to the normal scheduler at the
// policy's nice value, and back when restored.
func TestRootLoweredRestoresRealtime(t *testing.T) {
	nettest.RequireRoot(t)
	var was threadSched
	for _, s := range threadScheds(t) {
		was = s
	}
	t.Cleanup(func() { setSched(schedPolicy{nice: was.nice}) })
	p := schedPolicy{realtime: true, nice: -4}
	if err := setSched(p); err != nil {
		t.Fatal(err)
	}
	var warned []string
	restore := p.lowered(func(m string) { warned = append(warned, m) })
	for tid, s := range threadScheds(t) {
		if s != (threadSched{nice: -4}) {
			t.Errorf("lowered: thread %s has %+v, want the normal scheduler at nice -4", tid, s)
		}
	}
	restore()
	for tid, s := range threadScheds(t) {
		if s.policy != 2 || s.rtPriority != watchRTPriority {
			t.Errorf("restored: thread %s has %+v, want SCHED_RR %d", tid, s, watchRTPriority)
		}
	}
	if len(warned) != 0 {
		t.Errorf("warnings: %q", warned)
	}
}
