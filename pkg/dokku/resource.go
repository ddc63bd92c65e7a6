package dokku

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/dokku-netshape/dokku-netshape/pkg/rate"
)

// The resource plugin (dokku/dokku plugins/resource) stores
// `resource:limit` / `resource:reserve` values as properties of plugin
// "resource", key "<proc>.<limit|reserve>.<type>", proc "_default_" when no
// --process-type was given. A value "clear" deletes the key; empty values are
// ignored by Dokku's readers. "build.limit.<type>" keys are build-phase limits
// (Dokku's TriggerDockerArgsProcessBuild), not a process type.

// ResourcePlugin is the resource plugin's property namespace.
const ResourcePlugin = "resource"

// BuildProcess is the pseudo process type Dokku uses for build-phase limits.
const BuildProcess = "build"

// ResourceKind is "limit" or "reserve".
type ResourceKind string

// Resource kinds.
const (
	Limit   ResourceKind = "limit"
	Reserve ResourceKind = "reserve"
)

// ResourceType is one of the resource plugin's value types.
type ResourceType string

// Resource types, exactly the resource plugin's flags.
const (
	CPU            ResourceType = "cpu"
	Memory         ResourceType = "memory"
	MemorySwap     ResourceType = "memory-swap"
	Network        ResourceType = "network"
	NetworkIngress ResourceType = "network-ingress"
	NetworkEgress  ResourceType = "network-egress"
	NvidiaGPU      ResourceType = "nvidia-gpu"
)

// ResourceTypes lists every type in Dokku's order.
var ResourceTypes = []ResourceType{CPU, Memory, MemorySwap, Network, NetworkIngress, NetworkEgress, NvidiaGPU}

// Resource errors.
var (
	ErrInvalidResourceKind = errors.New("resource kind must be limit or reserve")
	ErrInvalidResourceType = errors.New("unknown resource type")
	ErrInvalidProcessType  = errors.New("invalid process type")
)

func validKind(k ResourceKind) bool { return k == Limit || k == Reserve }

func validType(t ResourceType) bool {
	for _, x := range ResourceTypes {
		if x == t {
			return true
		}
	}
	return false
}

// ResourceKey is "<proc>.<kind>.<type>"; an empty proc means _default_.
func ResourceKey(proc string, kind ResourceKind, typ ResourceType) string {
	if proc == "" {
		proc = DefaultProcess
	}
	return proc + "." + string(kind) + "." + string(typ)
}

// ParseResourceKey splits a resource property name. Process types cannot
// contain dots (Procfile names are [A-Za-z0-9_-]), so it splits on the last two.
func ParseResourceKey(key string) (proc string, kind ResourceKind, typ ResourceType, ok bool) {
	i := strings.LastIndexByte(key, '.')
	if i <= 0 {
		return "", "", "", false
	}
	j := strings.LastIndexByte(key[:i], '.')
	if j <= 0 {
		return "", "", "", false
	}
	proc, kind, typ = key[:j], ResourceKind(key[j+1:i]), ResourceType(key[i+1:])
	if !validKind(kind) || !validType(typ) {
		return "", "", "", false
	}
	return proc, kind, typ, true
}

// ValidateProcessType checks a process-type name as Procfiles allow it
// (procfile-util: [A-Za-z0-9_-]+). _default_ passes.
func ValidateProcessType(proc string) error {
	if proc == "" {
		return fmt.Errorf("%w: empty", ErrInvalidProcessType)
	}
	for _, r := range proc {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return fmt.Errorf("%w: %q (letters, digits, '_' and '-' only)", ErrInvalidProcessType, proc)
		}
	}
	return nil
}

// Setting is one effective resource value and the property it came from.
type Setting struct {
	Value string // raw stored value ("20mbit", "512", "1.5")
	Key   string // property name it was read from; "" when unset
}

// IsSet reports whether a value applies.
func (s Setting) IsSet() bool { return s.Key != "" }

// Resources are the effective resource values of one process type.
type Resources struct {
	App     string
	Process string
	Kind    ResourceKind

	CPU        Setting
	Memory     Setting
	MemorySwap Setting
	NvidiaGPU  Setting

	// NetworkIngress/NetworkEgress are resolved from network-ingress /
	// network-egress and network (both directions); see Env.Resources.
	NetworkIngress Setting
	NetworkEgress  Setting
}

// IngressRate parses NetworkIngress; ok is false when unset.
func (r Resources) IngressRate() (rate.Rate, bool, error) {
	return parseSettingRate(r.App, r.NetworkIngress)
}

// EgressRate parses NetworkEgress; ok is false when unset.
func (r Resources) EgressRate() (rate.Rate, bool, error) {
	return parseSettingRate(r.App, r.NetworkEgress)
}

