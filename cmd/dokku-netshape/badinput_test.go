package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
)

const onlySafe = "only letters, digits and / . _ - + : are allowed (no whitespace or shell characters)"

const invalidName = "app name must begin with lowercase alphanumeric character, and may only contain lowercase alphanumerics, dots, and hyphens: "

// badInputFixture is an app with a network limit, an operator-written
// docker-options line using one of our flags, one line of ours, and a live
// budget in the shaper: everything a wrong command could damage.
func badInputFixture(t *testing.T) *cliEnv {
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1, "worker", 1)
	e.AddContainer("shop", "web", 1, "")
	e.SetResource("shop", "", dokku.Limit, dokku.NetworkEgress, "20mbit")
	e.SetResource("shop", "", dokku.Limit, dokku.Memory, "256m")
	e.SetResource("shop", "worker", dokku.Limit, dokku.Network, "5mbit")
	e.SetDockerOptions("shop", "", "--device-write-bps=/dev/sdb:5mb", "--restart=on-failure:10")
	if err := e.Env.DockerOptions().SetOwned("shop", "_default_", []string{"--blkio-weight=300"}); err != nil {
		t.Fatal(err)
	}
	e.AddApp("other", "web", 1)
	s := e.shaper(t)
	defer s.Close()
	for _, b := range []shaper.Budget{{Name: "shop/_default_/egress", Rate: 20e6}, {Name: "shop/worker/egress", Rate: 5e6}} {
		if err := s.UpsertBudget(b); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// TestRootBadInput runs each wrong invocation through run() and checks that
// it fails with exactly one error line and changes nothing: not one path,
// mode, owner or byte of the Dokku tree, not one budget or pin.
func TestRootBadInput(t *testing.T) {
	nettest.RequireRoot(t)
	e := badInputFixture(t)
	// Nothing here may reach Docker; if something did, the message would
	// be about this socket instead of the expected one.
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/netshape-test/docker.sock")
	base := filepath.Dir(filepath.Dir(e.DokkuRoot))
	long := strings.Repeat("a", 300)
	missing := filepath.Join(base, "no-such-dokku-root")
	tooMany := fmt.Sprint(runtime.NumCPU() + 1)

	type tc struct {
		name  string
		argv  []string // after "dokku-netshape", unless argv0 is set
		argv0 string
		env   map[string]string
		want  string // the one stderr line, without Dokku's " !     " prefix
	}
	cases := []tc{
		// App names.
		{name: "dotdot", argv: []string{"set", "../x", "--egress", "1mbit"}, want: invalidName + `"../x"`},
		{name: "slash", argv: []string{"set", "a/b", "--egress", "1mbit"}, want: invalidName + `"a/b"`},
		{name: "empty", argv: []string{"set", "", "--egress", "1mbit"}, want: "please specify an app to run the command on"},
		{name: "upper", argv: []string{"set", "Shop", "--egress", "1mbit"}, want: invalidName + `"Shop"`},
		{name: "long", argv: []string{"set", long, "--egress", "1mbit"}, want: invalidName + `"` + long + `"`},
		{name: "leading-dash", argv: []string{"set", "--egress", "1mbit", "--", "-shop"}, want: invalidName + `"-shop"`},
		{name: "leading-dash-as-flag", argv: []string{"set", "-shop", "--egress", "1mbit"}, want: "set: flag provided but not defined: -shop (see --help)"},
		{name: "unknown-app", argv: []string{"set", "nosuch", "--egress", "1mbit"}, want: `app does not exist: "nosuch"`},
		{name: "clear-unknown-app", argv: []string{"clear", "nosuch", "--egress"}, want: `app does not exist: "nosuch"`},
		{name: "apply-bad-name", argv: []string{"apply", "../x"}, want: invalidName + `"../x"`},
		{name: "report-unknown-app", argv: []string{"report", "nosuch"}, want: `app does not exist: "nosuch"`},
		{name: "remove-bad-name", argv: []string{"remove", "../x"}, want: invalidName + `"../x"`},
		// Process types.
		{name: "unknown-proc", argv: []string{"set", "shop", "--process-type", "nope", "--egress", "1mbit"}, want: `unknown process type "nope" for app shop (known: web, worker)`},
		{name: "clear-unknown-proc", argv: []string{"clear", "shop", "--process-type", "nope", "--all"}, want: `unknown process type "nope" for app shop (known: web, worker)`},
		// Rates.
		{name: "rate-word", argv: []string{"set", "shop", "--egress", "abc"}, want: `--egress: invalid rate "abc": malformed number: must start with a digit`},
		{name: "rate-zero", argv: []string{"set", "shop", "--egress", "0"}, want: `--egress: invalid rate "0": rate must be greater than zero`},
		{name: "rate-negative", argv: []string{"set", "shop", "--ingress", "-5mbit"}, want: `--ingress: invalid rate "-5mbit": negative rate`},
		{name: "rate-too-big", argv: []string{"set", "shop", "--network", "2tbit"}, want: "--network: 2tbit is above the largest enforceable rate, 1tbit"},
		{name: "rate-too-small", argv: []string{"set", "shop", "--egress", "9999bit"}, want: "--egress: 9999bit is below the smallest enforceable rate, 10kbit"},
		{name: "rate-empty", argv: []string{"set", "shop", "--network", ""}, want: `--network: invalid rate "": empty rate`},
		{name: "rate-missing", argv: []string{"set", "shop", "--egress"}, want: "set: flag needs an argument: --egress"},
		{name: "rate-bad-with-good-memory", argv: []string{"set", "shop", "--memory", "64m", "--egress", "20xbit"}, want: `--egress: invalid rate "20xbit": unknown unit: "xbit" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		// Sizes, CPUs, blkio, devices.
		{name: "memory-below-min", argv: []string{"set", "shop", "--memory", "5m"}, want: "--memory: 5m is below Docker's minimum of 6m"},
		{name: "memory-word", argv: []string{"set", "shop", "--memory", "lots"}, want: `--memory: dokku passes memory "lots" to docker as "lotsm": invalid size "lotsm": malformed number: must start with a digit`},
		{name: "swap-below-memory", argv: []string{"set", "shop", "--memory", "64m", "--memory-swap", "32m"}, want: "--memory-swap: 32m is less than the memory limit (64m); memory-swap is memory plus swap"},
		{name: "swap-below-stored-memory", argv: []string{"set", "shop", "--memory-swap", "128m"}, want: "--memory-swap: 128m is less than the memory limit (256m); memory-swap is memory plus swap"},
		{name: "cpus-zero", argv: []string{"set", "shop", "--cpus", "0"}, want: fmt.Sprintf("--cpus: 0 is outside 0.01..%d (this host's CPUs)", runtime.NumCPU())},
		{name: "cpus-too-fine", argv: []string{"set", "shop", "--cpus", "0.001"}, want: "--cpus: 0.001 has more than two decimals"},
		{name: "cpus-too-many", argv: []string{"set", "shop", "--cpus", tooMany}, want: fmt.Sprintf("--cpus: %s is outside 0.01..%d (this host's CPUs)", tooMany, runtime.NumCPU())},
		{name: "cpus-exponent", argv: []string{"set", "shop", "--cpus", "1e3"}, want: `--cpus: "1e3" is not a decimal number of CPUs`},
		{name: "cpus-nan", argv: []string{"set", "shop", "--cpus", "NaN"}, want: `--cpus: "NaN" is not a decimal number of CPUs`},
		{name: "cpus-empty", argv: []string{"set", "shop", "--cpus", ""}, want: "--cpus: empty value"},
		{name: "blkio-low", argv: []string{"set", "shop", "--blkio-weight", "9"}, want: `--blkio-weight: "9" is not a whole number in 10..1000`},
		{name: "blkio-high", argv: []string{"set", "shop", "--blkio-weight", "1001"}, want: `--blkio-weight: "1001" is not a whole number in 10..1000`},
		{name: "blkio-word", argv: []string{"set", "shop", "--blkio-weight", "abc"}, want: `--blkio-weight: "abc" is not a whole number in 10..1000`},
		{name: "device-no-dev", argv: []string{"set", "shop", "--device-read-bps", "sda:10mb"}, want: `--device-read-bps: "sda:10mb" is not DEVICE:VALUE with DEVICE a path under /dev/`},
		{name: "device-no-value", argv: []string{"set", "shop", "--device-write-bps", "/dev/sda"}, want: `--device-write-bps: "/dev/sda" is not DEVICE:VALUE with DEVICE a path under /dev/`},
		{name: "device-zero", argv: []string{"set", "shop", "--device-read-bps", "/dev/sda:0"}, want: `--device-read-bps: "0": not a positive byte rate such as 10mb`},
		{name: "device-iops-fraction", argv: []string{"set", "shop", "--device-read-iops", "/dev/sda:1.5"}, want: `--device-read-iops: "1.5": IOPS must be a positive whole number`},
		{name: "device-iops-negative", argv: []string{"set", "shop", "--device-write-iops", "/dev/sda:-3"}, want: `--device-write-iops: "-3": IOPS must be a positive whole number`},
		{name: "device-twice", argv: []string{"set", "shop", "--device-read-bps", "/dev/sda:1mb", "--device-read-bps", "/dev/sda:2mb"}, want: "--device-read-bps: /dev/sda given twice"},
		{name: "device-quote", argv: []string{"set", "shop", "--device-read-bps", "/dev/s'da:1mb"}, want: `--device-read-bps: "/dev/s'da:1mb": ` + onlySafe},
		// Issue 8: each of these was saved and broke (or would run a command
		// at) the next deploy. The device is checked as Docker will use it.
		{name: "device-null", argv: []string{"set", "shop", "--device-read-bps", "/dev/null:10mb"}, want: "--device-read-bps: /dev/null is not a block device but a character device"},
		{name: "device-dotdot", argv: []string{"set", "shop", "--device-read-bps", "/dev/../etc/passwd:1mb"}, want: `--device-read-bps: "/dev/../etc/passwd": the device path must be clean (no .., //, trailing /)`},
		{name: "device-missing", argv: []string{"set", "shop", "--device-write-iops", "/dev/netshape-no-such-disk:10"}, want: "--device-write-iops: /dev/netshape-no-such-disk does not exist"},
		{name: "device-cmd-subst", argv: []string{"set", "shop", "--device-read-bps", "/dev/sd$(id):1mb"}, want: `--device-read-bps: "/dev/sd$(id):1mb": ` + onlySafe},
		{name: "device-backquote", argv: []string{"set", "shop", "--device-read-bps", "/dev/sd`id`:5"}, want: "--device-read-bps: \"/dev/sd`id`:5\": " + onlySafe},
		{name: "device-alias-twice", argv: []string{"set", "shop", "--device-read-bps", "/dev/sda:1mb", "--device-read-bps", "/dev/disk/by-id/ata-disk0:2mb"},
			want: "--device-read-bps: /dev/sda and /dev/disk/by-id/ata-disk0 are the same device"},
		{name: "device-bad-after-good", argv: []string{"set", "shop", "--blkio-weight", "500", "--memory", "64m", "--device-read-bps", "/dev/sda:1mb", "--device-write-bps", "/dev/null:1mb"},
			want: "--device-write-bps: /dev/null is not a block device but a character device"},
		// Empty process type and repeated flags.
		{name: "process-type-empty", argv: []string{"set", "shop", "--process-type", "", "--egress", "1mbit"}, want: "--process-type: empty value (leave the flag out to mean every process type)"},
		{name: "clear-process-type-empty", argv: []string{"clear", "shop", "--process-type=", "--all"}, want: "--process-type: empty value (leave the flag out to mean every process type)"},
		{name: "egress-twice", argv: []string{"set", "shop", "--egress", "NaN", "--egress", "2mbit"}, want: "set: --egress given more than once"},
		{name: "egress-twice-equals", argv: []string{"set", "shop", "--egress=2mbit", "-egress", "3mbit"}, want: "set: --egress given more than once"},
		{name: "memory-twice", argv: []string{"set", "shop", "--memory", "64m", "--cpus", "1", "--memory", "128m"}, want: "set: --memory given more than once"},
		{name: "process-type-twice", argv: []string{"set", "shop", "--process-type", "web", "--process-type", "worker", "--egress", "1mbit"}, want: "set: --process-type given more than once"},
		{name: "bool-twice", argv: []string{"clear", "shop", "--egress", "--egress"}, want: "clear: --egress given more than once"},
		{name: "no-apply-twice", argv: []string{"set", "shop", "--blkio-weight", "20", "--no-apply", "--no-apply"}, want: "set: --no-apply given more than once"},
		{name: "report-format-twice", argv: []string{"report", "shop", "--format", "json", "--format=stdout"}, want: "--format given more than once"},
		// An operator line already uses --device-write-bps: the egress given
		// alongside must not be saved either.
		{name: "operator-conflict", argv: []string{"set", "shop", "--egress", "5mbit", "--device-write-bps", "/dev/sda:1mb"},
			want: "docker-options of shop (_default_, deploy): an operator-written docker option already sets this flag: --device-write-bps=/dev/sdb:5mb — remove them with `dokku docker-options:remove` first"},
		// Conflicting or missing flags, extra arguments.
		{name: "clear-all-egress", argv: []string{"clear", "shop", "--all", "--egress"}, want: "--all already clears --egress and --ingress: give one or the other"},
		{name: "clear-nothing", argv: []string{"clear", "shop"}, want: "nothing to clear: give --egress, --ingress or --all"},
		{name: "apply-app-and-all", argv: []string{"apply", "shop", "--all"}, want: "give APP or --all, not both"},
		{name: "apply-nothing", argv: []string{"apply"}, want: "expected APP or --all"},
		{name: "report-format-and-field", argv: []string{"report", "shop", "--format", "json", "--netshape-egress"}, want: "--format cannot be combined with --netshape-FIELD"},
		{name: "report-two-fields", argv: []string{"report", "shop", "--netshape-egress", "--netshape-ingress"}, want: "only one --netshape-FIELD at a time"},
		{name: "report-bad-format", argv: []string{"report", "shop", "--format", "xml"}, want: `--format: "xml" is not stdout or json`},
		{name: "report-format-no-value", argv: []string{"report", "shop", "--format"}, want: "--format needs a value: stdout or json"},
		{name: "report-unknown-field", argv: []string{"report", "shop", "--netshape-bogus"}, want: "--netshape-bogus: unknown field; fields: --netshape-" + strings.Join(reportFields, ", --netshape-")},
		{name: "report-two-apps", argv: []string{"report", "shop", "other"}, want: `expected at most one APP, got "shop" and "other"`},
		{name: "set-nothing", argv: []string{"set", "shop"}, want: "nothing to set: give at least one of --egress, --ingress, --network, --memory, --memory-swap, --cpus, --blkio-weight, --device-*"},
		{name: "set-no-app", argv: []string{"set", "--egress", "1mbit"}, want: "expected exactly one APP, got 0 arguments"},
		{name: "set-extra-arg", argv: []string{"set", "shop", "extra", "--egress", "1mbit"}, want: "expected exactly one APP, got 2 arguments"},
		{name: "clear-extra-arg", argv: []string{"clear", "shop", "extra", "--egress"}, want: "expected exactly one APP, got 2 arguments"},
		{name: "apply-extra-arg", argv: []string{"apply", "shop", "other"}, want: "expected APP or --all"},
		{name: "remove-extra-arg", argv: []string{"remove", "shop", "other"}, want: "expected exactly one APP"},
		{name: "unknown-flag", argv: []string{"clear", "shop", "--egres"}, want: "clear: flag provided but not defined: -egres (see --help)"},
		{name: "unknown-command", argv: []string{"sett", "shop"}, want: "unknown command \"sett\": run `dokku-netshape help` for the list"},
		// Host-wide settings (issue 9) and the usage flags.
		{name: "global-nothing", argv: []string{"set", "--global"}, want: "nothing to set: --global takes --monitor on|off or --metrics-addr HOST:PORT|off"},
		{name: "global-with-app", argv: []string{"set", "shop", "--global", "--monitor", "on"}, want: `--global takes no APP (got "shop")`},
		{name: "global-with-limit", argv: []string{"set", "--global", "--egress", "1mbit"}, want: "--egress is per app: give APP instead of --global"},
		{name: "global-monitor-word", argv: []string{"set", "--global", "--monitor", "yes"}, want: `--monitor: "yes" is not on or off`},
		{name: "monitor-per-app", argv: []string{"set", "shop", "--monitor", "on"}, want: "--monitor is host-wide: use `set --global --monitor ...`"},
		{name: "global-metrics-no-port", argv: []string{"set", "--global", "--metrics-addr", "127.0.0.1"}, want: `--metrics-addr: metrics address "127.0.0.1": want HOST:PORT, e.g. 127.0.0.1:9479`},
		{name: "global-metrics-name", argv: []string{"set", "--global", "--metrics-addr", "metrics.example:9479"}, want: `--metrics-addr: metrics address "metrics.example:9479": host must be an IP address or localhost`},
		{name: "global-metrics-bad-with-good-monitor", argv: []string{"set", "--global", "--monitor", "on", "--metrics-addr", "1.2.3.4:99999"}, want: `--metrics-addr: metrics address "1.2.3.4:99999": port must be a number 0..65535`},
		{name: "report-window-long", argv: []string{"report", "shop", "--sample-window", "1m"}, want: `--sample-window: "1m" is not a duration from 10ms to 10s`},
		{name: "report-window-word", argv: []string{"report", "shop", "--sample-window", "soon"}, want: `--sample-window: "soon" is not a duration from 10ms to 10s`},
		{name: "report-window-no-value", argv: []string{"report", "shop", "--sample-window"}, want: "--sample-window needs a duration, e.g. 500ms"},
		{name: "watch-nice-high", argv: []string{"watch", "--nice", "20"}, want: "--nice 20: want -20 (first) to 19 (last)"},
		{name: "watch-nice-low", argv: []string{"watch", "--nice", "-21"}, want: "--nice -21: want -20 (first) to 19 (last)"},
		{name: "watch-nice-word", argv: []string{"watch", "--nice", "high"}, want: `watch: invalid value "high" for flag -nice: parse error (see --help)`},
		{name: "top-interval-short", argv: []string{"top", "--interval", "1ms"}, want: "--interval 1ms is outside 100ms..1m0s"},
		{name: "top-count-negative", argv: []string{"top", "--count", "-2"}, want: "--count -2 is outside 0..1000000"},
		{name: "top-arg", argv: []string{"top", "shop"}, want: `top takes no arguments (got "shop")`},
		// The Dokku tree is missing.
		{name: "set-no-dokku-root", argv: []string{"set", "shop", "--egress", "1mbit"}, env: map[string]string{"DOKKU_ROOT": missing},
			want: "Dokku tree " + missing + " does not exist (set DOKKU_ROOT / DOKKU_LIB_ROOT)"},
		{name: "clear-no-dokku-root", argv: []string{"clear", "shop", "--all"}, env: map[string]string{"DOKKU_ROOT": missing},
			want: "Dokku tree " + missing + " does not exist (set DOKKU_ROOT / DOKKU_LIB_ROOT)"},
		{name: "apply-no-dokku-root", argv: []string{"apply", "--all"}, env: map[string]string{"DOKKU_ROOT": missing},
			want: "Dokku tree " + missing + " does not exist (set DOKKU_ROOT / DOKKU_LIB_ROOT)"},
		{name: "report-no-lib-root", argv: []string{"report"}, env: map[string]string{"DOKKU_LIB_ROOT": missing},
			want: "Dokku tree " + missing + " does not exist (set DOKKU_ROOT / DOKKU_LIB_ROOT)"},
		// Through Dokku's entry points.
		{name: "subcommand-bad-name", argv0: "/var/lib/dokku/plugins/enabled/netshape/subcommands/set",
			argv: []string{"netshape:set", "../x", "--egress", "1mbit"}, want: invalidName + `"../x"`},
		{name: "commands-nothing", argv0: "/var/lib/dokku/plugins/enabled/netshape/commands",
			argv: []string{"netshape:set", "shop"}, want: "nothing to set: give at least one of --egress, --ingress, --network, --memory, --memory-swap, --cpus, --blkio-weight, --device-*"},
		{name: "trigger-no-args", argv0: "/var/lib/dokku/plugins/enabled/netshape/post-deploy", want: "trigger post-deploy: expected 1 arguments, got 0"},
		{name: "trigger-deploy-bad-name", argv0: "/var/lib/dokku/plugins/enabled/netshape/post-deploy",
			argv: []string{"../x", "", "", "latest"}, want: invalidName + `"../x"`},
		{name: "trigger-rename-bad-new", argv0: "/var/lib/dokku/plugins/enabled/netshape/post-app-rename-setup",
			argv: []string{"shop", "../x"}, want: invalidName + `"../x"`},
		{name: "trigger-clone-bad-old", argv0: "/var/lib/dokku/plugins/enabled/netshape/post-app-clone-setup",
			argv: []string{"../x", "new"}, want: invalidName + `"../x"`},
		{name: "trigger-delete-bad-name", argv0: "/var/lib/dokku/plugins/enabled/netshape/post-delete",
			argv: []string{"a/b", "latest"}, want: invalidName + `"a/b"`},
	}
	if len(cases) < 40 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			tree, budgets := treeSnapshot(t, base), e.shaperState(t)
			argv0 := c.argv0
			if argv0 == "" {
				argv0 = "dokku-netshape"
			}
			o := capture(t, append([]string{argv0}, c.argv...)...)
			if o.code != exitRefused {
				t.Errorf("exit %d, want %d (refused, nothing changed)\n%s", o.code, exitRefused, o)
			}
			if want := " !     " + c.want + "\n"; o.stderr != want || o.stdout != "" {
				t.Errorf("output\n%s\nwant stderr exactly\n%s", o, want)
			}
			if d := diffSnapshots(tree, treeSnapshot(t, base)); len(d) > 0 {
				t.Errorf("Dokku tree changed:\n%s", strings.Join(d, "\n"))
			}
			if after := e.shaperState(t); after != budgets {
				t.Errorf("shaper state changed:\n%s\n---\n%s", budgets, after)
			}
		})
	}
	// The fixture still holds what it started with (the snapshots compare
	// each case with the one before; this pins the start).
	if v, _, _ := prop(t, e, "resource", "shop", "_default_.limit.network-egress"); v != "20mbit" {
		t.Fatalf("egress limit now %q", v)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatalf("%s was created", missing)
	}
}
