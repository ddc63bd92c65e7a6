package dokku

import (
	"fmt"
	"strings"
)

// Which scheduler runs an app, as Dokku decides it (dokku/dokku 0.38.x):
// common.GetAppScheduler fires the scheduler-detect trigger; the only
// plugin answering it, "scheduler", prints its property "selected" of the
// app, else of "--global", else "docker-local" (TriggerSchedulerDetect).
// Values are read raw (PropertyGet) and the trigger's output is trimmed
// (StdoutContents), so "k3s\n" is k3s and a blank value falls through.

// SchedulerPlugin is the scheduler plugin's property namespace.
const SchedulerPlugin = "scheduler"

// Scheduler names.
const (
	SchedulerDockerLocal = "docker-local"
	SchedulerK3s         = "k3s"
)

// Scheduler returns the scheduler app is deployed with.
func (e Env) Scheduler(app string) (string, error) {
	p := e.Properties(SchedulerPlugin)
	scopes := []string{GlobalApp}
	if app != GlobalApp {
		scopes = []string{app, GlobalApp}
	}
	for _, scope := range scopes {
		v, _, err := p.Get(scope, "selected")
		if err != nil {
			return "", fmt.Errorf("read the scheduler of %s: %w", app, err)
		}
		if v = strings.TrimSpace(v); v != "" {
			return v, nil
		}
	}
	return SchedulerDockerLocal, nil
}

// IsK3s reports whether app runs on Dokku's k3s scheduler.
func (e Env) IsK3s(app string) (bool, error) {
	s, err := e.Scheduler(app)
	return s == SchedulerK3s, err
}
