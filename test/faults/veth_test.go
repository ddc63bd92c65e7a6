//go:build vm

package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestVMFaultVethDeletedMidApply deletes a container's host-side veth (the kernel removes its
// eth0 with it) while `apply` is shaping the app's containers: after apply listed the container's
// interfaces and before it reached them. apply must fail open and say so (non-zero exit, the
// container named on stderr as not enforced, traffic passing unshaped), record nothing for the
// vanished devices, and the next apply must be clean.
func TestVMFaultVethDeletedMidApply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	r := newRig(t, ctx, "veth", "10.242.3.1/24")
	const app = "vethapp"
	const n = 6
	r.limitApp(app, "20mbit", "30mbit", "web", n)
	for i := 1; i <= n; i++ {
		r.runApp(app, "web", i)
	}
	cs, err := r.running(app)
	if err != nil || len(cs) != n {
		t.Fatalf("containers: %v (%d running)", err, len(cs))
	}
	devs := map[devKey]bool{}
	for _, c := range cs {
		for _, k := range c.devs(r.hostNetnsIno) {
			devs[k] = true
		}
	}
	recorded := func() map[devKey]bool {
		atts, err := r.attachments()
		if err != nil {
			t.Fatal(err)
		}
		got := map[devKey]bool{}
		for _, a := range atts {
			if k := keyOf(a); devs[k] {
				got[k] = true
			}
		}
		return got
	}

	// At the first recorded attachment, delete the veth of a container apply has not reached:
	// the last by name with nothing recorded (apply lists, then starts its attaches in name order, a few
	// at a time: pkg/reconcile attachAll).
	p := r.start("apply", app)
	var atDel int
	vi := -1
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline) && !p.exited(); time.Sleep(2 * time.Millisecond) {
		got := recorded()
		if atDel = len(got); atDel == 0 {
			continue
		}
		for i := n - 1; i >= 0 && vi < 0; i-- {
			if !anyOf(got, cs[i].devs(r.hostNetnsIno)) {
				vi = i
			}
		}
		if vi < 0 {
			break
		}
		// In-process (`ip link del` is a fork and exec, long enough under TCG for apply to pass by).
		if err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: cs[vi].Pair.HostIf.Index}}); err != nil {
			t.Fatalf("delete %s: %v", cs[vi].Pair.HostIf.Name, err)
		}
		if late := recorded(); anyOf(late, cs[vi].devs(r.hostNetnsIno)) {
			// apply recorded the victim between our look and the delete: not the fault we want.
			p.wait(90 * time.Second)
			t.Fatalf("apply reached %s before its veth was deleted (%d of %d recorded at the look)", cs[vi].Name, atDel, len(devs))
		}
		break
	}
	if vi < 0 {
		p.wait(90 * time.Second)
		t.Fatalf("no veth deleted mid-apply: %d of %d attachments recorded at the first look, none left unreached:\n%s", atDel, len(devs), p.log)
	}
	victim := cs[vi]
	rest := append(append([]ctr{}, cs[:vi]...), cs[vi+1:]...)
	code, err := p.wait(90 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	out := p.log.String()
	t.Logf("apply (exit %d) with %s deleted after %d of %d attachments were recorded:\n%s",
		code, victim.Pair.HostIf.Name, atDel, len(devs), out)
	// The fault was hit mid-apply: apply had started recording and had not reached the victim;
	// that it had planned the victim's devices shows below, where it names them as not enforced.
	if atDel >= len(devs)-1 {
		t.Fatalf("veth deleted with %d of %d attachments recorded: not mid-apply", atDel, len(devs))
	}
	if code == 0 {
		t.Errorf("apply exited 0 although %s's devices vanished under it", victim.Name)
	}
	var notEnforced []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "NOT ENFORCED") && strings.Contains(l, victim.Name) {
			notEnforced = append(notEnforced, l)
		}
	}
	if len(notEnforced) == 0 || !strings.Contains(out, "unshaped") {
		t.Errorf("apply did not say loudly that %s is not enforced and passes unshaped", victim.Name)
	}
	for _, c := range rest {
		if strings.Contains(strings.Join(notEnforced, "\n"), c.Name+" ") {
			t.Errorf("apply reports %s as not enforced; only %s lost its veth", c.Name, victim.Name)
		}
	}

	// Nothing recorded or pinned for the vanished devices; the others shaped and whole.
	v, err := r.takeInventory(rest)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range victim.devs(r.hostNetnsIno) {
		if _, ok := v.ByDev[k]; ok {
			t.Errorf("a record was left for the deleted device %s", k)
		}
	}
	if err := r.expectClean(v, rest, defaultBudget); err != nil {
		t.Errorf("after the failed apply: %v\n%s", err, v)
	}
	vmresult.Report(t, "veth_deleted_mid_apply", map[string]any{"exit_code": code, "recorded_at_delete": atDel,
		"devices": len(devs), "not_enforced_lines": len(notEnforced), "state": v.Summary()})

	// The next apply is clean: the victim runs without an interface, nothing to shape there.
	res := r.mustApply(app)
	if strings.Contains(res.Stderr, "NOT ENFORCED") {
		t.Errorf("the next apply still warns:\n%s", res.Stderr)
	}
	v, err = r.takeInventory(rest)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.expectClean(v, rest, defaultBudget); err != nil {
		t.Errorf("after the next apply: %v\n%s", err, v)
	}
	t.Logf("after the next apply: %s", v)
}

// anyOf reports whether any of keys is in set.
func anyOf(set map[devKey]bool, keys []devKey) bool {
	for _, k := range keys {
		if set[k] {
			return true
		}
	}
	return false
}
