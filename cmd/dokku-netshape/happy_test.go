package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

const pluginDir = "/var/lib/dokku/plugins/enabled/netshape/"

// mustRun runs argv through run() and fails unless it exits 0.
func mustRun(t *testing.T, argv ...string) outcome {
	t.Helper()
	o := capture(t, argv...)
	if o.code != 0 {
		t.Fatalf("%q:\n%s", argv, o)
	}
	return o
}

// wantProp checks a property file's exact bytes and Dokku's 0600 mode;
// want "" means the file must not exist.
func wantProp(t *testing.T, e *cliEnv, plugin, app, key, want string) {
	t.Helper()
	got, mode, ok := prop(t, e, plugin, app, key)
	switch {
	case want == "" && ok:
		t.Errorf("%s/%s/%s = %q, want no such key", plugin, app, key, got)
	case want == "":
	case !ok:
		t.Errorf("%s/%s/%s missing, want %q", plugin, app, key, want)
	case got != want || mode != 0o600:
		t.Errorf("%s/%s/%s = %q mode %o, want %q mode 600", plugin, app, key, got, mode, want)
	}
}

func resourceKeys(t *testing.T, e *cliEnv, app string) []string {
	t.Helper()
	keys, err := e.Env.Properties(dokku.ResourcePlugin).Keys(app)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestSetWritesDokkuKeys(t *testing.T) {
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1, "worker", 1)
	o := mustRun(t, "dokku-netshape", "set", "shop", "--egress", "20000kbit", "--ingress", "0.5gbit", "--no-apply")
	wantProp(t, e, "resource", "shop", "_default_.limit.network-egress", "20mbit")
	wantProp(t, e, "resource", "shop", "_default_.limit.network-ingress", "500mbit")
	want := "-----> Set app-wide network-egress limit for shop to 20mbit\n" +
		"-----> Set app-wide network-ingress limit for shop to 500mbit\n" +
		"-----> Not applied (--no-apply): takes effect at the next deploy or `dokku-netshape apply shop`\n"
	if o.stdout != want || o.stderr != "" {
		t.Errorf("output\n%s\nwant stdout\n%s", o, want)
	}
	// Dokku's order (flags after APP) and before it; --network is Dokku's
	// both-directions key, scoped to a process type.
	mustRun(t, "dokku-netshape", "set", "--process-type", "worker", "--network", "1000000", "shop", "--no-apply")
	wantProp(t, e, "resource", "shop", "worker.limit.network", "1mbit")
	if got := resourceKeys(t, e, "shop"); !slices.Equal(got, []string{
		"_default_.limit.network-egress", "_default_.limit.network-ingress", "worker.limit.network"}) {
		t.Errorf("resource keys %v", got)
	}
	// Directories as Dokku makes them.
	if st, err := os.Stat(e.Env.PropertyDir("resource", "shop")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("property dir: %v %v", st.Mode(), err)
	}
}

func TestClearNetwork(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  map[string]string // resource key -> value
		args   []string
		remain map[string]string
	}{
		{"egress-of-network-keeps-ingress", map[string]string{"_default_.limit.network": "20mbit"},
			[]string{"--egress"}, map[string]string{"_default_.limit.network-ingress": "20mbit"}},
		{"ingress-of-network-keeps-egress", map[string]string{"_default_.limit.network": "20mbit"},
			[]string{"--ingress"}, map[string]string{"_default_.limit.network-egress": "20mbit"}},
		{"own-ingress-wins-over-network", map[string]string{"_default_.limit.network": "20mbit", "_default_.limit.network-ingress": "5mbit"},
			[]string{"--egress"}, map[string]string{"_default_.limit.network-ingress": "5mbit"}},
		{"both", map[string]string{"_default_.limit.network": "20mbit", "_default_.limit.network-egress": "1mbit", "_default_.limit.memory": "512m"},
			[]string{"--egress", "--ingress"}, map[string]string{"_default_.limit.memory": "512m"}},
		{"process-scope-only", map[string]string{"web.limit.network-egress": "1mbit", "_default_.limit.network-egress": "2mbit"},
			[]string{"--egress", "--process-type", "web"}, map[string]string{"_default_.limit.network-egress": "2mbit"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newCLIEnv(t)
			e.AddApp("shop", "web", 1)
			for k, v := range tc.setup {
				e.SetProperty("resource", "shop", k, v)
			}
			o := mustRun(t, append([]string{"dokku-netshape", "clear", "shop", "--no-apply"}, tc.args...)...)
			scope := "app-wide"
			if slices.Contains(tc.args, "web") {
				scope = "web"
			}
			want := "-----> Cleared " + scope + " network limits of shop\n"
			if tc.name == "process-scope-only" {
				want += "       web still follows the app-wide _default_.limit.network-egress = 2mbit\n"
			}
			if o.stdout != want || o.stderr != "" {
				t.Errorf("output\n%s\nwant\n%s", o, want)
			}
			got, err := e.Env.Properties("resource").GetAll("shop")
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.remain) {
				t.Errorf("left %v, want %v", got, tc.remain)
			}
			for k, v := range tc.remain {
				wantProp(t, e, "resource", "shop", k, v)
			}
		})
	}
}

