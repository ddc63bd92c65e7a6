package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/top"
)

// Bounds of top's flags, checked again on the root side of the grant.
const (
	topMinInterval = 100 * time.Millisecond
	topMaxInterval = time.Minute
	topMaxCount    = 1_000_000
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top",
		Usage: "live view of who uses the network: one row per app and direction, the busiest first",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "refresh every `D` (100ms..1m)"},
			&cli.IntFlag{Name: "count", Usage: "stop after `N` refreshes (0: until q or Ctrl-C)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return fmt.Errorf("top takes no arguments (got %q)", c.Args().First())
			}
			interval, count := c.Duration("interval"), c.Int("count")
			if err := checkTopFlags(interval, count); err != nil {
				return err
			}
			args := []string{"top", "--interval", interval.String(), "--count", strconv.Itoa(count)}
			return asRootStdin(c.Context, args, os.Stdin, func() error { return runTop(c.Context, interval, count) })
		},
	}
}

func checkTopFlags(interval time.Duration, count int) error {
	if interval < topMinInterval || interval > topMaxInterval {
		return fmt.Errorf("--interval %s is outside %s..%s", interval, topMinInterval, topMaxInterval)
	}
	if count < 0 || count > topMaxCount {
		return fmt.Errorf("--count %d is outside 0..%d", count, topMaxCount)
	}
	return nil
}

// checkGrantedTop accepts what topCommand re-runs through sudo: exactly
// `top --interval D --count N` within the flags' bounds.
func checkGrantedTop(args []string) error {
	if len(args) != 4 || args[0] != "--interval" || args[2] != "--count" {
		return errors.New("top needs exactly --interval D --count N")
	}
	d, err := time.ParseDuration(args[1])
	if err != nil {
		return fmt.Errorf("--interval %s", dokku.ShowValue(args[1]))
	}
	n, err := strconv.Atoi(args[3])
	if err != nil || strconv.Itoa(n) != args[3] {
		return fmt.Errorf("--count %s", dokku.ShowValue(args[3]))
	}
	return checkTopFlags(d, n)
}

// runTop reads the pinned maps (root) and draws on a terminal, or prints
// plain lines when stdout is not one.
func runTop(ctx context.Context, interval time.Duration, count int) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	s, err := shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)})
	if err != nil {
		return err
	}
	defer s.Close()
	env := dokku.EnvFromOS()
	opts := top.Options{Src: s, Apps: env.Apps, Interval: interval, Count: count, In: os.Stdin, Out: os.Stdout}
	if !isTerminal(os.Stdout) {
		// Ctrl-C on a pipeline ends it as a signal, not a key.
		ctx, stopInt := signal.NotifyContext(ctx, os.Interrupt)
		defer stopInt()
		return top.RunPlain(ctx, opts)
	}
	return top.RunTUI(ctx, opts)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
