package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"
)

// watchStats makes a running watcher print its goroutine and open-descriptor
// counts on SIGUSR1, so a leak in a long-lived process can be seen from
// outside (test/faults soaks it). It returns the function that stops it.
//
// Caches are emptied first (closeIdle: Docker's idle keep-alive connections,
// each one descriptor and two goroutines, more of them after two calls
// overlapped), and the goroutine count is read once it has stopped falling,
// so the numbers are what the watcher holds, comparable from one to the next.
func watchStats(w io.Writer, closeIdle func()) func() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-sig:
				closeIdle()
				n := settledGoroutines()
				fmt.Fprintf(w, "netshape watch: stats goroutines=%d fds=%d\n", n, openFDs())
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

// settledGoroutines waits (at most a second) until the goroutine count holds
// still for 50 ms: closed connections' goroutines end just after the close.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for end, still := time.Now().Add(time.Second), 0; still < 5 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			still++
		} else {
			n, still = m, 0
		}
	}
	return n
}

// openFDs counts this process's descriptors, less the one reading the list.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1
}