func TestSetResourceLimitsAndDockerOptions(t *testing.T) {
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1, "worker", 1)
	operator := []string{"--link=db:db", "--restart=on-failure:10", "-v /data:/data"}
	e.SetDockerOptions("shop", "", operator...)
	e.SetDockerOptions("shop", "worker", "--device-read-iops=/dev/sdc:100") // operator's, other scope
	o := mustRun(t, "dokku-netshape", "set", "shop", "--memory", "512", "--memory-swap", "1g", "--cpus", "1.5",
		"--blkio-weight", "500", "--device-read-bps", "/dev/sda:10mb", "--device-write-iops", "/dev/sda:200", "--no-apply")
	wantProp(t, e, "resource", "shop", "_default_.limit.memory", "512")
	wantProp(t, e, "resource", "shop", "_default_.limit.memory-swap", "1g")
	wantProp(t, e, "resource", "shop", "_default_.limit.cpu", "1.5")
	ours := []string{"--blkio-weight=500", "--device-read-bps=/dev/sda:10mb", "--device-write-iops=/dev/sda:200"}
	all := append(slices.Clone(operator), ours...)
	slices.Sort(all)
	wantProp(t, e, "docker-options", "shop", "_default_.deploy", strings.Join(all, "\n")+"\n")
	wantProp(t, e, "docker-options", "shop", "worker.deploy", "--device-read-iops=/dev/sdc:100\n")
	wantProp(t, e, "netshape", "shop", "owned-docker-options._default_.deploy", strings.Join(ours, "\n")+"\n")
	want := "-----> Set app-wide docker option --blkio-weight=500 for shop\n" +
		"-----> Set app-wide docker option --device-read-bps=/dev/sda:10mb for shop\n" +
		"-----> Set app-wide docker option --device-write-iops=/dev/sda:200 for shop\n" +
		"-----> Set app-wide memory limit 512 for shop\n" +
		"-----> Set app-wide memory-swap limit 1g for shop\n" +
		"-----> Set app-wide cpu limit 1.5 for shop\n" +
		"-----> Not applied (--no-apply): takes effect at the next deploy or `dokku-netshape apply shop`\n"
	if o.stdout != want || o.stderr != "" {
		t.Errorf("output\n%s\nwant\n%s", o, want)
	}

	// A second set replaces per device and per flag, adds another device,
	// and leaves every operator line alone.
	mustRun(t, "dokku-netshape", "set", "shop", "--blkio-weight", "600", "--device-read-bps", "/dev/sda:20mb",
		"--device-read-bps", "/dev/sdb:5mb", "--no-apply")
	ours = []string{"--blkio-weight=600", "--device-read-bps=/dev/sda:20mb", "--device-read-bps=/dev/sdb:5mb", "--device-write-iops=/dev/sda:200"}
	all = append(slices.Clone(operator), ours...)
	slices.Sort(all)
	wantProp(t, e, "docker-options", "shop", "_default_.deploy", strings.Join(all, "\n")+"\n")

	// Per process type: its own keys and docker-options scope.
	mustRun(t, "dokku-netshape", "set", "shop", "--process-type", "web", "--memory", "64m", "--blkio-weight", "100", "--no-apply")
	wantProp(t, e, "resource", "shop", "web.limit.memory", "64m")
	wantProp(t, e, "docker-options", "shop", "web.deploy", "--blkio-weight=100\n")

	// The operator's --device-read-iops in worker.deploy is theirs: setting
	// the same flag there is refused and changes nothing.
	o = capture(t, "dokku-netshape", "set", "shop", "--process-type", "worker", "--device-read-iops", "/dev/sdc:5", "--cpus", "1", "--no-apply")
	if o.code == 0 || !strings.Contains(o.stderr, "operator-written") {
		t.Errorf("conflict not refused:\n%s", o)
	}
	wantProp(t, e, "resource", "shop", "worker.limit.cpu", "")
	wantProp(t, e, "docker-options", "shop", "worker.deploy", "--device-read-iops=/dev/sdc:100\n")

	// clear --all: every key and line of ours in the scope goes, the
	// operator's stay byte for byte.
	e.SetResource("shop", "", dokku.Limit, dokku.Network, "20mbit")
	e.SetResource("shop", "", dokku.Reserve, dokku.Memory, "128m") // not ours to clear
	o = mustRun(t, "dokku-netshape", "clear", "shop", "--all", "--no-apply")
	want = "-----> Cleared app-wide network limits of shop\n" +
		"-----> Cleared app-wide memory, CPU and blkio limits of shop (running containers keep theirs until the next deploy: Docker cannot remove a limit live)\n"
	if o.stdout != want {
		t.Errorf("output\n%s\nwant\n%s", o, want)
	}
	if got := resourceKeys(t, e, "shop"); !slices.Equal(got, []string{"_default_.reserve.memory", "web.limit.memory"}) {
		t.Errorf("resource keys after clear --all: %v", got)
	}
	wantProp(t, e, "docker-options", "shop", "_default_.deploy", strings.Join(operator, "\n")+"\n")
	wantProp(t, e, "docker-options", "shop", "web.deploy", "--blkio-weight=100\n")
	wantProp(t, e, "netshape", "shop", "owned-docker-options._default_.deploy", "")
}

