// Command app is the process inside netshape's test containers: a static binary with no
// dependencies, so an image can be made with `docker import` from a one-file tar.
//
// It listens on TCP (default :8080) and, per connection, answers every "ping\n" line with
// "pong\n" and discards anything else. With -hold-mib N it keeps N MiB resident.
// It exits on SIGTERM/SIGINT at once: as PID 1 in a container it would otherwise ignore them
// and make every `docker stop` wait its timeout.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	listen := flag.String("listen", ":8080", "TCP address to listen on")
	hold := flag.Int("hold-mib", 0, "allocate and touch this many MiB and keep them (to test memory limits)")
	flag.Parse()

	held := make([]byte, *hold<<20)
	for i := 0; i < len(held); i += 4096 {
		held[i] = 1 // touch every page so it is resident, not just reserved
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Printf("accept: %v", err)
				return
			}
			go serve(c)
		}
	}()
	s := <-sig
	fmt.Printf("exiting on %v (held %d MiB)\n", s, len(held)>>20)
}

func serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64*1024)
	for {
		// ReadSlice does not grow the buffer: a long line without '\n' (bulk data) comes back
		// in pieces with ErrBufferFull and is dropped, so memory stays bounded.
		line, err := r.ReadSlice('\n')
		if err == nil && strings.TrimSpace(string(line)) == "ping" {
			if _, err := c.Write([]byte("pong\n")); err != nil {
				return
			}
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}
