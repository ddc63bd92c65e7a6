package watch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
)

// ResourceFiles follows the resource plugin's property files,
// DOKKU_LIB_ROOT/config/resource/APP/KEY, with inotify and reports every app
// whose network limit keys were written, renamed into place or deleted.
// `dokku resource:limit` fires no trigger, so this is how such a change
// takes effect without a deploy.
//
// It copes with the directory (or an app's) appearing later, with Dokku's
// in-place writes and with atomic renames (pkg/dokku's own writer), with an
// app directory being removed, and with inotify queue overflows (every app
// is then reported). When inotify cannot be used at all (instance or watch
// limits) it says so loudly, keeps trying, and meanwhile reports nothing:
// limits then change at the next deploy or `apply`, as without a watcher.
type ResourceFiles struct {
	Dir   string        // DOKKU_LIB_ROOT/config/resource
	Log   io.Writer     // failures to follow, loudly
	Retry time.Duration // try again after inotify failed; default 30s

	newWatcher func() (*fsnotify.Watcher, error) // tests simulate inotify limits
}

// NewResourceFiles follows env's resource plugin properties.
func NewResourceFiles(env dokku.Env, log io.Writer) *ResourceFiles {
	return &ResourceFiles{Dir: env.PluginConfigDir(dokku.ResourcePlugin), Log: log}
}

// Changes arms the watches before it returns (so a caller that reads the
// configuration afterwards misses nothing) and then streams app names until
// ctx ends. Names are coalesced while the caller is busy.
func (r *ResourceFiles) Changes(ctx context.Context) <-chan string {
	f := &follower{ResourceFiles: r, dir: filepath.Clean(r.Dir), apps: map[string]bool{},
		ancestors: map[string]bool{}, queued: map[string]bool{}}
	if f.Retry <= 0 {
		f.Retry = 30 * time.Second
	}
	if f.newWatcher == nil {
		f.newWatcher = fsnotify.NewWatcher
	}
	f.setup(false)
	out := make(chan string)
	go f.loop(ctx, out)
	return out
}

type follower struct {
	*ResourceFiles
	dir       string
	fsw       *fsnotify.Watcher // nil while inotify is unavailable
	dirArmed  bool              // dir itself is watched
	apps      map[string]bool   // app dirs watched
	ancestors map[string]bool   // watched while dir does not exist
	queue     []string
	queued    map[string]bool
	retry     *time.Timer
	failing   bool // a failure was logged and not yet recovered from
}

func (f *follower) loop(ctx context.Context, out chan<- string) {
	defer func() {
		if f.fsw != nil {
			f.fsw.Close()
		}
		if f.retry != nil {
			f.retry.Stop()
		}
	}()
	for {
		var send chan<- string
		var next string
		if len(f.queue) > 0 {
			send, next = out, f.queue[0]
		}
		var events <-chan fsnotify.Event
		var errs <-chan error
		if f.fsw != nil {
			events, errs = f.fsw.Events, f.fsw.Errors
		}
		var retry <-chan time.Time
		if f.retry != nil {
			retry = f.retry.C
		}
		select {
		case <-ctx.Done():
			return
		case send <- next:
			f.queue = f.queue[1:]
			delete(f.queued, next)
		case ev, ok := <-events:
			if !ok {
				f.lost(errors.New("inotify watcher closed"))
				continue
			}
			f.handle(ev)
		case err, ok := <-errs:
			if !ok {
				f.lost(errors.New("inotify watcher closed"))
				continue
			}
			f.handleErr(err)
		case <-retry:
			f.retry = nil
			f.setup(true)
		}
	}
}

// setup creates the inotify instance if needed and arms the watches.
func (f *follower) setup(report bool) {
	if f.fsw == nil {
		w, err := f.newWatcher()
		if err != nil {
			f.fail("", fmt.Errorf("create inotify instance: %w", err))
			return
		}
		f.fsw = w
	}
	f.arm(report)
}

// arm watches dir and every app dir in it, or, while dir does not exist,
// its nearest existing ancestor (to see it appear). report enqueues apps
// found with network keys: changes made before the watch existed.
func (f *follower) arm(report bool) {
	if f.fsw == nil {
		return
	}
	if st, err := os.Stat(f.dir); err != nil || !st.IsDir() {
		f.dirArmed = false
		for p := filepath.Dir(f.dir); ; p = filepath.Dir(p) {
			if st, err := os.Stat(p); err == nil && st.IsDir() {
				if !f.ancestors[p] {
					if err := f.fsw.Add(p); err != nil {
						f.fail(p, err)
						return
					}
					f.ancestors[p] = true
				}
				break
			}
			if p == filepath.Dir(p) {
				break
			}
		}
		f.recovered()
		return
	}
	if !f.dirArmed {
		if err := f.fsw.Add(f.dir); err != nil {
			f.fail(f.dir, err)
			return
		}
		f.dirArmed = true
		for p := range f.ancestors {
			_ = f.fsw.Remove(p) // may be gone already
			delete(f.ancestors, p)
		}
	}
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		f.fail(f.dir, err)
		return
	}
	ok := true
	for _, e := range entries {
		if e.IsDir() && !f.apps[e.Name()] && dokku.ValidateAppName(e.Name()) == nil {
			ok = f.watchApp(e.Name(), report) && ok
		}
	}
	if ok {
		f.recovered()
	}
}

