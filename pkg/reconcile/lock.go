package reconcile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockPath serialises reconciles across processes: the CLI, a
// post-deploy trigger and the watcher may all run at once.
const DefaultLockPath = "/run/netshape.lock"

// DefaultLockTimeout is how long Lock waits for another holder. A reconcile
// is bounded (every Docker call has its own timeout), so a longer wait
// means something is stuck: better a clear error than a deploy that hangs.
const DefaultLockTimeout = 2 * time.Minute

// lockPollMax is the longest step between two tries of a held lock.
const lockPollMax = 5 * time.Millisecond

// ErrLockTimeout means the lock stayed held for the whole wait.
var ErrLockTimeout = errors.New("timed out waiting for the reconcile lock")

// Lock takes an exclusive lock on path, waiting up to DefaultLockTimeout.
// The returned function releases it. The kernel drops the lock if the
// process dies.
func Lock(path string) (func(), error) { return LockWait(path, DefaultLockTimeout) }

// LockWait is Lock with a chosen wait. The holder writes its PID and
// command line into the file, so that a waiter that gives up can say who
// holds it.
func LockWait(path string, wait time.Duration) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	deadline := time.Now().Add(wait)
	// Polled, so the wait stays bounded; in short steps, because a waiter
	// that sleeps past the holder's release is time a started container
	// runs unshaped (a 200 ms step cost the watcher's start path up to
	// 150 ms behind a whole-app reconcile). A flock call is cheap.
	for delay := time.Millisecond; ; delay = min(2*delay, lockPollMax) {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			holder := readHolder(f)
			f.Close()
			return nil, fmt.Errorf("%w %s after %s: held by %s", ErrLockTimeout, path, wait, holder)
		}
		time.Sleep(delay)
	}
	// Best effort: the lock works without the note.
	if f.Truncate(0) == nil {
		f.WriteAt([]byte(holderNote()), 0)
	}
	return func() { f.Close() }, nil
}

func holderNote() string {
	cmd := strings.Join(os.Args, " ")
	if len(cmd) > 200 {
		cmd = cmd[:200] + "..."
	}
	return fmt.Sprintf("pid %d: %s\n", os.Getpid(), cmd)
}

// readHolder returns the holder's note, printable and short, or says why not.
func readHolder(f *os.File) string {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 512))
	if err != nil || len(b) == 0 {
		return "an unknown process (no holder note)"
	}
	s := strings.TrimSpace(string(b))
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return "an unknown process (unreadable holder note)"
		}
	}
	return s
}
