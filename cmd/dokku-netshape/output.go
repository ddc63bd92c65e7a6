package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/rate"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// Dokku's output conventions (plugins/common/functions, log.go): a step on
// stdout starts "-----> ", a section "=====> ", a continuation is indented 7
// spaces; a warning or failure goes to stderr, every line " !     ".
const (
	info1   = "-----> "
	info2   = "=====> "
	verbose = "       "
	warnPfx = " !     "
)

// Exit statuses.
const (
	// exitRefused: bad input or a failure before anything changed (1).
	exitRefused = 1
	// exitNotEnforced: the limits are saved, but not (all) in force: some
	// traffic passes unshaped (kernel without fq, a foreign qdisc, a host
	// network container, Docker unreachable, ...). Deploys exit 0 anyway.
	exitNotEnforced = 3
)

// exitStatusHelp documents the statuses in --help and the man page.
const exitStatusHelp = `Exit status: 0 the limits are saved and in force; 1 refused (bad input, or a failure before anything changed): nothing changed; 3 saved but not in force everywhere (a kernel without sch_fq, a foreign root qdisc, a host-network container, Docker unreachable...): that traffic passes unshaped, and each place and its fix is printed on stderr and shown by report. Dokku's post-deploy trigger always exits 0 (a deploy is never failed over a limit).`

// notEnforcedError marks a failure after the configuration was saved.
type notEnforcedError struct{ err error }

func (e notEnforcedError) Error() string { return e.err.Error() }
func (e notEnforcedError) Unwrap() error { return e.err }

// notEnforced marks err (nil stays nil) as "saved, not in force".
func notEnforced(err error) error {
	if err == nil {
		return nil
	}
	return notEnforcedError{err}
}

// exitStatus is the status for err: an exitError's own code; exitNotEnforced
// when every failure in err is one (a joined error of several apps counts
// as refused if any part is); else exitRefused.
func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	if code, ok := onlyNotEnforced(err); ok {
		return code
	}
	var ex exitError
	if errors.As(err, &ex) {
		return ex.code
	}
	return exitRefused
}

func onlyNotEnforced(err error) (int, bool) {
	var ne notEnforcedError
	var ex exitError
	switch {
	case errors.As(err, &ne) && !isJoin(err):
		return exitNotEnforced, true
	case !isJoin(err) && errors.As(err, &ex) && ex.code == exitNotEnforced:
		return exitNotEnforced, true // the root side's own status, through sudo
	case isJoin(err):
		parts := err.(interface{ Unwrap() []error }).Unwrap()
		for _, p := range parts {
			if _, ok := onlyNotEnforced(p); !ok {
				return 0, false
			}
		}
		return exitNotEnforced, len(parts) > 0
	}
	return 0, false
}

func isJoin(err error) bool {
	_, ok := err.(interface{ Unwrap() []error })
	return ok
}

// printError writes err as Dokku's failure lines: each line " !     ",
// empty ones (an exitError whose message was printed already) left out.
func printError(w io.Writer, err error) {
	for _, l := range strings.Split(err.Error(), "\n") {
		if strings.TrimSpace(l) != "" {
			fmt.Fprintln(w, warnPfx+l)
		}
	}
}

// printResult is what one reconcile did, in Dokku's style: a line per
// container, interface and direction that changed (stdout) or is not in
// force (stderr), then each fix once; when nothing changed, one summary
// line. A retiring or stopped container is no problem and gets no line.
func printResult(res reconcile.Result) {
	renderResult(os.Stdout, os.Stderr, res)
}

