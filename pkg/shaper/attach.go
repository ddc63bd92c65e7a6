package shaper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// ownPrefix starts the name of every program and legacy filter we attach;
	// it is how we recognise ours among other tools' programs on a device.
	ownPrefix = "netshape_"
	// progName and policeName are the shaping and backstop programs;
	// limitName is the shaping program's policing variant for kernels
	// without sch_fq, countName the count-only program.
	progName   = "netshape_edt"
	policeName = "netshape_police"
	limitName  = "netshape_limit"
	countName  = "netshape_count"

	// fqHandle is the handle of the fq root qdiscs we install ("4e53:", "NS").
	// A root qdisc with any other non-zero handle belongs to someone else.
	fqHandle = 0x4e53 << 16

	// legacyPrio is the cls_bpf priority of our filters.
	legacyPrio = 0x4e53

	// fq limits: our own horizon bounds each budget's backlog, so fq's
	// per-flow packet limit (default 100) must not drop first: under EDT a
	// single bulk flow legitimately holds a horizon's worth of packets.
	fqFlowPacketLimit = 10000
	fqPacketLimit     = 20000

	// fqHorizon: fq drops packets stamped further ahead than this. It must
	// exceed anything a budget stamps (2x its horizon, see Budget.validate).
	fqHorizon = 60 * time.Second
)

// Mode says how a program is attached.
type Mode uint8

const (
	ModeTCX    Mode = 1 // BPF link at TCX, pinned (kernel >= 6.6; Options.TCX or other TCX users)
	ModeLegacy Mode = 2 // clsact qdisc + cls_bpf direct-action filter (the default)
)