func parseSettingRate(app string, s Setting) (rate.Rate, bool, error) {
	if !s.IsSet() {
		return 0, false, nil
	}
	v, err := rate.Parse(s.Value)
	if err != nil {
		// rate's message quotes its input: repeat it only when it is short and printable.
		if ShowValue(s.Value)[0] != '"' {
			var pe *rate.ParseError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return 0, true, fmt.Errorf("resource %s of app %s: invalid rate %s: %w", s.Key, app, ShowValue(s.Value), err)
		}
		return 0, true, fmt.Errorf("resource %s of app %s: %w", s.Key, app, err)
	}
	return v, true, nil
}

// ResourceLimits is Resources(app, proc, Limit).
func (e Env) ResourceLimits(app, proc string) (Resources, error) {
	return e.Resources(app, proc, Limit)
}

// Resources returns the effective values of kind for process type proc ("" or
// _default_ for the defaults alone).
//
// Precedence, per type: "<proc>.<kind>.<type>" wins over
// "_default_.<kind>.<type>" — as Dokku's GetResourceValue and its docker-args
// trigger do. Empty values count as unset (Dokku skips them too).
//
// Network directions (Dokku never reads network values itself, so this rule
// is ours): the process scope is searched before the default scope, and within
// a scope the direction-specific key wins over "network":
//
//	proc.network-egress > proc.network > _default_.network-egress > _default_.network
//
// so `resource:limit --network 10mbit --process-type worker` limits worker's
// egress to 10mbit even when _default_ has its own network-egress.
func (e Env) Resources(app, proc string, kind ResourceKind) (Resources, error) {
	if !validKind(kind) {
		return Resources{}, fmt.Errorf("%w: %q", ErrInvalidResourceKind, kind)
	}
	if proc == "" {
		proc = DefaultProcess
	}
	if err := ValidateProcessType(proc); err != nil {
		return Resources{}, err
	}
	all, err := e.Properties(ResourcePlugin).GetAll(app)
	if err != nil {
		return Resources{}, fmt.Errorf("read resources of %s: %w", app, err)
	}
	lookup := func(scopes []string, types ...ResourceType) Setting {
		for _, sc := range scopes {
			for _, t := range types {
				k := ResourceKey(sc, kind, t)
				if v, ok := all[k]; ok && v != "" {
					return Setting{Value: v, Key: k}
				}
			}
		}
		return Setting{}
	}
	scopes := []string{proc}
	if proc != DefaultProcess {
		scopes = append(scopes, DefaultProcess)
	}
	r := Resources{App: app, Process: proc, Kind: kind}
	r.CPU = lookup(scopes, CPU)
	r.Memory = lookup(scopes, Memory)
	r.MemorySwap = lookup(scopes, MemorySwap)
	r.NvidiaGPU = lookup(scopes, NvidiaGPU)
	r.NetworkIngress = lookup(scopes, NetworkIngress, Network)
	r.NetworkEgress = lookup(scopes, NetworkEgress, Network)
	return r, nil
}

// ResourceProcessTypes lists the process types (not _default_, not the
// build pseudo-type) that have at least one non-empty resource key of any
// kind and type, sorted.
func (e Env) ResourceProcessTypes(app string) ([]string, error) {
	all, err := e.Properties(ResourcePlugin).GetAll(app)
	if err != nil {
		return nil, fmt.Errorf("read resources of %s: %w", app, err)
	}
	seen := map[string]bool{}
	for k, v := range all {
		proc, _, _, ok := ParseResourceKey(k)
		if !ok || v == "" || proc == DefaultProcess || proc == BuildProcess {
			continue
		}
		seen[proc] = true
	}
	procs := make([]string, 0, len(seen))
	for p := range seen {
		procs = append(procs, p)
	}
	sort.Strings(procs)
	return procs, nil
}

// SetResource writes one resource value as `dokku resource:limit|reserve`
// would: value "clear" or "" deletes the key.
func (e Env) SetResource(app, proc string, kind ResourceKind, typ ResourceType, value string) error {
	if !validKind(kind) {
		return fmt.Errorf("%w: %q", ErrInvalidResourceKind, kind)
	}
	if !validType(typ) {
		return fmt.Errorf("%w: %q", ErrInvalidResourceType, typ)
	}
	if proc == "" {
		proc = DefaultProcess
	}
	if err := ValidateProcessType(proc); err != nil {
		return err
	}
	p := e.Properties(ResourcePlugin)
	key := ResourceKey(proc, kind, typ)
	if value == "" || value == "clear" {
		return p.Delete(app, key)
	}
	return p.Set(app, key, value)
}

// IsNetworkLimitKey reports whether a resource property name is a network
// limit ("<proc>.limit.network", "...network-egress", "...network-ingress"):
// the only keys the shaper reads.
func IsNetworkLimitKey(key string) bool {
	proc, kind, typ, ok := ParseResourceKey(key)
	if !ok || kind != Limit || ValidateProcessType(proc) != nil {
		return false
	}
	return typ == Network || typ == NetworkEgress || typ == NetworkIngress
}
