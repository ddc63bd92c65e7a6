package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/k3s"
	"github.com/dokku-netshape/dokku-netshape/pkg/limits"
	"github.com/dokku-netshape/dokku-netshape/pkg/rate"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// Test and packaging knobs, not user flags: where pins and the lock live.
const (
	envPinDir = "NETSHAPE_PIN_DIR"
	envLock   = "NETSHAPE_LOCK"
	// envDockerTimeout bounds each Docker API call ("30s"); through sudo it
	// comes only from the root-owned config.
	envDockerTimeout = "NETSHAPE_DOCKER_TIMEOUT"
	// envLockTimeout bounds the wait for the reconcile lock ("2m"); likewise.
	envLockTimeout = "NETSHAPE_LOCK_TIMEOUT"
)

// configLockTimeout bounds the wait for another set/clear/trigger to finish
// writing Dokku's config (each holds the lock for milliseconds).
var configLockTimeout = time.Minute

// durationEnv reads a positive duration from the environment, def when unset.
func durationEnv(key string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s=%s: not a positive duration", key, dokku.ShowValue(v))
	}
	return d, nil
}

// newDocker connects to Docker with the configured per-call timeout.
func newDocker() (*containers.Client, error) {
	c, err := containers.New()
	if err != nil {
		return nil, err
	}
	d, err := durationEnv(envDockerTimeout, containers.DefaultTimeout)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.Timeout = d
	return c, nil
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "dokku-netshape",
		Usage:                "enforce Dokku's network, memory, CPU and blkio limits on running containers",
		HideVersion:          true,
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			setCommand(),
			clearCommand(),
			applyCommand(),
			reportCommand(),
			removeCommand(),
			watchCommand(),
			topCommand(),
			completionCommand(),
			manCommand(),
		},
		ExitErrHandler: func(*cli.Context, error) {}, // run() prints errors once
		OnUsageError:   usageError,
	}
	for _, c := range app.Commands {
		c.OnUsageError = usageError
	}
	return app
}

// usageError returns a flag error as it is: run() prints it as the one error
// line, where urfave/cli would print "Incorrect Usage" and the whole help.
func usageError(c *cli.Context, err error, _ bool) error {
	if c.Command != nil && c.Command.Name != "" {
		return fmt.Errorf("%s: %w (see --help)", c.Command.Name, err)
	}
	return err
}

func setCommand() *cli.Command {
	return &cli.Command{
		Name:      "set",
		Usage:     "set limits of an app (persisted in Dokku, applied to running containers), or host-wide settings with --global",
		ArgsUsage: "APP | --global",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "process-type", Usage: "limit only this process type (default: all)"},
			&cli.StringFlag{Name: "egress", Usage: "what the app sends, e.g. 20mbit"},
			&cli.StringFlag{Name: "ingress", Usage: "what the app receives, e.g. 50mbit"},
			&cli.StringFlag{Name: "network", Usage: "both directions (Dokku's --network)"},
			&cli.StringFlag{Name: "memory", Usage: "memory limit, e.g. 512m"},
			&cli.StringFlag{Name: "memory-swap", Usage: "memory+swap limit, e.g. 1g"},
			&cli.StringFlag{Name: "cpus", Usage: "CPU limit, e.g. 1.5"},
			&cli.StringFlag{Name: "blkio-weight", Usage: "block IO weight, 10..1000"},
			&cli.StringSliceFlag{Name: "device-read-bps", Usage: "DEV:RATE, e.g. /dev/sda:10mb (next deploy)"},
			&cli.StringSliceFlag{Name: "device-write-bps", Usage: "DEV:RATE (next deploy)"},
			&cli.StringSliceFlag{Name: "device-read-iops", Usage: "DEV:N (next deploy)"},
			&cli.StringSliceFlag{Name: "device-write-iops", Usage: "DEV:N (next deploy)"},
			&cli.BoolFlag{Name: "no-apply", Usage: "only persist; apply at the next deploy or with the apply command"},
			&cli.BoolFlag{Name: "force", Usage: "replace a foreign root qdisc on the app's veths"},
			&cli.BoolFlag{Name: "global", Usage: "host-wide settings instead of an APP's: --monitor, --metrics-addr"},
			&cli.StringFlag{Name: "monitor", Usage: "with --global: on counts every app's traffic, limited or not; off only limited apps"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "with --global: HOST:PORT where the watcher serves Prometheus metrics (off: none)"},
		},
		Action: runSet,
	}
}

