package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/k3s"
	"github.com/dokku-netshape/dokku-netshape/pkg/limits"
	"github.com/dokku-netshape/dokku-netshape/pkg/rate"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/usage"
)

// reportFields are the `--netshape-FIELD` names, in display order.
var reportFields = []string{
	"egress", "ingress", "process-limits", "memory", "memory-swap", "cpus", "docker-options",
	"shaped", "unshaped", "warnings", "counters", "bypassed", "cluster",
	"usage", "egress-rate", "ingress-rate",
}

// appReport is one app's report: every field as text, and the numbers that
// JSON gives as numbers.
type appReport struct {
	fields map[string]string
	// bypassed: per egress budget ("_default_/egress"), the frames its
	// host-side backstop dropped because they skipped the EDT shaper.
	bypassed map[string]uint64
	// usage: the app's budgets sampled now (reportusage.go); nil when the
	// report did not sample.
	usage                   []usage.Usage
	egressRate, ingressRate float64
	sampledFrom, sampledTo  time.Time
}

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:            "report",
		Usage:           "show configured limits, shaped devices and counters",
		ArgsUsage:       "[APP] [--format stdout|json] [--netshape-FIELD] [--sample-window 500ms]",
		SkipFlagParsing: true, // Dokku's --netshape-FIELD flags are open-ended
		Action: func(c *cli.Context) error {
			return runReport(c.Context, c.Args().Slice(), os.Stdout)
		},
	}
}

type reportArgs struct {
	app    string
	format string
	field  string
	window time.Duration // --sample-window; 0: defaultSampleWindow
}

func parseReportArgs(args []string) (reportArgs, error) {
	ra := reportArgs{format: "stdout"}
	formatSet := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--format" || strings.HasPrefix(a, "--format="):
			v, ok := strings.CutPrefix(a, "--format=")
			if !ok {
				if i+1 >= len(args) {
					return ra, errors.New("--format needs a value: stdout or json")
				}
				i++
				v = args[i]
			}
			if v != "stdout" && v != "json" {
				return ra, fmt.Errorf("--format: %q is not stdout or json", v)
			}
			if formatSet {
				return ra, errors.New("--format given more than once")
			}
			ra.format, formatSet = v, true
		case a == "--sample-window" || strings.HasPrefix(a, "--sample-window="):
			v, ok := strings.CutPrefix(a, "--sample-window=")
			if !ok {
				if i+1 >= len(args) {
					return ra, errors.New("--sample-window needs a duration, e.g. 500ms")
				}
				i++
				v = args[i]
			}
			if ra.window != 0 {
				return ra, errors.New("--sample-window given more than once")
			}
			d, err := parseSampleWindow(v)
			if err != nil {
				return ra, err
			}
			ra.window = d
		case strings.HasPrefix(a, "--netshape-"):
			f := strings.TrimPrefix(a, "--netshape-")
			if !slices.Contains(reportFields, f) {
				return ra, fmt.Errorf("%s: unknown field; fields: --netshape-%s", a, strings.Join(reportFields, ", --netshape-"))
			}
			if ra.field != "" {
				return ra, errors.New("only one --netshape-FIELD at a time")
			}
			ra.field = f
		case strings.HasPrefix(a, "-"):
			return ra, fmt.Errorf("%s: unknown flag", a)
		default:
			if ra.app != "" {
				return ra, fmt.Errorf("expected at most one APP, got %q and %q", ra.app, a)
			}
			ra.app = a
		}
	}
	if formatSet && ra.field != "" {
		return ra, errors.New("--format cannot be combined with --netshape-FIELD")
	}
	return ra, nil
}

