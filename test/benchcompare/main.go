// Command benchcompare writes BENCHMARKS.md, BENCHMARKS.json and the comparison's plots from the
// vmrun summary files of `make bench-compare` (one per kernel). It fails when a kernel's guest run
// did not pass (a scheme that did not limit, a cell not measured) after writing what there is.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/report"
)

func main() {
	md := flag.String("md", "BENCHMARKS.md", "markdown file to write")
	js := flag.String("json", "BENCHMARKS.json", "JSON file to write")
	plots := flag.String("plots", "docs/bench", "directory for the PNG plots")
	command := flag.String("command", "make bench-compare", "the command line the files say produced them")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "benchcompare: give the summary.json of each kernel's run (make bench-compare-vm)")
		os.Exit(2)
	}
	var paths []string
	missing := 0
	for _, p := range flag.Args() {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(os.Stderr, "benchcompare: %v: that kernel's run left no results; it is left out\n", err)
			missing++
			continue
		}
		paths = append(paths, p)
	}
	run, err := report.Load(paths...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcompare:", err)
		os.Exit(1)
	}
	run.Date, run.Command = time.Now().UTC(), *command
	if err := report.Write(run, *md, *js, *plots); err != nil {
		fmt.Fprintln(os.Stderr, "benchcompare:", err)
		os.Exit(1)
	}
	failed := 0
	for _, k := range run.Kernels {
		if !k.Passed {
			failed++
			fmt.Fprintf(os.Stderr, "benchcompare: the %s run did not pass its checks; BENCHMARKS.md says so\n", k.Series)
		}
	}
	fmt.Printf("benchcompare: wrote %s, %s and plots in %s from %d cells on %d kernel(s)\n", *md, *js, *plots, len(run.Cells), len(run.Kernels))
	if failed+missing > 0 {
		os.Exit(1)
	}
}
