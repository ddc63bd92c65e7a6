// Command bench turns `go test -bench` output (stdin) and the results of the
// VM benchmarks (vmrun's summary.json) into BENCH.md: each benchmark with a
// target is checked, and the command fails if one is missed. `make bench`
// runs it; the targets live here, next to their reasons.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

type target struct {
	bench  string  // benchmark name without the -GOMAXPROCS suffix
	metric string  // unit as go test prints it
	max    float64 // pass when measured <= max; 0: reported, no target
	why    string
}

var targets = []target{
	{"BenchmarkEDTPacket/bulk-9000B", "kernel-ns/packet", 1000,
		"per-packet datapath cost: at 1 µs one CPU still stamps 1 Mpps, 10 Gbit/s of 1500-byte frames"},
	{"BenchmarkEDTPacket/sparse-100B", "kernel-ns/packet", 1000, "same, for the express (sparse flow) path"},
	{"BenchmarkCountPacket", "kernel-ns/packet", 100,
		"count-only attachment (every app counted, limited or not): a config and a counter lookup, no clock, no qdisc"},
	{"BenchmarkLimitPacket", "kernel-ns/packet", 1000, "the no-fq policer (degraded mode): the shaping clock without flows or stamps"},
	{"BenchmarkEDTPacketBudgets", "ns/packet-at-1000", 1000, "the same cost with 1,000 budgets in the maps"},
	{"BenchmarkEDTPacketBudgets", "x-at-1000", 1.3, "flat: at 1,000 budgets within 30 % of the cost at one (same run)"},
	{"BenchmarkRateChange", "ns/op", 1e6, "a live rate change is one map write: well under a millisecond"},
	{"BenchmarkRateChange", "allocs/op", 64, "control plane stays allocation-light"},
	{"BenchmarkParse", "ns/op", 5000, "rate parsing is on every CLI call and report"},
	{"BenchmarkAttachDetach/tc", "ns/op", 2e6, "one device attached and detached (a container start and stop) with clsact + cls_bpf, the default"},
	{"BenchmarkAttachDetach/tcx", "ns/op", 0, "the same with TCX links: each attach and detach waits out an RCU grace period under RTNL (why TCX is not the default)"},
	{"BenchmarkScale", "containers", 0, "test/scale on the host (real hardware, no TCG): namespaces with a veth each, served to the real CLI as Dokku deploy containers (BENCH_SCALE_APPS × 4); without sch_fq on the host kernel every shaping attachment is the no-fq policer"},
	{"BenchmarkScale", "apply-all-s", 10, "`apply --all` on nothing attached: every container shaped both ways with its backstop (three clsact + cls_bpf attaches each, all running one shared, already verified program instance)"},
	{"BenchmarkScale", "apply-app-ms", 100, "`apply APP` (4 containers) among all the others, everything already in place"},
	{"BenchmarkScale", "apply-all-again-s", 0, "`apply --all` again, nothing to change"},
	{"BenchmarkScale", "report-s", 0, "`report --format json` of every app"},
	{"BenchmarkScale", "apply-all-rss-MiB", 0, "peak RSS of the first `apply --all`"},
	{"BenchmarkScale", "report-rss-MiB", 0, "peak RSS of `report`"},
}

// vmTarget is a field of a NETSHAPE-RESULT object a VM benchmark reported.
type vmTarget struct {
	metric string // the result's "metric"
	field  string
	max    float64 // 0: no upper target
	min    float64 // 0: no lower target
	why    string
}

var vmTargets = []vmTarget{
	{"watch_start_to_shaped", "starts", 0, 100, "container starts measured (deploys and `docker restart`s, alternating)"},
	{"watch_start_to_shaped", "p50_ms", 0, 0, "Docker's State.StartedAt → both directions attached (the watcher's timestamp; the registry is checked after each start)"},
	{"watch_start_to_shaped", "p99_ms", 100, 0, "the window in which a new container runs unshaped, under qemu TCG"},
	{"watch_start_to_shaped", "max_ms", 0, 0, "worst start"},
	{"watch_start_to_shaped", "backstop_p50_ms", 0, 0, "StartedAt → the egress backstop attached too (raw-socket egress policed from then)"},
	{"watch_start_to_shaped", "backstop_p99_ms", 0, 0, ""},
	{"watch_start_to_shaped", "shape_work_p50_ms", 0, 0, "the watcher's own work from Docker's event (inspect, plan, three attaches)"},
	{"watch_start_to_shaped", "shape_work_p99_ms", 0, 0, ""},
	{"watch_start_to_shaped", "locked_p50_ms", 0, 0, "of that work: the event's receipt → the reconcile lock held (a whole-app reconcile may hold it)"},
	{"watch_start_to_shaped", "locked_p99_ms", 0, 0, ""},
	{"watch_start_to_shaped", "found_p50_ms", 0, 0, "of that work: the event's receipt → the app's limits read and the container's process found (its cgroup; Docker's inspect only if that fails)"},
	{"watch_start_to_shaped", "found_p99_ms", 0, 0, ""},
	{"watch_start_to_shaped", "attach_from_p50_ms", 0, 0, "the event's receipt → the first attach began (after the lock and the plan); the rest is the attaches"},
	{"watch_start_to_shaped", "attach_from_p99_ms", 0, 0, ""},
	{"watch_property_change", "p50_ms", 0, 0, "property written (in place, renamed, deleted) → rate/attachment in the pinned maps (5 ms poll)"},
	{"watch_property_change", "p99_ms", 1000, 0, "`dokku resource:limit --network-egress` takes effect without a deploy"},
	{"watch_property_change", "max_ms", 0, 0, ""},
	{"scale", "containers", 0, 1000, "test/scale: namespaces with a veth each, served to the real CLI as Dokku deploy containers (250 apps × 4)"},
	{"scale", "apply_all_s", 10, 0, "`apply --all`: 1,000 containers shaped both ways with backstops (3,000 attachments), under qemu TCG"},
	{"scale", "apply_all_rss_mib", 0, 0, "its peak RSS"},
	{"scale", "apply_app_ms", 100, 0, "`apply APP` (4 containers) among 1,000, everything already in place"},
	{"scale", "apply_all_again_s", 0, 0, "`apply --all` again, nothing to change"},
	{"scale", "report_s", 0, 0, "`report --format json` of every app"},
	{"scale", "report_rss_mib", 0, 0, "its peak RSS"},
}

