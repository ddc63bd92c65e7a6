// Package reconcile makes the devices of an app's running containers enforce
// the network limits configured for it in Dokku. It is the one place where
// "configured" meets "attached": the CLI, the post-deploy trigger and the
// Docker-events watcher all call App, and App is idempotent.
//
// Budgets are per app, per direction and per scope: the scope is the process
// type when that type has its own network key, else "_default_", shared by
// every process type without one. So an app scaled to N containers, each with
// several interfaces, still sends and receives at its configured rate.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dokku-netshape/dokku-netshape/pkg/containers"
	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
)

// Direction is named from the app's point of view, as Dokku names it.
type Direction string

const (
	Egress  Direction = "egress"  // what the app sends: container-side veth
	Ingress Direction = "ingress" // what the app receives: host-side veth
)

// DefaultScope is Dokku's name for "every process type".
const DefaultScope = dokku.DefaultProcess

// Lister finds an app's running deploy containers (pkg/containers in production).
type Lister interface {
	ListApp(ctx context.Context, app string) ([]containers.Container, error)
}

// Reconciler holds what App needs. Shaper may be nil for a read-only report.
// One Reconciler is one run (a command, one watcher pass) under the reconcile
// lock: it prunes the records of vanished devices once, not once per app.
type Reconciler struct {
	Env    dokku.Env
	Docker Lister
	Shaper *shaper.Shaper
	// Force replaces foreign root qdiscs on app devices.
	Force bool
	// Interfaces maps a container netns to its veths; nil means veth.Interfaces.
	Interfaces func(netnsPath string) ([]veth.Pair, error)
	// Monitor counts what no limit covers: each direction of an app without
	// a _default_ limit gets a count-only budget (shaper.Budget.CountOnly,
	// named like the limit would be: BudgetName(app, DefaultScope, dir)),
	// which every container of a process type without its own limit uses.
	// Its counters are read like any budget's: Shaper.Budget(name).Stats
	// (Bytes, Packets). Counting happens on the host-side veth (tc ingress
	// for app egress, tc egress for app ingress: the container cannot skip
	// it), without any qdisc, at a few tens of ns per packet; a veth whose
	// peer is elsewhere is counted on the container side. Setting a limit on
	// a monitored app and reconciling switches its devices to shaping live,
	// and clearing it switches them back. Off (nil-value) means no counting.
	// Set it on every Reconciler of a host alike (CLI, post-deploy, watcher),
	// or one run's removals undo another's counting.
	Monitor bool

	// prune is Shaper.PruneAttachments unless a test counts it (see pruneApp).
	prune func(atts []shaper.Attachment) ([]shaper.Attachment, error)
	// apps counts the App calls of this run; from the second on, the
	// registry is read once for every app (byApp, see appAttachments).
	apps      int
	byApp     map[string][]shaper.Attachment
	byAppUsed map[string]bool
	// recorded: attachments an Attach recorded although it failed (see
	// record): App removes them like anything else not wanted.
	recorded []shaper.Attachment
	// listed: the shaper's attachments as Status last read them, for the
	// next Status of the same run (a report of every app reads them once,
	// not once per app); App, which changes them, drops it.
	listed []shaper.Attachment
}

// Want is one configured budget of an app.
type Want struct {
	Scope     string // process type, or DefaultScope
	Direction Direction
	Budget    shaper.Budget
	Key       string // the Dokku property it came from
}

// Shaped is one device enforcing one budget.
type Shaped struct {
	Container   string // container name
	ContainerID string
	Process     string
	Interface   string // container-side interface (eth0, eth1, ...)
	Direction   Direction
	Device      shaper.Device
	Budget      string
	// Hook is shaper.HookShape for the EDT shaper, or shaper.HookPolice for
	// the backstop that polices an interface's app egress a second time on
	// its host-side peer (where the container cannot bypass it).
	Hook shaper.Hook
	// Changed: this run attached it (or moved it to this budget); false
	// when it was in force already.
	Changed bool
	// Note, when set, is what holds the limit with a caveat (Degraded:
	// policed, not paced); apply and report say it every time.
	Note *Cause
	// Datapath is shaper.DatapathCount for a count-only budget (Monitor),
	// shaper.DatapathPolicing for a shaping attachment degraded to a policer
	// because the kernel lacks sch_fq, else shaper.DatapathEDT.
	Datapath shaper.Datapath
}

