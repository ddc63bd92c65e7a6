package reconcile

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
)

// Teardown has three callers, one implementation (removeBudgets): an app that
// was deleted (post-delete: Remove), apps deleted while the plugin was not
// looking (apply --all: RemoveGone) and the plugin itself (uninstall:
// RemoveAll). Callers hold the reconcile lock, as for App: a reconcile of the
// same app must not re-attach what is being removed.

// appAttachments lists the app's attachments. A run of one app reads the
// registry for them; from a run's second app on, the registry is read once
// and split by app (apply --all read all of it for each app). Either list
// may hold records changed since by an earlier app of the run: what acts on
// them checks the record first (Shaper.PruneAttachments) or goes by the
// device (Shaper.DetachHook).
func (r *Reconciler) appAttachments(app string) ([]shaper.Attachment, error) {
	r.apps++
	if r.byApp == nil && r.apps > 1 {
		all, err := r.Shaper.Attachments()
		if err != nil {
			return nil, err
		}
		r.byApp, r.byAppUsed = map[string][]shaper.Attachment{}, map[string]bool{}
		for _, a := range all {
			if ref, ok := ParseBudgetName(a.Budget); ok {
				r.byApp[ref.App] = append(r.byApp[ref.App], a)
			}
		}
	}
	if r.byApp != nil && !r.byAppUsed[app] {
		// Once per app: a second App of the same app in this run reads
		// what the first changed.
		r.byAppUsed[app] = true
		return append(slices.Clone(r.byApp[app]), r.byApp[hashed(app)]...), nil
	}
	return r.Shaper.AttachmentsWhere(func(budget string) bool { return ownedBy(budget, app) })
}

// pruneApp forgets the app's attachments (listed) whose namespace or device
// vanished, and returns the rest. Only the app's: each app's run prunes its
// own, so `apply APP` among a thousand containers opens the namespaces of
// that app's alone, and `apply --all` each once. Records left by deleted
// apps go with their budgets (RemoveGone); devices that vanish later in the
// run are pruned by Shaper.DetachHook when it meets them.
func (r *Reconciler) pruneApp(app string, listed []shaper.Attachment) ([]shaper.Attachment, error) {
	prune := r.prune
	if prune == nil {
		prune = r.Shaper.PruneAttachments
	}
	pruned, err := prune(listed)
	if err != nil {
		return nil, fmt.Errorf("forget devices of %s that vanished: %w", app, err)
	}
	gone := map[devID]bool{}
	for _, a := range pruned {
		gone[devID{a.NetnsIno, a.Ifindex, a.Hook}] = true
	}
	return slices.DeleteFunc(listed, func(a shaper.Attachment) bool { return gone[devID{a.NetnsIno, a.Ifindex, a.Hook}] }), nil
}

// Remove detaches and deletes every budget of an app (post-delete).
func (r *Reconciler) Remove(app string) error {
	_, err := r.removeBudgets(func(name string) bool { return ownedBy(name, app) })
	if err != nil {
		return fmt.Errorf("remove limits of %s: %w", app, err)
	}
	return nil
}

// RemoveGone removes the budgets of every app that no longer exists in Dokku,
// and attachments left without a budget (apply --all). It reads the apps
// itself, under the caller's lock: a list taken before it could miss an app
// created and reconciled since. It returns the apps whose budgets it removed,
// as their budget names give them (the hashed form for long names).
func (r *Reconciler) RemoveGone() ([]string, error) {
	// Env.Apps reads a missing DOKKU_ROOT as "no apps": that must not mean
	// every app is gone.
	if st, err := os.Stat(r.Env.DokkuRoot); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("remove limits of deleted apps: Dokku root %s is not a directory", r.Env.DokkuRoot)
	}
	apps, err := r.Env.Apps()
	if err != nil {
		return nil, fmt.Errorf("remove limits of deleted apps: %w", err)
	}
	live := map[string]bool{}
	for _, a := range apps {
		live[a], live[hashed(a)] = true, true
	}
	removed, err := r.removeBudgets(func(name string) bool {
		ref, ok := ParseBudgetName(name)
		return !ok || !live[ref.App] // not a name of ours (or none at all) belongs to no app
	})
	var gone []string
	for _, name := range removed {
		app := name
		if ref, ok := ParseBudgetName(name); ok {
			app = ref.App
		}
		if !slices.Contains(gone, app) {
			gone = append(gone, app)
		}
	}
	if err != nil {
		return gone, fmt.Errorf("remove limits of deleted apps: %w", err)
	}
	return gone, nil
}

// RemoveAll removes every budget and attachment, then the pins (uninstall).
// On success the Shaper is closed. On failure the pins stay: they are how a
// retry finds what is left.
func (r *Reconciler) RemoveAll() error {
	_, err := r.removeBudgets(func(string) bool { return true })
	if err == nil {
		if _, perr := r.Shaper.Prune(); perr != nil {
			err = fmt.Errorf("forget devices that vanished: %w", perr)
		}
	}
	if err != nil {
		return fmt.Errorf("remove every limit: %w", err)
	}
	return r.Shaper.Destroy()
}

// removeBudgets removes every budget whose name match selects (RemoveBudget
// detaches its devices first), then detaches every attachment whose budget
// name match selects: those of budgets that could not be removed, and those
// whose budget is gone (name "", an interrupted run), which enforce nothing
// but would outlive us. It carries on past failures and returns the budgets
// it removed with every error.
func (r *Reconciler) removeBudgets(match func(name string) bool) ([]string, error) {
	if r.Shaper == nil {
		return nil, errors.New("reconcile: no shaper")
	}
	r.listed, r.byApp = nil, nil
	budgets, err := r.Shaper.Budgets()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, b := range budgets {
		if !match(b.Name) {
			continue
		}
		if err := r.Shaper.RemoveBudget(b.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, b.Name)
	}
	atts, err := r.Shaper.Attachments()
	if err != nil {
		return removed, errors.Join(append(errs, err)...)
	}
	for _, a := range atts {
		if !match(a.Budget) {
			continue
		}
		if err := r.Shaper.Detach(a.Device); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", a.Device, err))
		}
	}
	return removed, errors.Join(errs...)
}
