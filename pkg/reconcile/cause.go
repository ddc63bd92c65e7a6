package reconcile

import (
	"errors"
	"fmt"

	"github.com/dokku-netshape/dokku-netshape/pkg/dokku"
	"github.com/dokku-netshape/dokku-netshape/pkg/shaper"
	"github.com/dokku-netshape/dokku-netshape/pkg/veth"
)

// Code names a cause; stable, for scripts (report --format json).
type Code string

const (
	CodeNoFq            Code = "no-fq"             // the kernel cannot make the fq qdisc
	CodeDegraded        Code = "degraded"          // enforced by policing alone (no fq): see Degraded
	CodeForeignQdisc    Code = "foreign-qdisc"     // another tool's root qdisc on the device
	CodeHostNetwork     Code = "host-network"      // --network host: no interface of its own
	CodeSharedNetns     Code = "shared-netns"      // --network container:X: shaped there
	CodePeerNotHost     Code = "peer-not-host"     // veth peer outside the host netns
	CodeNotRunning      Code = "not-running"       // nothing to shape until it starts
	CodeGone            Code = "container-gone"    // stopped or removed while being shaped
	CodeVanished        Code = "device-vanished"   // the container runs, its interface went away
	CodeRetiring        Code = "retiring"          // replaced by a deploy, Dokku stops it soon
	CodeNotAttached     Code = "not-attached"      // nothing stops an apply: run it
	CodeSlotsFull       Code = "budget-slots-full" // its budget could not be made: every slot taken
	CodeBackstopMissing Code = "backstop-missing"  // egress shaped, its host-side policer not attached
	CodeK3s             Code = "k3s"               // the cluster's CNI enforces it, not this host
	CodeUnknown         Code = "unknown"           // could not be read (not root)
	CodeFailed          Code = "failed"            // any other error, quoted
	CodeNotListed       Code = "interfaces-failed" // the container's interfaces could not be listed
)

// Cause is why an interface (or a whole container) of an app is not shaped
// as configured, and what would fix it. The CLI renders it; report's JSON
// carries it as it is.
type Cause struct {
	Code Code `json:"code"`
	// Summary says what is true, in one line: "kernel lacks sch_fq".
	Summary string `json:"summary"`
	// Action is what fixes it, "" when nothing needs doing.
	Action string `json:"action,omitempty"`
	// Problem: a configured limit is not in force there (the exit status
	// of set/apply/clear says so). False for what needs no fixing: a
	// retiring or stopped container, one shaped through another.
	Problem bool `json:"problem"`
}

func applyHint(app string) string { return "`dokku netshape:apply " + app + "`" }

// NoFq is the cause for a kernel without sch_fq. What helps depends on the
// kernel: a module it has but did not load, or none at all — apply alone
// never does.
func NoFq(app string) Cause {
	return Cause{Code: CodeNoFq, Summary: "kernel lacks sch_fq (the fq qdisc that holds packets to their departure time)", Problem: true,
		Action: fqFix() + ", then " + applyHint(app) + " (apply alone cannot help)"}
}

// fqFix is what gives this kernel sch_fq.
func fqFix() string {
	if shaper.FqModule() == "module" {
		return "load it: `modprobe sch_fq` (and list sch_fq in /etc/modules-load.d/ to keep it)"
	}
	return "boot a kernel with sch_fq (CONFIG_NET_SCH_FQ; Debian's and Ubuntu's stock kernels have it)"
}

// DegradedSummary is what report and apply say of an interface that the
// shaper enforces by policing alone, on a kernel without fq.
const DegradedSummary = shaper.DegradedNoFq

// Degraded is the cause attached to an interface enforced by policing alone:
// the limit holds (not a Problem), but TCP sees drops instead of pacing.
func Degraded(app string) Cause {
	c := NoFq(app)
	c.Code, c.Summary, c.Problem = CodeDegraded, DegradedSummary, false
	c.Action = "for pacing: " + c.Action
	return c
}