// vmResults reads every result object of a vmrun summary, keyed by metric and kernel.
func vmResults(path string) (map[string]map[string]map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var sum struct {
		Kernels []struct {
			Kernel  string           `json:"kernel"`
			Results []map[string]any `json:"results"`
		} `json:"kernels"`
	}
	if err := json.Unmarshal(b, &sum); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]map[string]map[string]any{}
	for _, k := range sum.Kernels {
		for _, r := range k.Results {
			m, _ := r["metric"].(string)
			if out[m] == nil {
				out[m] = map[string]map[string]any{}
			}
			out[m][k.Kernel] = r
		}
	}
	return out, nil
}

var line = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+\d+\s+(.*)$`)

func main() {
	out := flag.String("out", "BENCH.md", "markdown file to write")
	vm := flag.String("vm", "", "vmrun summary.json of the VM benchmarks (make vm-bench); empty: none")
	flag.Parse()
	results := map[string]map[string]float64{}
	var order []string
	raw := &strings.Builder{}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		l := sc.Text()
		raw.WriteString(l + "\n")
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		fields := strings.Fields(m[3])
		metrics := map[string]float64{}
		for i := 0; i+1 < len(fields); i += 2 {
			if v, err := strconv.ParseFloat(fields[i], 64); err == nil {
				metrics[fields[i+1]] = v
			}
		}
		if _, seen := results[m[1]]; !seen {
			order = append(order, m[1])
		}
		results[m[1]] = metrics
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\nWritten by `make bench` on %s. Targets are in test/bench/main.go.\n\n", time.Now().UTC().Format(time.RFC3339))
	b.WriteString("| benchmark | metric | measured | target | |\n|---|---|---|---|---|\n")
	failed := 0
	targetsChecked := 0
	for _, t := range targets {
		v, ok := results[t.bench][t.metric]
		if t.max == 0 { // reported, no target
			fmt.Fprintf(&b, "| %s | %s | %s | — | %s |\n", t.bench, t.metric, num(v, ok), t.why)
			continue
		}
		targetsChecked++
		status := "PASS"
		switch {
		case !ok:
			status, failed = "MISSING", failed+1
		case v > t.max:
			status, failed = "FAIL", failed+1
		}
		fmt.Fprintf(&b, "| %s | %s | %g | ≤ %g | %s — %s |\n", t.bench, t.metric, v, t.max, status, t.why)
	}
	if *vm != "" {
		res, err := vmResults(*vm)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		b.WriteString("\n## In a VM (qemu TCG guest, dockerd inside, `dokku-netshape watch` running)\n\n")
		b.WriteString("| metric | kernel | field | measured | target | |\n|---|---|---|---|---|---|\n")
		for _, t := range vmTargets {
			kernels := slices.Sorted(maps.Keys(res[t.metric]))
			if len(kernels) == 0 {
				kernels = []string{"-"}
			}
			for _, k := range kernels {
				v, ok := res[t.metric][k][t.field].(float64)
				target, status := "—", ""
				if t.max > 0 || t.min > 0 {
					targetsChecked++
					target, status = fmt.Sprintf("≤ %g", t.max), "PASS"
					if t.min > 0 {
						target = fmt.Sprintf("≥ %g", t.min)
					}
					switch {
					case !ok:
						status, failed = "MISSING", failed+1
					case t.max > 0 && v > t.max, t.min > 0 && v < t.min:
						status, failed = "FAIL", failed+1
					}
				}
				why := t.why
				if status != "" {
					why = status + " — " + why
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", t.metric, k, t.field, num(v, ok), target, why)
			}
		}
		failed += soakSection(&b, *vm)
	}
	b.WriteString("\n## All results\n\n```\n" + raw.String() + "```\n")
	if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("bench: wrote %s, %d of %d targets missed\n", *out, failed, targetsChecked)
	if failed > 0 {
		os.Exit(1)
	}
}

func num(v float64, ok bool) string {
	if !ok {
		return "missing"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}
