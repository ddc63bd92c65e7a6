package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

// watchStats makes a running watcher print its goroutine and open-descriptor
// counts on SIGUSR1, so a leak in a long-lived process can be seen from
// outside (test/faults soaks it). It returns the function that stops it.
func watchStats(w io.Writer) func() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-sig:
				fmt.Fprintf(w, "netshape watch: stats goroutines=%d fds=%d\n", runtime.NumGoroutine(), openFDs())
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
	}
}

// openFDs counts this process's descriptors, less the one reading the list.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1
}
