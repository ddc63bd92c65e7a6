// Package k3s hands the network limits of apps on Dokku's k3s scheduler to
// the cluster: pod bandwidth annotations, which the cluster's CNI enforces
// (the CNI bandwidth plugin in k3s's default flannel chain; Cilium's
// bandwidth manager for egress). Nothing is shaped on this host for them.
//
// Dokku's resource keys map onto scheduler-k3s's annotation store scope by
// scope: "_default_" limits go to the "--global" pod map, a process type's
// own network keys to its map. The chart lays a process type's map over the
// global one key by key, which gives each direction the same precedence as
// dokku.Env.Resources (the process type's own key, else _default_'s).
package k3s

import (
	"fmt"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/rate"
)

// The pod annotations the container runtime turns into the CNI's
// runtimeConfig.bandwidth (kubernetes pkg/util/bandwidth, containerd's CRI).
const (
	EgressAnnotation  = "kubernetes.io/egress-bandwidth"  // what the pod sends
	IngressAnnotation = "kubernetes.io/ingress-bandwidth" // what the pod receives
)

// Managed are the annotation keys this package writes.
var Managed = []string{EgressAnnotation, IngressAnnotation}

// What kubelet / the CRI accept for a bandwidth annotation
// (validateBandwidthIsReasonable: below 1k or above 1P fails the pod's
// sandbox), in bits per second.
const (
	MinRate rate.Rate = 1000
	MaxRate rate.Rate = 1000_000_000_000_000
)

// Quantity returns r as the annotation value Kubernetes parses back
// (resource.ParseQuantity) to exactly r bits per second, or an error naming
// the bound r is outside of.
func Quantity(r rate.Rate) (string, error) {
	switch {
	case r < MinRate:
		return "", fmt.Errorf("%s is below 1kbit, the smallest bandwidth Kubernetes accepts in a pod annotation", r)
	case r > MaxRate:
		return "", fmt.Errorf("%s is above 1Pbit, the largest bandwidth Kubernetes accepts in a pod annotation", r)
	}
	q := resource.NewQuantity(int64(r), resource.DecimalSI)
	s := q.String()
	// Guard the promise, not the library: what the kubelet reads must be r.
	if back, err := resource.ParseQuantity(s); err != nil || back.Value() != int64(r) {
		return "", fmt.Errorf("%s: Kubernetes would read %q back as another value", r, s)
	}
	return s, nil
}

// Scope is the annotations of one process type (dokku.DefaultProcess for
// every process type).
type Scope struct {
	Process     string
	Annotations map[string]string
}

// Wanted computes the annotations the configured network limits make, per
// scope, sorted by process type; scopes with none are left out.
func Wanted(env dokku.Env, app string) ([]Scope, error) {
	procs, err := env.ResourceProcessTypes(app)
	if err != nil {
		return nil, err
	}
	var out []Scope
	for _, proc := range append([]string{dokku.DefaultProcess}, procs...) {
		res, err := env.ResourceLimits(app, proc)
		if err != nil {
			return nil, fmt.Errorf("read resource limits of %s (%s): %w", app, proc, err)
		}
		ann := map[string]string{}
		for _, d := range []struct {
			key string
			s   dokku.Setting
		}{{EgressAnnotation, res.NetworkEgress}, {IngressAnnotation, res.NetworkIngress}} {
			if !d.s.IsSet() {
				continue
			}
			// Only the scope's own keys: _default_'s reach the process
			// type through the chart's merge of the --global map.
			if p, _, _, ok := dokku.ParseResourceKey(d.s.Key); !ok || p != proc {
				continue
			}
			r, err := rate.Parse(d.s.Value)
			if err != nil {
				return nil, fmt.Errorf("resource %s of app %s: %w", d.s.Key, app, err)
			}
			v, err := Quantity(r)
			if err != nil {
				return nil, fmt.Errorf("resource %s of app %s: %w", d.s.Key, app, err)
			}
			ann[d.key] = v
		}
		if len(ann) > 0 {
			out = append(out, Scope{Process: proc, Annotations: ann})
		}
	}
	return out, nil
}

// Sync makes the pod annotations this tool owns for app exactly what its
// network limits want: set, updated, or removed where nothing is configured
// any more. An operator's annotation on the same key is a conflict
// (*dokku.ForeignAnnotationError). Run it inside dokku.Env.Change, so that
// a failure half-way leaves nothing written. It returns what is now wanted.
func Sync(env dokku.Env, app string) ([]Scope, error) {
	want, err := Wanted(env, app)
	if err != nil {
		return nil, err
	}
	pa := env.PodAnnotations()
	had, err := pa.OwnedScopes(app)
	if err != nil {
		return nil, err
	}
	scopes := slices.Clone(had)
	for _, w := range want {
		scopes = append(scopes, w.Process)
	}
	slices.Sort(scopes)
	for _, proc := range slices.Compact(scopes) {
		ann := map[string]string{}
		if i := slices.IndexFunc(want, func(w Scope) bool { return w.Process == proc }); i >= 0 {
			ann = want[i].Annotations
		}
		if err := pa.SetOwned(app, proc, Managed, ann); err != nil {
			return nil, err
		}
	}
	return want, nil
}

// Current lists the annotations this tool holds for app now, per scope.
func Current(env dokku.Env, app string) ([]Scope, error) {
	pa := env.PodAnnotations()
	procs, err := pa.OwnedScopes(app)
	if err != nil {
		return nil, err
	}
	var out []Scope
	for _, proc := range procs {
		owned, err := pa.Owned(app, proc)
		if err != nil {
			return nil, err
		}
		if len(owned) > 0 {
			out = append(out, Scope{Process: proc, Annotations: maps.Clone(owned)})
		}
	}
	return out, nil
}
