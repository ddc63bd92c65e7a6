package dokku_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
)

// Map properties are written byte for byte as Dokku's PropertyMapWrite
// (json.Marshal: sorted keys, HTML characters escaped, no newline; "{}" for
// none) and read as PropertyMapGet (missing or empty file: empty map).
func TestMapPropertiesMatchDokku(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("shop")
	p := f.Env.Properties(dokku.K3sPlugin)
	if m, err := p.GetMap("shop", "web.pod"); err != nil || len(m) != 0 {
		t.Fatalf("missing map: %v %v", m, err)
	}
	if err := p.SetMap("shop", "web.pod", nil); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath(dokku.K3sPlugin, "shop", "web.pod")); got != "{}" {
		t.Fatalf("nil map written as %q", got)
	}
	if err := p.SetMap("shop", "web.pod", map[string]string{"z": "1", "a<b": "x&y"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Read(f.PropertyPath(dokku.K3sPlugin, "shop", "web.pod")); got != `{"a\u003cb":"x\u0026y","z":"1"}` {
		t.Fatalf("map written as %q", got)
	}
	f.SetProperty(dokku.K3sPlugin, "shop", "web.pod", "")
	if m, err := p.GetMap("shop", "web.pod"); err != nil || len(m) != 0 {
		t.Fatalf("empty file: %v %v", m, err)
	}
	f.SetProperty(dokku.K3sPlugin, "shop", "web.pod", `["not","a map"]`)
	if _, err := p.GetMap("shop", "web.pod"); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
		t.Fatalf("bad map read: %v", err)
	}
	// A broken map is never overwritten by SetOwned.
	if err := f.Env.PodAnnotations().SetOwned("shop", "web", []string{"k"}, map[string]string{"k": "v"}); err == nil {
		t.Fatal("SetOwned over an unreadable map succeeded")
	}
	if got := f.Read(f.PropertyPath(dokku.K3sPlugin, "shop", "web.pod")); got != `["not","a map"]` {
		t.Fatalf("unreadable map changed to %q", got)
	}
}

func TestPodAnnotationsPropertyNames(t *testing.T) {
	for proc, want := range map[string]string{"": "--global.pod", "_default_": "--global.pod", "web": "web.pod"} {
		if got := dokku.PodAnnotationsProperty(proc); got != want {
			t.Errorf("PodAnnotationsProperty(%q) = %q, want %q", proc, got, want)
		}
	}
	f := dokkutest.NewFixture(t)
	f.AddApp("shop")
	pa := f.Env.PodAnnotations()
	if err := pa.SetOwned("shop", "", []string{"k"}, map[string]string{"other": "v"}); err == nil {
		t.Fatal("SetOwned accepted a key it does not manage")
	}
	if err := pa.SetOwned("nope", "", []string{"k"}, nil); !errors.Is(err, dokku.ErrAppNotFound) {
		t.Fatalf("SetOwned on a missing app: %v", err)
	}
	if _, err := os.Stat(f.Env.PluginConfigDir(dokku.K3sPlugin)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused calls created %s: %v", f.Env.PluginConfigDir(dokku.K3sPlugin), err)
	}
}
