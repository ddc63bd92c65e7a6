package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/metrics"
)

// globalFlags are the host-wide settings `set --global` writes.
var globalFlags = []string{"monitor", "metrics-addr"}

// runSetGlobal is `set --global --monitor on|off` and `set --global
// --metrics-addr HOST:PORT|off`: properties of the netshape plugin's
// --global app, written under the config lock like every other change.
func runSetGlobal(c *cli.Context) error {
	if c.NArg() != 0 {
		return fmt.Errorf("--global takes no APP (got %q)", c.Args().First())
	}
	for _, f := range c.FlagNames() {
		if c.IsSet(f) && f != "global" && f != "monitor" && f != "metrics-addr" && f != "no-apply" {
			return fmt.Errorf("--%s is per app: give APP instead of --global", f)
		}
	}
	if !c.IsSet("monitor") && !c.IsSet("metrics-addr") {
		return errors.New("nothing to set: --global takes --monitor on|off or --metrics-addr HOST:PORT|off")
	}
	writes := map[string]string{} // key -> value, "" deletes
	if c.IsSet("monitor") {
		switch v := c.String("monitor"); v {
		case "on":
			writes[dokku.MonitorKey] = "true"
		case "off":
			writes[dokku.MonitorKey] = "false"
		default:
			return fmt.Errorf("--monitor: %s is not on or off", dokku.ShowValue(v))
		}
	}
	if c.IsSet("metrics-addr") {
		v := c.String("metrics-addr")
		if v != "off" {
			if err := metrics.CheckAddr(v); err != nil {
				return fmt.Errorf("--metrics-addr: %w", err)
			}
		} else {
			v = ""
		}
		writes[dokku.MetricsAddrKey] = v
	}
	env := dokku.EnvFromOS()
	if err := checkTree(env); err != nil {
		return err
	}
	err := env.Change(configLockTimeout, func(env dokku.Env) error {
		props := env.Properties(dokku.OwnerPlugin)
		for _, k := range globalFlags {
			v, ok := writes[k]
			switch {
			case !ok:
			case v == "":
				if err := props.Delete(dokku.GlobalApp, k); err != nil {
					return err
				}
			default:
				if err := props.Set(dokku.GlobalApp, k, v); err != nil {
					return fmt.Errorf("save global %s: %w", k, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if v, ok := writes[dokku.MetricsAddrKey]; ok {
		if v == "" {
			fmt.Println("-----> Metrics endpoint off")
		} else {
			fmt.Println("-----> Metrics endpoint set to http://" + v + "/metrics")
		}
		fmt.Println("       the watcher reads it when it starts: sudo systemctl restart " + unitName())
	}
	v, ok := writes[dokku.MonitorKey]
	if !ok {
		return nil
	}
	if v == "true" {
		fmt.Println("-----> Monitor on: every app's traffic is counted (apps without a limit get a counting-only attachment)")
	} else {
		fmt.Println("-----> Monitor off: only apps with a limit are counted")
	}
	if c.Bool("no-apply") {
		fmt.Println("-----> Not applied (--no-apply): takes effect at the next deploy or `dokku-netshape apply --all`")
		return nil
	}
	return asRoot(c.Context, []string{"apply", "--all"}, func() error {
		apps, err := env.Apps()
		if err != nil {
			return err
		}
		return applyApps(c.Context, apps, false)
	})
}

// monitorOn is the host-wide monitor setting, read by every reconcile (CLI,
// post-deploy, watcher) so they all plan the same counting. An unreadable
// value counts as off, loudly: counting is never worth failing a limit for.
func monitorOn(env dokku.Env) bool {
	on, err := env.Monitor()
	if err != nil {
		fmt.Fprintf(os.Stderr, " !     netshape: monitor setting ignored (apps without a limit are not counted): %v\n", err)
	}
	return on
}
