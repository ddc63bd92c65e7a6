// Package dokkutest lays out a temporary Dokku installation the way Dokku
// 0.38 (or, with WithVersion, an older release) does, for tests of any
// package that reads Dokku's files. It writes bytes directly rather than
// through package dokku, so it also serves as an independent check of it.
//
//	DOKKU_ROOT/APP/                          app dir (0755)
//	DOKKU_ROOT/APP/CONTAINER.<proc>.<n>      "<64-hex id>\n"
//	DOKKU_ROOT/APP/DOCKER_OPTIONS_DEPLOY     legacy (< 0.38) docker-options
//	DOKKU_LIB_ROOT/VERSION, STABLE_VERSION   "v0.38.27" / "0.38.27"
//	DOKKU_LIB_ROOT/config/<plugin>/<app>/<key>  properties (dirs 0755, files 0600)
//	DOKKU_LIB_ROOT/config/docker-options/--global/migrated-from-files = "true" (0.38+)
//	DOKKU_LIB_ROOT/data/ps/APP/Procfile
package dokkutest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
)

// Fixture is a temporary Dokku tree.
type Fixture struct {
	T         testing.TB
	DokkuRoot string
	LibRoot   string
	Version   string // as in STABLE_VERSION, e.g. "0.38.27"
	// Env points at the tree; its system user/group are the current user's,
	// so writes never need root (as Dokku's own Go tests do).
	Env dokku.Env
}

// Option configures NewFixture.
type Option func(*options)

type options struct{ version string }

// WithVersion sets the Dokku version the tree imitates ("0.37.9" gives the
// pre-0.38 layout: no docker-options property store, legacy files instead).
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// NewFixture creates a Dokku 0.38.27 tree (by default) under t.TempDir() and
// sets DOKKU_ROOT, DOKKU_LIB_ROOT, DOKKU_SYSTEM_USER and DOKKU_SYSTEM_GROUP
// for the test (t.Setenv: not for parallel tests).
func NewFixture(t testing.TB, opts ...Option) *Fixture {
	t.Helper()
	o := options{version: "0.38.27"}
	for _, opt := range opts {
		opt(&o)
	}
	base := t.TempDir()
	f := &Fixture{
		T:         t,
		DokkuRoot: filepath.Join(base, "home", "dokku"),
		LibRoot:   filepath.Join(base, "var", "lib", "dokku"),
		Version:   o.version,
	}
	userName, groupName := currentUserGroup(t)
	f.Env = dokku.Env{DokkuRoot: f.DokkuRoot, LibRoot: f.LibRoot, SystemUser: userName, SystemGroup: groupName}
	f.mkdir(f.DokkuRoot)
	f.mkdir(filepath.Join(f.LibRoot, "config"))
	f.mkdir(filepath.Join(f.LibRoot, "data"))
	f.write(filepath.Join(f.LibRoot, "VERSION"), "v"+o.version+"\n", 0o644)
	f.write(filepath.Join(f.LibRoot, "STABLE_VERSION"), o.version+"\n", 0o644)
	f.mkdir(filepath.Join(f.LibRoot, "config", "resource"))
	if !f.legacy() {
		f.mkdir(filepath.Join(f.LibRoot, "config", "docker-options"))
		f.SetProperty("docker-options", dokku.GlobalApp, "migrated-from-files", "true")
		f.mkdir(filepath.Join(f.LibRoot, "config", "ps"))
	}
	t.Setenv("DOKKU_ROOT", f.DokkuRoot)
	t.Setenv("DOKKU_LIB_ROOT", f.LibRoot)
	t.Setenv("DOKKU_SYSTEM_USER", userName)
	t.Setenv("DOKKU_SYSTEM_GROUP", groupName)
	return f
}

