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

// startProfile writes a CPU profile of this process into the directory NETSHAPE_PROFILE_DIR
// names, one per process (named by its arguments and pid), and with NETSHAPE_PROFILE_TRACE=1
// an execution trace beside it (where the time went blocked), for finding where a command's
// time goes: `go build -tags pprof`. Production builds have none of this (profile.go).
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
	pprof.StartCPUProfile(cpu)
	var tr *os.File
	if os.Getenv("NETSHAPE_PROFILE_TRACE") == "1" {
		if tr, err = os.Create(base + ".trace"); err == nil {
			trace.Start(tr)
		}
	}
	return func() {
		if tr != nil {
			trace.Stop()
			tr.Close()
		}
		pprof.StopCPUProfile()
		cpu.Close()
	}
}
