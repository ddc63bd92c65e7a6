package dokku

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// All or nothing. A command such as `set --blkio-weight 500 --memory 1g`
// changes several files (a docker-options line, this tool's record of it, a
// resource key). An Env carrying a Journal remembers the state of every
// file before its first change and every directory it created, so that a
// failure half-way can put all of it back.

// Journal is the undo log of one change. The zero value is ready to use.
type Journal struct {
	mu    sync.Mutex
	files []savedFile
	seen  map[string]bool
	dirs  []string // created, in creation order
}

type savedFile struct {
	path, tmpDir string
	exists       bool
	content      []byte
	mode         fs.FileMode
	uid, gid     int
}

// WithJournal returns a copy of e whose writes are recorded in j.
func (e Env) WithJournal(j *Journal) Env {
	e.journal = j
	return e
}

// save records path's current state before its first change; tmpDir is
// where a restore may put its temporary file (same filesystem).
func (j *Journal) save(path, tmpDir string) error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.seen[path] {
		return nil
	}
	s := savedFile{path: path, tmpDir: tmpDir}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("save %s for undo: %w", path, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("save %s for undo: not a regular file", path)
	default:
		if s.content, err = os.ReadFile(path); err != nil {
			return fmt.Errorf("save %s for undo: %w", path, err)
		}
		s.exists, s.mode = true, fi.Mode().Perm()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			s.uid, s.gid = int(st.Uid), int(st.Gid)
		}
	}
	if j.seen == nil {
		j.seen = map[string]bool{}
	}
	j.seen[path] = true
	j.files = append(j.files, s)
	return nil
}

func (j *Journal) created(dir string) {
	if j == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.dirs = append(j.dirs, dir)
}

// Touched lists the files changed so far, in order.
func (j *Journal) Touched() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]string, len(j.files))
	for i, f := range j.files {
		out[i] = f.path
	}
	return out
}

// Rollback puts every recorded file back as it was (content, mode, owner;
// files that did not exist are removed) and removes the directories the
// change created, newest first. It carries on past a failure and returns
// every error.
func (j *Journal) Rollback(e Env) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	e.journal = nil
	var errs []error
	for _, f := range slices.Backward(j.files) {
		if !f.exists {
			if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("undo: remove %s: %w", f.path, err))
			}
			continue
		}
		if err := e.ensureDir(e.LibRoot, filepath.Dir(f.path)); err != nil && !isDir(filepath.Dir(f.path)) {
			errs = append(errs, fmt.Errorf("undo: %w", err))
			continue
		}
		keep := &ownerSpec{uid: f.uid, gid: f.gid}
		if err := e.writeFileAtomic(f.path, f.tmpDir, f.content, f.mode, keep); err != nil {
			errs = append(errs, fmt.Errorf("undo: restore %s: %w", f.path, err))
		}
	}
	for _, d := range slices.Backward(j.dirs) {
		// Only if empty: what is left in it is not ours to remove.
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
			errs = append(errs, fmt.Errorf("undo: remove %s: %w", d, err))
		}
	}
	j.files, j.dirs, j.seen = nil, nil, nil
	return errors.Join(errs...)
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// ErrInterrupted means a signal arrived while a change was being written;
// the change was undone.
var ErrInterrupted = errors.New("interrupted")

// Change runs fn as one change of Dokku's config: under the config lock
// (waiting at most lockTimeout), with every write journaled, and undone if
// fn fails or SIGINT/SIGTERM/SIGHUP arrives meanwhile (those are held back
// until the undo is done, so the process never dies half-way on them).
// fn must not call anything that waits on another lock (the root apply).
func (e Env) Change(lockTimeout time.Duration, fn func(Env) error) (err error) {
	unlock, err := e.LockConfig(lockTimeout)
	if err != nil {
		return err
	}
	defer unlock()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	j := &Journal{}
	defer func() {
		// A panic half-way is a failure too: undo, then let it go on.
		if p := recover(); p != nil {
			j.Rollback(e)
			panic(p)
		}
	}()
	err = fn(e.WithJournal(j))
	if err == nil {
		select {
		case s := <-sigs:
			err = fmt.Errorf("%w by %s", ErrInterrupted, s)
		default:
			return nil
		}
	}
	if len(j.Touched()) == 0 && len(j.dirs) == 0 {
		return err
	}
	if uerr := j.Rollback(e); uerr != nil {
		return fmt.Errorf("%w; undoing the partial change also failed, check these files: %w", err, uerr)
	}
	return fmt.Errorf("%w (what was already written is undone)", err)
}