func runReport(ctx context.Context, args []string, out io.Writer) error {
	ra, err := parseReportArgs(args)
	if err != nil {
		return err
	}
	env := dokku.EnvFromOS()
	if err := checkTree(env); err != nil {
		return err
	}
	apps := []string{ra.app}
	if ra.app == "" {
		if apps, err = env.Apps(); err != nil {
			return err
		}
	} else if err := env.VerifyApp(ra.app); err != nil {
		return err
	}
	return asRoot(ctx, append([]string{"report"}, args...), func() error {
		rows, err := sampleUsage(ctx, ra, apps)
		if err != nil {
			return err
		}
		return withReconciler(ctx, false, func(r *reconcile.Reconciler) error {
			// One app's broken property must not hide the others: each
			// app's error goes in its own section, the exit status says
			// something failed once everything is printed.
			all := map[string]appReport{}
			failed := map[string]error{}
			for _, app := range apps {
				rep, err := reportApp(ctx, r, app)
				if err != nil {
					failed[app] = err
					continue
				}
				if ra.needsUsage() {
					rep.addUsage(app, rows)
				}
				all[app] = rep
			}
			if err := writeReport(out, ra, apps, all, failed); err != nil {
				return err
			}
			if len(failed) == 0 {
				return nil
			}
			var names []string
			for _, app := range apps {
				if failed[app] != nil {
					names = append(names, app)
				}
			}
			if ra.field != "" {
				// The field's lines stay one per app; the causes go here.
				var causes []string
				for _, app := range names {
					causes = append(causes, fmt.Sprintf("%s (%s)", app, printableLine(failed[app].Error())))
				}
				return fmt.Errorf("report failed for %s", strings.Join(causes, "; "))
			}
			return fmt.Errorf("report failed for %d of %d apps (%s): see their sections", len(names), len(apps), strings.Join(names, ", "))
		})
	})
}

func writeReport(out io.Writer, ra reportArgs, apps []string, all map[string]appReport, failed map[string]error) error {
	switch {
	case ra.field != "":
		for _, app := range apps {
			fmt.Fprintln(out, all[app].fields[ra.field])
		}
	case ra.format == "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		entry := func(app string) map[string]any {
			if err := failed[app]; err != nil {
				return map[string]any{"error": err.Error()}
			}
			return all[app].json()
		}
		if ra.app != "" {
			return enc.Encode(entry(ra.app))
		}
		byApp := map[string]map[string]any{}
		for _, app := range apps {
			byApp[app] = entry(app)
		}
		return enc.Encode(byApp)
	default:
		for _, app := range apps {
			fmt.Fprintf(out, "=====> %s netshape information\n", app)
			if err := failed[app]; err != nil {
				fmt.Fprintf(out, "       %-32s%s\n", "Netshape error:", printableLine(err.Error()))
				continue
			}
			for _, f := range reportFields {
				label := "Netshape " + strings.ReplaceAll(f, "-", " ") + ":"
				fmt.Fprintf(out, "       %-32s%s\n", label, all[app].fields[f])
			}
		}
	}
	return nil
}

// printableLine keeps an error (which may quote a stored value) on one line.
func printableLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// json is the report as `--format json` prints it: text fields as strings,
// bypassed as an object of numbers per budget.
func (a appReport) json() map[string]any {
	out := make(map[string]any, len(a.fields))
	for k, v := range a.fields {
		out["netshape-"+k] = v
	}
	bypassed := a.bypassed
	if bypassed == nil {
		bypassed = map[string]uint64{}
	}
	out["netshape-bypassed"] = bypassed
	a.usageJSON(out)
	return out
}