func foreignQdisc(app string, e *shaper.ForeignQdiscError) Cause {
	c := Cause{Code: CodeForeignQdisc, Problem: true,
		Summary: fmt.Sprintf("foreign root qdisc %s %s on %s (not netshape's)", e.Kind, e.Handle, e.Device.Name),
		Action:  "`dokku netshape:apply " + app + " --force` replaces it on this app's veths only; or remove what installed it"}
	if shaper.FqSupport() != nil {
		// --force alone would only meet the missing fq next.
		c.Summary += "; and the kernel lacks sch_fq"
		c.Action = fqFix() + ", then `dokku netshape:apply " + app + " --force` (replaces it on this app's veths only)"
	}
	return c
}

func hostNetwork(app string) Cause {
	return Cause{Code: CodeHostNetwork, Problem: true,
		Summary: "host network (--network host): it sends on the host's own interfaces, which cannot be shaped per app",
		Action:  "deploy it without --network host (`dokku docker-options:report " + app + "`) to shape it"}
}

func sharedNetns(other string) Cause {
	return Cause{Code: CodeSharedNetns, Summary: "shares the network namespace of container " + other + ": shaped there"}
}

func peerNotHost(peer string) Cause {
	return Cause{Code: CodePeerNotHost, Problem: true,
		Summary: "veth peer is not in the host network namespace (" + peer + "): its ingress cannot be shaped",
		Action:  "attach the container to a Docker bridge network"}
}

func notRunning() Cause {
	return Cause{Code: CodeNotRunning, Summary: "not running: shaped when it starts"}
}

func gone() Cause {
	return Cause{Code: CodeGone, Summary: "container gone (stopped or removed while being shaped)"}
}

func vanished(app string) Cause {
	return Cause{Code: CodeVanished, Problem: true,
		Summary: "its interface vanished while being shaped", Action: applyHint(app) + " shapes what is there now"}
}

func notAttached(app string) Cause {
	return Cause{Code: CodeNotAttached, Problem: true, Summary: "not attached yet", Action: applyHint(app)}
}

func slotsFull() Cause {
	return Cause{Code: CodeSlotsFull, Problem: true,
		Summary: "not attached: its budget does not exist and every budget slot is in use",
		Action:  "free slots: `dokku-netshape apply --all` (as root) removes those of deleted apps, or clear limits an app does not need"}
}

func backstopMissing(app string) Cause {
	return Cause{Code: CodeBackstopMissing, Problem: true,
		Summary: "egress backstop not attached (shaped at the source; a NET_RAW sender can bypass that)",
		Action:  applyHint(app)}
}

// K3s is the cause for an app on Dokku's k3s scheduler: nothing runs here.
func K3s() Cause {
	return Cause{Code: CodeK3s, Summary: "k3s app: shaped in the cluster by its CNI from the pod annotations (see cluster), not on this host"}
}

func unknown(app string) Cause {
	return Cause{Code: CodeUnknown, Summary: "unknown: reading attachments needs root",
		Action: "`dokku netshape:report " + app + "` (through the plugin's grant) or run report as root"}
}

func notListed(app string, err error) Cause {
	return Cause{Code: CodeNotListed, Problem: true,
		Summary: "its interfaces could not be listed: " + err.Error(), Action: applyHint(app) + " retries"}
}

// retiring marks what a container Dokku is about to stop could not get:
// not a problem, it goes away on its own.
func retiring(replacement string, under Cause) Cause {
	return Cause{Code: CodeRetiring,
		Summary: "retiring (replaced by " + replacement + ", Dokku stops it after the deploy); " + under.Summary}
}

// causeOf classifies an error of Attach or CheckAttach by its type.
func causeOf(app string, err error) Cause {
	var foreign *shaper.ForeignQdiscError
	switch {
	case errors.As(err, &foreign):
		return foreignQdisc(app, foreign)
	case errors.Is(err, shaper.ErrNoFq):
		return NoFq(app)
	case errors.Is(err, shaper.ErrNoNetns), errors.Is(err, shaper.ErrNoDevice), errors.Is(err, veth.ErrGone):
		return vanished(app)
	}
	return Cause{Code: CodeFailed, Problem: true, Summary: err.Error(), Action: applyHint(app) + " retries"}
}

// forContainer adjusts a cause for the container it is about: nothing about
// a container Dokku is retiring is a problem.
func forContainer(app, name string, c Cause) Cause {
	if rep, ok := dokku.RetiringName(app, name); ok && c.Code != CodeRetiring {
		return retiring(rep, c)
	}
	return c
}
