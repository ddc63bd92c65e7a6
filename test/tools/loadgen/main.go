// Command loadgen is a small, static TCP traffic tool for tests and for use as a container "app"
// (build with CGO_ENABLED=0). Every mode stops by itself.
//
//	loadgen serve [-sink :5001] [-echo :5002] [-http :$PORT] [-duration 1h] [-report 0]
//	    sink counts received bytes; echo answers RR probes; http serves "/" (ok) and "/stats" (JSON).
//	loadgen send -to HOST:PORT [-duration 5s] [-conns 1]
//	    bulk send; one JSON line per second, then a final JSON line {"final":true,...}.
//	loadgen rr -to HOST:PORT [-count 100] [-size 64] [-interval 10ms]
//	    request/response latency against an echo port; prints one JSON line with p50/p90/p99/max.
//	loadgen bypass -dev eth0 -to IPv4:PORT -dstmac MAC [-size 1514] [-duration 5s]
//	    raw UDP frames through an AF_PACKET socket with PACKET_QDISC_BYPASS (needs CAP_NET_RAW,
//	    which Docker grants by default): what a container can send past its eth0's qdisc and
//	    tc egress hook. Prints one JSON line with what the socket accepted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "send":
		err = send(ctx, os.Args[2:])
	case "rr":
		err = rr(ctx, os.Args[2:])
	case "bypass":
		err = bypass(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen serve|send|rr|bypass [flags]  (loadgen MODE -h for flags)")
	os.Exit(2)
}

func printJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func boundedDuration(d time.Duration) error {
	if d <= 0 || d > traffic.MaxDuration*6 {
		return fmt.Errorf("duration %s: must be in (0, %s]", d, traffic.MaxDuration*6)
	}
	return nil
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	sinkAddr := fs.String("sink", ":5001", "TCP sink address (empty: off)")
	echoAddr := fs.String("echo", ":5002", "TCP echo address (empty: off)")
	defHTTP := ""
	if p := os.Getenv("PORT"); p != "" {
		defHTTP = ":" + p // what Dokku gives a web process
	}
	httpAddr := fs.String("http", defHTTP, "HTTP address for / and /stats (default :$PORT if set, else off)")
	// An app container lives as long as a test needs it, but never forever.
	dur := fs.Duration("duration", time.Hour, "exit after this long")
	report := fs.Duration("report", 0, "print received bytes/rate at this interval (0: off)")
	_ = fs.Parse(args)
	if err := boundedDuration(*dur); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()

	var sink *traffic.Sink
	if *sinkAddr != "" {
		ln, err := net.Listen("tcp", *sinkAddr)
		if err != nil {
			return fmt.Errorf("sink listen: %w", err)
		}
		sink = traffic.NewSink(ln)
		defer sink.Close()
	}
	if *echoAddr != "" {
		ln, err := net.Listen("tcp", *echoAddr)
		if err != nil {
			return fmt.Errorf("echo listen: %w", err)
		}
		echo := traffic.NewEcho(ln)
		defer echo.Close()
	}
	stats := func() map[string]any {
		m := map[string]any{"bytes": int64(0), "conns": int64(0)}
		if sink != nil {
			m["bytes"], m["conns"] = sink.Bytes(), sink.Conns()
		}
		return m
	}
	if *httpAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(stats())
		})
		srv := &http.Server{Addr: *httpAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return fmt.Errorf("http listen: %w", err)
		}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	printJSON(map[string]any{"serving": true, "sink": *sinkAddr, "echo": *echoAddr, "http": *httpAddr})

	var tick <-chan time.Time
	if *report > 0 {
		t := time.NewTicker(*report)
		defer t.Stop()
		tick = t.C
	}
	last, lastT := int64(0), time.Now()
	for {
		select {
		case <-ctx.Done():
			printJSON(stats())
			return nil
		case now := <-tick:
			s := stats()
			b := s["bytes"].(int64)
			s["bits_per_sec"] = float64(b-last) * 8 / now.Sub(lastT).Seconds()
			last, lastT = b, now
			printJSON(s)
		}
	}
}

func send(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	to := fs.String("to", "", "sink address HOST:PORT")
	dur := fs.Duration("duration", 5*time.Second, "how long to send")
	conns := fs.Int("conns", 1, "parallel connections")
	_ = fs.Parse(args)
	if *to == "" {
		return errors.New("send: -to is required")
	}
	res, err := traffic.Send(ctx, traffic.SendOptions{
		Addr: *to, Duration: *dur, Conns: *conns,
		OnSecond: func(s int, bps float64) { printJSON(map[string]any{"second": s, "bits_per_sec": bps}) },
	})
	if err != nil {
		return err
	}
	printJSON(map[string]any{"final": true, "bytes": res.Bytes, "seconds": res.Seconds,
		"bits_per_sec": res.BitsPerSec, "per_second_bits": res.PerSecond})
	return nil
}

func rr(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rr", flag.ExitOnError)
	to := fs.String("to", "", "echo address HOST:PORT")
	count := fs.Int("count", 100, "requests")
	size := fs.Int("size", 64, "bytes per request")
	interval := fs.Duration("interval", 10*time.Millisecond, "pause between requests")
	_ = fs.Parse(args)
	if *to == "" {
		return errors.New("rr: -to is required")
	}
	l, err := traffic.RR(ctx, traffic.RROptions{Addr: *to, Count: *count, Size: *size, Interval: *interval})
	if err != nil {
		return err
	}
	printJSON(l)
	return nil
}

func bypass(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bypass", flag.ExitOnError)
	dev := fs.String("dev", "eth0", "interface to send on")
	to := fs.String("to", "", "IPv4 destination HOST:PORT (UDP)")
	dstMAC := fs.String("dstmac", "", "next hop's MAC (the bridge's, for a container)")
	size := fs.Int("size", 1514, "frame bytes including the Ethernet header (60..1514)")
	dur := fs.Duration("duration", 5*time.Second, "how long to send")
	_ = fs.Parse(args)
	host, port, err := net.SplitHostPort(*to)
	if err != nil {
		return fmt.Errorf("-to %q: %w", *to, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("-to %q: bad port", *to)
	}
	mac, err := net.ParseMAC(*dstMAC)
	if err != nil {
		return fmt.Errorf("-dstmac %q: %w", *dstMAC, err)
	}
	if err := boundedDuration(*dur); err != nil {
		return err
	}
	res, err := traffic.BypassFlood(ctx, traffic.BypassOptions{Dev: *dev, DstMAC: mac, DstIP: net.ParseIP(host), DstPort: p,
		Size: *size, Duration: *dur})
	if err != nil {
		return err
	}
	printJSON(map[string]any{"frames": res.Frames, "bytes": res.Bytes, "refused": res.Refused,
		"seconds": res.Elapsed.Seconds(), "bits_per_sec": res.BitsPerSec()})
	return nil
}
