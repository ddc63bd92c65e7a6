package main

import (
	"strings"
	"testing"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
)

// `set --global` writes netshape's --global properties the Dokku way (raw
// value, 0600) and `off` removes the metrics address.
func TestSetGlobalWritesProperties(t *testing.T) {
	e := newCLIEnv(t)
	e.AddApp("shop", "web", 1)
	o := mustRun(t, "dokku-netshape", "set", "--global", "--monitor", "on", "--metrics-addr", "127.0.0.1:9479", "--no-apply")
	wantProp(t, e, "netshape", "--global", "monitor", "true")
	wantProp(t, e, "netshape", "--global", "metrics-addr", "127.0.0.1:9479")
	if !strings.Contains(o.stdout, "Monitor on") || !strings.Contains(o.stdout, "http://127.0.0.1:9479/metrics") {
		t.Errorf("output:\n%s", o)
	}
	if on, err := e.Env.Monitor(); !on || err != nil {
		t.Errorf("Monitor() = %v, %v", on, err)
	}
	mustRun(t, "dokku-netshape", "set", "--global", "--monitor", "off", "--metrics-addr", "off", "--no-apply")
	wantProp(t, e, "netshape", "--global", "monitor", "false")
	wantProp(t, e, "netshape", "--global", "metrics-addr", "")
	if on, err := e.Env.Monitor(); on || err != nil {
		t.Errorf("Monitor() = %v, %v after off", on, err)
	}
	// Through Dokku's subcommand entry point too.
	mustRun(t, pluginDir+"subcommands/set", "netshape:set", "--global", "--monitor", "on", "--no-apply")
	wantProp(t, e, "netshape", "--global", "monitor", "true")
	// A hand-edited value is an error naming the key, and every reconcile
	// then counts as off (monitorOn), never failing a limit for it.
	if err := e.Env.Properties(dokku.OwnerPlugin).Set(dokku.GlobalApp, dokku.MonitorKey, "yes please"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Env.Monitor(); err == nil || !strings.Contains(err.Error(), `"yes please"`) {
		t.Errorf("Monitor() of a bad value: %v", err)
	}
	if monitorOn(e.Env) {
		t.Error("a bad monitor value counts as on")
	}
}

// The metrics address in root's environment at install reaches the unit.
func TestUnitCarriesMetricsAddr(t *testing.T) {
	t.Setenv(envMetricsAddr, "127.0.0.1:9479")
	if u := unitContent("/usr/local/libexec/dokku-netshape"); !strings.Contains(u, "Environment=\"NETSHAPE_METRICS_ADDR=127.0.0.1:9479\"\n") {
		t.Errorf("unit:\n%s", u)
	}
	t.Setenv(envMetricsAddr, "")
	if u := unitContent("/usr/local/libexec/dokku-netshape"); strings.Contains(u, "METRICS") {
		t.Errorf("unit without an address:\n%s", u)
	}
}