func (f *follower) watchApp(app string, report bool) bool {
	dir := filepath.Join(f.dir, app)
	if err := f.fsw.Add(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			f.enqueue(app) // removed again already
			return true
		}
		f.fail(dir, err)
		return false
	}
	f.apps[app] = true
	if report && hasNetworkKey(dir) {
		f.enqueue(app)
	}
	return true
}

func hasNetworkKey(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true // cannot tell: let the reconcile read it
	}
	for _, e := range entries {
		if !e.IsDir() && dokku.IsNetworkLimitKey(e.Name()) {
			return true
		}
	}
	return false
}

func (f *follower) handle(ev fsnotify.Event) {
	name := filepath.Clean(ev.Name)
	parent := filepath.Dir(name)
	gone := ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)
	switch {
	case name == f.dir && gone:
		// The whole store went: every app's network keys with it.
		for app := range f.apps {
			f.enqueue(app)
		}
		f.apps = map[string]bool{}
		f.dirArmed = false
		_ = f.fsw.Remove(f.dir)
		f.arm(true)
	case name == f.dir || strings.HasPrefix(f.dir, name+string(filepath.Separator)):
		// Something on the way to dir appeared or went (or dir itself
		// appeared). inotify drops the watch of a removed directory.
		if gone {
			delete(f.ancestors, name)
		}
		f.arm(true)
	case parent == f.dir:
		app := filepath.Base(name)
		if dokku.ValidateAppName(app) != nil {
			return // our own temp files, --global, strays
		}
		switch {
		case gone:
			if f.apps[app] {
				delete(f.apps, app)
				_ = f.fsw.Remove(name)
				f.enqueue(app)
			}
		case ev.Has(fsnotify.Create):
			if st, err := os.Stat(name); err == nil && st.IsDir() && !f.apps[app] {
				f.watchApp(app, true)
			}
		}
	case filepath.Dir(parent) == f.dir:
		app := filepath.Base(parent)
		if f.apps[app] && dokku.IsNetworkLimitKey(filepath.Base(name)) &&
			ev.Op&(fsnotify.Create|fsnotify.Write|fsnotify.Remove|fsnotify.Rename) != 0 {
			f.enqueue(app)
		}
	}
}

func (f *follower) handleErr(err error) {
	if errors.Is(err, fsnotify.ErrEventOverflow) {
		// Events were lost: anything may have changed.
		f.logf("netshape watch: inotify queue overflowed; re-reading every app's network limits")
		for app := range f.apps {
			f.enqueue(app)
		}
		f.arm(true)
		return
	}
	f.logf("netshape watch: following %s: %v", f.dir, err)
}

// lost drops a watcher that stopped working and starts over later.
func (f *follower) lost(err error) {
	if f.fsw != nil {
		f.fsw.Close()
	}
	f.fsw, f.dirArmed = nil, false
	f.apps, f.ancestors = map[string]bool{}, map[string]bool{}
	f.fail("", err)
}

// fail says loudly that changes are not followed, and tries again later.
func (f *follower) fail(path string, err error) {
	where := f.dir
	if path != "" && path != f.dir {
		where = path
	}
	if !f.failing {
		f.logf("netshape watch: NOT FOLLOWING resource:limit CHANGES under %s: %v (inotify limits: fs.inotify.max_user_instances / max_user_watches); "+
			"network limits there change at the next deploy or `dokku netshape:apply APP`; retrying every %s", where, err, f.Retry)
	}
	f.failing = true
	if f.retry == nil {
		f.retry = time.NewTimer(f.Retry)
	}
}

func (f *follower) recovered() {
	if f.failing {
		f.logf("netshape watch: following resource:limit changes under %s again", f.dir)
		f.failing = false
		// Whatever changed meanwhile.
		if entries, err := os.ReadDir(f.dir); err == nil {
			for _, e := range entries {
				if e.IsDir() && dokku.ValidateAppName(e.Name()) == nil {
					f.enqueue(e.Name())
				}
			}
		}
	}
}

func (f *follower) enqueue(app string) {
	if !f.queued[app] {
		f.queued[app] = true
		f.queue = append(f.queue, app)
	}
}

func (f *follower) logf(format string, args ...any) {
	if f.Log != nil {
		fmt.Fprintf(f.Log, format+"\n", args...)
	}
}