func renderResult(out, errw io.Writer, res reconcile.Result) {
	type where struct {
		container, iface string
		dir              reconcile.Direction
	}
	var order []where
	changed := map[where]bool{}
	backstop := map[where]string{}
	budget := map[where]string{}
	note := map[where]*reconcile.Cause{}
	for _, s := range res.Shaped {
		if s.Counted() {
			continue // counting (--monitor) limits nothing: no line of its own
		}
		if _, retiring := dokku.RetiringName(res.App, s.Container); retiring {
			continue // Dokku stops it after the deploy: not worth a line
		}
		k := where{s.Container, s.Interface, s.Direction}
		if _, seen := budget[k]; !seen {
			order = append(order, k)
		}
		if s.Backstop() {
			backstop[k] = s.Device.Name
		} else {
			budget[k] = s.Budget
		}
		changed[k] = changed[k] || s.Changed
		if s.Note != nil {
			note[k] = s.Note
		}
	}
	n := 0
	for _, k := range order {
		if !changed[k] {
			continue
		}
		line := fmt.Sprintf("%s%s %s %s: limited to %s", info1, k.container, k.iface, k.dir, describeBudget(res, budget[k]))
		if dev := backstop[k]; dev != "" {
			line += ", backstop on " + dev
		}
		fmt.Fprintln(out, line)
		n++
	}
	// The registry's order is a hash map's: print in the devices' order.
	removed := slices.Clone(res.Removed)
	slices.SortFunc(removed, func(x, y shaper.Attachment) int {
		return strings.Compare(x.Device.String()+x.Hook.String(), y.Device.String()+y.Hook.String())
	})
	for _, a := range removed {
		what := "limit"
		if a.Hook == shaper.HookPolice {
			what = "egress backstop"
		}
		fmt.Fprintf(out, "%sRemoved the %s %s from %s (no longer configured)\n", info1, what, res.BudgetLabel(a.Budget), a.Device)
		n++
	}
	problems := res.Problems()
	var fixes []string
	// A limit held with a caveat is said every time, changed or not.
	for _, k := range order {
		if c := note[k]; c != nil {
			fmt.Fprintf(errw, "%s%s %s %s: %s\n", warnPfx, k.container, k.iface, k.dir, c.Summary)
			if c.Action != "" && !slices.Contains(fixes, c.Action) {
				fixes = append(fixes, c.Action)
			}
		}
	}
	for _, u := range problems {
		where := u.Container
		if u.Interface != "" {
			where += " " + u.Interface + " " + string(u.Direction)
		}
		if where == "" {
			where = res.App
		}
		fmt.Fprintf(errw, "%s%s: NOT ENFORCED, traffic passes unshaped: %s\n", warnPfx, where, u.Cause.Summary)
		if u.Cause.Action != "" && !slices.Contains(fixes, u.Cause.Action) {
			fixes = append(fixes, u.Cause.Action)
		}
	}
	for _, f := range fixes {
		fmt.Fprintf(errw, "%sTo fix: %s\n", warnPfx, f)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(errw, "%sWarning: %s\n", warnPfx, w)
	}
	if n == 0 && len(problems) == 0 && len(note) == 0 && len(order) > 0 {
		ifaces := len(order)
		fmt.Fprintf(out, "%sNetwork limits of %s in force on %d interface direction(s), nothing to change\n", info1, res.App, ifaces)
	}
}

// describeBudget is "20mbit (app-wide egress)" for a budget of res.
func describeBudget(res reconcile.Result, name string) string {
	for _, w := range res.Wants {
		if w.Budget.Name == name {
			return fmt.Sprintf("%s (%s %s)", rate.Rate(w.Budget.Rate), scopeLabel(w.Scope), w.Direction)
		}
	}
	return res.BudgetLabel(name)
}

func scopeLabel(scope string) string {
	if scope == reconcile.DefaultScope {
		return "app-wide"
	}
	return scope
}

// notInForce is the error apply returns for an app whose reconcile left
// problems: its lines have been printed, this is the summary.
func notInForce(res reconcile.Result) error {
	p := res.Problems()
	if len(p) == 0 {
		return nil
	}
	return notEnforced(fmt.Errorf("%s: network limits saved but not in force everywhere (%d problem(s) above)", res.App, len(p)))
}
