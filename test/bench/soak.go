package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// The soak (test/faults TestVMSoakWatch) runs in a VM guest; vmrun's summary holds its
// result object. Its target is no growth at all: every count taken after the events must
// be at most the baseline taken after the warm-up.

type vmSummary struct {
	Kernels []struct {
		Kernel  string            `json:"kernel"`
		Release string            `json:"release"`
		Passed  bool              `json:"passed"`
		Results []json.RawMessage `json:"results"`
		Tests   []struct {
			Name   string `json:"name"`
			Result string `json:"result"`
		} `json:"tests"`
	} `json:"kernels"`
}

type soakResult struct {
	Metric       string         `json:"metric"`
	Events       int            `json:"events"`
	Warmup       int            `json:"warmup_events"`
	Seconds      float64        `json:"seconds"`
	EventsPerSec float64        `json:"events_per_sec"`
	Growth       map[string]int `json:"growth"`
	Final        map[string]any `json:"final"`
	ProgsHeld    int            `json:"programs_held"`
	Watcher      map[string]int `json:"watcher_final"`
	Flows        int            `json:"flows"`
}

// minSoakEvents is what the bench soak must have driven for its result to count.
const minSoakEvents = 1000

var growthWhy = map[string]string{
	"attachments": "registry entries", "stale": "registry entries of devices that are gone",
	"unrecorded": "our fq or filter on a device the registry does not know", "pins": "files under the pin dir",
	"link_pins": "TCX link pins", "legacy_filters": "netshape_edt cls_bpf filters", "fq_roots": "fq 4e53: roots",
	"tcx_links": "kernel TCX links running netshape_edt", "names": "budget names map entries",
	"cfg": "budget config entries", "state": "budget state entries", "stats": "budget counter entries",
	"flows_of_deleted_budgets": "flow entries of deleted budgets", "goroutines": "watcher goroutines",
	"fds": "watcher open descriptors (its own count)", "proc_fds": "watcher open descriptors (/proc/PID/fd)",
}

// soakSection appends the soak table and returns how many targets it missed.
func soakSection(b *strings.Builder, path string) int {
	b.WriteString("\n## Soak: container events against a running watcher (VM, `make vm-bench`)\n\n")
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(b, "MISSING: %v\n", err)
		return 1
	}
	var sum vmSummary
	if err := json.Unmarshal(raw, &sum); err != nil {
		fmt.Fprintf(b, "MISSING: %s: %v\n", path, err)
		return 1
	}
	failed, found := 0, 0
	for _, k := range sum.Kernels {
		for _, t := range k.Tests {
			if t.Name == "TestVMSoakWatch" && t.Result != "PASS" {
				fmt.Fprintf(b, "%s: TestVMSoakWatch %s (see the vmrun console log)\n\n", k.Kernel, t.Result)
				failed++
			}
		}
		for _, r := range k.Results {
			var s soakResult
			if json.Unmarshal(r, &s) != nil || s.Metric != "soak" {
				continue
			}
			found++
			fmt.Fprintf(b, "Kernel %s (%s): %d events (restart, stop, start of 4 containers of 2 apps, 4 at a time), "+
				"%d of them after the warm-up baseline in %.0f s (%.2f events/s under qemu TCG). End state: %v attachments, %d flow entries.\n\n",
				k.Kernel, k.Release, s.Events, s.Events-s.Warmup, s.Seconds, s.EventsPerSec, s.Final["attachments"], s.Flows)
			b.WriteString("| count | growth | target | |\n|---|---|---|---|\n")
			if s.Events < minSoakEvents {
				fmt.Fprintf(b, "| events driven | %d | ≥ %d | FAIL |\n", s.Events, minSoakEvents)
				failed++
			}
			keys := make([]string, 0, len(s.Growth))
			for key := range s.Growth {
				keys = append(keys, key)
			}
			sort.Strings(keys)
			for _, key := range keys {
				status := "PASS"
				if s.Growth[key] > 0 {
					status, failed = "FAIL", failed+1
				}
				fmt.Fprintf(b, "| %s | %+d | ≤ 0 | %s — %s |\n", key, s.Growth[key], status, growthWhy[key])
			}
			b.WriteString("\n")
		}
	}
	if found == 0 {
		fmt.Fprintf(b, "MISSING: no soak result in %s\n", path)
		failed++
	}
	return failed
}