func currentUserGroup(t testing.TB) (string, string) {
	u, err := user.Current()
	if err != nil {
		t.Fatalf("dokkutest: current user: %v", err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Fatalf("dokkutest: group %s: %v", u.Gid, err)
	}
	return u.Username, g.Name
}

// legacy reports whether the fixture imitates Dokku < 0.38.
func (f *Fixture) legacy() bool {
	v, err := dokku.ParseVersion(f.Version)
	return err == nil && v.Less(0, 38, 0)
}

func (f *Fixture) mkdir(dir string) {
	f.T.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.T.Fatalf("dokkutest: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		f.T.Fatalf("dokkutest: %v", err)
	}
}

func (f *Fixture) write(path, content string, mode os.FileMode) {
	f.T.Helper()
	f.mkdir(filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		f.T.Fatalf("dokkutest: %v", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		f.T.Fatalf("dokkutest: %v", err)
	}
}

// Path joins elements onto the fixture's DOKKU_LIB_ROOT.
func (f *Fixture) Path(elem ...string) string {
	return filepath.Join(append([]string{f.LibRoot}, elem...)...)
}

// AppDir is DOKKU_ROOT/APP.
func (f *Fixture) AppDir(app string) string { return filepath.Join(f.DokkuRoot, app) }

// PropertyPath is DOKKU_LIB_ROOT/config/PLUGIN/APP/KEY.
func (f *Fixture) PropertyPath(plugin, app, key string) string {
	return f.Path("config", plugin, app, key)
}

// AddApp creates an app as apps:create does, with a formation: on 0.38 the
// ps "scale" property ("web=1\nworker=0\n"), before 0.38 DOKKU_SCALE. procs
// alternate name, count: AddApp("myapp", "web", 1, "worker", 0). No procs
// leaves the app undeployed (no formation).
func (f *Fixture) AddApp(app string, procs ...any) {
	f.T.Helper()
	f.mkdir(f.AppDir(app))
	f.SetProperty("apps", app, "created-at", "1764115200")
	if len(procs) == 0 {
		return
	}
	if len(procs)%2 != 0 {
		f.T.Fatalf("dokkutest: AddApp(%s): procs must be name, count pairs", app)
	}
	var lines []string
	for i := 0; i < len(procs); i += 2 {
		lines = append(lines, fmt.Sprintf("%v=%v", procs[i], procs[i+1]))
	}
	if f.legacy() {
		f.write(filepath.Join(f.AppDir(app), "DOKKU_SCALE"), strings.Join(lines, "\n")+"\n", 0o644)
		return
	}
	f.SetPropertyList("ps", app, "scale", lines...)
}

// WriteProcfile writes the extracted Procfile (DOKKU_LIB_ROOT/data/ps/APP/Procfile).
func (f *Fixture) WriteProcfile(app, content string) {
	f.write(f.Path("data", "ps", app, "Procfile"), content, 0o644)
}

// SetProperty writes a scalar property: raw value, no newline, 0600.
func (f *Fixture) SetProperty(plugin, app, key, value string) {
	f.write(f.PropertyPath(plugin, app, key), value, 0o600)
}

// SetPropertyList writes a list property, each value followed by "\n".
func (f *Fixture) SetPropertyList(plugin, app, key string, values ...string) {
	var b strings.Builder
	for _, v := range values {
		b.WriteString(v + "\n")
	}
	f.write(f.PropertyPath(plugin, app, key), b.String(), 0o600)
}

// SetResource writes a resource value as `dokku resource:limit|reserve`
// does: key "<proc>.<kind>.<type>", proc "" = _default_.
func (f *Fixture) SetResource(app, proc string, kind dokku.ResourceKind, typ dokku.ResourceType, value string) {
	f.SetProperty(dokku.ResourcePlugin, app, dokku.ResourceKey(proc, kind, typ), value)
}

// SetDockerOptions writes the deploy-phase options of a scope as Dokku
// stores them: 0.38 → property "<proc>.deploy" (sorted by the caller, as
// Dokku does); older → DOCKER_OPTIONS_DEPLOY (proc must be ""/_default_).
func (f *Fixture) SetDockerOptions(app, proc string, lines ...string) {
	f.T.Helper()
	if proc == "" {
		proc = dokku.DefaultProcess
	}
	if f.legacy() {
		if proc != dokku.DefaultProcess {
			f.T.Fatalf("dokkutest: Dokku %s has no per-process docker-options", f.Version)
		}
		f.write(filepath.Join(f.AppDir(app), "DOCKER_OPTIONS_DEPLOY"), strings.Join(lines, "\n")+"\n", 0o644)
		return
	}
	f.SetPropertyList("docker-options", app, proc+".deploy", lines...)
}

// AddContainer writes CONTAINER.<proc>.<index> as the docker-local scheduler
// does ("<id>\n") and returns the id; an empty id gets a random 64-hex one.
func (f *Fixture) AddContainer(app, proc string, index int, id string) string {
	f.T.Helper()
	if id == "" {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			f.T.Fatalf("dokkutest: %v", err)
		}
		id = hex.EncodeToString(b)
	}
	f.write(filepath.Join(f.AppDir(app), fmt.Sprintf("CONTAINER.%s.%d", proc, index)), id+"\n", 0o644)
	return id
}

// Read returns a file's content ("" and a test failure if missing).
func (f *Fixture) Read(path string) string {
	f.T.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		f.T.Fatalf("dokkutest: %v", err)
	}
	return string(b)
}

// SetScheduler selects app's scheduler as `dokku scheduler:set APP selected
// NAME` does (app dokku.GlobalApp for `--global`).
func (f *Fixture) SetScheduler(app, name string) {
	f.SetProperty("scheduler", app, "selected", name)
}

// SetPodAnnotation writes one pod annotation byte for byte as
// `dokku scheduler-k3s:annotations:set APP KEY VALUE --resource-type pod
// [--process-type PROC]` does (PropertyMapSet: json.Marshal of the whole
// map, 0600); proc "" or _default_ is `--global`.
func (f *Fixture) SetPodAnnotation(app, proc, key, value string) {
	f.T.Helper()
	if proc == "" || proc == dokku.DefaultProcess {
		proc = "--global"
	}
	path := f.PropertyPath("scheduler-k3s", app, proc+".pod")
	m := map[string]string{}
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			f.T.Fatalf("dokkutest: %s: %v", path, err)
		}
	}
	m[key] = value
	b, err := json.Marshal(m)
	if err != nil {
		f.T.Fatalf("dokkutest: %v", err)
	}
	f.write(path, string(b), 0o600)
}
