//go:build pprof

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"strings"
)

// startProfile writes a CPU profile and an execution trace of this process into the
// directory NETSHAPE_PROFILE_DIR names, one pair per process (named by its arguments and
// pid), for finding where a command's time goes: `go build -tags pprof`. Production builds
// have none of this (profile.go).
func startProfile() func() {
	dir := os.Getenv("NETSHAPE_PROFILE_DIR")
	if dir == "" {
		return func() {}
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(strings.Join(os.Args[1:], "_"))
	base := filepath.Join(dir, fmt.Sprintf("%s-%d", name, os.Getpid()))
	cpu, err := os.Create(base + ".cpu")
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return func() {}
	}
	tr, err := os.Create(base + ".trace")
	if err != nil {
		cpu.Close()
		fmt.Fprintln(os.Stderr, "profile:", err)
		return func() {}
	}
	pprof.StartCPUProfile(cpu)
	trace.Start(tr)
	return func() {
		trace.Stop()
		pprof.StopCPUProfile()
		tr.Close()
		cpu.Close()
	}
}
