package dokku

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// One writer at a time. Every read-modify-write of the properties and
// docker-options lines this tool changes (and of its own ownership records)
// runs under an exclusive flock on the directory of its own property store,
// DOKKU_LIB_ROOT/config/netshape:
//
//   - `set` and `clear` run as the dokku user, so the lock must be one that
//     user can take: that directory is created 0755 and owned by
//     DOKKU_SYSTEM_USER like every property directory (root's
//     /run/netshape.lock, the reconcile lock, is not usable by it);
//   - it is a directory, so taking the lock never leaves a stray file that
//     Dokku or this tool would read as a property or an app;
//   - the kernel drops the lock when its holder dies, whatever way it dies.
//
// It is independent of the reconcile lock: nothing may call the root `apply`
// while holding it, or one stuck apply would block every config write.

// ErrConfigLockTimeout means another process held the config lock too long.
var ErrConfigLockTimeout = errors.New("timed out waiting for the netshape config lock")

// ConfigLockPath is the directory whose flock serialises config writes.
func (e Env) ConfigLockPath() string { return e.PluginConfigDir(OwnerPlugin) }

// LockConfig takes the config lock, waiting at most timeout. The returned
// function releases it. On timeout the error names the holder when
// /proc/locks shows it.
func (e Env) LockConfig(timeout time.Duration) (unlock func(), err error) {
	dir := e.ConfigLockPath()
	if err := e.ensureDir(e.LibRoot, dir); err != nil {
		return nil, fmt.Errorf("config lock: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("config lock: open %s: %w", dir, err)
	}
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Close(fd) }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			unix.Close(fd)
			return nil, fmt.Errorf("config lock: flock %s: %w", dir, err)
		}
		if !time.Now().Before(deadline) {
			holder := lockHolder(fd)
			unix.Close(fd)
			return nil, fmt.Errorf("%w %s after %s: held by %s", ErrConfigLockTimeout, dir, timeout, holder)
		}
		// Polling, not a blocking flock: a blocked flock cannot be given up
		// after a timeout. Each holder keeps the lock for milliseconds.
		time.Sleep(min(wait, time.Until(deadline)))
		wait = min(2*wait, 10*time.Millisecond)
	}
}

// lockHolder describes the process holding a flock on fd's inode, from
// /proc/locks ("N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF", device
// numbers in hex), with its command line.
func lockHolder(fd int) string {
	const unknown = "another process (not visible in /proc/locks)"
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return unknown
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return unknown
	}
	defer f.Close()
	wantDev := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	wantIno := ":" + strconv.FormatUint(st.Ino, 10)
	pid, byInode := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" { // "->" marks waiters
			continue
		}
		switch {
		case fields[5] == wantDev:
			pid = fields[4]
		case strings.HasSuffix(fields[5], wantIno) && byInode == "":
			// Some filesystems report another device number in stat.
			byInode = fields[4]
		}
	}
	if pid == "" {
		pid = byInode
	}
	if pid == "" {
		return unknown
	}
	cmd, err := os.ReadFile("/proc/" + pid + "/cmdline")
	if err != nil || len(cmd) == 0 {
		return "pid " + pid
	}
	return fmt.Sprintf("pid %s (%s)", pid, printable(strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " "), 200))
}

// printable keeps a foreign string to one line of at most max bytes.
func printable(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}
