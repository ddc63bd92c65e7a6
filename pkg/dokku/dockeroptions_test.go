package dokku_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
)

func TestDockerOptionsStorageDetection(t *testing.T) {
	f := dokkutest.NewFixture(t)
	st, why, err := f.Env.DockerOptionsStorage()
	if err != nil || st != dokku.StorageProperties || !strings.Contains(why, "0.38.27") {
		t.Errorf("0.38 fixture: %q %q %v", st, why, err)
	}

	old := dokkutest.NewFixture(t, dokkutest.WithVersion("0.37.9"))
	st, why, err = old.Env.DockerOptionsStorage()
	if err != nil || st != dokku.StorageLegacyFile || !strings.Contains(why, "older than 0.38.0") {
		t.Errorf("0.37 fixture: %q %q %v", st, why, err)
	}
	// The version wins over leftovers on disk (a downgrade keeps the marker).
	old.SetProperty("docker-options", "--global", "migrated-from-files", "true")
	if st, _, _ := old.Env.DockerOptionsStorage(); st != dokku.StorageLegacyFile {
		t.Errorf("0.37 with marker: %q", st)
	}

	// No version file: the marker, then the directory decide.
	for _, name := range []string{"VERSION", "STABLE_VERSION"} {
		os.Remove(f.Path(name))
	}
	st, why, err = f.Env.DockerOptionsStorage()
	if err != nil || st != dokku.StorageProperties || !strings.Contains(why, "migrated-from-files") {
		t.Errorf("marker: %q %q %v", st, why, err)
	}
	os.Remove(f.PropertyPath("docker-options", "--global", "migrated-from-files"))
	st, why, err = f.Env.DockerOptionsStorage()
	if err != nil || st != dokku.StorageProperties || !strings.Contains(why, "exists") {
		t.Errorf("dir: %q %q %v", st, why, err)
	}
	os.RemoveAll(f.Path("config", "docker-options"))
	if _, _, err := f.Env.DockerOptionsStorage(); !errors.Is(err, dokku.ErrUnknownOptionStorage) {
		t.Errorf("nothing: %v", err)
	}
}

