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

func TestContainerFiles(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 2, "worker", 1)
	w2 := f.AddContainer("myapp", "web", 2, "")
	w1 := f.AddContainer("myapp", "web", 1, "")
	wk := f.AddContainer("myapp", "worker", 1, strings.Repeat("ab", 32))
	w10 := f.AddContainer("myapp", "web", 10, "")
	dir := f.AppDir("myapp")
	// Not container files, or unusable ones: skipped.
	for name, content := range map[string]string{
		"CONTAINER":          strings.Repeat("c", 64) + "\n", // pre-scaling single file
		"CONTAINER.web":      strings.Repeat("d", 64) + "\n",
		"CONTAINER.web.x":    strings.Repeat("e", 64) + "\n",
		"CONTAINER.web.3":    "",
		"CONTAINER.web.4":    "not-an-id\n",
		"IP.web.1":           "172.17.0.2\n",
		"PORT.web.1":         "5000\n",
		"DOCKER_OPTIONS_RUN": "",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files, err := f.Env.ContainerFiles("myapp")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range files {
		got = append(got, c.Process+"."+string(rune('0'+c.Index%10))+"="+c.ID[:8])
	}
	want := []string{"web.1=" + w1[:8], "web.2=" + w2[:8], "web.0=" + w10[:8], "worker.1=" + wk[:8]}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ContainerFiles = %v, want %v", got, want)
	}
	ids, err := f.Env.ContainerIDs("myapp")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ids, map[string][]string{"web": {w1, w2, w10}, "worker": {wk}}) {
		t.Errorf("ContainerIDs = %v", ids)
	}
	if _, err := f.Env.ContainerIDs("nope"); !errors.Is(err, dokku.ErrAppNotFound) {
		t.Errorf("missing app: %v", err)
	}
	f.AddApp("fresh")
	if ids, err := f.Env.ContainerIDs("fresh"); err != nil || len(ids) != 0 {
		t.Errorf("undeployed app: %v %v", ids, err)
	}
}

func TestProcessTypes(t *testing.T) {
	f := dokkutest.NewFixture(t)
	f.AddApp("myapp", "web", 2, "worker", 0, "release", 1)
	names, err := f.Env.ProcessTypes("myapp")
	if err != nil || !reflect.DeepEqual(names, []string{"release", "web", "worker"}) {
		t.Errorf("ProcessTypes = %v %v", names, err)
	}
	form, src, err := f.Env.Formations("myapp")
	if err != nil || !strings.Contains(src, "scale") || !reflect.DeepEqual(form, []dokku.Formation{{"release", 1}, {"web", 2}, {"worker", 0}}) {
		t.Errorf("Formations = %v %q %v", form, src, err)
	}
	for _, ok := range []string{"web", "worker", "_default_", ""} {
		if err := f.Env.CheckProcessType("myapp", ok); err != nil {
			t.Errorf("CheckProcessType(%q) = %v", ok, err)
		}
	}
	err = f.Env.CheckProcessType("myapp", "wrker")
	if !errors.Is(err, dokku.ErrUnknownProcessType) {
		t.Fatalf("unknown: %v", err)
	}
	if want := `unknown process type "wrker" for app myapp (known: release, web, worker)`; err.Error() != want {
		t.Errorf("message %q", err)
	}
	if err := f.Env.CheckProcessType("myapp", "we/b"); !errors.Is(err, dokku.ErrInvalidProcessType) {
		t.Errorf("invalid: %v", err)
	}

	// Types that left the Procfile live in scale.old and are not valid.
	f.SetPropertyList("ps", "myapp", "scale.old", "gone=0")
	if err := f.Env.CheckProcessType("myapp", "gone"); !errors.Is(err, dokku.ErrUnknownProcessType) {
		t.Errorf("scale.old type accepted: %v", err)
	}

	// Never deployed, but a Procfile was extracted.
	f.AddApp("fresh")
	if err := f.Env.CheckProcessType("fresh", "web"); !errors.Is(err, dokku.ErrUnknownProcessType) ||
		!strings.Contains(err.Error(), "none known") {
		t.Errorf("no formation: %v", err)
	}
	f.WriteProcfile("fresh", "# comment\nweb: bin/server --port $PORT\nworker:  bin/worker\n\nbad line\n")
	if names, err := f.Env.ProcessTypes("fresh"); err != nil || !reflect.DeepEqual(names, []string{"web", "worker"}) {
		t.Errorf("from Procfile: %v %v", names, err)
	}

	f.SetPropertyList("ps", "broken", "scale", "web")
	f.AddApp("broken")
	if _, err := f.Env.ProcessTypes("broken"); err == nil || !strings.Contains(err.Error(), "missing count") {
		t.Errorf("malformed scale: %v", err)
	}
}

func TestProcessTypesLegacyScaleFile(t *testing.T) {
	f := dokkutest.NewFixture(t, dokkutest.WithVersion("0.37.9"))
	f.AddApp("myapp", "web", 1, "worker", 3)
	if _, err := os.Stat(filepath.Join(f.AppDir("myapp"), "DOKKU_SCALE")); err != nil {
		t.Fatal("fixture did not write DOKKU_SCALE")
	}
	form, src, err := f.Env.Formations("myapp")
	if err != nil || !strings.HasSuffix(src, "DOKKU_SCALE") || !reflect.DeepEqual(form, []dokku.Formation{{"web", 1}, {"worker", 3}}) {
		t.Errorf("Formations = %v %q %v", form, src, err)
	}
}

func TestVersion(t *testing.T) {
	cases := map[string]string{
		"0.38.27":              "0.38.27",
		"v0.38.27\n":           "0.38.27",
		"v0.38.27-3-gabc1234":  "0.38.27",
		"1700000000:0.38.27\n": "0.38.27",
		"0.37":                 "0.37.0",
		"1.0.0+build":          "1.0.0",
	}
	for in, want := range cases {
		v, err := dokku.ParseVersion(in)
		if err != nil || v.String() != want {
			t.Errorf("ParseVersion(%q) = %v %v, want %s", in, v, err, want)
		}
	}
	for _, bad := range []string{"", "~master (2026-11-26T10:00+00:00)", "master", "0", "1.2.3.4", "v1.x.0", "0.38.-1"} {
		if v, err := dokku.ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) = %v, want error", bad, v)
		}
	}
	v, _ := dokku.ParseVersion("0.37.9")
	if !v.Less(0, 38, 0) || v.Less(0, 37, 9) || v.Less(0, 9, 99) {
		t.Error("Less")
	}

	f := dokkutest.NewFixture(t)
	got, err := f.Env.DokkuVersion()
	if err != nil || got.String() != "0.38.27" || !strings.HasSuffix(got.File, "STABLE_VERSION") {
		t.Errorf("DokkuVersion = %+v %v", got, err)
	}
	os.Remove(f.Path("STABLE_VERSION"))
	got, err = f.Env.DokkuVersion()
	if err != nil || got.String() != "0.38.27" || !strings.HasSuffix(got.File, "/VERSION") {
		t.Errorf("VERSION fallback = %+v %v", got, err)
	}
	if err := os.WriteFile(f.Path("VERSION"), []byte("~master (2026-11-26)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Env.DokkuVersion(); !errors.Is(err, dokku.ErrUnknownVersion) {
		t.Errorf("unparseable: %v", err)
	}
}
