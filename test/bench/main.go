// Command bench turns `go test -bench` output (stdin) into BENCH.md: each
// benchmark with a target is checked, and the command fails if one is missed.
// `make bench` runs it; the targets live here, next to their reasons.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type target struct {
	bench  string  // benchmark name without the -GOMAXPROCS suffix
	metric string  // unit as go test prints it
	max    float64 // pass when measured <= max
	why    string
}

var targets = []target{
	{"BenchmarkEDTPacket/bulk-9000B", "kernel-ns/packet", 1000,
		"per-packet datapath cost: at 1 µs one CPU still stamps 1 Mpps, 10 Gbit/s of 1500-byte frames"},
	{"BenchmarkEDTPacket/sparse-100B", "kernel-ns/packet", 1000, "same, for the express (sparse flow) path"},
	{"BenchmarkRateChange", "ns/op", 1e6, "a live rate change is one map write: well under a millisecond"},
	{"BenchmarkRateChange", "allocs/op", 64, "control plane stays allocation-light"},
	{"BenchmarkParse", "ns/op", 5000, "rate parsing is on every CLI call and report"},
}

var line = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+\d+\s+(.*)$`)

func main() {
	out := flag.String("out", "BENCH.md", "markdown file to write")
	vm := flag.String("vm", "", "vmrun summary.json holding the soak run (make vm-bench); empty: no soak section")
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
	for _, t := range targets {
		v, ok := results[t.bench][t.metric]
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
		failed += soakSection(&b, *vm)
	}
	b.WriteString("\n## All results\n\n```\n" + raw.String() + "```\n")
	if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("bench: wrote %s, %d targets missed\n", *out, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