func (m Mode) String() string {
	switch m {
	case ModeTCX:
		return "tcx"
	case ModeLegacy:
		return "tc"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Hook says what an attachment does to its device.
type Hook uint32

const (
	// HookShape: the EDT program at tc egress plus fq root, shaping what the
	// device transmits (app egress on the container side, app ingress on the host side).
	HookShape Hook = 0
	// HookPolice: the backstop policer at tc ingress of a host-side veth,
	// policing what the container sends (app egress) a second time where
	// the container cannot reach it. No qdisc: it only passes or drops.
	HookPolice Hook = 1
)

var hooks = []Hook{HookShape, HookPolice}

func (h Hook) String() string {
	switch h {
	case HookShape:
		return "shape"
	case HookPolice:
		return "police"
	}
	return fmt.Sprintf("hook(%d)", uint32(h))
}

// prog is the program a hook runs; parent and attach are where it runs.
func (h Hook) prog() string {
	if h == HookPolice {
		return policeName
	}
	return progName
}

func (h Hook) parent() uint32 {
	if h == HookPolice {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

func (h Hook) tcx() ebpf.AttachType {
	if h == HookPolice {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

func (h Hook) side() string {
	if h == HookPolice {
		return "ingress"
	}
	return "egress"
}

// Datapath says what an attachment's program does with packets. Attach picks
// it from the budget and AttachOptions.NoFq; the registry records it.
type Datapath uint8

const (
	// DatapathEDT: at HookShape the EDT program stamps departure times and
	// our fq root enforces them; at HookPolice the backstop policer.
	DatapathEDT Datapath = 0
	// DatapathPolicing: degraded HookShape for a kernel without sch_fq. The
	// program (netshape_limit) enforces the budget itself by dropping what
	// runs past its horizon; nothing is paced, no qdisc is installed.
	DatapathPolicing Datapath = 1
	// DatapathCount: a count-only budget (Budget.CountOnly): netshape_count
	// counts bytes and packets at either hook, enforces nothing, no qdisc.
	DatapathCount Datapath = 2
)

// DegradedNoFq is what output says about a DatapathPolicing attachment.
const DegradedNoFq = "degraded: policing, no pacing (kernel lacks sch_fq)"

func (d Datapath) String() string {
	switch d {
	case DatapathEDT:
		return "edt"
	case DatapathPolicing:
		return "policing"
	case DatapathCount:
		return "count"
	}
	return fmt.Sprintf("datapath(%d)", uint8(d))
}

// AttachOptions tune Attach.
type AttachOptions struct {
	// Force replaces a root qdisc that someone else installed. Without it
	// such a qdisc is an ErrForeignQdisc and nothing is changed.
	Force bool
	// Hook is what to attach: HookShape (the default) or HookPolice.
	Hook Hook
	// NoFq enforces a shaping budget at HookShape without fq, as a policer
	// (DatapathPolicing): the fallback for a kernel without sch_fq. Callers
	// set it only after Attach returned ErrNoFq for the device, as
	// pkg/reconcile does; any other error must not degrade a device. An fq
	// of ours already on the device is removed. Ignored for HookPolice and
	// count-only budgets.
	NoFq bool
}

// Attachment is one device enforcing one budget.
type Attachment struct {
	Device   Device
	Budget   string
	BudgetID uint32
	Mode     Mode
	Hook     Hook
	Datapath Datapath
	NetnsIno uint64
	Ifindex  int
	// Unchanged: Attach found this attachment whole on the device and did
	// nothing (always false in Attachments' listing).
	Unchanged bool
}

// Degraded reports a shaping attachment enforced without fq (DegradedNoFq).
func (a Attachment) Degraded() bool { return a.Datapath == DatapathPolicing }

// datapath is what attaching a budget with config cfg at hook runs.
func datapath(cfg edtBudgetCfg, hook Hook, noFq bool) Datapath {
	switch {
	case cfg.Flags&budgetCountOnly != 0:
		return DatapathCount
	case hook == HookShape && noFq:
		return DatapathPolicing
	}
	return DatapathEDT
}

// progFor names the program a hook runs for a datapath.
func progFor(hook Hook, dp Datapath) string {
	switch dp {
	case DatapathCount:
		return countName
	case DatapathPolicing:
		return limitName
	}
	return hook.prog()
}

// needsFq: only EDT stamps departure times, which only fq enforces.
func needsFq(hook Hook, dp Datapath) bool { return hook == HookShape && dp == DatapathEDT }

// Attach makes dev enforce the named budget on everything it transmits:
// an fq root qdisc first (harmless without the program: unstamped packets
// leave at once), then the EDT program. Re-attaching the same budget changes
// nothing; attaching another budget swaps the program atomically.
//
// The device's transmit direction is what gets shaped. For a container that
// is app egress on the container-side veth and app ingress on the host-side one.
//
// With opts.Hook = HookPolice it attaches the budget's backstop policer at the
// device's tc ingress instead (no qdisc): used on the host-side peer of a
// container interface whose app egress the budget shapes. A device can carry
// one attachment per hook.
//
// A count-only budget gets the count program at the hook instead, with no
// qdisc (DatapathCount); with opts.NoFq a shaping budget is enforced as a
// policer without fq (DatapathPolicing). Re-attaching after the budget or
// NoFq changed switches the device in place: fq first when it becomes
// needed, then the program swap, then our fq removed when no longer needed.
func (s *Shaper) Attach(dev Device, budget string, opts AttachOptions) (Attachment, error) {
	hook := opts.Hook
	if hook != HookShape && hook != HookPolice {
		return Attachment{}, fmt.Errorf("attach %s: unknown %s", dev, hook)
	}
	id, found, err := s.lookupID(budget)
	if err != nil {
		return Attachment{}, err
	}
	if !found {
		return Attachment{}, fmt.Errorf("attach %s to budget %q: %w", dev, budget, ErrNoBudget)
	}
	cfg, configured, err := s.budgetCfg(id)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach %s to budget %q: %w", dev, budget, err)
	}
	if !configured {
		return Attachment{}, fmt.Errorf("attach %s to budget %q: %w (never configured)", dev, budget, ErrNoBudget)
	}
	dp := datapath(cfg, hook, opts.NoFq)
	// The registry stores both; a truncated path would later look like a
	// vanished namespace and get the attachment pruned.
	if len(dev.Netns) >= netnsPathLen || len(dev.Name) >= ifnameLen {
		return Attachment{}, fmt.Errorf("device %s: namespace path must be under %d bytes and name under %d", dev, netnsPathLen, ifnameLen)
	}
	ns, err := openNetns(dev)
	if err != nil {
		return Attachment{}, err
	}
	defer ns.close()
	l, err := ns.link(dev)
	if err != nil {
		return Attachment{}, err
	}
	key := devKey{NetnsIno: ns.ino, Ifindex: uint32(l.Attrs().Index), Hook: hook}
	prev, havePrev, err := s.lookupDev(key)
	if err != nil {
		return Attachment{}, err
	}
	att := Attachment{Device: dev, Budget: budget, BudgetID: id, Hook: hook, Datapath: dp, NetnsIno: key.NetnsIno, Ifindex: int(key.Ifindex)}
	if havePrev && prev.Budget == id && Datapath(prev.Datapath) == dp && prev.Flags&flagStaleProg == 0 && s.inPlace(ns, l, key, prev, dp) {
		att.Mode = Mode(prev.Mode)
		att.Unchanged = true
		return att, nil
	}
	if dp == DatapathPolicing && cfg.Flags&budgetNoFq == 0 {
		// Before the first packet is policed here: the budget's backstop
		// must allow the no-fq policer's burst (bpf/edt.c BUDGET_NOFQ).
		cfg.Flags |= budgetNoFq
		if err := s.maps.NetshapeCfg.Update(id, cfg, ebpf.UpdateExist); err != nil {
			return Attachment{}, fmt.Errorf("attach %s: mark budget %q as policed without fq: %w", dev, budget, err)
		}
	}
	createdFq := false
	if needsFq(hook, dp) {
		if createdFq, err = ensureFq(ns, l, dev, opts.Force); err != nil {
			return Attachment{}, err
		}
	}
	undoFq := func() {
		if createdFq {
			ns.nl.QdiscDel(ourFq(l))
		}
	}

	val := devVal{Budget: id, Datapath: uint8(dp)}
	if havePrev {
		val.Flags = prev.Flags &^ flagStaleProg // the program is swapped below
	}
	val.setDevice(dev)

	prevMode := Mode(0)
	if havePrev {
		prevMode = Mode(prev.Mode)
	}
	mode, createdClsact, err := s.attachProg(ns, l, key, id, budget, progFor(hook, dp), dev, prevMode)
	if err != nil {
		undoFq()
		return Attachment{}, err
	}
	val.Mode = uint8(mode)
	if createdClsact {
		val.Flags |= flagOwnClsact
	}
	if err := s.devs.Update(key, val, ebpf.UpdateAny); err != nil {
		// The device is shaped but we could not record it: undo so no
		// attachment exists that a later run can't find and remove.
		s.detachProg(ns, l, key, val, dev)
		undoFq()
		return Attachment{}, fmt.Errorf("record attachment of %s: %w", dev, err)
	}
	att.Mode = mode
	if hook == HookShape && !needsFq(hook, dp) {
		// Switched from EDT: its fq is no longer needed (the program that
		// stamped for it is gone). Packets it still holds are dropped with it.
		if err := removeOurFq(ns, l, dev); err != nil {
			return att, err
		}
	}
	return att, nil
}

// inPlace reports whether a recorded attachment is still whole on the device:
// our fq at the root exactly when the datapath needs one, and our program at
// the hook. Then Attach has nothing to do.
func (s *Shaper) inPlace(ns *nsRef, l netlink.Link, k devKey, v devVal, dp Datapath) bool {
	if k.Hook == HookShape {
		ours, err := rootIsOurFq(ns, l, Device{})
		if err != nil || ours != needsFq(k.Hook, dp) {
			return false
		}
	}
	switch Mode(v.Mode) {
	case ModeTCX:
		old, err := link.LoadPinnedLink(s.linkPin(k), nil)
		if err != nil {
			return false
		}
		defer old.Close()
		info, err := old.Info()
		return err == nil && info.TCX() != nil && info.TCX().Ifindex == k.Ifindex && ebpf.AttachType(info.TCX().AttachType) == k.Hook.tcx()
	case ModeLegacy:
		filters, err := ns.nl.FilterList(l, k.Hook.parent())
		if err != nil {
			return false
		}
		for _, f := range filters {
			// The classid is the budget the shared instance charges; a
			// filter from before it (a budget's own instance, classid 0)
			// is replaced by it.
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == progFor(k.Hook, dp) && bf.ClassId == v.Budget {
				return true
			}
		}
	}
	return false
}

// program returns the hook's EDT-datapath program instance for budget id.
func (s *Shaper) program(id uint32, budget string, hook Hook) (*ebpf.Program, error) {
	return s.load(id, budget, hook.prog())
}

// load returns the named program's instance whose budget_id constant is id,
// or with id 0 (sharedID) the one instance that every cls_bpf filter runs,
// which takes its budget from the filter's classid.
func (s *Shaper) load(id uint32, budget, name string) (*ebpf.Program, error) {
	k := progKey{id, name}
	defer s.lockProgram(k)()
	if p := s.cachedProgram(k); p != nil {
		return p, nil
	}
	if p := s.pinnedProgram(k); p != nil {
		s.keepProgram(k, p)
		return p, nil
	}
	spec := s.spec.Copy()
	if err := spec.Variables["budget_id"].Set(id); err != nil {
		return nil, fmt.Errorf("set budget id of %s program: %w", name, err)
	}
	fromClassid := uint32(0)
	if id == sharedID {
		fromClassid = 1
	}
	if err := spec.Variables["from_classid"].Set(fromClassid); err != nil {
		return nil, fmt.Errorf("set the budget source of %s program: %w", name, err)
	}
	if id == sharedID {
		budget = "(any, by classid)"
	}
	// Load only the one program (LoadAndAssign loads what it is asked for
	// and the maps that program uses), against the pinned maps.
	ps, ok := spec.Programs[name]
	if !ok {
		return nil, fmt.Errorf("embedded BPF object has no program %s", name)
	}
	for n := range spec.Programs {
		if n != name {
			delete(spec.Programs, n)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"netshape_cfg":    s.maps.NetshapeCfg,
		"netshape_state":  s.maps.NetshapeState,
		"netshape_stats":  s.maps.NetshapeStats,
		"netshape_flows":  s.maps.NetshapeFlows,
		"netshape_pcfg":   s.maps.NetshapePcfg,
		"netshape_pstate": s.maps.NetshapePstate,
		"netshape_pstats": s.maps.NetshapePstats,
	}})
	if err != nil {
		return nil, fmt.Errorf("load %s program for budget %q: %w", ps.Name, budget, err)
	}
	prog := coll.DetachProgram(name)
	coll.Close()
	s.pinProgram(k, prog)
	s.keepProgram(k, prog)
	return prog, nil
}

// ensureFq makes our fq the device's root qdisc. It reports whether it
// installed one, so a failed attach can put the device back as it was.
func ensureFq(ns *nsRef, l netlink.Link, dev Device, force bool) (bool, error) {
	if added, err := addOurFq(ns, l, dev); added || err != nil {
		return added, err
	}
	root, err := rootQdisc(ns, l, dev)
	if err != nil {
		return false, err
	}
	if root != nil && isOurFq(root) {
		return false, nil
	}
	if root != nil && root.Attrs().Handle != 0 && !force {
		return false, foreignQdisc(dev, root)
	}
	if err := ns.nl.QdiscReplace(ourFq(l)); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("device %s: %w", dev, ErrNoFq)
		}
		return false, fmt.Errorf("device %s: install fq root qdisc: %w", dev, err)
	}
	return true, nil
}

func ourFq(l netlink.Link) *netlink.Fq {
	fq := netlink.NewFq(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: fqHandle, Parent: netlink.HANDLE_ROOT})
	fq.FlowPacketLimit = fqFlowPacketLimit
	fq.PacketLimit = fqPacketLimit
	fq.Horizon = uint32(fqHorizon / time.Microsecond) // netlink wants microseconds
	return fq
}

func isOurFq(q netlink.Qdisc) bool { return q.Type() == "fq" && q.Attrs().Handle == fqHandle }

// removeOurFq deletes our fq if it is the device's root qdisc.
func removeOurFq(ns *nsRef, l netlink.Link, dev Device) error {
	ours, err := rootIsOurFq(ns, l, dev)
	if err != nil || !ours {
		return err
	}
	if err := ns.nl.QdiscDel(ourFq(l)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("device %s: remove fq root qdisc: %w", dev, err)
	}
	return nil
}

func rootQdisc(ns *nsRef, l netlink.Link, dev Device) (netlink.Qdisc, error) {
	qs, err := ns.nl.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("device %s: list qdiscs: %w", dev, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			return q, nil
		}
	}
	return nil, nil
}

