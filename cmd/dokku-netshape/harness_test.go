package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// outcome is what one run() printed and returned.
type outcome struct {
	code           int
	stdout, stderr string
}

func (o outcome) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", o.code, o.stdout, o.stderr)
}

// capture runs the real entry point in process with os.Stdout and os.Stderr
// redirected: the commands print with fmt.Print*, and urfave/cli picks its
// writers up from os.Stdout/os.Stderr when it runs.
func capture(t *testing.T, argv ...string) outcome {
	t.Helper()
	oldOut, oldErr := os.Stdout, os.Stderr
	rOut, wOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	rErr, wErr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var bufOut, bufErr bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(&bufOut, rOut) }()
	go func() { defer wg.Done(); io.Copy(&bufErr, rErr) }()
	os.Stdout, os.Stderr = wOut, wErr
	var code int
	func() {
		defer func() { os.Stdout, os.Stderr = oldOut, oldErr }()
		code = run(argv)
	}()
	wOut.Close()
	wErr.Close()
	wg.Wait()
	rOut.Close()
	rErr.Close()
	return outcome{code: code, stdout: bufOut.String(), stderr: bufErr.String()}
}

// cliEnv is a Dokku fixture plus a private bpffs pin dir and lock file.
type cliEnv struct {
	*dokkutest.Fixture
	PinDir string
}

// newCLIEnv points the CLI at a fresh fixture, its own pin dir under
// /sys/fs/bpf/netshape-test-* and its own lock. Docker is reached through
// DOCKER_HOST as set by the caller (or the default socket).
func newCLIEnv(t *testing.T, opts ...dokkutest.Option) *cliEnv {
	t.Helper()
	f := dokkutest.NewFixture(t, opts...)
	e := &cliEnv{Fixture: f, PinDir: "/sys/fs/bpf/netshape-test-" + nettest.Suffix()}
	t.Setenv(envPinDir, e.PinDir)
	t.Setenv(envLock, filepath.Join(t.TempDir(), "netshape.lock"))
	t.Cleanup(func() {
		if _, err := os.Stat(e.PinDir); err != nil {
			return
		}
		if s, err := shaper.Open(shaper.Options{PinDir: e.PinDir}); err == nil {
			if bs, err := s.Budgets(); err == nil {
				for _, b := range bs {
					s.RemoveBudget(b.Name)
				}
			}
			s.Destroy()
		}
		os.RemoveAll(e.PinDir)
	})
	return e
}

func (e *cliEnv) shaper(t *testing.T) *shaper.Shaper {
	t.Helper()
	s, err := shaper.Open(shaper.Options{PinDir: e.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// shaperState describes budgets (name, rate, id), attachments and pin files.
func (e *cliEnv) shaperState(t *testing.T) string {
	t.Helper()
	s := e.shaper(t)
	defer s.Close()
	var lines []string
	bs, err := s.Budgets()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		lines = append(lines, fmt.Sprintf("budget %s rate=%d id=%d horizon=%s ce=%s", b.Name, b.Rate, b.ID, b.Horizon, b.CEThreshold))
	}
	atts, err := s.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts {
		lines = append(lines, fmt.Sprintf("attachment %s %s %s", a.Device, a.Budget, a.Mode))
	}
	filepath.WalkDir(e.PinDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			lines = append(lines, "pin "+strings.TrimPrefix(p, e.PinDir))
		}
		return nil
	})
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// treeSnapshot maps every path under root to its type, mode, owner and
// content hash.
func treeSnapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			desc += fmt.Sprintf(" %d:%d", st.Uid, st.Gid)
		}
		switch {
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			desc += " " + hex.EncodeToString(sum[:8]) + fmt.Sprintf(" %dB", len(b))
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		snap[strings.TrimPrefix(p, root)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func diffSnapshots(before, after map[string]string) []string {
	var diffs []string
	for p, b := range before {
		if a, ok := after[p]; !ok {
			diffs = append(diffs, "removed "+p)
		} else if a != b {
			diffs = append(diffs, fmt.Sprintf("changed %s: %s -> %s", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, "added "+p)
		}
	}
	slices.Sort(diffs)
	return diffs
}

// prop reads a property file of the fixture; ok false when missing.
func prop(t *testing.T, e *cliEnv, plugin, app, key string) (string, os.FileMode, bool) {
	t.Helper()
	p := e.PropertyPath(plugin, app, key)
	info, err := os.Stat(p)
	if err != nil {
		return "", 0, false
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), info.Mode().Perm(), true
}

var _ = dokku.ResourcePlugin
