package scale

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku/dokkutest"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// scaleApps is the benchmark's app count: 250 (a thousand containers), or NETSHAPE_SCALE_APPS.
func scaleApps(t testing.TB) int {
	t.Helper()
	apps := 250
	if v := os.Getenv("NETSHAPE_SCALE_APPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			t.Fatalf("NETSHAPE_SCALE_APPS=%q: want 1 to 1000", v)
		}
		apps = n
	}
	return apps
}

// cliBinary is the CLI under test: NETSHAPE_BIN (make vm-test sets it), else built here.
func cliBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("NETSHAPE_BIN"); bin != "" {
		return bin
	}
	if vmresult.InVM() {
		t.Fatal("NETSHAPE_BIN is not set (make vm-test sets it)")
	}
	bin := filepath.Join(t.TempDir(), "dokku-netshape")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/dokku-netshape/dokku-netshape/cmd/dokku-netshape")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the CLI: %v\n%s", err, out)
	}
	return bin
}

const perApp = 4 // web.1 web.2 worker.1 worker.2

// runScale builds the rig (apps × perApp containers), times the CLI on it, checks what each
// command did, reports the timings as a result line (metric) and returns them.
func runScale(t testing.TB, apps int, metric string) scaleResult {
	bin := cliBinary(t)
	f := dokkutest.NewFixture(t)
	prefix := "sc" + nettest.Suffix()[:4]
	var records []Record
	for a := 0; a < apps; a++ {
		app := fmt.Sprintf("app%03d", a)
		f.AddApp(app, "web", 2, "worker", 2)
		f.SetResource(app, "", dokku.Limit, dokku.NetworkEgress, "20mbit")
		f.SetResource(app, "", dokku.Limit, dokku.NetworkIngress, "50mbit")
		for i := 0; i < perApp; i++ {
			proc, idx := "web", i+1
			if i >= 2 {
				proc, idx = "worker", i-1
			}
			n := len(records)
			records = append(records, Record{App: app, Process: proc, Index: idx, Netns: fmt.Sprintf("/run/netns/%s%d", prefix, n)})
		}
	}

	// Cleanups run last first: the namespaces go (taking their devices and
	// everything attached, in the kernel's batches), then the pins. Unpinned
	// first, each TCX link would detach on its own, a grace period apiece
	// under the RTNL lock, stalling every network change on the machine.
	pinDir := "/sys/fs/bpf/" + prefix
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	t0 := time.Now()
	makeNamespaces(t, prefix, len(records))
	setup := time.Since(t0)

	api, err := Serve(filepath.Join(t.TempDir(), "docker.sock"), records)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	env := append(os.Environ(), "DOCKER_HOST=unix://"+api.Socket, "NETSHAPE_PIN_DIR="+pinDir,
		"NETSHAPE_LOCK="+filepath.Join(t.TempDir(), "lock"))

	run := func(args ...string) (time.Duration, int64, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		t0 := time.Now()
		err := cmd.Run()
		took := time.Since(t0)
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, tail(out.String(), 40))
		}
		rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // KiB
		return took, rss, out.String()
	}
	counts := func(when string) {
		t.Helper()
		s, err := shaper.Open(shaper.Options{PinDir: pinDir})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		atts, err := s.Attachments()
		if err != nil {
			t.Fatal(err)
		}
		budgets, err := s.Budgets()
		if err != nil {
			t.Fatal(err)
		}
		perHook := map[shaper.Hook]int{}
		for _, a := range atts {
			perHook[a.Hook]++
			if !strings.HasPrefix(a.Device.Netns, "/run/netns/"+prefix) && !strings.HasPrefix(a.Device.Name, prefix) {
				t.Errorf("%s: attachment outside the rig: %+v", when, a)
			}
		}
		// eth0 in each namespace (egress), and on its host peer the ingress shaper and the backstop.
		if want := len(records); perHook[shaper.HookShape] != 2*want || perHook[shaper.HookPolice] != want {
			t.Fatalf("%s: %d shaping and %d backstop attachments, want %d and %d", when,
				perHook[shaper.HookShape], perHook[shaper.HookPolice], 2*want, want)
		}
		if len(budgets) != 2*apps {
			t.Fatalf("%s: %d budgets, want %d (egress and ingress per app)", when, len(budgets), 2*apps)
		}
	}

	allTook, allRSS, _ := run("apply", "--all")
	counts("after apply --all")
	middle := fmt.Sprintf("app%03d", apps/2)
	appTook, appRSS, appOut := run("apply", middle)
	counts("after apply " + middle)
	if strings.Contains(appOut, "app000") {
		t.Errorf("apply %s spoke of another app:\n%s", middle, appOut)
	}
	againTook, _, _ := run("apply", "--all")
	counts("after a second apply --all")
	reportTook, reportRSS, reportOut := run("report", "--format", "json")
	var parsed any
	if err := json.Unmarshal([]byte(reportOut), &parsed); err != nil {
		t.Fatalf("report --format json is not JSON: %v\n%s", err, tail(reportOut, 20))
	}
	for a := 0; a < apps; a++ {
		if app := fmt.Sprintf("app%03d", a); !strings.Contains(reportOut, `"`+app+`"`) {
			t.Fatalf("report does not name %s", app)
		}
	}
	if u := api.Unknown(); len(u) > 0 {
		t.Errorf("the CLI asked Docker for what the rig does not serve: %v", u)
	}
	fields := map[string]any{
		"containers": len(records), "apps": apps, "budgets": 2 * apps, "attachments": 3 * len(records),
		"setup_s":           setup.Seconds(),
		"apply_all_s":       allTook.Seconds(),
		"apply_all_rss_mib": float64(allRSS) / 1024,
		"apply_app_ms":      float64(appTook) / 1e6,
		"apply_app_rss_mib": float64(appRSS) / 1024,
		"apply_all_again_s": againTook.Seconds(),
		"report_s":          reportTook.Seconds(),
		"report_rss_mib":    float64(reportRSS) / 1024,
		"docker_calls":      api.Calls(),
	}
	t.Logf("%d containers of %d apps: apply --all %.1fs (%.0f MiB), apply APP %.0fms (%.0f MiB), again --all %.1fs, report %.1fs (%.0f MiB); rig set-up %.1fs",
		len(records), apps, allTook.Seconds(), float64(allRSS)/1024, float64(appTook)/1e6, float64(appRSS)/1024,
		againTook.Seconds(), reportTook.Seconds(), float64(reportRSS)/1024, setup.Seconds())
	vmresult.Report(t, metric, fields)
	return scaleResult{applyAll: allTook, applyAllRSS: allRSS, applyApp: appTook, applyAppRSS: appRSS,
		applyAllAgain: againTook, report: reportTook, reportRSS: reportRSS}
}

// scaleResult is what runScale measured: wall times, and peak RSS in KiB.
type scaleResult struct {
	applyAll, applyApp, applyAllAgain, report time.Duration
	applyAllRSS, applyAppRSS, reportRSS       int64
}

// makeNamespaces creates /run/netns/<prefix>N for N < n, each holding eth0 whose veth peer
// <prefix>N is in this namespace, in one `ip -batch` (one process, not 3n).
func makeNamespaces(t testing.TB, prefix string, n int) {
	t.Helper()
	var add, del strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&add, "netns add %s%d\nlink add %s%d type veth peer name eth0 netns %s%d\nlink set %s%d up\n",
			prefix, i, prefix, i, prefix, i, prefix, i)
		fmt.Fprintf(&del, "netns del %s%d\n", prefix, i)
	}
	t.Cleanup(func() {
		cmd := exec.Command("ip", "-force", "-batch", "-")
		cmd.Stdin = strings.NewReader(del.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("remove the rig's namespaces: %v: %s", err, tail(string(out), 5))
		}
	})
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(add.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("create %d namespaces: %v: %s", n, err, tail(string(out), 10))
	}
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
