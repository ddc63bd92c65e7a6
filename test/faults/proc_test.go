//go:build vm

package faults

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// lineLog collects a process's output line by line.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := strings.IndexByte(string(l.partial), '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *lineLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string{}, l.lines...)
}

func (l *lineLog) String() string { return strings.Join(l.snapshot(), "\n") }

// waitLine waits until a line from index from on matches re; it returns the line and the
// index after it.
func (l *lineLog) waitLine(re *regexp.Regexp, from int, timeout time.Duration) (string, int, bool) {
	deadline := time.Now().Add(timeout)
	for {
		lines := l.snapshot()
		for i := from; i < len(lines); i++ {
			if re.MatchString(lines[i]) {
				return lines[i], i + 1, true
			}
		}
		if time.Now().After(deadline) {
			return "", len(lines), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// proc is a dokku-netshape process the test starts and may kill.
type proc struct {
	r    *rig
	cmd  *exec.Cmd
	log  *lineLog
	done chan struct{}
	err  error // set when done is closed
}

func (r *rig) start(args ...string) *proc {
	r.t.Helper()
	p := &proc{r: r, cmd: exec.Command(netshapeBin, args...), log: &lineLog{}, done: make(chan struct{})}
	p.cmd.Env = r.env()
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		r.t.Fatalf("start dokku-netshape %s: %v", strings.Join(args, " "), err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	r.t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit by itself and returns its exit code.
func (p *proc) wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return -1, fmt.Errorf("still running after %s:\n%s", timeout, p.log)
	}
	if p.cmd.ProcessState == nil {
		return -1, p.err
	}
	return p.cmd.ProcessState.ExitCode(), nil
}

// kill sends SIGKILL and waits until the process is gone.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

var watchReady = regexp.MustCompile(`watching Docker events`)

// startWatch runs `dokku-netshape watch` and waits until it says it watches.
func (r *rig) startWatch() *proc {
	r.t.Helper()
	p := r.start("watch")
	if _, _, ok := p.log.waitLine(watchReady, 0, 30*time.Second); !ok {
		p.kill()
		r.t.Fatalf("watch did not start within 30s:\n%s", p.log)
	}
	return p
}

// stop ends a watcher with SIGTERM, as systemd would, and fails the test if it does not exit cleanly.
func (p *proc) stop() {
	p.r.t.Helper()
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			p.r.t.Errorf("watch exited with %v after SIGTERM", p.err)
		}
	case <-time.After(15 * time.Second):
		p.kill()
		p.r.t.Errorf("watch ignored SIGTERM for 15s")
	}
}

var statsLine = regexp.MustCompile(`netshape watch: stats goroutines=(\d+) fds=(\d+)`)

// watchStats asks a running watcher for its goroutine and descriptor counts (SIGUSR1, see
// cmd/dokku-netshape/watchstats.go) and also counts /proc/PID/fd from outside.
type watchStats struct{ Goroutines, FDs, ProcFDs int }

func (p *proc) stats() (watchStats, error) {
	from := len(p.log.snapshot())
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return watchStats{}, fmt.Errorf("signal watcher: %w", err)
	}
	line, _, ok := p.log.waitLine(statsLine, from, 10*time.Second)
	if !ok {
		return watchStats{}, fmt.Errorf("watcher printed no stats line within 10s of SIGUSR1")
	}
	m := statsLine.FindStringSubmatch(line)
	var s watchStats
	s.Goroutines, _ = strconv.Atoi(m[1])
	s.FDs, _ = strconv.Atoi(m[2])
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		return s, fmt.Errorf("read watcher fds: %w", err)
	}
	s.ProcFDs = len(ents)
	return s, nil
}

// quietStats is the smallest of a few readings taken apart: a reading that lands inside a
// reconcile sees its transient sockets, the idle floor is what can leak.
func (p *proc) quietStats(n int, gap time.Duration) (watchStats, error) {
	var best watchStats
	for i := 0; i < n; i++ {
		s, err := p.stats()
		if err != nil {
			return s, err
		}
		if i == 0 || s.Goroutines < best.Goroutines {
			best.Goroutines = s.Goroutines
		}
		if i == 0 || s.FDs < best.FDs {
			best.FDs = s.FDs
		}
		if i == 0 || s.ProcFDs < best.ProcFDs {
			best.ProcFDs = s.ProcFDs
		}
		time.Sleep(gap)
	}
	return best, nil
}