// scope validates APP and --process-type against the Dokku tree.
func scope(c *cli.Context) (dokku.Env, string, string, error) {
	env := dokku.EnvFromOS()
	if c.NArg() != 1 {
		return env, "", "", fmt.Errorf("expected exactly one APP, got %d arguments", c.NArg())
	}
	app := c.Args().First()
	if err := checkTree(env); err != nil {
		return env, "", "", err
	}
	if err := env.VerifyApp(app); err != nil {
		return env, "", "", err
	}
	proc := c.String("process-type")
	if c.IsSet("process-type") && proc == "" {
		return env, "", "", errors.New("--process-type: empty value (leave the flag out to mean every process type)")
	}
	if !c.IsSet("process-type") {
		proc = reconcile.DefaultScope
	} else if err := env.CheckProcessType(app, proc); err != nil {
		return env, "", "", err
	}
	return env, app, proc, nil
}

func checkTree(env dokku.Env) error {
	for _, dir := range []string{env.DokkuRoot, env.LibRoot} {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("Dokku tree %s does not exist (set DOKKU_ROOT / DOKKU_LIB_ROOT)", dir)
		}
	}
	return nil
}

// networkChanges turns the network flags into resource-plugin writes. The
// bounds are those of whatever enforces them: the local shaper, or for a k3s
// app what Kubernetes accepts in a pod annotation.
func networkChanges(c *cli.Context, cluster bool) (map[dokku.ResourceType]string, error) {
	out := map[dokku.ResourceType]string{}
	for _, f := range []struct {
		flag string
		typ  dokku.ResourceType
	}{{"egress", dokku.NetworkEgress}, {"ingress", dokku.NetworkIngress}, {"network", dokku.Network}} {
		if !c.IsSet(f.flag) {
			continue
		}
		r, err := rate.Parse(c.String(f.flag))
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", f.flag, err)
		}
		if cluster {
			if _, err := k3s.Quantity(r); err != nil {
				return nil, fmt.Errorf("--%s: %w", f.flag, err)
			}
			out[f.typ] = r.String()
			continue
		}
		if uint64(r) > shaper.MaxRate {
			return nil, fmt.Errorf("--%s: %s is above the largest enforceable rate, 1tbit", f.flag, c.String(f.flag))
		}
		if uint64(r) < shaper.MinRate {
			return nil, fmt.Errorf("--%s: %s is below the smallest enforceable rate, 10kbit", f.flag, c.String(f.flag))
		}
		out[f.typ] = r.String()
	}
	return out, nil
}