// linkPin is where a TCX link is pinned: one name per device and hook (the
// shaping hook keeps the name it had before the policer existed).
func (s *Shaper) linkPin(k devKey) string {
	name := fmt.Sprintf("%d_%d", k.NetnsIno, k.Ifindex)
	if k.Hook != HookShape {
		name += "_" + k.Hook.String()
	}
	return filepath.Join(s.pinDir, "links", name)
}

// sharedID is the budget id of the program instances cls_bpf filters run:
// budget ids start at 1, and the filter's classid carries the real one.
const sharedID = 0

// The kernel keeps the classid it hands the program in a 16-bit field
// (qdisc_skb_cb's tc_classid): every slot must fit.
const _ = uint16(maxBudgets)

// attachProg attaches (or swaps in) the named program for budget id at the
// device's hook. A device keeps the mode it has (a TCX link is updated in
// place, our filter replaced), so no device ever runs two of our programs
// at one hook. A new device gets clsact + cls_bpf, running the one shared
// instance with the budget's id as the filter's classid, unless the shaper
// was opened with TCX or another tool's TCX programs are at the hook: then
// TCX and the budget's own instance, placed where we choose among theirs (a
// legacy filter would run only after them, and not at all after one that
// ends the chain). TCX falls back to legacy only when the kernel lacks it.
func (s *Shaper) attachProg(ns *nsRef, l netlink.Link, k devKey, id uint32, budget, name string, dev Device, prev Mode) (Mode, bool, error) {
	pinned, useTCX, err := s.wantTCX(ns, k, prev)
	if err != nil {
		return 0, false, fmt.Errorf("device %s: %w", dev, err)
	}
	if pinned != nil {
		defer pinned.Close()
	}
	if useTCX {
		prog, err := s.load(id, budget, name)
		if err != nil {
			return 0, false, err
		}
		err = s.attachTCX(ns, k, pinned, prog, name, dev)
		if err == nil {
			return ModeTCX, false, nil
		}
		if !errors.Is(err, link.ErrNotSupported) {
			return 0, false, err
		}
	}
	prog, err := s.load(sharedID, budget, name)
	if err != nil {
		return 0, false, err
	}
	created, err := attachLegacy(ns, l, prog, name, dev, k.Hook, id)
	return ModeLegacy, created, err
}

