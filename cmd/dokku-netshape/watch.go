package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/reconcile"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/watch"
)

func watchCommand() *cli.Command {
	return &cli.Command{
		Name:  "watch",
		Usage: "shape containers as Docker starts them and apply resource:limit changes as Dokku writes them (runs until stopped)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "metrics-addr", EnvVars: []string{envMetricsAddr},
				Usage: "serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9479 (default: the --global metrics-addr property, else off)"},
			&cli.BoolFlag{Name: "realtime", Value: true,
				Usage: "shape starts at real-time priority (SCHED_RR 1), so busy apps cannot delay the shaping of a started container; --realtime=false: the normal scheduler at --nice"},
			&cli.IntFlag{Name: "nice", Value: defaultWatchNice,
				Usage: "nice value, -20 (first) to 19 (last), for the resync of every app and with --realtime=false"},
		},
		Action: func(c *cli.Context) error {
			if os.Geteuid() != 0 {
				return errors.New("watch must run as root (it attaches BPF programs)")
			}
			if n := c.Int("nice"); n < -20 || n > 19 {
				return fmt.Errorf("--nice %d: want -20 (first) to 19 (last)", n)
			}
			warn := func(msg string) { fmt.Fprintf(os.Stderr, " !     netshape watch: %s\n", msg) }
			sched := watchSched(schedPolicy{realtime: c.Bool("realtime"), nice: c.Int("nice")}, warn)
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			docker, err := newDocker()
			if err != nil {
				return fmt.Errorf("connect to Docker: %w", err)
			}
			defer docker.Close()
			defer watchStats(os.Stderr, docker.CloseIdle)()
			env := dokku.EnvFromOS()
			// Metrics never cost the shaping: a bad or taken address is said
			// loudly and the watcher goes on without an endpoint.
			addr, err := metricsAddr(c, env)
			if err == nil {
				var stopMetrics func()
				if stopMetrics, err = serveMetrics(ctx, addr, env); err == nil {
					defer stopMetrics()
				}
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, " !     netshape watch: no metrics endpoint: %v\n", err)
			}
			k := &kept{env: env, docker: docker}
			defer k.close()
			w := &watch.Watcher{
				Source: docker,
				Config: watch.NewResourceFiles(env, os.Stderr),
				Shape:  k.shape,
				// k3s apps' pod annotations first, under the config lock
				// only (the two locks never nest); then the local devices.
				Reconcile: func(ctx context.Context, app string) error {
					return errors.Join(syncClusterAppsAsCaller([]string{app}),
						k.do(func(r *reconcile.Reconciler) error { return reconcileApp(ctx, r, app) }))
				},
				Resync: func(ctx context.Context) error {
					// Every app at once: at normal priority, so no app waits for it.
					defer sched.lowered(warn)()
					apps, err := env.Apps()
					if err != nil {
						return err
					}
					clusterErr := syncClusterAppsAsCaller(apps)
					return errors.Join(clusterErr, k.do(func(r *reconcile.Reconciler) error {
						var errs []error
						for _, app := range apps {
							errs = append(errs, reconcileApp(ctx, r, app))
						}
						return errors.Join(errs...)
					}))
				},
				Log: os.Stderr,
			}
			fmt.Println("-----> netshape: watching Docker events and " + env.PluginConfigDir(dokku.ResourcePlugin))
			if err := w.Run(ctx); !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
}

// kept holds the watcher's shaper and Docker handles from one reconcile to
// the next, so a start is shaped with its EDT programs already loaded (a
// fresh Open reloads them through the verifier). The reconcile lock is still
// taken for each use alone, never while waiting for events.
type kept struct {
	env    dokku.Env
	docker *containers.Client
	s      *shaper.Shaper
}

func (k *kept) do(fn func(*reconcile.Reconciler) error) error {
	lock := os.Getenv(envLock)
	if lock == "" {
		lock = reconcile.DefaultLockPath
	}
	unlock, err := reconcile.Lock(lock)
	if err != nil {
		return err
	}
	defer unlock()
	if k.s != nil && !k.s.Current() {
		// Pins removed (uninstall, operator): start over on what is pinned now.
		k.s.Close()
		k.s = nil
	}
	if k.s == nil {
		if k.s, err = shaper.Open(shaper.Options{PinDir: os.Getenv(envPinDir)}); err != nil {
			return err
		}
	}
	return fn(&reconcile.Reconciler{Env: k.env, Docker: k.docker, Shaper: k.s, Monitor: monitorOn(k.env)})
}

func (k *kept) close() {
	if k.s != nil {
		k.s.Close()
	}
}

// shape is the watcher's start path: one container, at once. Docker is
// asked about it before the lock is taken, so its answer overlaps the wait.
func (k *kept) shape(ctx context.Context, ev containers.Event) (string, error) {
	t0 := time.Now()
	// The container's cgroup names its process at once; dockerd answers an
	// inspect only after its whole start. Inspect only when that fails.
	in, found := (*reconcile.Inspection)(nil), "inspect"
	if c, err := containers.FromStart(containers.CgroupRoot, ev); err == nil {
		in, found = reconcile.Provisional(c), "cgroup"
	} else {
		in = reconcile.StartInspect(ctx, k.docker, ev.ID)
	}
	var summary string
	err := k.do(func(r *reconcile.Reconciler) error {
		locked := time.Now()
		res, err := r.Started(ctx, ev.App, ev.ProcessType, in)
		if err != nil {
			return err
		}
		printResult(res)
		// Both directions are in force from ShapedAt; the backstops follow.
		// The parts of the window: the lock, the app's limits and the
		// container's process (from its cgroup, or Docker's inspect), then
		// the plan, then the attaches (the kernel's share, under RTNL).
		summary = fmt.Sprintf("%d device(s) shaped (both directions by %s) [locked +%.1fms, container and limits known +%.1fms (%s), attaching from +%.1fms]",
			len(res.Shaped), res.ShapedAt.UTC().Format(time.RFC3339Nano), ms(locked.Sub(t0)), ms(res.InspectedAt.Sub(t0)), found, ms(res.AttachFrom.Sub(t0)))
		if len(res.Wants) == 0 {
			summary = "no network limit configured"
		}
		return res.Err()
	})
	return summary, err
}

// reconcileApp is applyApps' per-app step on the watcher's kept handles,
// which also keep the app's programs loaded.
func reconcileApp(ctx context.Context, r *reconcile.Reconciler, app string) error {
	res, err := r.App(ctx, app)
	if err != nil {
		return err
	}
	printResult(res)
	// The next start of this app is then shaped without waiting for the verifier.
	for _, w := range res.Wants {
		if err := r.Shaper.Preload(w.Budget.Name); err != nil {
			fmt.Fprintf(os.Stderr, "netshape watch: %s: preload %s: %v\n", app, w.Budget.Name, err)
		}
	}
	if err := res.Err(); err != nil {
		return fmt.Errorf("%s: limits not enforced everywhere (traffic there passes unshaped): %w", app, err)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