func runSet(c *cli.Context) error {
	if c.Bool("global") {
		return runSetGlobal(c)
	}
	for _, f := range globalFlags {
		if c.IsSet(f) {
			return fmt.Errorf("--%s is host-wide: use `set --global --%s ...`", f, f)
		}
	}
	env, app, proc, err := scope(c)
	if err != nil {
		return err
	}
	cluster, err := env.IsK3s(app)
	if err != nil {
		return err
	}
	net, err := networkChanges(c, cluster)
	if err != nil {
		return err
	}
	lim, err := limitsRequest(c, app, proc)
	if err != nil {
		return err
	}
	if len(net) == 0 && lim.Empty() {
		return errors.New("nothing to set: give at least one of --egress, --ingress, --network, --memory, --memory-swap, --cpus, --blkio-weight, --device-*")
	}
	// Bad values fail here, before the lock is even taken.
	if err := lim.Check(); err != nil {
		return err
	}
	// One change: checked against what is stored and written under the
	// config lock, all of it or (undone on any failure) none of it.
	var done []string
	var scopes []k3s.Scope
	err = env.Change(configLockTimeout, func(env dokku.Env) error {
		done = nil
		if err := lim.Validate(env); err != nil {
			return err
		}
		if !lim.Empty() {
			// The docker-options lines go first: an operator line using
			// the same flag is found there, before anything is written.
			msgs, err := limits.Persist(env, lim)
			if err != nil {
				return err
			}
			for _, m := range msgs {
				done = append(done, fmt.Sprintf("-----> Set %s %s for %s", procLabel(proc), m, app))
			}
		}
		for _, typ := range []dokku.ResourceType{dokku.Network, dokku.NetworkEgress, dokku.NetworkIngress} {
			if v, ok := net[typ]; ok {
				if err := env.SetResource(app, proc, dokku.Limit, typ, v); err != nil {
					return fmt.Errorf("save %s limit of %s: %w", typ, app, err)
				}
				done = append(done, fmt.Sprintf("-----> Set %s %s limit for %s to %s", procLabel(proc), typ, app, v))
			}
		}
		if cluster && len(net) > 0 {
			// In the same change: an operator's annotation on the same
			// key undoes the resource writes too.
			var err error
			scopes, err = k3s.Sync(env, app)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, l := range done {
		fmt.Println(l)
	}
	if cluster && len(net) > 0 {
		printClusterLimits(app, scopes)
		net = nil // nothing to attach here: the pods are the cluster's
	}
	// Applying happens after the config lock is released: the root apply
	// takes the reconcile lock, and may wait on it.
	if c.Bool("no-apply") && (len(net) > 0 || !lim.Empty()) {
		fmt.Println("-----> Not applied (--no-apply): takes effect at the next deploy or `dokku-netshape apply " + app + "`")
		return nil
	}
	var errs []error
	if !lim.Empty() {
		errs = append(errs, applyLimits(c.Context, env, lim))
	}
	if len(net) > 0 {
		args := []string{"apply", app}
		if c.Bool("force") {
			args = append(args, "--force")
		}
		errs = append(errs, asRoot(c.Context, args, func() error { return applyApps(c.Context, []string{app}, c.Bool("force")) }))
	}
	return errors.Join(errs...)
}

func procLabel(proc string) string {
	if proc == reconcile.DefaultScope {
		return "app-wide"
	}
	return proc
}

func clearCommand() *cli.Command {
	return &cli.Command{
		Name:      "clear",
		Usage:     "clear limits of an app",
		ArgsUsage: "APP",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "process-type", Usage: "clear only this process type's limits"},
			&cli.BoolFlag{Name: "egress", Usage: "clear the egress limit"},
			&cli.BoolFlag{Name: "ingress", Usage: "clear the ingress limit"},
			&cli.BoolFlag{Name: "all", Usage: "clear every limit this tool sets (network, memory, CPU, blkio)"},
			&cli.BoolFlag{Name: "no-apply", Usage: "only persist"},
		},
		Action: runClear,
	}
}

func runClear(c *cli.Context) error {
	env, app, proc, err := scope(c)
	if err != nil {
		return err
	}
	egress, ingress, all := c.Bool("egress"), c.Bool("ingress"), c.Bool("all")
	switch {
	case all && (egress || ingress):
		return errors.New("--all already clears --egress and --ingress: give one or the other")
	case !all && !egress && !ingress:
		return errors.New("nothing to clear: give --egress, --ingress or --all")
	}
	if all {
		egress, ingress = true, true
	}
	cluster, err := env.IsK3s(app)
	if err != nil {
		return err
	}
	var scopes []k3s.Scope
	err = env.Change(configLockTimeout, func(env dokku.Env) error {
		if err := clearNetwork(env, app, proc, egress, ingress); err != nil {
			return err
		}
		if all {
			if err := limits.Clear(env, app, proc); err != nil {
				return err
			}
		}
		if cluster {
			var err error
			scopes, err = k3s.Sync(env, app)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("-----> Cleared %s network limits of %s\n", procLabel(proc), app)
	if proc != reconcile.DefaultScope {
		// The process type now follows the app-wide limits, if any: say so.
		if res, err := env.ResourceLimits(app, proc); err == nil {
			for _, s := range []dokku.Setting{res.NetworkEgress, res.NetworkIngress} {
				if s.IsSet() {
					fmt.Printf("       %s still follows the app-wide %s = %s\n", proc, s.Key, s.Value)
				}
			}
		}
	}
	if all {
		fmt.Printf("-----> Cleared %s memory, CPU and blkio limits of %s (running containers keep theirs until the next deploy: Docker cannot remove a limit live)\n", procLabel(proc), app)
	}
	if cluster {
		printClusterLimits(app, scopes)
		return nil // nothing attached here to remove
	}
	if c.Bool("no-apply") {
		return nil
	}
	return asRoot(c.Context, []string{"apply", app}, func() error { return applyApps(c.Context, []string{app}, false) })
}

// clearNetwork removes one or both directions. Dokku's "network" key means
// both: clearing one direction keeps the other at the same rate.
func clearNetwork(env dokku.Env, app, proc string, egress, ingress bool) error {
	props := env.Properties(dokku.ResourcePlugin)
	key := func(t dokku.ResourceType) string { return dokku.ResourceKey(proc, dokku.Limit, t) }
	both, hasBoth, err := props.Get(app, key(dokku.Network))
	if err != nil {
		return err
	}
	if hasBoth && egress != ingress {
		keep := dokku.NetworkIngress
		if ingress {
			keep = dokku.NetworkEgress
		}
		if _, set, err := props.Get(app, key(keep)); err != nil {
			return err
		} else if !set {
			if err := env.SetResource(app, proc, dokku.Limit, keep, both); err != nil {
				return err
			}
		}
	}
	var drop []dokku.ResourceType
	if egress {
		drop = append(drop, dokku.NetworkEgress)
	}
	if ingress {
		drop = append(drop, dokku.NetworkIngress)
	}
	if hasBoth {
		drop = append(drop, dokku.Network)
	}
	for _, t := range drop {
		if err := env.SetResource(app, proc, dokku.Limit, t, "clear"); err != nil {
			return fmt.Errorf("clear %s limit of %s: %w", t, app, err)
		}
	}
	return nil
}

func applyCommand() *cli.Command {
	return &cli.Command{
		Name:      "apply",
		Usage:     "make running containers enforce what is configured (idempotent)",
		ArgsUsage: "[APP]",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "all", Usage: "every app (and clean up after deleted ones)"},
			&cli.BoolFlag{Name: "force", Usage: "replace a foreign root qdisc on the app's veths"},
		},
		Action: func(c *cli.Context) error {
			env := dokku.EnvFromOS()
			if err := checkTree(env); err != nil {
				return err
			}
			var apps []string
			switch {
			case c.Bool("all") && c.NArg() > 0:
				return errors.New("give APP or --all, not both")
			case c.Bool("all"):
				var err error
				if apps, err = env.Apps(); err != nil {
					return err
				}
			case c.NArg() == 1:
				if err := env.VerifyApp(c.Args().First()); err != nil {
					return err
				}
				apps = []string{c.Args().First()}
			default:
				return errors.New("expected APP or --all")
			}
			args := append([]string{"apply"}, c.Args().Slice()...)
			for _, f := range []string{"all", "force"} {
				if c.Bool(f) {
					args = append(args, "--"+f)
				}
			}
			clusterErr := syncClusterAppsAsCaller(apps)
			return errors.Join(clusterErr, asRoot(c.Context, args, func() error {
				return withReconciler(c.Context, c.Bool("force"), func(r *reconcile.Reconciler) error {
					err := reconcileApps(c.Context, r, apps)
					if c.Bool("all") {
						// Deleted apps are cleaned up even when some live app could not be shaped.
						gone, gerr := r.RemoveGone()
						for _, app := range gone {
							fmt.Printf("-----> Removed limits of deleted app %s\n", app)
						}
						err = errors.Join(err, gerr)
					}
					return err
				})
			}))
		},
	}
}

func removeCommand() *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "detach and delete every budget of an app (Dokku's post-delete)",
		ArgsUsage: "APP",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("expected exactly one APP")
			}
			app := c.Args().First()
			if err := dokku.ValidateAppName(app); err != nil {
				return err
			}
			return asRoot(c.Context, []string{"remove", app}, func() error {
				return withReconciler(c.Context, false, func(r *reconcile.Reconciler) error { return r.Remove(app) })
			})
		},
	}
}