// Dokku < 0.38 keeps docker-options in DOKKU_ROOT/APP/DOCKER_OPTIONS_DEPLOY
// and has no per-process scope for them.
func TestSetLegacyDockerOptionsFile(t *testing.T) {
	e := newCLIEnv(t, dokkutest.WithVersion("0.37.9"))
	e.AddApp("shop", "web", 1)
	e.SetDockerOptions("shop", "", "# operator comment", "--restart=on-failure:10")
	mustRun(t, "dokku-netshape", "set", "shop", "--blkio-weight", "500", "--memory", "256m", "--no-apply")
	file := filepath.Join(e.AppDir("shop"), "DOCKER_OPTIONS_DEPLOY")
	if got := e.Read(file); got != "# operator comment\n--restart=on-failure:10\n--blkio-weight=500\n" {
		t.Errorf("DOCKER_OPTIONS_DEPLOY = %q", got)
	}
	wantProp(t, e, "resource", "shop", "_default_.limit.memory", "256m")
	if _, err := os.Stat(e.Env.PropertyDir("docker-options", "shop")); !os.IsNotExist(err) {
		t.Errorf("0.38 docker-options store written on a 0.37 tree: %v", err)
	}
	before := treeSnapshot(t, e.DokkuRoot)
	o := capture(t, "dokku-netshape", "set", "shop", "--process-type", "web", "--blkio-weight", "400", "--memory", "128m", "--no-apply")
	if want := "!     docker-options cannot be scoped to a process type before Dokku 0.38 (process \"web\")\n"; o.code == 0 || o.stderr != want {
		t.Errorf("per-process docker-options on 0.37 not refused:\n%s", o)
	}
	if d := diffSnapshots(before, treeSnapshot(t, e.DokkuRoot)); len(d) > 0 {
		t.Errorf("refused set changed files: %v", d)
	}
	wantProp(t, e, "resource", "shop", "web.limit.memory", "")
	mustRun(t, "dokku-netshape", "clear", "shop", "--all", "--no-apply")
	if got := e.Read(file); got != "# operator comment\n--restart=on-failure:10\n" {
		t.Errorf("DOCKER_OPTIONS_DEPLOY after clear = %q", got)
	}
}