// wantTCX decides the mode of an attach (see attachProg). It returns the
// device's pinned TCX link when there is one (the caller closes it); a pin
// of a device that is gone (its ifindex reused) is dropped on the way.
func (s *Shaper) wantTCX(ns *nsRef, k devKey, prev Mode) (link.Link, bool, error) {
	if old, err := link.LoadPinnedLink(s.linkPin(k), nil); err == nil {
		if info, err := old.Info(); err == nil && info.TCX() != nil && info.TCX().Ifindex == k.Ifindex && ebpf.AttachType(info.TCX().AttachType) == k.Hook.tcx() {
			return old, true, nil
		}
		old.Unpin()
		old.Close()
	}
	if prev == ModeLegacy {
		return nil, false, nil
	}
	if s.tcx {
		return nil, true, nil
	}
	others, err := tcxPrograms(ns, k)
	return nil, others > 0, err
}

// attachTCX updates the device's pinned TCX link (pinned, when not nil) to
// prog, or attaches and pins a new one. The policer goes first at ingress, so
// no other program's redirect can carry a frame past the backstop; the
// shaper goes last at egress.
func (s *Shaper) attachTCX(ns *nsRef, k devKey, pinned link.Link, prog *ebpf.Program, name string, dev Device) error {
	if pinned != nil {
		if err := pinned.Update(prog); err != nil {
			return fmt.Errorf("device %s: swap in %s program: %w", dev, name, err)
		}
		return nil
	}
	pin := s.linkPin(k)
	anchor := link.Tail()
	if k.Hook == HookPolice {
		anchor = link.Head()
	}
	var tcx link.Link
	err := ns.do(func() error {
		var err error
		tcx, err = link.AttachTCX(link.TCXOptions{
			Interface: int(k.Ifindex),
			Program:   prog,
			Attach:    k.Hook.tcx(),
			Anchor:    anchor,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("device %s: attach %s program with TCX: %w", dev, name, err)
	}
	defer tcx.Close()
	if err := tcx.Pin(pin); err != nil {
		return fmt.Errorf("device %s: pin TCX link at %s: %w", dev, pin, err)
	}
	return nil
}

// tcxPrograms counts the TCX programs at the device's hook (none of them
// ours: a TCX attachment of ours has a pin and was updated in place). A
// kernel without TCX has none.
func tcxPrograms(ns *nsRef, k devKey) (int, error) {
	var res *link.QueryResult
	err := ns.do(func() error {
		var err error
		res, err = link.QueryPrograms(link.QueryOptions{Target: int(k.Ifindex), Attach: k.Hook.tcx()})
		return err
	})
	switch {
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("query TCX programs at %s: %w", k.Hook.side(), err)
	}
	return len(res.Programs), nil
}

// attachLegacy puts prog in our cls_bpf filter at the hook (added, or
// replaced in place), classid naming the budget for the shared instance.
func attachLegacy(ns *nsRef, l netlink.Link, prog *ebpf.Program, name string, dev Device, hook Hook, classid uint32) (bool, error) {
	created := false
	if err := ns.nl.QdiscAdd(clsact(l)); err == nil {
		created = true
	} else if !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("device %s: add clsact qdisc: %w", dev, err)
	}
	undo := func() {
		if created {
			ns.nl.QdiscDel(clsact(l))
		}
	}
	filters, err := ns.nl.FilterList(l, hook.parent())
	if err != nil {
		undo()
		return false, fmt.Errorf("device %s: list %s filters: %w", dev, hook.side(), err)
	}
	for _, f := range filters {
		if f.Attrs().Priority == legacyPrio && !isOurFilter(f) {
			undo()
			return false, fmt.Errorf("device %s: a foreign filter (%s) holds priority %d at %s", dev, f.Type(), legacyPrio, hook.side())
		}
	}
	// ETH_P_ALL: every ethertype goes through the program, which parses none.
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: l.Attrs().Index,
			Parent:    hook.parent(),
			Handle:    1,
			Protocol:  unix.ETH_P_ALL,
			Priority:  legacyPrio,
		},
		Fd:           prog.FD(),
		Name:         name,
		ClassId:      classid,
		DirectAction: true,
	}
	if err := ns.nl.FilterReplace(f); err != nil {
		undo()
		return false, fmt.Errorf("device %s: add cls_bpf filter: %w", dev, err)
	}
	return created, nil
}

