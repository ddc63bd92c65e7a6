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

// Names from Dokku's own TestCommonIsValidAppName / ...RejectsShellMetacharacters.
func TestValidateNewAppName(t *testing.T) {
	for _, name := range []string{"myapp", "my-app", "my.app", "app123", "123app", "my-app.prod", "a", "0"} {
		if err := dokku.ValidateNewAppName(name); err != nil {
			t.Errorf("ValidateNewAppName(%q) = %v, want nil", name, err)
		}
	}
	invalid := []string{"app;id", "app$cmd", "app`whoami`", "app|cat", "app&background", "app>file", "app<file",
		"app(cmd)", "app{cmd}", "app[cmd]", "app*", "app?", "app!", "app#", "app\\cmd", "app\"quote", "app'quote",
		"app cmd", "app\tcmd", "app\ncmd", "app~cmd", "app/cmd", "app:cmd", "app_name", "App", "-app", ".app",
		"--global", "..", strings.Repeat("a", 256)}
	for _, name := range invalid {
		err := dokku.ValidateNewAppName(name)
		if !errors.Is(err, dokku.ErrInvalidAppName) {
			t.Errorf("ValidateNewAppName(%q) = %v, want ErrInvalidAppName", name, err)
		}
	}
	if err := dokku.ValidateNewAppName(""); !errors.Is(err, dokku.ErrNoAppName) {
		t.Errorf("empty name: %v", err)
	}
	if err := dokku.ValidateNewAppName(strings.Repeat("a", 255)); err != nil {
		t.Errorf("255-byte name: %v", err)
	}
	want := `app name must begin with lowercase alphanumeric character, and may only contain lowercase alphanumerics, dots, and hyphens: "App"`
	if err := dokku.ValidateNewAppName("App"); err == nil || err.Error() != want {
		t.Errorf("message = %v", err)
	}
}

func TestValidateAppNameAcceptsOldNames(t *testing.T) {
	for _, name := range []string{"my_app", "legacy_app_name", "app_v2", "myapp", "my.app"} {
		if err := dokku.ValidateAppName(name); err != nil {
			t.Errorf("ValidateAppName(%q) = %v", name, err)
		}
	}
	for _, name := range []string{"_app", "-app", "App", "app;id", "app/cmd", "app:cmd", "--global", "", "."} {
		if err := dokku.ValidateAppName(name); err == nil {
			t.Errorf("ValidateAppName(%q) = nil, want error", name)
		}
	}
	if err := dokku.ValidateNewAppName("my_app"); err == nil {
		t.Error("new names may not contain underscores")
	}
}

func TestAppExistsAndApps(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 1)
	f.AddApp("other")
	f.AddApp("old_style")
	// Things in DOKKU_ROOT that are not apps.
	for _, d := range []string{".ssh", "VHOST_DIR", "Upper"} {
		if err := os.MkdirAll(filepath.Join(f.DokkuRoot, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(f.DokkuRoot, "dokkurc"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e := f.Env
	if !e.AppExists("myapp") || !e.AppExists("old_style") {
		t.Error("existing apps not found")
	}
	for _, name := range []string{"missing", "dokkurc", "../home", ".ssh", ""} {
		if e.AppExists(name) {
			t.Errorf("AppExists(%q) = true", name)
		}
	}
	if err := e.VerifyApp("missing"); !errors.Is(err, dokku.ErrAppNotFound) {
		t.Errorf("VerifyApp(missing) = %v", err)
	}
	if err := e.VerifyApp("Bad"); !errors.Is(err, dokku.ErrInvalidAppName) {
		t.Errorf("VerifyApp(Bad) = %v", err)
	}
	apps, err := e.Apps()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"myapp", "old_style", "other"}; !reflect.DeepEqual(apps, want) {
		t.Errorf("Apps() = %v, want %v", apps, want)
	}
	empty := dokku.Env{DokkuRoot: filepath.Join(t.TempDir(), "nope")}
	if apps, err := empty.Apps(); err != nil || len(apps) != 0 {
		t.Errorf("missing root: %v, %v", apps, err)
	}
}

func TestEnvFromOS(t *testing.T) {
	t.Setenv("DOKKU_ROOT", "/srv/dokku")
	t.Setenv("DOKKU_LIB_ROOT", "/srv/lib")
	t.Setenv("DOKKU_LIB_PATH", "/ignored")
	t.Setenv("DOKKU_SYSTEM_USER", "deploy")
	t.Setenv("DOKKU_SYSTEM_GROUP", "deploygrp")
	e := dokku.EnvFromOS()
	if e.DokkuRoot != "/srv/dokku" || e.LibRoot != "/srv/lib" || e.SystemUser != "deploy" || e.SystemGroup != "deploygrp" {
		t.Errorf("from env: %+v", e)
	}

	t.Setenv("DOKKU_LIB_ROOT", "")
	if got := dokku.EnvFromOS().LibRoot; got != "/ignored" {
		t.Errorf("DOKKU_LIB_PATH fallback: %q", got)
	}

	for _, k := range []string{"DOKKU_ROOT", "DOKKU_LIB_ROOT", "DOKKU_LIB_PATH", "DOKKU_SYSTEM_USER", "DOKKU_SYSTEM_GROUP"} {
		t.Setenv(k, "")
	}
	e = dokku.EnvFromOS()
	if e.LibRoot != "/var/lib/dokku" || e.SystemUser != "dokku" || e.SystemGroup != "dokku" {
		t.Errorf("defaults: %+v", e)
	}
	// ~dokku: the home of a user named dokku, else /home/dokku.
	wantRoot := "/home/dokku"
	if home := lookupHome("dokku"); home != "" {
		wantRoot = home
	}
	if e.DokkuRoot != wantRoot {
		t.Errorf("DokkuRoot default = %q, want %q", e.DokkuRoot, wantRoot)
	}
	if got := e.PropertyDir("resource", "myapp"); got != "/var/lib/dokku/config/resource/myapp" {
		t.Errorf("PropertyDir = %q", got)
	}
	if got := e.DataDir("ps", "myapp"); got != "/var/lib/dokku/data/ps/myapp" {
		t.Errorf("DataDir = %q", got)
	}
}