// withReconciler opens the shaper (root) and Docker, holds the reconcile
// lock, and runs fn.
func withReconciler(ctx context.Context, force bool, fn func(*reconcile.Reconciler) error) error {
	lock := os.Getenv(envLock)
	if lock == "" {
		lock = reconcile.DefaultLockPath
	}
	wait, err := durationEnv(envLockTimeout, reconcile.DefaultLockTimeout)
	if err != nil {
		return err
	}
	unlock, err := reconcile.LockWait(lock, wait)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)})
	if err != nil {
		return err
	}
	defer s.Close()
	docker, err := newDocker()
	if err != nil {
		return fmt.Errorf("connect to Docker: %w", err)
	}
	defer docker.Close()
	env := dokku.EnvFromOS()
	return fn(&reconcile.Reconciler{Env: env, Docker: docker, Shaper: s, Force: force, Log: os.Stderr, Monitor: monitorOn(env)})
}

func applyApps(ctx context.Context, apps []string, force bool) error {
	return errors.Join(syncClusterAppsAsCaller(apps), withReconciler(ctx, force, func(r *reconcile.Reconciler) error { return reconcileApps(ctx, r, apps) }))
}

// reconcileApps reconciles each app in one run of r, printing what it did.
func reconcileApps(ctx context.Context, r *reconcile.Reconciler, apps []string) error {
	var errs []error
	for _, app := range apps {
		res, err := r.App(ctx, app)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		printResult(res)
		if err := res.Err(); err != nil {
			errs = append(errs, fmt.Errorf("%s: limits saved but not enforced everywhere (traffic there passes unshaped): %w", app, err))
		}
	}
	return errors.Join(errs...)
}