func TestCommandsDispatch(t *testing.T) {
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	o := mustRun(t, pluginDir+"commands", "netshape:set", "shop", "--egress", "3mbit", "--no-apply")
	if !strings.HasPrefix(o.stdout, "-----> Set app-wide network-egress limit for shop to 3mbit\n") {
		t.Errorf("commands netshape:set:\n%s", o)
	}
	wantProp(t, e, "resource", "shop", "_default_.limit.network-egress", "3mbit")
	mustRun(t, pluginDir+"subcommands/set", "netshape:set", "shop", "--ingress", "4mbit", "--no-apply")
	wantProp(t, e, "resource", "shop", "_default_.limit.network-ingress", "4mbit")
	mustRun(t, pluginDir+"subcommands/clear", "netshape:clear", "shop", "--egress", "--no-apply")
	wantProp(t, e, "resource", "shop", "_default_.limit.network-egress", "")

	// Not ours: exit 10 and say nothing, so Dokku tries the next plugin.
	for _, argv := range [][]string{
		{pluginDir + "commands", "other:cmd", "x"},
		{pluginDir + "commands", "netshape:nope"},
		{pluginDir + "commands", "netshapes:set"},
		{pluginDir + "commands"},
		{pluginDir + "subcommands/nope", "netshape:nope"},
	} {
		if o := capture(t, argv...); o.code != exitNotImplemented || o.stdout != "" || o.stderr != "" {
			t.Errorf("%q:\n%s\nwant exit 10, no output", argv, o)
		}
	}
}

func TestHelpGolden(t *testing.T) {
	defer func(f func() string) { parentCmdline = f }(parentCmdline)
	parentCmdline = func() string { return "/usr/bin/dokku help" }
	o := mustRun(t, pluginDir+"commands", "help")
	golden(t, "commands-help.golden", o.stdout)
	parentCmdline = func() string { return "/bin/bash /usr/bin/dokku help --all" }
	o = mustRun(t, pluginDir+"commands", "help")
	golden(t, "commands-help-all.golden", o.stdout)
	// Dokku cuts these lines into columns at commas: exactly one each.
	for _, l := range strings.Split(strings.TrimSuffix(o.stdout, "\n"), "\n") {
		if strings.Count(l, ",") != 1 || !strings.HasPrefix(l, "    netshape:") {
			t.Errorf("help --all line %q: want 4 spaces, netshape:CMD ARGS, one comma, description", l)
		}
	}
	if strings.Contains(pluginSummary, ",") {
		t.Errorf("summary %q has a comma", pluginSummary)
	}

	for _, tc := range []struct {
		golden string
		argv   []string
	}{
		{"commands-netshape-help.golden", []string{pluginDir + "commands", "netshape:help"}},
		{"commands-netshape-help.golden", []string{pluginDir + "commands", "netshape"}},
		{"commands-netshape-help.golden", []string{pluginDir + "subcommands/help", "netshape:help"}},
		{"cli-help.golden", []string{"dokku-netshape", "help"}},
		{"cli-set-help.golden", []string{"dokku-netshape", "set", "--help"}},
		{"cli-set-help.golden", []string{pluginDir + "subcommands/set", "netshape:set", "--help"}},
	} {
		o := mustRun(t, tc.argv...)
		if o.stderr != "" {
			t.Errorf("%q stderr %q", tc.argv, o.stderr)
		}
		golden(t, tc.golden, o.stdout)
	}
}

// golden compares got with testdata/NAME, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with: go test ./cmd/dokku-netshape -run %s -args -update)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs (if intended: go test ./cmd/dokku-netshape -run %s -args -update):\n--- got\n%s\n--- want\n%s", name, t.Name(), got, want)
	}
}