// reportApp gathers one app's fields.
func reportApp(ctx context.Context, r *reconcile.Reconciler, app string) (appReport, error) {
	f := map[string]string{}
	for _, k := range reportFields {
		f[k] = ""
	}
	st, err := r.Status(ctx, app)
	if err != nil {
		return appReport{}, err
	}
	if st.Scheduler != "" {
		// Nothing local to look at: the configured limits of every
		// process type, and the pod annotations that carry them.
		procs, err := r.Env.ResourceProcessTypes(app)
		if err != nil {
			return appReport{}, err
		}
		if st.Wants, err = r.Wants(app, procs); err != nil {
			return appReport{}, err
		}
		if f["cluster"], err = clusterReport(r.Env, app, st.Wants); err != nil {
			return appReport{}, err
		}
	}
	var procLimits []string
	for _, w := range st.Wants {
		if w.Budget.CountOnly {
			continue // monitored, not a limit
		}
		v := rate.Rate(w.Budget.Rate).String()
		if w.Scope == reconcile.DefaultScope {
			f[string(w.Direction)] = v
			continue
		}
		procLimits = append(procLimits, fmt.Sprintf("%s %s=%s", w.Scope, w.Direction, v))
	}
	sort.Strings(procLimits)
	f["process-limits"] = strings.Join(procLimits, ", ")

	cur, err := limits.Read(r.Env, app, reconcile.DefaultScope)
	if err != nil {
		return appReport{}, err
	}
	// Raw property content (a root process prints this): shown only when short and printable.
	f["memory"], f["memory-swap"], f["cpus"] = reportValue(cur.Memory), reportValue(cur.MemorySwap), reportValue(cur.CPUs)
	opts := make([]string, len(cur.Options))
	for i, o := range cur.Options {
		opts[i] = reportValue(o)
	}
	f["docker-options"] = strings.Join(opts, " ")

	var shaped, unshaped []string
	for _, s := range st.Shaped {
		item := fmt.Sprintf("%s/%s %s", s.Container, s.Interface, s.Direction)
		if s.Backstop() {
			item += " backstop"
		}
		if s.Counted() {
			item += " counted"
		}
		if s.Degraded() {
			item += " (" + shaper.DegradedNoFq + ")"
		}
		shaped = append(shaped, item)
	}
	for _, u := range st.Unshaped {
		where := u.Container
		if u.Interface != "" {
			where += "/" + u.Interface + " " + string(u.Direction)
		}
		unshaped = append(unshaped, where+": "+u.Reason)
	}
	f["shaped"] = strings.Join(shaped, ", ")
	f["unshaped"] = strings.Join(unshaped, "; ")
	f["warnings"] = strings.Join(st.Warnings, "; ")

	var counters, bypassed []string
	rep := appReport{fields: f, bypassed: map[string]uint64{}}
	if r.Shaper != nil {
		for _, w := range st.Wants {
			b, err := r.Shaper.Budget(w.Budget.Name)
			if errors.Is(err, shaper.ErrNoBudget) {
				continue
			}
			if err != nil {
				return appReport{}, err
			}
			name := w.Scope + "/" + string(w.Direction)
			c := fmt.Sprintf("%s: %d bytes, %d packets, %d delayed, %d dropped, %d marked, %d express",
				name, b.Stats.Bytes, b.Stats.Packets, b.Stats.Delayed, b.Stats.Dropped, b.Stats.Marked, b.Stats.Express)
			if w.Direction == reconcile.Egress {
				// Only app egress has a backstop (ingress is shaped on the host already).
				c += fmt.Sprintf(", %d bypassed", b.Stats.Bypassed)
				bypassed = append(bypassed, fmt.Sprintf("%s: %d", name, b.Stats.Bypassed))
				rep.bypassed[name] = b.Stats.Bypassed
			}
			counters = append(counters, c)
		}
	}
	f["counters"] = strings.Join(counters, "; ")
	f["bypassed"] = strings.Join(bypassed, ", ")
	return rep, nil
}

// clusterReport is the "cluster" field of a k3s app: the pod annotations this
// tool wrote and who enforces them.
func clusterReport(env dokku.Env, app string, wants []reconcile.Want) (string, error) {
	cur, err := k3s.Current(env, app)
	if err != nil {
		return "", err
	}
	switch {
	case len(cur) > 0:
		return fmt.Sprintf("k3s: pod annotations %s, %s", describeScopes(cur), clusterNote(app)), nil
	case len(wants) > 0:
		return fmt.Sprintf("k3s: limits not yet written as pod annotations: run `dokku netshape:apply %s`", app), nil
	}
	return "k3s: no limits", nil
}

// reportValue is a stored value as report shows it: as it is when short
// printable ASCII, else only its size.
func reportValue(v string) string {
	if s := dokku.ShowValue(v); !strings.HasPrefix(s, `"`) {
		return "invalid " + s
	}
	return v
}