// Backstop reports whether this is the host-side policer of app egress.
func (s Shaped) Backstop() bool {
	return s.Hook == shaper.HookPolice && s.Datapath != shaper.DatapathCount
}

// Counted reports a count-only attachment: monitored, not limited.
func (s Shaped) Counted() bool { return s.Datapath == shaper.DatapathCount }

// Degraded reports a limit enforced without fq: shaper.DegradedNoFq.
func (s Shaped) Degraded() bool { return s.Datapath == shaper.DatapathPolicing }

// Unshaped is something that should carry a limit but does not, and why.
type Unshaped struct {
	Container string
	Process   string
	Interface string // "" when the whole container was skipped
	Direction Direction
	Budget    string // set when a stale attachment could not be removed
	Cause     Cause
	Err       error // the error behind Cause, when there was one
}

// Result is what one reconcile of an app found and did.
type Result struct {
	App      string
	Wants    []Want
	Shaped   []Shaped
	Unshaped []Unshaped
	Warnings []string // shaped, but the container could undo it
	Removed  []shaper.Attachment
	// ShapedAt is when both directions were attached everywhere this run
	// could attach them; the egress backstops follow (see attach).
	ShapedAt time.Time
	// InspectedAt (Started only) is when the started container was known
	// (from its cgroup, or Docker's answer), AttachFrom when the first attach began: with
	// ShapedAt they split a start's unshaped window into its parts.
	InspectedAt, AttachFrom time.Time
	// Scheduler is set ("k3s") when the app's pods run in a cluster whose
	// CNI enforces its limits (pkg/k3s): nothing is attached here for it.
	Scheduler string
}

// Problems are the Unshaped entries whose configured limit is not in force
// (Cause.Problem): not a retiring or stopped container.
func (r Result) Problems() []Unshaped {
	var out []Unshaped
	for _, u := range r.Unshaped {
		if u.Cause.Problem {
			out = append(out, u)
		}
	}
	return out
}

// Err joins every failure to enforce a configured limit; nil when all held.
func (r Result) Err() error {
	var errs []error
	for _, u := range r.Problems() {
		err := u.Err
		if err == nil {
			err = errors.New(u.Cause.Summary)
		}
		errs = append(errs, fmt.Errorf("%s %s %s: %w", u.Container, u.Interface, u.Direction, err))
	}
	return errors.Join(errs...)
}

// Wants reads the app's configured network limits for the given process types.
func (r *Reconciler) Wants(app string, procs []string) ([]Want, error) {
	seen := map[string]bool{}
	var out []Want
	for _, proc := range append([]string{DefaultScope}, procs...) {
		res, err := r.Env.ResourceLimits(app, proc)
		if err != nil {
			return nil, fmt.Errorf("read resource limits of %s (%s): %w", app, proc, err)
		}
		for _, d := range []struct {
			dir Direction
			get func() (uint64, bool, string, error)
		}{
			{Egress, func() (uint64, bool, string, error) {
				v, ok, err := res.EgressRate()
				return uint64(v), ok, res.NetworkEgress.Key, err
			}},
			{Ingress, func() (uint64, bool, string, error) {
				v, ok, err := res.IngressRate()
				return uint64(v), ok, res.NetworkIngress.Key, err
			}},
		} {
			bps, ok, key, err := d.get()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", app, err)
			}
			if !ok {
				continue
			}
			scope := DefaultScope
			if p, _, _, parsed := dokku.ParseResourceKey(key); parsed {
				scope = p
			}
			name := BudgetName(app, scope, d.dir)
			if seen[name] {
				continue
			}
			seen[name] = true
			out = append(out, Want{Scope: scope, Direction: d.dir, Key: key,
				Budget: shaper.Budget{Name: name, Rate: bps}})
		}
	}
	if r.Monitor {
		for _, dir := range []Direction{Egress, Ingress} {
			name := BudgetName(app, DefaultScope, dir)
			if !seen[name] {
				out = append(out, Want{Scope: DefaultScope, Direction: dir, Budget: shaper.Budget{Name: name, CountOnly: true}})
			}
		}
	}
	return out, nil
}

