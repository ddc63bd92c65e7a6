package dokku

import (
	"fmt"
	"strings"
)

// Host-wide settings of this tool, stored the Dokku way: properties of
// plugin OwnerPlugin for app GlobalApp
// (DOKKU_LIB_ROOT/config/netshape/--global/<key>), written by
// `dokku netshape:set --global ...`.
const (
	// MonitorKey: "true" counts every app's traffic, limited or not
	// (apps without a limit get a counting-only attachment).
	MonitorKey = "monitor"
	// MetricsAddrKey: HOST:PORT the watcher serves Prometheus metrics on;
	// absent means no metrics endpoint.
	MetricsAddrKey = "metrics-addr"
)

// Monitor reports whether every app is counted. Anything but "true" or
// "false" stored there is an error naming the file (fail loudly, not guess).
func (e Env) Monitor() (bool, error) {
	v, ok, err := e.Properties(OwnerPlugin).Get(GlobalApp, MonitorKey)
	if err != nil || !ok {
		return false, err
	}
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("%s property %s.%s is %s, want true or false", OwnerPlugin, GlobalApp, MonitorKey, ShowValue(v))
}

// MetricsAddr is the configured metrics address, "" when none.
func (e Env) MetricsAddr() (string, error) {
	v, _, err := e.Properties(OwnerPlugin).Get(GlobalApp, MetricsAddrKey)
	return strings.TrimSpace(v), err
}
