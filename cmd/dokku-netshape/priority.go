package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The watcher's CPU priority. Between a container's start and the watcher's
// attach the container runs unshaped, and a start is exactly when its app,
// dockerd, containerd and runc all want the CPUs: at normal priority the
// watcher waited for them (in a 2-vCPU guest, p99 113 ms against 86 ms at
// real-time priority, 50 starts each). So by default the watcher runs
// SCHED_RR at priority 1, the lowest real-time one (any other real-time task
// still comes first). Its work per event is a few milliseconds; the kernel's
// real-time throttling leaves other tasks 5 % even if it ever spun. Work
// that grows with the whole host (the resync of every app) runs at normal
// priority (lowered), so an app is never starved by it.
const (
	defaultWatchNice = -10
	watchRTPriority  = 1
)

// schedPolicy is what setSched applies to every thread.
type schedPolicy struct {
	realtime bool
	nice     int // for the normal scheduler
}

func (p schedPolicy) String() string {
	if p.realtime {
		return fmt.Sprintf("real-time (SCHED_RR %d)", watchRTPriority)
	}
	return fmt.Sprintf("normal (nice %d)", p.nice)
}

func (p schedPolicy) attr() *unix.SchedAttr {
	a := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL, Nice: int32(p.nice)}
	if p.realtime {
		a.Policy, a.Nice, a.Priority = unix.SCHED_RR, 0, watchRTPriority
	}
	return a
}

// setSched gives every thread of this process policy p. Linux schedules
// threads, not processes, and a new thread inherits its creator's policy:
// once every thread has p, so has every later one. Passes repeat until one
// finds no new thread (the Go runtime may start one meanwhile).
func setSched(p schedPolicy) error {
	attr := p.attr()
	done := map[int]bool{}
	for pass := 0; pass < 10; pass++ {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("list this process's threads: %w", err)
		}
		fresh := 0
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			fresh++
			// ESRCH: the thread ended since the listing.
			if err := unix.SchedSetAttr(tid, attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("set %s scheduling on thread %d: %w", p, tid, err)
			}
			done[tid] = true
		}
		if fresh == 0 {
			return nil
		}
	}
	return fmt.Errorf("set %s scheduling: this process kept starting threads", p)
}

// watchSched applies the watcher's policy, falling back from real-time to
// the normal scheduler at its nice value (a container, or a kernel whose
// real-time group scheduling has no budget for this cgroup, refuses it),
// and says so. It returns the policy in force (realtime false, nice as asked,
// when even the normal scheduler's nice value was refused).
func watchSched(want schedPolicy, warn func(string)) schedPolicy {
	err := setSched(want)
	if err == nil {
		return want
	}
	if want.realtime {
		normal := schedPolicy{nice: want.nice}
		if err2 := setSched(normal); err2 == nil {
			warn(fmt.Sprintf("%v; running at %s instead: a busy host may delay the shaping of a started container", err, normal))
			return normal
		}
	}
	warn(fmt.Sprintf("%v; going on at the priority it started with", err))
	return schedPolicy{nice: want.nice}
}

// lowered runs the normal scheduler at p's nice value until the returned
// function restores p; a no-op unless p is real-time.
func (p schedPolicy) lowered(warn func(string)) (restore func()) {
	if !p.realtime {
		return func() {}
	}
	if err := setSched(schedPolicy{nice: p.nice}); err != nil {
		warn(err.Error())
	}
	return func() {
		if err := setSched(p); err != nil {
			warn(err.Error())
		}
	}
}