// budgetFor names the budget a process type's traffic in one direction uses.
func budgetFor(wants []Want, proc string, dir Direction) (string, bool) {
	w, ok := wantFor(wants, proc, dir)
	return w.Budget.Name, ok
}

// wantFor picks the want a process type's traffic in one direction uses.
func wantFor(wants []Want, proc string, dir Direction) (Want, bool) {
	var fallback Want
	found := false
	for _, w := range wants {
		if w.Direction != dir {
			continue
		}
		if w.Scope == proc {
			return w, true
		}
		if w.Scope == DefaultScope {
			fallback, found = w, true
		}
	}
	return fallback, found
}

// App reconciles one app: it creates or updates the app's budgets, attaches
// them to every interface of every running container, and removes whatever
// this tool attached for the app that is no longer configured or running.
// A device that cannot be shaped is left unshaped (never half-shaped) and
// reported; App carries on with the others. On a kernel without sch_fq
// (shaper.ErrNoFq) a device is enforced degraded instead: policed by the
// program, no pacing (Shaped.Degraded, shaper.DegradedNoFq).
func (r *Reconciler) App(ctx context.Context, app string) (Result, error) {
	res := Result{App: app}
	if r.Shaper == nil {
		return res, errors.New("reconcile: no shaper")
	}
	r.listed = nil
	var list []containers.Container
	var err error
	if res.Scheduler, err = r.remote(app); err != nil {
		return res, err
	}
	// A k3s app has no wants here, and needs no Docker: what was attached
	// before the move is removed below.
	if res.Scheduler == "" {
		if list, err = r.Docker.ListApp(ctx, app); err != nil {
			return res, fmt.Errorf("list containers of %s: %w", app, err)
		}
		if res.Wants, err = r.Wants(app, processTypes(list)); err != nil {
			return res, err
		}
	}
	listed, err := r.appAttachments(app)
	if err != nil {
		return res, err
	}
	listed, err = r.pruneApp(app, listed)
	if err != nil {
		return res, err
	}
	for _, w := range res.Wants {
		if err := r.Shaper.UpsertBudget(w.Budget); err != nil {
			return res, fmt.Errorf("%s: %w", app, err)
		}
	}

	r.recorded = nil
	want := r.attach(ctx, r.plan(list, res.Wants, &res), &res)

	// Remove what is attached for this app but no longer wanted, then
	// budgets that nothing configures any more. The app's records are those
	// listed before attaching and what this run recorded: under the lock
	// nothing else adds any.
	for _, a := range append(listed, r.recorded...) {
		if _, ok := want[devID{a.NetnsIno, a.Ifindex, a.Hook}]; ok {
			continue // attached (or moved to its new budget) above
		}
		if err := r.Shaper.DetachHook(a.Device, a.Hook); err != nil {
			// Keep going: the rest of the app still needs reconciling and reporting.
			res.Unshaped = append(res.Unshaped, Unshaped{Interface: a.Device.Name, Budget: a.Budget, Err: err,
				Cause: Cause{Code: CodeFailed, Problem: true, Summary: "could not detach a limit no longer configured: " + err.Error(),
					Action: applyHint(app) + " retries"}})
			continue
		}
		res.Removed = append(res.Removed, a)
	}
	names, err := r.Shaper.BudgetNames()
	if err != nil {
		return res, err
	}
	for _, name := range names {
		if ownedBy(name, app) && !slices.ContainsFunc(res.Wants, func(w Want) bool { return w.Budget.Name == name }) {
			if err := r.Shaper.RemoveBudget(name); err != nil {
				return res, fmt.Errorf("%s: %w", app, err)
			}
		}
	}
	return res, nil
}

type devID struct {
	ino     uint64
	ifindex int
	hook    shaper.Hook
}

// plan lists the devices of the app's containers and the budget each must
// enforce; containers and interfaces that cannot be shaped go to res.Unshaped.
func (r *Reconciler) plan(list []containers.Container, wants []Want, res *Result) []Shaped {
	var out []Shaped
	for _, c := range list {
		out = append(out, r.planContainer(c, wants, res)...)
	}
	return out
}