func clsact(l netlink.Link) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}

// isOurFilter: a cls_bpf filter of ours. Callers list filters at one hook's
// side of clsact (each hook has its own), so the name prefix is enough.
func isOurFilter(f netlink.Filter) bool {
	bf, ok := f.(*netlink.BpfFilter)
	return ok && strings.HasPrefix(bf.Name, ownPrefix)
}

// Detach removes everything of ours from dev: the shaping program and fq, and
// the backstop policer.
func (s *Shaper) Detach(dev Device) error {
	for _, h := range hooks {
		if err := s.DetachHook(dev, h); err != nil {
			return err
		}
	}
	return nil
}

// DetachHook removes one hook's attachment from dev. For HookShape: program
// first, so nothing is stamped for an fq that is about to go. A device or
// namespace that no longer exists has nothing left to detach; its record is pruned.
func (s *Shaper) DetachHook(dev Device, hook Hook) error {
	ns, err := openNetns(dev)
	if errors.Is(err, ErrNoNetns) {
		_, err := s.Prune()
		return err
	}
	if err != nil {
		return err
	}
	defer ns.close()
	l, err := ns.link(dev)
	if errors.Is(err, ErrNoDevice) {
		_, err := s.Prune()
		return err
	}
	if err != nil {
		return err
	}
	key := devKey{NetnsIno: ns.ino, Ifindex: uint32(l.Attrs().Index), Hook: hook}
	val, _, err := s.lookupDev(key)
	if err != nil {
		return err
	}
	if err := s.detachProg(ns, l, key, val, dev); err != nil {
		return err
	}
	if hook == HookShape {
		if err := removeOurFq(ns, l, dev); err != nil {
			return err
		}
	}
	if err := s.devs.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget attachment of %s: %w", dev, err)
	}
	return nil
}