func TestCanonicalOwnedOption(t *testing.T) {
	ok := map[string]string{
		"--blkio-weight=500":                      "--blkio-weight=500",
		"--blkio-weight 500":                      "--blkio-weight=500",
		"--device-read-bps /dev/sda:10mb":         "--device-read-bps=/dev/sda:10mb",
		"--device-write-iops=/dev/vdb:100":        "--device-write-iops=/dev/vdb:100",
		"'--device-read-iops=/dev/sda:5'":         "--device-read-iops=/dev/sda:5",
		`--device-write-bps "/dev/my disk:1mb"`:   `'--device-write-bps=/dev/my disk:1mb'`,
		`--device-write-bps=/dev/it's:1mb`:        "", // unterminated quote
		"--memory=512m":                           "",
		"--blkio-weight":                          "",
		"--blkio-weight=":                         "",
		"--blkio-weight=500 --memory=1g":          "",
		"-v /a:/b":                                "",
		"--blkio-weight-device=/dev/sda:10":       "",
		"":                                        "",
		"--device-read-bps /dev/sda:1mb extra":    "",
		`--device-read-bps=/dev/x\ y:1mb`:         `'--device-read-bps=/dev/x y:1mb'`,
		"--device-read-bps='/dev/disk/by-id/x':1": "--device-read-bps=/dev/disk/by-id/x:1",
	}
	for in, want := range ok {
		got, err := dokku.CanonicalOwnedOption(in)
		if want == "" {
			if !errors.Is(err, dokku.ErrNotOwnedOption) {
				t.Errorf("CanonicalOwnedOption(%q) = %q, %v; want ErrNotOwnedOption", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("CanonicalOwnedOption(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// operatorLines are what an operator might have in _default_.deploy,
// including an odd-but-valid line, a line with quotes, and a multi-flag line.
var operatorLines = []string{
	"--restart=on-failure:10",
	"-v /var/log/app:/app/log",
	"'--label=traefik.http.routers.app.rule=Host(`app`)'",
	"--ulimit nofile=1024:2048",
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	for i := range c {
		for j := i + 1; j < len(c); j++ {
			if c[j] < c[i] {
				c[i], c[j] = c[j], c[i]
			}
		}
	}
	return c
}

func TestDockerOptionsPropertiesEdits(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 1, "worker", 1)
	f.SetDockerOptions("myapp", "", sortedCopy(operatorLines)...)
	f.SetDockerOptions("myapp", "worker", "--cpus=2")
	d := f.Env.DockerOptions()
	path := f.PropertyPath("docker-options", "myapp", "_default_.deploy")

	// Every stored line must be either an operator line or one of ours.
	check := func(step string, ours ...string) {
		t.Helper()
		want := sortedCopy(append(append([]string(nil), operatorLines...), ours...))
		wantFile := strings.Join(want, "\n") + "\n"
		if got := f.Read(path); got != wantFile {
			t.Errorf("%s: file\n%s\nwant\n%s", step, got, wantFile)
		}
		if m := mode(t, path); m != 0o600 {
			t.Errorf("%s: mode %o", step, m)
		}
		owned, err := d.Owned("myapp", "")
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if !reflect.DeepEqual(sortedCopy(owned.Owned), sortedCopy(ours)) && !(len(owned.Owned) == 0 && len(ours) == 0) {
			t.Errorf("%s: Owned = %q, want %q", step, owned.Owned, ours)
		}
		if len(owned.Foreign) != 0 {
			t.Errorf("%s: Foreign = %q", step, owned.Foreign)
		}
		// Worker scope is never touched by _default_ edits.
		if got := f.Read(f.PropertyPath("docker-options", "myapp", "worker.deploy")); got != "--cpus=2\n" {
			t.Errorf("%s: worker.deploy = %q", step, got)
		}
	}

	if err := d.SetOwned("myapp", "", []string{"--blkio-weight=500", "--device-read-bps /dev/sda:10mb"}); err != nil {
		t.Fatal(err)
	}
	check("add", "--blkio-weight=500", "--device-read-bps=/dev/sda:10mb")
	rec := f.PropertyPath("netshape", "myapp", "owned-docker-options._default_.deploy")
	if got := f.Read(rec); got != "--blkio-weight=500\n--device-read-bps=/dev/sda:10mb\n" {
		t.Errorf("record = %q", got)
	}

	if err := d.SetOwned("myapp", "", []string{"--blkio-weight=300"}); err != nil {
		t.Fatal(err)
	}
	check("replace", "--blkio-weight=300")
	if got := f.Read(rec); got != "--blkio-weight=300\n" {
		t.Errorf("record after replace = %q", got)
	}

	// Idempotent: same set → the file is not rewritten.
	before, _ := os.Stat(path)
	if err := d.SetOwned("myapp", "", []string{"--blkio-weight 300"}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(path)
	if !os.SameFile(before, after) {
		t.Error("unchanged set rewrote the file")
	}

	// The operator edits in between (Dokku re-sorts); our line stays ours.
	f.SetDockerOptions("myapp", "", sortedCopy(append(append([]string(nil), operatorLines...), "--blkio-weight=300", "--shm-size=256m"))...)
	operatorLines = append(operatorLines, "--shm-size=256m")
	defer func() { operatorLines = operatorLines[:len(operatorLines)-1] }()
	check("operator edit", "--blkio-weight=300")

	if err := d.ClearOwned("myapp", ""); err != nil {
		t.Fatal(err)
	}
	check("clear")
	if _, err := os.Stat(rec); !os.IsNotExist(err) {
		t.Errorf("record kept after clear: %v", err)
	}

	// Per-process scope.
	if err := d.SetOwned("myapp", "worker", []string{"--device-write-iops=/dev/sda:100"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath("docker-options", "myapp", "worker.deploy")); got != "--cpus=2\n--device-write-iops=/dev/sda:100\n" {
		t.Errorf("worker.deploy = %q", got)
	}
	lines, err := d.Lines("myapp", "worker")
	if err != nil || !reflect.DeepEqual(lines, []string{"--cpus=2", "--device-write-iops=/dev/sda:100"}) {
		t.Errorf("Lines(worker) = %q %v", lines, err)
	}

	// A scope without a file is created only when there is something to write.
	if err := d.ClearOwned("myapp", "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.PropertyPath("docker-options", "myapp", "web.deploy")); !os.IsNotExist(err) {
		t.Error("clearing created web.deploy")
	}
	if err := d.SetOwned("myapp", "web", []string{"--blkio-weight=100"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath("docker-options", "myapp", "web.deploy")); got != "--blkio-weight=100\n" {
		t.Errorf("web.deploy = %q", got)
	}
}

func TestDockerOptionsForeignLinesNeverTouched(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 1)
	operator := []string{"--blkio-weight=700", "--restart=on-failure:10", "-v /a:/b --device-read-bps=/dev/sdb:1mb"}
	f.SetDockerOptions("myapp", "", operator...)
	path := f.PropertyPath("docker-options", "myapp", "_default_.deploy")
	original := f.Read(path)
	d := f.Env.DockerOptions()

	owned, err := d.Owned("myapp", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(owned.Owned) != 0 || !reflect.DeepEqual(owned.Foreign, []string{"--blkio-weight=700", "-v /a:/b --device-read-bps=/dev/sdb:1mb"}) {
		t.Errorf("Owned = %+v", owned)
	}

	// Same flag as an operator line: conflict, nothing written.
	err = d.SetOwned("myapp", "", []string{"--blkio-weight=500"})
	var fe *dokku.ForeignOptionsError
	if !errors.Is(err, dokku.ErrForeignOption) || !errors.As(err, &fe) || !reflect.DeepEqual(fe.Lines, []string{"--blkio-weight=700"}) {
		t.Fatalf("conflict: %v", err)
	}
	if f.Read(path) != original {
		t.Error("file changed on conflict")
	}
	if _, err := os.Stat(f.PropertyPath("netshape", "myapp", "owned-docker-options._default_.deploy")); !os.IsNotExist(err) {
		t.Error("record written on conflict")
	}
	// The flag inside the operator's multi-flag line conflicts too.
	if err := d.SetOwned("myapp", "", []string{"--device-read-bps=/dev/sda:5mb"}); !errors.Is(err, dokku.ErrForeignOption) {
		t.Errorf("multi-flag conflict: %v", err)
	}

	// A different flag is fine and leaves the operator's lines as they were.
	if err := d.SetOwned("myapp", "", []string{"--device-write-iops=/dev/sda:50"}); err != nil {
		t.Fatal(err)
	}
	want := sortedCopy(append(append([]string(nil), operator...), "--device-write-iops=/dev/sda:50"))
	if got := f.Read(path); got != strings.Join(want, "\n")+"\n" {
		t.Errorf("file = %q", got)
	}
	// Clearing ours never removes the operator's blkio line.
	if err := d.ClearOwned("myapp", ""); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(path); got != strings.Join(sortedCopy(operator), "\n")+"\n" {
		t.Errorf("after clear = %q", got)
	}

	// Not an owned flag: refused before anything is read or written.
	if err := d.SetOwned("myapp", "", []string{"--memory=1g"}); !errors.Is(err, dokku.ErrNotOwnedOption) {
		t.Errorf("foreign flag accepted: %v", err)
	}
	if err := d.SetOwned("nope", "", nil); !errors.Is(err, dokku.ErrAppNotFound) {
		t.Errorf("missing app: %v", err)
	}
}

func TestDockerOptionsCrashBetweenWrites(t *testing.T) {
	// Simulate a crash after the record was widened but before the options
	// file was written: the record lists a line that is not in the file.
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp")
	f.SetDockerOptions("myapp", "", "--restart=on-failure:10")
	f.SetPropertyList("netshape", "myapp", "owned-docker-options._default_.deploy", "--blkio-weight=100", "--blkio-weight=200")
	d := f.Env.DockerOptions()
	if err := d.SetOwned("myapp", "", []string{"--blkio-weight=200"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath("docker-options", "myapp", "_default_.deploy")); got != "--blkio-weight=200\n--restart=on-failure:10\n" {
		t.Errorf("file = %q", got)
	}
	if got := f.Read(f.PropertyPath("netshape", "myapp", "owned-docker-options._default_.deploy")); got != "--blkio-weight=200\n" {
		t.Errorf("record = %q", got)
	}
}

func TestDockerOptionsLegacyFile(t *testing.T) {
	f := dokkutest.NewFixture(t, dokkutest.WithVersion("0.37.9"))
	f.AddApp("myapp", "web", 1)
	path := filepath.Join(f.AppDir("myapp"), "DOCKER_OPTIONS_DEPLOY")
	original := "# operator's notes\n-v /var/log/app:/app/log\n\n--restart=on-failure:10\n# --blkio-weight=10 (commented out by hand)\n"
	if err := os.WriteFile(path, []byte(original), 0o640); err != nil {
		t.Fatal(err)
	}
	d := f.Env.DockerOptions()
	if err := d.SetOwned("myapp", "", []string{"--blkio-weight=500", "--device-read-bps=/dev/sda:10mb"}); err != nil {
		t.Fatal(err)
	}
	want := original + "--blkio-weight=500\n--device-read-bps=/dev/sda:10mb\n"
	if got := f.Read(path); got != want {
		t.Errorf("after add:\n%q\nwant\n%q", got, want)
	}
	if m := mode(t, path); m != 0o640 {
		t.Errorf("mode %o, want the existing 640", m)
	}
	owned, err := d.Owned("myapp", "")
	if err != nil || owned.Storage != dokku.StorageLegacyFile || len(owned.Owned) != 2 || len(owned.Foreign) != 0 {
		t.Errorf("Owned = %+v %v", owned, err)
	}
	if err := d.SetOwned("myapp", "", []string{"--blkio-weight=200"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(path); got != original+"--blkio-weight=200\n" {
		t.Errorf("after replace: %q", got)
	}
	if err := d.ClearOwned("myapp", ""); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(path); got != original {
		t.Errorf("after clear: %q", got)
	}
	// No per-process scoping before 0.38.
	if err := d.SetOwned("myapp", "web", []string{"--blkio-weight=200"}); !errors.Is(err, dokku.ErrProcessScopeLegacy) {
		t.Errorf("process scope: %v", err)
	}
	// A new legacy file is created 0644.
	f.AddApp("fresh")
	if err := d.SetOwned("fresh", "", []string{"--blkio-weight=10"}); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(f.AppDir("fresh"), "DOCKER_OPTIONS_DEPLOY")
	if got := f.Read(fresh); got != "--blkio-weight=10\n" {
		t.Errorf("fresh = %q", got)
	}
	if m := mode(t, fresh); m != 0o644 {
		t.Errorf("fresh mode %o", m)
	}
	// No temp files left in the app dir.
	entries, _ := os.ReadDir(f.AppDir("myapp"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".netshape-tmp") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

// TestRootLegacyFileKeepsOwner: rewriting an operator's legacy file as root
// keeps its owner. Needs root (fails under CI=true without).
func TestRootLegacyFileKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	f := dokkutest.NewFixture(t, dokkutest.WithVersion("0.37.9"))
	f.AddApp("myapp")
	path := filepath.Join(f.AppDir("myapp"), "DOCKER_OPTIONS_DEPLOY")
	if err := os.WriteFile(path, []byte("--restart=no\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 4321, 8765); err != nil {
		t.Fatal(err)
	}
	if err := f.Env.DockerOptions().SetOwned("myapp", "", []string{"--blkio-weight=10"}); err != nil {
		t.Fatal(err)
	}
	if uid, gid := owner(t, path); uid != 4321 || gid != 8765 {
		t.Errorf("owner %d:%d, want 4321:8765", uid, gid)
	}
}

// FuzzCanonicalOwnedOption: never panics, and its output is a fixed point
// (what is stored is recognised as the same option when read back).
func FuzzCanonicalOwnedOption(f *testing.F) {
	for _, s := range []string{"--blkio-weight=500", "--device-read-bps /dev/sda:10mb", `'--device-write-bps=/dev/a b:1'`, `"--x`, `\`, "--blkio-weight='a'\\''b'"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := dokku.CanonicalOwnedOption(s)
		if err != nil {
			if !errors.Is(err, dokku.ErrNotOwnedOption) {
				t.Fatalf("%q: error %v does not wrap ErrNotOwnedOption", s, err)
			}
			return
		}
		again, err := dokku.CanonicalOwnedOption(out)
		if err != nil || again != out {
			t.Fatalf("%q → %q → %q, %v", s, out, again, err)
		}
	})
}