func (r *Reconciler) planContainer(c containers.Container, wants []Want, res *Result) []Shaped {
	skip := func(cause Cause, err error) []Shaped {
		res.Unshaped = append(res.Unshaped, Unshaped{Container: c.Name, Process: c.ProcessType,
			Cause: forContainer(res.App, c.Name, cause), Err: err})
		return nil
	}
	egressWant, hasEgress := wantFor(wants, c.ProcessType, Egress)
	ingressWant, hasIngress := wantFor(wants, c.ProcessType, Ingress)
	egress, ingress := egressWant.Budget.Name, ingressWant.Budget.Name
	if !hasEgress && !hasIngress {
		return nil
	}
	switch {
	case c.HostNetwork:
		return skip(hostNetwork(res.App), nil)
	case c.SharesNetnsWith() != "":
		return skip(sharedNetns(c.SharesNetnsWith()), nil)
	}
	if c.HasNetAdmin {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s is privileged or has NET_ADMIN: it can remove its own egress limit", c.Name))
	}
	path := c.NetnsPath()
	if path == "" {
		return skip(notRunning(), nil)
	}
	pairs, err := r.interfaces(path)
	switch {
	case errors.Is(err, veth.ErrHostNetwork):
		return skip(hostNetwork(res.App), nil)
	case errors.Is(err, veth.ErrGone):
		return skip(gone(), nil)
	case err != nil:
		return skip(notListed(res.App, err), err)
	}
	var out []Shaped
	for _, p := range pairs {
		item := Shaped{Container: c.Name, ContainerID: c.ID, Process: c.ProcessType, Interface: p.ContainerIf.Name}
		// Counted on the host side where it can be (out of the container's
		// reach; app egress at the host veth's ingress, app ingress at its
		// egress), else at the container-side device's opposite hook.
		count := func(dir Direction, budget string, hostHook, ownHook shaper.Hook) {
			it := item
			it.Direction, it.Budget, it.Datapath = dir, budget, shaper.DatapathCount
			if p.Peer == veth.PeerHost {
				it.Device, it.Hook = shaper.Device{Name: p.HostIf.Name}, hostHook
			} else {
				it.Device, it.Hook = shaper.Device{Netns: path, Name: p.ContainerIf.Name}, ownHook
			}
			out = append(out, it)
		}
		if hasEgress && egressWant.Budget.CountOnly {
			count(Egress, egress, shaper.HookPolice, shaper.HookShape)
		} else if hasEgress {
			item.Direction, item.Budget = Egress, egress
			item.Device = shaper.Device{Netns: path, Name: p.ContainerIf.Name}
			out = append(out, item)
			// The backstop: the same budget policed at the host-side peer's
			// ingress, out of the container's reach (a NET_RAW container can
			// send past eth0's tc egress with PACKET_QDISC_BYPASS).
			if p.Peer == veth.PeerHost {
				backstop := item
				backstop.Device, backstop.Hook = shaper.Device{Name: p.HostIf.Name}, shaper.HookPolice
				out = append(out, backstop)
			} else {
				res.Warnings = append(res.Warnings, fmt.Sprintf("%s %s: no egress backstop, the veth peer is not in the host network namespace (%s)",
					c.Name, p.ContainerIf.Name, p.Peer))
			}
		}
		if !hasIngress {
			continue
		}
		if ingressWant.Budget.CountOnly {
			count(Ingress, ingress, shaper.HookShape, shaper.HookPolice)
			continue
		}
		if p.Peer != veth.PeerHost {
			res.Unshaped = append(res.Unshaped, Unshaped{Container: c.Name, Process: c.ProcessType, Interface: p.ContainerIf.Name,
				Direction: Ingress, Cause: forContainer(res.App, c.Name, peerNotHost(p.Peer.String()))})
			continue
		}
		item.Direction, item.Budget = Ingress, ingress
		item.Device = shaper.Device{Name: p.HostIf.Name}
		out = append(out, item)
	}
	return out
}