func printResult(res reconcile.Result) {
	for _, s := range res.Shaped {
		what := string(s.Direction)
		if s.Backstop() {
			what += " backstop on " + s.Device.Name
		}
		if s.Counted() {
			what += " counted (no limit)"
		}
		if s.Degraded() {
			what += " " + shaper.DegradedNoFq
		}
		fmt.Printf("-----> %s %s %s: %s\n", s.Container, s.Interface, what, res.BudgetLabel(s.Budget))
	}
	for _, u := range res.Unshaped {
		if u.Err == nil {
			fmt.Printf("       %s: not shaped: %s\n", u.Container, u.Reason)
		}
	}
	for _, w := range res.Warnings {
		fmt.Printf(" !     warning: %s\n", w)
	}
	for _, a := range res.Removed {
		fmt.Printf("-----> detached %s from %s\n", a.Device, res.BudgetLabel(a.Budget))
	}
}

// asRoot runs fn when root, else re-runs this binary with args through
// `sudo -n`: Dokku runs plugins as the dokku user, and the install trigger
// grants it exactly these subcommands (see plugin/sudoers).
func asRoot(ctx context.Context, args []string, fn func() error) error {
	return asRootStdin(ctx, args, nil, fn)
}

// asRootStdin is asRoot giving the root side stdin (nil: /dev/null); only
// a command that reads the terminal (top) needs it.
func asRootStdin(ctx context.Context, args []string, stdin *os.File, fn func() error) error {
	if os.Geteuid() == 0 {
		return fn()
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable for sudo: %w", err)
	}
	cmd := exec.CommandContext(ctx, "sudo", append([]string{"-n", self}, args...)...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return sudoFailure(ctx, self, args, ee.ExitCode())
		}
		return fmt.Errorf("%s needs root and `sudo -n %s %s` failed: %w (is the netshape plugin's sudoers file installed?)",
			args[0], self, strings.Join(args, " "), err)
	}
	return nil
}
