package top

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
)

// RunTUI runs the live view on a terminal (opts.In and opts.Out) until q,
// Ctrl-C, Count refreshes or ctx ends; the terminal is restored either way.
func RunTUI(ctx context.Context, opts Options) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	s := &sampler{opts: opts}
	if err := s.start(); err != nil {
		return err
	}
	r := lipgloss.NewRenderer(opts.Out)
	m := &model{s: s, st: newStyles(r), width: 80, height: 24}
	popts := []tea.ProgramOption{tea.WithContext(ctx), tea.WithOutput(opts.Out), tea.WithAltScreen()}
	if opts.In != nil {
		popts = append(popts, tea.WithInput(opts.In))
	}
	_, err := tea.NewProgram(m, popts...).Run()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		err = nil // ended by its context, not a failure
	}
	if err == nil {
		err = m.err
	}
	return err
}

type styles struct {
	title, header, bar, over, rest, alert lipgloss.Style
}

func newStyles(r *lipgloss.Renderer) styles {
	return styles{
		title:  r.NewStyle().Bold(true),
		header: r.NewStyle().Bold(true).Underline(true),
		bar:    r.NewStyle().Foreground(lipgloss.Color("2")),
		over:   r.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
		rest:   r.NewStyle().Foreground(lipgloss.Color("8")),
		alert:  r.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
	}
}

type model struct {
	s      *sampler
	st     styles
	width  int
	height int
	frame  *frame
	frames int
	err    error
}

type frameMsg struct {
	f   frame
	err error
}

// tick waits one interval, then samples (off the UI goroutine).
func (m *model) tick() tea.Cmd {
	return tea.Tick(m.s.opts.Interval, func(time.Time) tea.Msg {
		f, err := m.s.next()
		return frameMsg{f, err}
	})
}

func (m *model) Init() tea.Cmd { return m.tick() }

func (m *model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "Q", "ctrl+c", "esc":
			return m, tea.Quit
		}
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case frameMsg:
		if msg.err != nil {
			m.err = msg.err
			return m, tea.Quit
		}
		m.frame = &msg.f
		m.frames++
		if c := m.s.opts.Count; c > 0 && m.frames >= c {
			return m, tea.Quit
		}
		return m, m.tick()
	}
	return m, nil
}

func (m *model) View() string {
	var b strings.Builder
	if m.frame == nil {
		b.WriteString(m.st.title.Render(fmt.Sprintf("netshape top: sampling for %s...", m.s.opts.Interval)))
		return b.String()
	}
	f := m.frame
	title := fmt.Sprintf("netshape top  %s  %d budgets  every %s  q: quit", f.at.Format("15:04:05"), len(f.rows), m.s.opts.Interval)
	b.WriteString(m.st.title.Render(clip(title, max(m.width, 10))) + "\n")
	l := layoutFor(f.rows)
	show, barWidth := fit(headerCells(l), m.width)
	head := strings.Join(pick(headerCells(l), show), "  ")
	if barWidth > 0 {
		head += "  " + fmt.Sprintf("%-*s", barWidth, clip("RATE / LIMIT", barWidth))
	}
	b.WriteString(m.st.header.Render(clip(head, max(m.width-1, 10))) + "\n")
	top := busiest(f.rows)
	rows := f.rows
	if room := m.height - 3; room >= 1 && len(rows) > room {
		rows = rows[:room] // the busiest fit; the rest are below the fold
	}
	for _, u := range rows {
		g := f.grown[u.Budget]
		cs := cells(u, g, l)
		cs[colDropped] = m.styleIf(g[0] > 0, cs[colDropped])
		cs[colBypassed] = m.styleIf(g[1] > 0, cs[colBypassed])
		line := strings.Join(pick(cs, show), "  ")
		if barWidth > 0 {
			line += "  " + m.bar(fraction(u, top), u.Limit > 0, barWidth)
		}
		b.WriteString(line + "\n")
	}
	if len(f.rows) == 0 {
		b.WriteString("no budgets: no app has a limit (or `dokku netshape:set --global --monitor on` to count every app)\n")
	}
	return b.String()
}

// minBar is the narrowest bar worth drawing.
const minBar = 10

// fit chooses the columns for a terminal width columns wide: all of them
// while the bar keeps minBar columns, else without USE (the bar says it),
// then LIMIT, then PROCESS; app, direction, rate, drops and bypassed always
// stay. barWidth is what is left for the bar (0: none fits).
func fit(head []string, width int) (show [numCols]bool, barWidth int) {
	for i := range show {
		show[i] = true
	}
	used := func() int {
		w := 0
		for i, c := range head {
			if show[i] {
				w += len(c) + 2
			}
		}
		return w + 1 // never the last column: some terminals wrap there
	}
	for _, drop := range []int{-1, colUse, colLimit, colProc} {
		if drop >= 0 {
			show[drop] = false
		}
		if bw := width - used(); bw >= minBar {
			return show, bw
		}
	}
	return show, 0
}

func (m *model) styleIf(alert bool, s string) string {
	if alert {
		return m.st.alert.Render(s)
	}
	return s
}

// bar draws frac of width; a limited row over its limit is drawn full, in red.
func (m *model) bar(frac float64, limited bool, width int) string {
	n := int(frac*float64(width) + 0.5)
	n = max(0, min(n, width))
	full := strings.Repeat("█", n)
	rest := strings.Repeat("·", width-n)
	if limited && frac > 1.02 {
		return m.st.over.Render(full) + m.st.rest.Render(rest)
	}
	return m.st.bar.Render(full) + m.st.rest.Render(rest)
}