// detachProg removes our TCX link and any of our legacy filters, even ones the
// registry does not know about (left by an interrupted run).
func (s *Shaper) detachProg(ns *nsRef, l netlink.Link, k devKey, val devVal, dev Device) error {
	pin := s.linkPin(k)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		err := old.Unpin()
		old.Close() // the last reference: the kernel detaches the link
		if err != nil {
			return fmt.Errorf("device %s: unpin TCX link: %w", dev, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("device %s: open pinned TCX link: %w", dev, err)
	}

	filters, err := ns.nl.FilterList(l, k.Hook.parent())
	if err != nil {
		// No clsact means no legacy filter of ours.
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("device %s: list %s filters: %w", dev, k.Hook.side(), err)
	}
	for _, f := range filters {
		if isOurFilter(f) {
			if err := ns.nl.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("device %s: remove cls_bpf filter: %w", dev, err)
			}
		}
	}
	if val.Flags&flagOwnClsact != 0 {
		// Remove the clsact we added only if no one else has filters on it.
		ing, _ := ns.nl.FilterList(l, netlink.HANDLE_MIN_INGRESS)
		eg, _ := ns.nl.FilterList(l, netlink.HANDLE_MIN_EGRESS)
		if len(ing) == 0 && len(eg) == 0 {
			if err := ns.nl.QdiscDel(clsact(l)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("device %s: remove clsact qdisc: %w", dev, err)
			}
		} else if err := s.handOverClsact(k); err != nil {
			return fmt.Errorf("device %s: %w", dev, err)
		}
	}
	return nil
}

// handOverClsact passes ownership of the clsact we added to our record of the
// device's other hook, if any, so whichever of ours is detached last removes
// it (the shaper and the policer can share one clsact on a host-side veth).
func (s *Shaper) handOverClsact(k devKey) error {
	for _, h := range hooks {
		if h == k.Hook {
			continue
		}
		sk := devKey{NetnsIno: k.NetnsIno, Ifindex: k.Ifindex, Hook: h}
		v, ok, err := s.lookupDev(sk)
		if err != nil || !ok || Mode(v.Mode) != ModeLegacy {
			return err
		}
		v.Flags |= flagOwnClsact
		if err := s.devs.Update(sk, v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("hand the clsact qdisc over to the %s attachment: %w", h, err)
		}
	}
	return nil
}
