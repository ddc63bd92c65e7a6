package dokku

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// Pod annotations of apps on Dokku's k3s scheduler, where
// `dokku scheduler-k3s:annotations:set APP KEY VALUE --resource-type pod
// [--process-type P]` keeps them (plugins/scheduler-k3s CommandAnnotationsSet):
// plugin "scheduler-k3s", app APP, property "<P>.pod" with P "--global"
// when no process type is given, a JSON map (PropertyMapSet). At deploy the
// chart takes the "--global.pod" map and then the process type's own map
// over it, key by key, into every pod of that process type.
//
// Ownership, as for docker-options: this tool changes only the keys it
// wrote, with the values it wrote. Its record is a map property of its own
// store (plugin Owner, key "owned-annotations.<property>"). A key present
// with another value, or not in the record, belongs to the operator: never
// changed or removed, and setting it is a conflict (ErrForeignAnnotation).

// K3sPlugin is the scheduler-k3s plugin's property namespace.
const K3sPlugin = "scheduler-k3s"

// K3sGlobalProcess is scheduler-k3s's name for "every process type".
const K3sGlobalProcess = "--global"

// ErrForeignAnnotation means the operator set an annotation this tool would write.
var ErrForeignAnnotation = errors.New("set by the operator, not by netshape")

// ForeignAnnotationError names the conflicting annotations of one scope.
type ForeignAnnotationError struct {
	App, Process string
	Annotations  map[string]string
}

func (e *ForeignAnnotationError) Error() string {
	keys := slices.Sorted(maps.Keys(e.Annotations))
	var kv []string
	for _, k := range keys {
		kv = append(kv, k+"="+e.Annotations[k])
	}
	pt := ""
	if e.Process != DefaultProcess {
		pt = " --process-type " + e.Process
	}
	return fmt.Sprintf("pod annotation %s of %s (%s) is %v: remove it with `dokku scheduler-k3s:annotations:set %s %s \"\" --resource-type pod%s` first",
		strings.Join(kv, ", "), e.App, e.Process, ErrForeignAnnotation, e.App, keys[0], pt)
}

func (e *ForeignAnnotationError) Unwrap() error { return ErrForeignAnnotation }

// PodAnnotationsProperty is scheduler-k3s's property for a process type's pod
// annotations; DefaultProcess (or "") maps to "--global.pod".
func PodAnnotationsProperty(proc string) string {
	if proc == "" || proc == DefaultProcess {
		proc = K3sGlobalProcess
	}
	return proc + ".pod"
}

func annotationRecordKey(proc string) string {
	return "owned-annotations." + PodAnnotationsProperty(proc)
}

// PodAnnotations edits the pod annotations this tool owns.
type PodAnnotations struct {
	Env Env
	// Owner is the plugin whose properties record what was written here;
	// "" means OwnerPlugin.
	Owner string
}

// PodAnnotations returns an editor recording ownership under OwnerPlugin.
func (e Env) PodAnnotations() PodAnnotations { return PodAnnotations{Env: e} }

func (a PodAnnotations) owner() Properties {
	o := a.Owner
	if o == "" {
		o = OwnerPlugin
	}
	return a.Env.Properties(o)
}

func (a PodAnnotations) scope(app, proc string) (string, error) {
	if err := a.Env.VerifyApp(app); err != nil {
		return "", err
	}
	if proc == "" {
		proc = DefaultProcess
	}
	return proc, ValidateProcessType(proc)
}

// All returns every pod annotation stored for the scope (operator's included).
func (a PodAnnotations) All(app, proc string) (map[string]string, error) {
	proc, err := a.scope(app, proc)
	if err != nil {
		return nil, err
	}
	return a.Env.Properties(K3sPlugin).GetMap(app, PodAnnotationsProperty(proc))
}

// Owned returns the annotations of the scope this tool wrote that are still
// there with the value it wrote.
func (a PodAnnotations) Owned(app, proc string) (map[string]string, error) {
	proc, err := a.scope(app, proc)
	if err != nil {
		return nil, err
	}
	cur, err := a.Env.Properties(K3sPlugin).GetMap(app, PodAnnotationsProperty(proc))
	if err != nil {
		return nil, err
	}
	rec, err := a.owner().GetMap(app, annotationRecordKey(proc))
	if err != nil {
		return nil, err
	}
	return ownedOf(cur, rec), nil
}

func ownedOf(cur, rec map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range rec {
		if c, ok := cur[k]; ok && c == v {
			out[k] = v
		}
	}
	return out
}

// OwnedScopes lists the process types (DefaultProcess for "--global") for
// which this tool holds a record, sorted.
func (a PodAnnotations) OwnedScopes(app string) ([]string, error) {
	keys, err := a.owner().Keys(app)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		prop, ok := strings.CutPrefix(k, "owned-annotations.")
		if !ok {
			continue
		}
		proc, ok := strings.CutSuffix(prop, ".pod")
		if !ok {
			continue
		}
		if proc == K3sGlobalProcess {
			proc = DefaultProcess
		}
		if ValidateProcessType(proc) == nil {
			out = append(out, proc)
		}
	}
	sort.Strings(out)
	return out, nil
}

// SetOwned makes want the annotations this tool holds among managed keys of
// the scope: its keys not in want are removed, want's are set; every other
// key, and any managed key the operator set, is left byte for byte. A key of
// want the operator set (present and not recorded with that value) is a
// *ForeignAnnotationError and nothing is written. Nothing is written when
// nothing changes. Keys of want must be among managed.
func (a PodAnnotations) SetOwned(app, proc string, managed []string, want map[string]string) error {
	proc, err := a.scope(app, proc)
	if err != nil {
		return err
	}
	for k := range want {
		if !slices.Contains(managed, k) {
			return fmt.Errorf("pod annotation %q is not one this tool manages", k)
		}
	}
	store, prop := a.Env.Properties(K3sPlugin), PodAnnotationsProperty(proc)
	_, exists, err := store.Get(app, prop)
	if err != nil {
		return err
	}
	cur, err := store.GetMap(app, prop)
	if err != nil {
		return err
	}
	rec, err := a.owner().GetMap(app, annotationRecordKey(proc))
	if err != nil {
		return err
	}
	owned := ownedOf(cur, rec)

	foreign := map[string]string{}
	for k := range want {
		if v, ok := cur[k]; ok {
			if _, mine := owned[k]; !mine {
				foreign[k] = v
			}
		}
	}
	if len(foreign) > 0 {
		return &ForeignAnnotationError{App: app, Process: proc, Annotations: foreign}
	}

	next := maps.Clone(cur)
	for k := range owned {
		if _, keep := want[k]; !keep {
			delete(next, k)
		}
	}
	maps.Copy(next, want)
	if !maps.Equal(next, cur) && (exists || len(next) > 0) {
		// Record the union first: a crash between the writes then leaves
		// annotations still known as ours, never orphaned ones.
		union := maps.Clone(rec)
		maps.Copy(union, want)
		if !maps.Equal(union, rec) {
			if err := a.owner().SetMap(app, annotationRecordKey(proc), union); err != nil {
				return err
			}
		}
		if err := store.SetMap(app, prop, next); err != nil {
			return err
		}
	}
	// The record keeps only what is ours now: keys the operator took over
	// (changed or removed by hand) are forgotten.
	if len(want) == 0 {
		if _, had, err := a.owner().Get(app, annotationRecordKey(proc)); err != nil || !had {
			return err
		}
		return a.owner().Delete(app, annotationRecordKey(proc))
	}
	if !maps.Equal(rec, want) {
		return a.owner().SetMap(app, annotationRecordKey(proc), want)
	}
	return nil
}
