package dokku_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
)

const secret = "TOP-SECRET-CONTENT-0123456789"

// plant replaces the app's egress property with what fn makes at its path.
func plant(t *testing.T, f *dokkutest.Fixture, fn func(path string) error) string {
	t.Helper()
	p := f.PropertyPath(dokku.ResourcePlugin, "myapp", "_default_.limit.network-egress")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	if err := fn(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func secretFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Each planted property makes the read fail at once, naming the file and
// the problem and quoting none of the content.
func TestHostilePropertiesAreRefused(t *testing.T) {
	for _, c := range []struct {
		name string
		make func(t *testing.T, path string) error
		want string
	}{
		{"symlink to a secret", func(t *testing.T, p string) error { return os.Symlink(secretFile(t), p) }, "symbolic link"},
		{"symlink to /dev/zero", func(t *testing.T, p string) error { return os.Symlink("/dev/zero", p) }, "symbolic link"},
		{"fifo", func(t *testing.T, p string) error { return syscall.Mkfifo(p, 0o600) }, "FIFO"},
		{"huge file", func(t *testing.T, p string) error {
			return os.WriteFile(p, []byte(strings.Repeat(secret, 100_000)), 0o600)
		}, "larger than 16 KiB"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := dokkutest.NewFixture(t)
			f.AddApp("myapp", "web", 1)
			p := plant(t, f, func(p string) error { return c.make(t, p) })
			start := time.Now()
			_, err := f.Env.ResourceLimits("myapp", "web")
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("got %v, want an error naming %s and %q", err, p, c.want)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error quotes content: %v", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// A directory on the way that is a link (the resource plugin's config dir,
// an app dir) is refused too: the walk opens each component without
// following links.
func TestLinkedDirectoriesAreRefused(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 1)
	f.SetResource("myapp", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	evil := t.TempDir()
	if err := os.MkdirAll(filepath.Join(evil, "myapp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(evil, "myapp", "_default_.limit.network-egress"), []byte("1kbit"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := f.Path("config", "resource")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(evil, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Env.ResourceLimits("myapp", ""); err == nil || !errors.Is(err, dokku.ErrSymlink) {
		t.Errorf("linked config/resource: %v, want ErrSymlink", err)
	}

	// An app dir that is a link is no app at all.
	target := t.TempDir()
	if err := os.Symlink(target, f.AppDir("linked")); err != nil {
		t.Fatal(err)
	}
	if err := f.Env.VerifyApp("linked"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("VerifyApp(linked): %v", err)
	}
	apps, err := f.Env.Apps()
	if err != nil || strings.Join(apps, ",") != "myapp" {
		t.Errorf("Apps() = %v, %v; want only myapp", apps, err)
	}
	if _, err := f.Env.ContainerFiles("linked"); err == nil {
		t.Error("ContainerFiles of a linked app dir succeeded")
	}
}

func TestReadFileBelow(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	exact := strings.Repeat("x", dokku.MaxFileSize)
	if err := os.WriteFile(filepath.Join(root, "a", "b", "max"), []byte(exact), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := dokku.ReadFileBelow(root, filepath.Join(root, "a", "b", "max")); err != nil || string(b) != exact {
		t.Errorf("file of exactly MaxFileSize: %d bytes, %v", len(b), err)
	}
	if _, err := dokku.ReadFileBelow(root, filepath.Join(root, "a", "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	if _, err := dokku.ReadFileBelow(root, filepath.Join(root, "nodir", "x")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: %v, want ErrNotExist", err)
	}
	if _, err := dokku.ReadFileBelow(root, "/etc/hostname"); err == nil {
		t.Error("a path outside the root was read")
	}
	// The root itself may be a link (it comes from root-owned configuration).
	link := filepath.Join(t.TempDir(), "rootlink")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	if _, err := dokku.ReadFileBelow(link, filepath.Join(link, "a", "b", "max")); err != nil {
		t.Errorf("through a linked root: %v", err)
	}
}

func TestShowValue(t *testing.T) {
	for in, want := range map[string]string{
		"20mbit":                   `"20mbit"`,
		"":                         `""`,
		"a\x1b[2Jb":                "(6 bytes with unprintable characters, not shown)",
		strings.Repeat("a", 65):    "(65 bytes, not shown)",
		"root:$6$abc:19000:0:::\n": "(23 bytes with unprintable characters, not shown)",
	} {
		if got := dokku.ShowValue(in); got != want {
			t.Errorf("ShowValue(%q) = %s, want %s", in, got, want)
		}
	}
	// An invalid rate longer than 64 bytes is described, not quoted.
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 1)
	f.SetResource("myapp", "", dokku.Limit, dokku.NetworkEgress, strings.Repeat(secret, 3))
	res, err := f.Env.ResourceLimits("myapp", "")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = res.EgressRate()
	if err == nil || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "not shown") {
		t.Errorf("EgressRate of a long invalid value: %v", err)
	}
}