// The triggers Dokku fires around apps:rename and apps:clone carry our
// record of which docker-options lines are ours; post-delete drops it and
// the app's budgets.
func TestRootRenameCloneDeleteTriggers(t *testing.T) {
	nettest.RequireRoot(t)
	e := newCLIEnv(t)
	e.AddApp("old", "web", 1)
	e.SetDockerOptions("old", "", "--restart=on-failure:10")
	mustRun(t, "dokku-netshape", "set", "old", "--blkio-weight", "300", "--no-apply")
	record := "--blkio-weight=300\n"
	wantProp(t, e, "netshape", "old", "owned-docker-options._default_.deploy", record)

	// apps:rename old new: Dokku creates new, its resource and docker-options
	// plugins clone their properties (simulated here), then our trigger.
	e.AddApp("new", "web", 1)
	if err := e.Env.Properties("docker-options").Clone("old", "new"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, pluginDir+"post-app-rename-setup", "old", "new")
	wantProp(t, e, "netshape", "new", "owned-docker-options._default_.deploy", record)
	owned, err := e.Env.DockerOptions().Owned("new", "_default_")
	if err != nil || !slices.Equal(owned.Owned, []string{"--blkio-weight=300"}) || len(owned.Foreign) != 0 {
		t.Fatalf("new app's line not recognised as ours: %+v %v", owned, err)
	}

	// Then Dokku destroys old: post-delete old TAG.
	s := e.shaper(t)
	for _, b := range []string{"old/_default_/egress", "old/web/ingress", "new/_default_/egress", "older/_default_/egress"} {
		if err := s.UpsertBudget(shaper.Budget{Name: b, Rate: 1e6}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	mustRun(t, pluginDir+"post-delete", "old", "latest")
	if _, err := os.Stat(e.Env.PropertyDir("netshape", "old")); !os.IsNotExist(err) {
		t.Errorf("netshape properties of old still there: %v", err)
	}
	if st := e.shaperState(t); strings.Contains(st, "budget old/") || !strings.Contains(st, "budget new/_default_/egress") ||
		!strings.Contains(st, "budget older/_default_/egress") {
		t.Errorf("budgets after post-delete old:\n%s", st)
	}
	// new's line is still ours: a set replaces it instead of refusing.
	mustRun(t, "dokku-netshape", "set", "new", "--blkio-weight", "400", "--no-apply")
	wantProp(t, e, "docker-options", "new", "_default_.deploy", "--blkio-weight=400\n--restart=on-failure:10\n")

	// apps:clone new copy: both keep the record.
	e.AddApp("copy", "web", 1)
	if err := e.Env.Properties("docker-options").Clone("new", "copy"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, pluginDir+"post-app-clone-setup", "new", "copy")
	wantProp(t, e, "netshape", "copy", "owned-docker-options._default_.deploy", "--blkio-weight=400\n")
	wantProp(t, e, "netshape", "new", "owned-docker-options._default_.deploy", "--blkio-weight=400\n")

	// An app without records renames cleanly too.
	e.AddApp("plain")
	e.AddApp("plain2")
	mustRun(t, pluginDir+"post-app-rename-setup", "plain", "plain2")
	if _, err := os.Stat(e.Env.PropertyDir("netshape", "plain2")); !os.IsNotExist(err) {
		t.Errorf("empty record dir created for plain2: %v", err)
	}
}

// The completion script, sourced into bash, completes commands and flags
// by asking the real binary.
func TestBashCompletion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "dokku-netshape")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	script := mustRun(t, "dokku-netshape", "completion").stdout
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"cl"}, "clear"},
		{[]string{""}, "set clear apply report remove watch top completion man help h"},
		{[]string{"set", "shop", "--eg"}, "--egress"},
		{[]string{"set", "--no"}, "--no-apply"},
		{[]string{"clear", "shop", "--a"}, "--all"},
		{[]string{"apply", "--f"}, "--force"},
	} {
		words := append([]string{bin}, tc.words...)
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, "'"+w+"'")
		}
		sh := script + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" + fmt.Sprint(len(words)-1) +
			"\n_dokku_netshape\necho \"${COMPREPLY[*]}\"\n"
		out, err := exec.Command("bash", "-c", sh).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("complete %q: %q, want %q", tc.words, got, tc.want)
		}
	}
}

// Run as root (sudo, install), everything written must end up owned by
// DOKKU_SYSTEM_USER/GROUP, or Dokku (running as that user) cannot read it.
func TestRootSetOwnsFilesAsDokkuUser(t *testing.T) {
	nettest.RequireRoot(t)
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	t.Setenv("DOKKU_SYSTEM_USER", "nobody")
	t.Setenv("DOKKU_SYSTEM_GROUP", "nogroup")
	mustRun(t, "dokku-netshape", "set", "shop", "--egress", "1mbit", "--blkio-weight", "200", "--no-apply")
	for _, p := range []string{
		e.PropertyPath("resource", "shop", "_default_.limit.network-egress"),
		e.PropertyPath("docker-options", "shop", "_default_.deploy"),
		e.PropertyPath("netshape", "shop", "owned-docker-options._default_.deploy"),
		e.Env.PropertyDir("netshape", "shop"),
		e.Env.PluginConfigDir("netshape"),
	} {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid != 65534 || st.Gid != 65534 {
			t.Errorf("%s owned by %d:%d, want nobody:nogroup (65534:65534)", p, st.Uid, st.Gid)
		}
	}
}
