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
	// progName is the name of every program and legacy filter we attach; it is
	// how we recognise ours among other tools' programs on the same device.
	progName = "netshape_edt"

	// fqHandle is the handle of the fq root qdiscs we install ("4e53:", "NS").
	// A root qdisc with any other non-zero handle belongs to someone else.
	fqHandle = 0x4e53 << 16

	// legacyPrio is the cls_bpf priority we use on kernels without TCX.
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
	ModeTCX    Mode = 1 // BPF link at TCX egress, pinned (kernel >= 6.6)
	ModeLegacy Mode = 2 // clsact qdisc + cls_bpf direct-action filter
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

// AttachOptions tune Attach.
type AttachOptions struct {
	// Force replaces a root qdisc that someone else installed. Without it
	// such a qdisc is an ErrForeignQdisc and nothing is changed.
	Force bool
}

// Attachment is one device enforcing one budget.
type Attachment struct {
	Device   Device
	Budget   string
	BudgetID uint32
	Mode     Mode
	NetnsIno uint64
	Ifindex  int
}

// Attach makes dev enforce the named budget on everything it transmits:
// an fq root qdisc first (harmless without the program: unstamped packets
// leave at once), then the EDT program. Re-attaching the same budget changes
// nothing; attaching another budget swaps the program atomically.
//
// The device's transmit direction is what gets shaped. For a container that
// is app egress on the container-side veth and app ingress on the host-side one.
func (s *Shaper) Attach(dev Device, budget string, opts AttachOptions) (Attachment, error) {
	id, found, err := s.lookupID(budget)
	if err != nil {
		return Attachment{}, err
	}
	if !found {
		return Attachment{}, fmt.Errorf("attach %s to budget %q: %w", dev, budget, ErrNoBudget)
	}
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
	key := devKey{NetnsIno: ns.ino, Ifindex: uint32(l.Attrs().Index)}
	prev, havePrev, err := s.lookupDev(key)
	if err != nil {
		return Attachment{}, err
	}
	att := Attachment{Device: dev, Budget: budget, BudgetID: id, NetnsIno: key.NetnsIno, Ifindex: int(key.Ifindex)}
	if havePrev && prev.Budget == id && s.inPlace(ns, l, key, prev) {
		att.Mode = Mode(prev.Mode)
		return att, nil
	}
	prog, err := s.program(id, budget)
	if err != nil {
		return Attachment{}, err
	}

	createdFq, err := ensureFq(ns, l, dev, opts.Force)
	if err != nil {
		return Attachment{}, err
	}
	undoFq := func() {
		if createdFq {
			ns.nl.QdiscDel(ourFq(l))
		}
	}

	val := devVal{Budget: id}
	if havePrev {
		val.Flags = prev.Flags
	}
	val.setDevice(dev)

	mode, createdClsact, err := s.attachProg(ns, l, key, prog, dev)
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
	return att, nil
}

// inPlace reports whether a recorded attachment is still whole on the device:
// our fq at the root and our program at egress. Then Attach has nothing to do.
func (s *Shaper) inPlace(ns *nsRef, l netlink.Link, k devKey, v devVal) bool {
	root, err := rootQdisc(ns, l, Device{})
	if err != nil || root == nil || !isOurFq(root) {
		return false
	}
	switch Mode(v.Mode) {
	case ModeTCX:
		old, err := link.LoadPinnedLink(s.linkPin(k), nil)
		if err != nil {
			return false
		}
		defer old.Close()
		info, err := old.Info()
		return err == nil && info.TCX() != nil && info.TCX().Ifindex == k.Ifindex
	case ModeLegacy:
		filters, err := ns.nl.FilterList(l, netlink.HANDLE_MIN_EGRESS)
		if err != nil {
			return false
		}
		for _, f := range filters {
			if isOurFilter(f) {
				return true
			}
		}
	}
	return false
}