// Status reports what App would find, without changing anything: the
// configured budgets, and for each device whether it enforces its budget now
// and, where not, why — read from the device (its root qdisc, whether the
// kernel can make fq) and the container, not guessed. With a nil Shaper (not
// root) every device is reported as unknown.
func (r *Reconciler) Status(ctx context.Context, app string) (Result, error) {
	res := Result{App: app}
	var err error
	if res.Scheduler, err = r.remote(app); err != nil || res.Scheduler != "" {
		return res, err
	}
	list, err := r.Docker.ListApp(ctx, app)
	if err != nil {
		return res, fmt.Errorf("list containers of %s: %w", app, err)
	}
	if res.Wants, err = r.Wants(app, processTypes(list)); err != nil {
		return res, err
	}
	planned := r.plan(list, res.Wants, &res)
	unshaped := func(p Shaped, c Cause) {
		res.Unshaped = append(res.Unshaped, Unshaped{Container: p.Container, Process: p.Process, Interface: p.Interface,
			Direction: p.Direction, Cause: forContainer(app, p.Container, c)})
	}
	if r.Shaper == nil {
		for _, p := range planned {
			if p.Backstop() || p.Counted() {
				continue // said once per interface and direction; counting is no limit
			}
			unshaped(p, unknown(app))
		}
		return res, nil
	}
	if r.listed == nil {
		if r.listed, err = r.Shaper.Attachments(); err != nil {
			return res, err
		}
	}
	atts := r.listed
	attachedAt := func(p Shaped) int {
		return slices.IndexFunc(atts, func(a shaper.Attachment) bool {
			return a.Device == p.Device && a.Budget == p.Budget && a.Hook == p.Hook &&
				(a.Datapath == shaper.DatapathCount) == p.Counted()
		})
	}
	attached := func(p Shaped) bool { return attachedAt(p) >= 0 }
	for _, p := range planned {
		if i := attachedAt(p); i >= 0 {
			p.Datapath = atts[i].Datapath
			if p.Degraded() {
				d := Degraded(app)
				p.Note = &d
			}
			res.Shaped = append(res.Shaped, p)
			continue
		}
		if p.Counted() {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s %s %s: not counted: run `dokku netshape:apply %s`", p.Container, p.Interface, p.Direction, app))
			continue
		}
		if p.Backstop() {
			// Without its shaper the backstop is left off on purpose (fail
			// open): the interface's egress line already says why.
			if slices.ContainsFunc(planned, func(q Shaped) bool {
				return !q.Backstop() && q.Container == p.Container && q.Interface == p.Interface && q.Direction == Egress && !attached(q)
			}) {
				continue
			}
			unshaped(p, backstopMissing(app))
			continue
		}
		// In the order apply meets them: the budget, then the device.
		cause := notAttached(app)
		if r.slotsFull(p.Budget) {
			cause = slotsFull()
		} else if err := shaper.CheckAttach(p.Device, p.Hook); err != nil && !errors.Is(err, shaper.ErrNoFq) {
			// Without fq apply still enforces the limit (policing): its
			// advice, not a missing fq's, is what helps here.
			cause = causeOf(app, err)
		}
		unshaped(p, cause)
	}
	return res, nil
}

// slotsFull reports whether budget does not exist and cannot be made: the
// one thing apply cannot get past by itself.
func (r *Reconciler) slotsFull(budget string) bool {
	if _, err := r.Shaper.Budget(budget); !errors.Is(err, shaper.ErrNoBudget) {
		return false
	}
	free, err := r.Shaper.SlotsFree()
	return err == nil && free == 0
}

// stopped reports whether a container is no longer running (or no longer
// exists), asking Docker; false when that cannot be told.
func (r *Reconciler) stopped(ctx context.Context, id string) bool {
	insp, ok := r.Docker.(Inspector)
	if !ok || id == "" {
		return false
	}
	c, err := insp.Inspect(ctx, id)
	if errors.Is(err, containers.ErrGone) {
		return true
	}
	return err == nil && !c.Running
}

// remote names the scheduler when app's limits are enforced elsewhere.
func (r *Reconciler) remote(app string) (string, error) {
	if k3s, err := r.Env.IsK3s(app); err != nil || !k3s {
		return "", err
	}
	return dokku.SchedulerK3s, nil
}

// processTypes lists the distinct process types of the containers, sorted.
func processTypes(list []containers.Container) []string {
	var procs []string
	for _, c := range list {
		if c.ProcessType != "" && !slices.Contains(procs, c.ProcessType) {
			procs = append(procs, c.ProcessType)
		}
	}
	slices.Sort(procs)
	return procs
}

// interfaces lists the veths of the netns at path (r.Interfaces, if a test
// set one).
func (r *Reconciler) interfaces(path string) ([]veth.Pair, error) {
	if r.Interfaces != nil {
		return r.Interfaces(path)
	}
	return veth.Interfaces(path)
}
