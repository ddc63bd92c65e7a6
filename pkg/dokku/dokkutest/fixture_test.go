package dokkutest_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
)

// The layout must match what was observed on Dokku 0.38.27 (docs: shared
// notes "Observed on a real Dokku"): resource:limit --network-egress 20mbit
// wrote config/resource/myapp/_default_.limit.network-egress, 6 bytes, 0600.
func TestFixtureLayout(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 2)
	f.SetResource("myapp", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	id := f.AddContainer("myapp", "web", 1, "")
	f.SetDockerOptions("myapp", "", "--restart=on-failure:10")

	checks := []struct {
		path    string
		content string
		mode    os.FileMode
	}{
		{filepath.Join(f.LibRoot, "config/resource/myapp/_default_.limit.network-egress"), "20mbit", 0o600},
		{filepath.Join(f.LibRoot, "config/ps/myapp/scale"), "web=2\n", 0o600},
		{filepath.Join(f.LibRoot, "config/docker-options/myapp/_default_.deploy"), "--restart=on-failure:10\n", 0o600},
		{filepath.Join(f.LibRoot, "config/docker-options/--global/migrated-from-files"), "true", 0o600},
		{filepath.Join(f.LibRoot, "VERSION"), "v0.38.27\n", 0o644},
		{filepath.Join(f.LibRoot, "STABLE_VERSION"), "0.38.27\n", 0o644},
		{filepath.Join(f.DokkuRoot, "myapp/CONTAINER.web.1"), id + "\n", 0o644},
	}
	for _, c := range checks {
		b, err := os.ReadFile(c.path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if string(b) != c.content {
			t.Errorf("%s = %q, want %q", c.path, b, c.content)
		}
		fi, _ := os.Stat(c.path)
		if fi.Mode().Perm() != c.mode {
			t.Errorf("%s mode %o, want %o", c.path, fi.Mode().Perm(), c.mode)
		}
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
		t.Errorf("container id %q", id)
	}
	for _, d := range []string{f.AppDir("myapp"), filepath.Join(f.LibRoot, "config/resource/myapp")} {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("dir %s: %v %v", d, fi, err)
		}
	}
	if os.Getenv("DOKKU_ROOT") != f.DokkuRoot || os.Getenv("DOKKU_LIB_ROOT") != f.LibRoot {
		t.Error("environment not set")
	}
	e := dokku.EnvFromOS()
	if e.DokkuRoot != f.DokkuRoot || e.LibRoot != f.LibRoot || e.SystemUser != f.Env.SystemUser {
		t.Errorf("EnvFromOS = %+v", e)
	}
}

// Package dokku writes byte-identical files to the ones the fixture (and so
// Dokku) writes.
func TestDokkuWritesMatchFixture(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp")
	f.SetResource("myapp", "web", dokku.Limit, dokku.NetworkIngress, "50mbit")
	f.SetPropertyList("docker-options", "myapp", "web.deploy", "--a", "--b")
	want1 := f.Read(f.PropertyPath("resource", "myapp", "web.limit.network-ingress"))
	want2 := f.Read(f.PropertyPath("docker-options", "myapp", "web.deploy"))
	os.RemoveAll(f.Path("config", "resource", "myapp"))
	os.RemoveAll(f.Path("config", "docker-options", "myapp"))
	if err := f.Env.SetResource("myapp", "web", dokku.Limit, dokku.NetworkIngress, "50mbit"); err != nil {
		t.Fatal(err)
	}
	if err := f.Env.Properties("docker-options").SetList("myapp", "web.deploy", []string{"--a", "--b"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath("resource", "myapp", "web.limit.network-ingress")); got != want1 {
		t.Errorf("scalar %q vs fixture %q", got, want1)
	}
	if got := f.Read(f.PropertyPath("docker-options", "myapp", "web.deploy")); got != want2 {
		t.Errorf("list %q vs fixture %q", got, want2)
	}
}

func TestLegacyFixture(t *testing.T) {
	f := dokkutest.NewFixture(t, dokkutest.WithVersion("0.37.9"))
	f.AddApp("myapp", "web", 1)
	f.SetDockerOptions("myapp", "", "-v /a:/b")
	if got := f.Read(filepath.Join(f.AppDir("myapp"), "DOCKER_OPTIONS_DEPLOY")); got != "-v /a:/b\n" {
		t.Errorf("legacy options = %q", got)
	}
	if got := f.Read(filepath.Join(f.AppDir("myapp"), "DOKKU_SCALE")); got != "web=1\n" {
		t.Errorf("DOKKU_SCALE = %q", got)
	}
	if _, err := os.Stat(filepath.Join(f.LibRoot, "config/docker-options")); !os.IsNotExist(err) {
		t.Error("0.37 tree has a docker-options property dir")
	}
}
