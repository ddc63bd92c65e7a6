// Package top is the live view of who uses the network: one row per app,
// direction and process type (pkg/usage), the busiest first, the rate as a
// bar against its limit. In a terminal it is a bubbletea program (resizes
// redraw, q or Ctrl-C quits and restores the terminal); anywhere else it
// prints plain lines once per interval, for `| tee` and scripts.
package top

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/usage"
)

// Options configure a run.
type Options struct {
	Src usage.Source
	// Apps names the known apps (hashed budget names then show real ones); may be nil.
	Apps func() ([]string, error)
	// Interval between refreshes; default 1s.
	Interval time.Duration
	// Count stops after this many refreshes; 0 runs until quit (or ctx ends).
	Count int
	In    io.Reader
	Out   io.Writer
}

func (o *Options) defaults() error {
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.Interval < 0 || o.Count < 0 {
		return errors.New("top: negative interval or count")
	}
	if o.Src == nil || o.Out == nil {
		return errors.New("top: no source or output")
	}
	return nil
}

// frame is one refresh: the rows and how much each row's drop and bypass
// counters grew since the previous one.
type frame struct {
	at    time.Time
	rows  []usage.Usage
	grown map[string][2]uint64 // budget -> dropped, bypassed since last frame
}

// sampler turns successive snapshots into frames.
type sampler struct {
	opts Options
	prev usage.Snapshot
}

func (s *sampler) start() error {
	var err error
	s.prev, err = usage.Take(s.opts.Src)
	return err
}

func (s *sampler) next() (frame, error) {
	cur, err := usage.Take(s.opts.Src)
	if err != nil {
		return frame{}, err
	}
	var apps []string
	if s.opts.Apps != nil {
		apps, _ = s.opts.Apps() // hashed names stay hashed without it
	}
	f := frame{at: cur.At, rows: usage.Between(s.prev, cur, apps), grown: map[string][2]uint64{}}
	for _, u := range f.rows {
		p := s.prev.Budgets[u.Budget].Stats
		f.grown[u.Budget] = [2]uint64{sub(u.Counters.Dropped, p.Dropped), sub(u.Counters.Bypassed, p.Bypassed)}
	}
	s.prev = cur
	return f, nil
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// RunPlain prints one block per interval: a header line with the time, then
// one line per budget. No escape codes, whatever TERM says.
func RunPlain(ctx context.Context, opts Options) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	s := &sampler{opts: opts}
	if err := s.start(); err != nil {
		return err
	}
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	for n := 0; opts.Count == 0 || n < opts.Count; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		f, err := s.next()
		if err != nil {
			return err
		}
		if _, err := io.WriteString(opts.Out, plainFrame(f)); err != nil {
			return err // a closed pipe ends the run
		}
	}
	return nil
}

// column widths of the table; the bar takes what is left.
type layout struct{ app, proc int }

func layoutFor(rows []usage.Usage) layout {
	l := layout{app: len("APP"), proc: len("PROCESS")}
	for _, u := range rows {
		l.app = max(l.app, len(u.App))
		l.proc = max(l.proc, len(u.ProcessType))
	}
	l.app, l.proc = min(l.app, 32), min(l.proc, 16)
	return l
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "~"
}

// Columns of a row, in order; the TUI leaves some out on narrow terminals.
const (
	colApp = iota
	colDir
	colProc
	colRate
	colLimit
	colUse
	colDropped
	colBypassed
	numCols
)

// cells are one row's columns as text, before styling.
func cells(u usage.Usage, grown [2]uint64, l layout) []string {
	limit, use := "none", "-"
	if u.Limit > 0 {
		limit = usage.Human(float64(u.Limit))
		use = fmt.Sprintf("%.0f%%", 100*u.Rate/float64(u.Limit))
	}
	return []string{
		fmt.Sprintf("%-*s", l.app, clip(u.App, l.app)),
		fmt.Sprintf("%-7s", u.Direction),
		fmt.Sprintf("%-*s", l.proc, clip(u.ProcessType, l.proc)),
		fmt.Sprintf("%11s", usage.Human(u.Rate)),
		fmt.Sprintf("%11s", limit),
		fmt.Sprintf("%4s", use),
		fmt.Sprintf("%12s", counter(u.Counters.Dropped, grown[0])),
		fmt.Sprintf("%12s", counter(u.Counters.Bypassed, grown[1])),
	}
}

func headerCells(l layout) []string {
	return []string{
		fmt.Sprintf("%-*s", l.app, "APP"), fmt.Sprintf("%-7s", "DIR"), fmt.Sprintf("%-*s", l.proc, "PROCESS"),
		fmt.Sprintf("%11s", "RATE"), fmt.Sprintf("%11s", "LIMIT"), fmt.Sprintf("%4s", "USE"),
		fmt.Sprintf("%12s", "DROPPED"), fmt.Sprintf("%12s", "BYPASSED"),
	}
}

// pick keeps the columns selected by show.
func pick(cs []string, show [numCols]bool) []string {
	out := make([]string, 0, len(cs))
	for i, c := range cs {
		if show[i] {
			out = append(out, c)
		}
	}
	return out
}

// counter is a total, with how much it grew in the last interval.
func counter(total, grown uint64) string {
	if grown == 0 {
		return fmt.Sprint(total)
	}
	return fmt.Sprintf("%d +%d", total, grown)
}

// fraction is how full a row's bar is: the rate against its limit, or
// against the busiest row when it has none.
func fraction(u usage.Usage, busiest float64) float64 {
	switch {
	case u.Limit > 0:
		return u.Rate / float64(u.Limit)
	case busiest > 0:
		return u.Rate / busiest
	}
	return 0
}

func busiest(rows []usage.Usage) float64 {
	b := 0.0
	for _, u := range rows {
		b = math.Max(b, u.Rate)
	}
	return b
}

func plainFrame(f frame) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s netshape top: %d budgets\n", f.at.UTC().Format(time.RFC3339), len(f.rows))
	l := layoutFor(f.rows)
	b.WriteString(strings.TrimRight(strings.Join(headerCells(l), "  "), " ") + "\n")
	for _, u := range f.rows {
		b.WriteString(strings.TrimRight(strings.Join(cells(u, f.grown[u.Budget], l), "  "), " ") + "\n")
	}
	return b.String()
}
