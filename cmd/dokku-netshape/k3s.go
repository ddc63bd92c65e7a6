package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/k3s"
)

// Apps on Dokku's k3s scheduler: their network limits become pod
// annotations (pkg/k3s) that the cluster's CNI enforces from the next
// deploy on; nothing is attached on this host for them.

// clusterNote is what a user must know about a k3s app's network limits.
func clusterNote(app string) string {
	return fmt.Sprintf("enforced by the cluster's CNI at the next deploy (`dokku ps:rebuild %s`)", app)
}

// describeScopes renders annotations as "KEY=VALUE, ... (SCOPE)" parts.
func describeScopes(scopes []k3s.Scope) string {
	var parts []string
	for _, s := range scopes {
		var kv []string
		for _, k := range k3s.Managed {
			if v, ok := s.Annotations[k]; ok {
				kv = append(kv, k+"="+v)
			}
		}
		parts = append(parts, strings.Join(kv, " ")+" ("+procLabel(s.Process)+")")
	}
	return strings.Join(parts, ", ")
}

func printClusterLimits(app string, scopes []k3s.Scope) {
	if len(scopes) == 0 {
		fmt.Printf("-----> %s runs on k3s: no bandwidth pod annotations from netshape any more; the change is %s\n", app, clusterNote(app))
		return
	}
	fmt.Printf("-----> %s runs on k3s: pod annotations %s\n", app, describeScopes(scopes))
	fmt.Printf("       %s\n", clusterNote(app))
}

// syncClusterApps writes the pod annotations of the k3s apps among apps,
// each as one change under the config lock. Run it without holding the
// reconcile lock: the two never nest.
func syncClusterApps(env dokku.Env, apps []string) error {
	var errs []error
	for _, app := range apps {
		isK3s, err := env.IsK3s(app)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !isK3s {
			continue
		}
		var scopes []k3s.Scope
		err = env.Change(configLockTimeout, func(env dokku.Env) error {
			var err error
			scopes, err = k3s.Sync(env, app)
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: pod annotations for the cluster's CNI: %w", app, err))
			continue
		}
		printClusterLimits(app, scopes)
	}
	return errors.Join(errs...)
}

// syncClusterAppsAsCaller writes the pod annotations of the k3s apps among
// apps — k3s apps first, under the config lock only; reconcile then finds
// nothing to attach for them and removes what an earlier docker-local deploy
// left attached. Never on the root side of the sudo grant: root does not
// write into the tree the dokku user owns; the dokku-user caller of that
// `apply` has already written them.
func syncClusterAppsAsCaller(apps []string) error {
	if grantSide {
		return nil
	}
	return syncClusterApps(dokku.EnvFromOS(), apps)
}