// program returns the EDT program instance whose budget_id constant is id.
func (s *Shaper) program(id uint32, budget string) (*ebpf.Program, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.progs[id]; p != nil {
		return p, nil
	}
	spec := s.spec.Copy()
	if err := spec.Variables["budget_id"].Set(id); err != nil {
		return nil, fmt.Errorf("set budget id of EDT program: %w", err)
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"netshape_edt"`
	}
	err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"netshape_cfg":   s.maps.NetshapeCfg,
		"netshape_state": s.maps.NetshapeState,
		"netshape_stats": s.maps.NetshapeStats,
		"netshape_flows": s.maps.NetshapeFlows,
	}})
	if err != nil {
		return nil, fmt.Errorf("load EDT program for budget %q: %w", budget, err)
	}
	s.progs[id] = objs.Prog
	return objs.Prog, nil
}

// ensureFq makes our fq the device's root qdisc. It reports whether it
// installed one, so a failed attach can put the device back as it was.
func ensureFq(ns *nsRef, l netlink.Link, dev Device, force bool) (bool, error) {
	root, err := rootQdisc(ns, l, dev)
	if err != nil {
		return false, err
	}
	if root != nil && isOurFq(root) {
		return false, nil
	}
	if root != nil && root.Attrs().Handle != 0 && !force {
		return false, fmt.Errorf("device %s: %w: %s %s (use --force to replace it)",
			dev, ErrForeignQdisc, root.Type(), netlink.HandleStr(root.Attrs().Handle))
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

func (s *Shaper) linkPin(k devKey) string {
	return filepath.Join(s.pinDir, "links", fmt.Sprintf("%d_%d", k.NetnsIno, k.Ifindex))
}

// attachProg attaches (or swaps in) prog at the device's egress: TCX where the
// kernel has it, clsact + cls_bpf otherwise. Only "not supported" falls back.
func (s *Shaper) attachProg(ns *nsRef, l netlink.Link, k devKey, prog *ebpf.Program, dev Device) (Mode, bool, error) {
	pin := s.linkPin(k)
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer old.Close()
		if info, err := old.Info(); err == nil && info.TCX() != nil && info.TCX().Ifindex == k.Ifindex {
			if err := old.Update(prog); err != nil {
				return 0, false, fmt.Errorf("device %s: swap EDT program: %w", dev, err)
			}
			return ModeTCX, false, nil
		}
		// A pin for a device that is gone (its ifindex reused): drop it.
		old.Unpin()
	}

	var tcx link.Link
	err := ns.do(func() error {
		var err error
		tcx, err = link.AttachTCX(link.TCXOptions{
			Interface: int(k.Ifindex),
			Program:   prog,
			Attach:    ebpf.AttachTCXEgress,
			Anchor:    link.Tail(),
		})
		return err
	})
	if err == nil {
		defer tcx.Close()
		if err := tcx.Pin(pin); err != nil {
			return 0, false, fmt.Errorf("device %s: pin TCX link at %s: %w", dev, pin, err)
		}
		return ModeTCX, false, nil
	}
	if !errors.Is(err, link.ErrNotSupported) {
		return 0, false, fmt.Errorf("device %s: attach EDT program with TCX: %w", dev, err)
	}
	created, err := attachLegacy(ns, l, prog, dev)
	return ModeLegacy, created, err
}

func attachLegacy(ns *nsRef, l netlink.Link, prog *ebpf.Program, dev Device) (bool, error) {
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
	filters, err := ns.nl.FilterList(l, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		undo()
		return false, fmt.Errorf("device %s: list egress filters: %w", dev, err)
	}
	for _, f := range filters {
		if f.Attrs().Priority == legacyPrio && !isOurFilter(f) {
			undo()
			return false, fmt.Errorf("device %s: a foreign filter (%s) holds priority %d at egress", dev, f.Type(), legacyPrio)
		}
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: l.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Handle:    1,
			Protocol:  unix.ETH_P_ALL,
			Priority:  legacyPrio,
		},
		Fd:           prog.FD(),
		Name:         progName,
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

func isOurFilter(f netlink.Filter) bool {
	bf, ok := f.(*netlink.BpfFilter)
	return ok && strings.HasPrefix(bf.Name, progName)
}

// Detach removes our program and fq from dev: program first, so nothing is
// stamped for an fq that is about to go. A device or namespace that no longer
// exists has nothing left to detach; its record is pruned.
func (s *Shaper) Detach(dev Device) error {
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
	key := devKey{NetnsIno: ns.ino, Ifindex: uint32(l.Attrs().Index)}
	val, _, err := s.lookupDev(key)
	if err != nil {
		return err
	}
	if err := s.detachProg(ns, l, key, val, dev); err != nil {
		return err
	}
	root, err := rootQdisc(ns, l, dev)
	if err != nil {
		return err
	}
	if root != nil && isOurFq(root) {
		if err := ns.nl.QdiscDel(root); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("device %s: remove fq root qdisc: %w", dev, err)
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

	filters, err := ns.nl.FilterList(l, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		// No clsact means no legacy filter of ours.
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("device %s: list egress filters: %w", dev, err)
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
		}
	}
	return nil
}
