package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Budget names are "APP/SCOPE/DIRECTION", which bpftool and the shaper's own
// errors show as they are. The shaper caps a name at MaxBudgetName bytes (its
// pinned names map, whose layout is fixed), while Dokku allows app names of
// 255 bytes and process types of any length. A name that would not fit uses
// the hashed form of the app instead ("~" and 32 hex digits of its SHA-256),
// and of the scope too if it still does not fit. "~" starts no Dokku app name
// or process type, so a hashed part never equals a plain one, and ownership
// and stale-app checks recognise both forms by hashing the apps they know.
// What users read shows the real names: report prints Want.Scope, apply
// prints Result.BudgetLabel.

// MaxBudgetName is the longest name the shaper accepts (pkg/shaper maxNameLen).
const MaxBudgetName = 127

const hashedPrefix = "~"

// hashed is the fixed-length form of a long app name or scope: 33 bytes.
func hashed(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hashedPrefix + hex.EncodeToString(sum[:16])
}

// BudgetRef is a parsed budget name. App and Scope are the plain names or
// their hashed forms.
type BudgetRef struct {
	App       string
	Scope     string
	Direction Direction
}

func (b BudgetRef) String() string {
	return b.App + "/" + b.Scope + "/" + string(b.Direction)
}

// OwnedBy reports whether the budget belongs to app, in either form.
func (b BudgetRef) OwnedBy(app string) bool {
	// Hash only a hashed name's app: this runs for every attachment of every
	// app a run reconciles.
	return b.App == app || (strings.HasPrefix(b.App, hashedPrefix) && b.App == hashed(app))
}

// BudgetName is the shaper budget of an app's scope and direction: the plain
// name when it fits in MaxBudgetName bytes, else the hashed form.
func BudgetName(app, scope string, dir Direction) string {
	ref := BudgetRef{App: app, Scope: scope, Direction: dir}
	if len(ref.String()) <= MaxBudgetName {
		return ref.String()
	}
	ref.App = hashed(app)
	if len(ref.String()) <= MaxBudgetName {
		return ref.String()
	}
	ref.Scope = hashed(scope)
	return ref.String()
}

// ParseBudgetName splits a name BudgetName made; ok is false for any other.
func ParseBudgetName(name string) (ref BudgetRef, ok bool) {
	app, rest, ok1 := strings.Cut(name, "/")
	scope, dir, ok2 := strings.Cut(rest, "/")
	d := Direction(dir)
	if !ok1 || !ok2 || app == "" || scope == "" || (d != Egress && d != Ingress) {
		return BudgetRef{}, false
	}
	return BudgetRef{App: app, Scope: scope, Direction: d}, true
}

// BudgetLabel is a budget of this result as a user should read it: the real
// app and scope names in place of hashed ones, where the result knows them (a
// scope no longer configured is known only by its budget name).
func (r Result) BudgetLabel(name string) string {
	ref, ok := ParseBudgetName(name)
	if !ok || !ref.OwnedBy(r.App) {
		return name
	}
	ref.App = r.App
	for _, w := range r.Wants {
		if w.Budget.Name == name {
			ref.Scope = w.Scope
		}
	}
	return ref.String()
}

// ownedBy reports whether a budget name belongs to app.
func ownedBy(budget, app string) bool {
	ref, ok := ParseBudgetName(budget)
	return ok && ref.OwnedBy(app)
}
