package shaper

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// The device registry is a pinned hash map only user space reads: it lives
// and dies with the other pins, so "what is attached" is never in two places.
// Devices are keyed by namespace inode and ifindex because ifindexes repeat
// across namespaces (every container has an eth0 with a small ifindex).

const (
	netnsPathLen  = 128
	ifnameLen     = 16
	flagOwnClsact = 1 << 0 // we added the clsact qdisc (legacy mode)
	maxDevices    = 16384
)

// Hook is the field that was padding before the policer existed: records
// written then read back as HookShape, which is what they are.
type devKey struct {
	NetnsIno uint64
	Ifindex  uint32
	Hook     Hook
}

type devVal struct {
	Budget uint32
	Mode   uint8
	Flags  uint8
	// Datapath was padding: records written before it read back as DatapathEDT, which they are.
	Datapath uint8
	_        byte
	// Netns is the path the caller named ("" for the caller's own namespace).
	Netns [netnsPathLen]byte
	Name  [ifnameLen]byte
}

func (v *devVal) setDevice(d Device) {
	copy(v.Netns[:], d.Netns)
	copy(v.Name[:], d.Name)
}

func cstr(b []byte) string { return string(bytes.TrimRight(b, "\x00")) }

func devsSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       "netshape_devs",
		Type:       ebpf.Hash,
		KeySize:    16,
		ValueSize:  8 + netnsPathLen + ifnameLen,
		MaxEntries: maxDevices,
		Pinning:    ebpf.PinByName,
	}
}

func (s *Shaper) lookupDev(k devKey) (devVal, bool, error) {
	var v devVal
	err := s.devs.Lookup(k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return devVal{}, false, nil
	}
	if err != nil {
		return devVal{}, false, fmt.Errorf("read device registry: %w", err)
	}
	return v, true, nil
}

// Attachments lists every recorded attachment.
func (s *Shaper) Attachments() ([]Attachment, error) {
	return s.AttachmentsWhere(nil)
}

// AttachmentsWhere lists the recorded attachments whose budget name match
// selects (nil: all). The others are skipped before they are decoded: one
// app's among a thousand containers' costs a read of the registry, not three
// thousand Attachments.
func (s *Shaper) AttachmentsWhere(match func(budget string) bool) ([]Attachment, error) {
	names, err := s.allNames()
	if err != nil {
		return nil, err
	}
	// Asked once per budget, not per record. A record whose budget is gone
	// reads as budget "".
	keep := map[uint32]bool{}
	kept := func(id uint32) bool {
		k, asked := keep[id]
		if !asked {
			k = match == nil || match(names[id])
			keep[id] = k
		}
		return k
	}
	var out []Attachment
	if err := eachEntry(s.devs, func(k devKey, v devVal) {
		if !kept(v.Budget) {
			return
		}
		out = append(out, Attachment{
			Device:   Device{Netns: cstr(v.Netns[:]), Name: cstr(v.Name[:])},
			Budget:   names[v.Budget],
			BudgetID: v.Budget,
			Mode:     Mode(v.Mode),
			Hook:     k.Hook,
			Datapath: Datapath(v.Datapath),
			NetnsIno: k.NetnsIno,
			Ifindex:  int(k.Ifindex),
		})
	}); err != nil {
		return nil, fmt.Errorf("list attachments: %w", err)
	}
	return out, nil
}

// Prune forgets attachments whose namespace or device no longer exists (a
// container that stopped takes its devices, filters and TCX links with it;
// only our record and pin remain). It returns what it forgot.
func (s *Shaper) Prune() ([]Attachment, error) {
	return s.PruneWhere(nil)
}

// PruneWhere is Prune for the attachments whose budget name match selects
// (nil: all): one app's, so reconciling one app among a thousand does not
// open every namespace.
func (s *Shaper) PruneWhere(match func(budget string) bool) ([]Attachment, error) {
	atts, err := s.AttachmentsWhere(match)
	if err != nil {
		return nil, err
	}
	return s.PruneAttachments(atts)
}

// PruneAttachments is Prune for atts, listed earlier by Attachments or
// AttachmentsWhere. An attachment whose record has changed since (another
// budget, another device under the same key) is left alone: it is not the
// one that was listed.
func (s *Shaper) PruneAttachments(atts []Attachment) ([]Attachment, error) {
	// Each namespace is opened once, however many attachments it holds (the
	// host's holds two per container).
	byNetns := map[string][]Attachment{}
	for _, a := range atts {
		byNetns[a.Device.Netns] = append(byNetns[a.Device.Netns], a)
	}
	var pruned []Attachment
	for _, group := range byNetns {
		for _, a := range deadIn(group) {
			k := devKey{NetnsIno: a.NetnsIno, Ifindex: uint32(a.Ifindex), Hook: a.Hook}
			if v, ok, err := s.lookupDev(k); err != nil {
				return pruned, err
			} else if !ok || v.Budget != a.BudgetID || cstr(v.Netns[:]) != a.Device.Netns || cstr(v.Name[:]) != a.Device.Name {
				continue
			}
			if l, err := link.LoadPinnedLink(s.linkPin(k), nil); err == nil {
				l.Unpin()
				l.Close()
			}
			if err := s.devs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return pruned, fmt.Errorf("forget attachment of %s: %w", a.Device, err)
			}
			pruned = append(pruned, a)
		}
	}
	return pruned, nil
}

// listAbove is how many attachments in one namespace make listing its links
// once cheaper than asking for each device.
const listAbove = 16

// deadIn returns the attachments, all recorded in one namespace path, whose
// namespace or device provably no longer exists. On any other error (EMFILE,
// EPERM) an attachment is kept: pruning a live one would unshape it.
func deadIn(atts []Attachment) []Attachment {
	dev := atts[0].Device
	ino := nsIno(dev)
	var dead, here []Attachment
	for _, a := range atts {
		if a.NetnsIno != ino {
			dead = append(dead, a) // the namespace is gone, or the path names another now
		} else {
			here = append(here, a)
		}
	}
	if len(here) == 0 {
		return dead
	}
	ns, err := openNetns(dev)
	if err != nil {
		if errors.Is(err, ErrNoNetns) {
			dead = append(dead, here...)
		}
		return dead
	}
	defer ns.close()
	if len(here) > listAbove {
		links, err := ns.nl.LinkList()
		if err != nil {
			return dead
		}
		live := map[int]bool{}
		for _, l := range links {
			live[l.Attrs().Index] = true
		}
		for _, a := range here {
			if !live[a.Ifindex] {
				dead = append(dead, a)
			}
		}
		return dead
	}
	for _, a := range here {
		if _, err := ns.nl.LinkByIndex(a.Ifindex); err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				dead = append(dead, a)
			}
		}
	}
	return dead
}

// Recorded reports whether an attachment is recorded at any hook of the
// interface with ifindex in dev's namespace (dev.Name is not looked up): a
// constant-time check, whatever the size of the registry.
func (s *Shaper) Recorded(dev Device, ifindex int) (bool, error) {
	ino := nsIno(dev)
	if ino == 0 {
		return false, fmt.Errorf("device %s: %w", dev, ErrNoNetns)
	}
	for _, h := range hooks {
		if _, ok, err := s.lookupDev(devKey{NetnsIno: ino, Ifindex: uint32(ifindex), Hook: h}); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}
