package dokku_test

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
)

func lookupHome(name string) string {
	u, err := user.Lookup(name)
	if err != nil {
		return ""
	}
	return u.HomeDir
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func owner(t *testing.T, path string) (int, int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

// chownRecorder is an injectable Chown that records calls.
type chownRecorder struct{ calls []string }

func (c *chownRecorder) chown(path string, uid, gid int) error {
	c.calls = append(c.calls, filepath.Base(path)+" "+strconv.Itoa(uid)+":"+strconv.Itoa(gid))
	return nil
}

func TestPropertySetGetFormat(t *testing.T) {
	old := syscall.Umask(0o077) // modes must not depend on the caller's umask
	defer syscall.Umask(old)

	f := dokkutest.NewFixture(t)
	f.AddApp("myapp")
	p := f.Env.Properties("netshape")
	if err := p.Set("myapp", "egress", "20mbit"); err != nil {
		t.Fatal(err)
	}
	path := f.PropertyPath("netshape", "myapp", "egress")
	if got := f.Read(path); got != "20mbit" {
		t.Errorf("content = %q, want exactly 20mbit (no newline)", got)
	}
	if m := mode(t, path); m != 0o600 {
		t.Errorf("file mode %o, want 600", m)
	}
	for _, dir := range []string{filepath.Dir(path), filepath.Dir(filepath.Dir(path))} {
		if m := mode(t, dir); m != 0o755 {
			t.Errorf("dir %s mode %o, want 755", dir, m)
		}
	}
	v, ok, err := p.Get("myapp", "egress")
	if err != nil || !ok || v != "20mbit" {
		t.Errorf("Get = %q %v %v", v, ok, err)
	}
	if _, ok, err := p.Get("myapp", "missing"); ok || err != nil {
		t.Errorf("missing key: ok=%v err=%v", ok, err)
	}
	// Overwrite keeps format; value with internal newline stays raw.
	if err := p.Set("myapp", "egress", "a\nb"); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(path); got != "a\nb" {
		t.Errorf("content = %q", got)
	}
	// No temp files left anywhere in the plugin dir.
	entries, _ := os.ReadDir(f.Path("config", "netshape"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover temp file %s", e.Name())
		}
	}
	// Global values live under --global.
	if err := p.Set(dokku.GlobalApp, "horizon", "2s"); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath("netshape", "--global", "horizon")); got != "2s" {
		t.Errorf("global = %q", got)
	}
}

func TestPropertyReadsDokkuWrittenFiles(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp")
	f.SetProperty("resource", "myapp", "_default_.limit.network-egress", "20mbit")
	v, ok, err := f.Env.Properties("resource").Get("myapp", "_default_.limit.network-egress")
	if err != nil || !ok || v != "20mbit" {
		t.Fatalf("Get = %q %v %v", v, ok, err)
	}
}

func TestPropertyDeleteKeysListsCloneDestroy(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("old")
	f.AddApp("new")
	p := f.Env.Properties("netshape")
	if err := p.Delete("old", "never-set"); err != nil {
		t.Errorf("Delete missing: %v", err)
	}
	for k, v := range map[string]string{"b": "2", "a": "1", "c": "3"} {
		if err := p.Set("old", k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(f.Env.PropertyDir("netshape", "old"), "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	keys, err := p.Keys("old")
	if err != nil || !reflect.DeepEqual(keys, []string{"a", "b", "c"}) {
		t.Errorf("Keys = %v %v", keys, err)
	}
	if err := p.Delete("old", "b"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := p.Get("old", "b"); ok {
		t.Error("b still there")
	}
	if keys, _ := p.Keys("nothing-here"); len(keys) != 0 {
		t.Errorf("Keys of app without dir = %v", keys)
	}

	// Lists: one value per line, each newline-terminated, as PropertyListWrite.
	if err := p.SetList("old", "list", []string{"x", "y z"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath("netshape", "old", "list")); got != "x\ny z\n" {
		t.Errorf("list file = %q", got)
	}
	if got, _ := p.GetList("old", "list"); !reflect.DeepEqual(got, []string{"x", "y z"}) {
		t.Errorf("GetList = %q", got)
	}
	f.SetProperty("netshape", "old", "nonl", "p\nq") // last line without newline still counts
	if got, _ := p.GetList("old", "nonl"); !reflect.DeepEqual(got, []string{"p", "q"}) {
		t.Errorf("GetList(no trailing newline) = %q", got)
	}
	if err := p.SetList("old", "bad", []string{"a\nb"}); err == nil {
		t.Error("SetList accepted a value with a newline")
	}

	if err := p.Set("new", "a", "keep-overwritten"); err != nil {
		t.Fatal(err)
	}
	if err := p.Set("new", "z", "untouched"); err != nil {
		t.Fatal(err)
	}
	if err := p.Clone("old", "new"); err != nil {
		t.Fatal(err)
	}
	all, err := p.GetAll("new")
	want := map[string]string{"a": "1", "c": "3", "list": "x\ny z\n", "nonl": "p\nq", "z": "untouched"}
	if err != nil || !reflect.DeepEqual(all, want) {
		t.Errorf("after Clone: %v %v", all, err)
	}
	if err := p.Destroy("old"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.Env.PropertyDir("netshape", "old")); !os.IsNotExist(err) {
		t.Errorf("Destroy left the dir: %v", err)
	}
}

func TestPropertyRejectsBadNames(t *testing.T) {
	f := dokkutest.NewFixture(t)
	p := f.Env.Properties("netshape")
	for _, key := range []string{"", ".", "..", "a/b", "x\x00"} {
		if err := p.Set("myapp", key, "v"); err == nil {
			t.Errorf("Set key %q accepted", key)
		}
	}
	for _, app := range []string{"../etc", "App", "", "a/b"} {
		if err := p.Set(app, "k", "v"); err == nil {
			t.Errorf("Set app %q accepted", app)
		}
	}
	if err := f.Env.Properties("../x").Set("myapp", "k", "v"); !errors.Is(err, dokku.ErrInvalidPlugin) {
		t.Errorf("bad plugin: %v", err)
	}
	// A missing DOKKU_LIB_ROOT is not created.
	e := f.Env
	e.LibRoot = filepath.Join(t.TempDir(), "absent")
	if err := e.Properties("netshape").Set("myapp", "k", "v"); err == nil {
		t.Error("wrote under a missing DOKKU_LIB_ROOT")
	}
	if _, err := os.Stat(e.LibRoot); !os.IsNotExist(err) {
		t.Error("DOKKU_LIB_ROOT was created")
	}
}

func TestPropertyChownWithLookedUpIDs(t *testing.T) {
	f := dokkutest.NewFixture(t)
	rec := &chownRecorder{}
	e := f.Env
	e.SystemUser, e.SystemGroup = "dokku", "dokku"
	e.IsRoot = func() bool { return true }
	var asked []string
	e.LookupOwner = func(u, g string) (int, int, error) {
		asked = append(asked, u+":"+g)
		return 1234, 5678, nil
	}
	e.Chown = rec.chown
	if err := e.Properties("netshape").Set("newapp", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if len(asked) == 0 || asked[0] != "dokku:dokku" {
		t.Errorf("lookup asked %v", asked)
	}
	// New plugin dir, new app dir, then the file (as its temp name).
	if len(rec.calls) != 3 || rec.calls[0] != "netshape 1234:5678" || rec.calls[1] != "newapp 1234:5678" ||
		!strings.HasPrefix(rec.calls[2], ".netshape-tmp-") || !strings.HasSuffix(rec.calls[2], " 1234:5678") {
		t.Errorf("chown calls = %v", rec.calls)
	}

	// Existing dirs are not chowned again.
	rec.calls = nil
	if err := e.Properties("netshape").Set("newapp", "k2", "v"); err != nil {
		t.Fatal(err)
	}
	if len(rec.calls) != 1 {
		t.Errorf("second write chown calls = %v", rec.calls)
	}

	// Not root: no chown at all.
	rec.calls = nil
	e.IsRoot = func() bool { return false }
	if err := e.Properties("netshape").Set("newapp", "k3", "v"); err != nil || len(rec.calls) != 0 {
		t.Errorf("non-root: err=%v calls=%v", err, rec.calls)
	}

	// Root, but no dokku user: ownership left alone, write succeeds.
	e.IsRoot = func() bool { return true }
	e.LookupOwner = func(u, g string) (int, int, error) { return 0, 0, dokku.ErrNoSuchOwner }
	if err := e.Properties("netshape").Set("newapp", "k4", "v"); err != nil || len(rec.calls) != 0 {
		t.Errorf("no such owner: err=%v calls=%v", err, rec.calls)
	}

	// Any other lookup failure fails the write and leaves no file.
	e.LookupOwner = func(u, g string) (int, int, error) { return 0, 0, errors.New("nss down") }
	if err := e.Properties("netshape").Set("newapp", "k5", "v"); err == nil || !strings.Contains(err.Error(), "nss down") {
		t.Errorf("lookup failure: %v", err)
	}
	if _, err := os.Stat(f.PropertyPath("netshape", "newapp", "k5")); !os.IsNotExist(err) {
		t.Error("file written despite failure")
	}
	entries, _ := os.ReadDir(f.Path("config", "netshape"))
	for _, ent := range entries {
		if strings.HasPrefix(ent.Name(), ".") {
			t.Errorf("leftover temp %s", ent.Name())
		}
	}
}

func TestLookupOwnerOS(t *testing.T) {
	if _, _, err := dokku.LookupOwnerOS("no-such-user-netshape", "no-such-group"); !errors.Is(err, dokku.ErrNoSuchOwner) {
		t.Errorf("missing user: %v", err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	uid, gid, err := dokku.LookupOwnerOS(u.Username, "no-such-group-netshape")
	if err != nil || strconv.Itoa(uid) != u.Uid || strconv.Itoa(gid) != u.Gid {
		t.Errorf("missing group falls back to primary gid: %d %d %v", uid, gid, err)
	}
}

// TestRootChownToSystemUser writes as root with DOKKU_SYSTEM_USER=nobody and
// checks the real owner of dirs and file. Needs root (fails under CI=true without).
func TestRootChownToSystemUser(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody: %v", err)
	}
	f := dokkutest.NewFixture(t)
	e := f.Env
	e.SystemUser, e.SystemGroup = "nobody", "no-such-group-netshape" // group falls back to nobody's primary
	if err := e.Properties("netshape").Set("myapp", "k", "v"); err != nil {
		t.Fatal(err)
	}
	wantUID, _ := strconv.Atoi(nobody.Uid)
	wantGID, _ := strconv.Atoi(nobody.Gid)
	for _, p := range []string{f.PropertyPath("netshape", "myapp", "k"), f.Env.PropertyDir("netshape", "myapp"), f.Path("config", "netshape")} {
		if uid, gid := owner(t, p); uid != wantUID || gid != wantGID {
			t.Errorf("%s owned %d:%d, want %d:%d", p, uid, gid, wantUID, wantGID)
		}
	}
	// The pre-existing config dir keeps its owner.
	if uid, _ := owner(t, f.Path("config")); uid != 0 {
		t.Errorf("config dir chowned to %d", uid)
	}
}
