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
	names, err := s.allNames()
	if err != nil {
		return nil, err
	}
	var (
		k   devKey
		v   devVal
		out []Attachment
	)
	it := s.devs.Iterate()
	for it.Next(&k, &v) {
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
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list attachments: %w", err)
	}
	return out, nil
}

// Prune forgets attachments whose namespace or device no longer exists (a
// container that stopped takes its devices, filters and TCX links with it;
// only our record and pin remain). It returns what it forgot.
func (s *Shaper) Prune() ([]Attachment, error) {
	atts, err := s.Attachments()
	if err != nil {
		return nil, err
	}
	var pruned []Attachment
	for _, a := range atts {
		if s.alive(a) {
			continue
		}
		k := devKey{NetnsIno: a.NetnsIno, Ifindex: uint32(a.Ifindex), Hook: a.Hook}
		if l, err := link.LoadPinnedLink(s.linkPin(k), nil); err == nil {
			l.Unpin()
			l.Close()
		}
		if err := s.devs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return pruned, fmt.Errorf("forget attachment of %s: %w", a.Device, err)
		}
		pruned = append(pruned, a)
	}
	return pruned, nil
}

// alive reports whether the attachment's namespace and device still exist.
func (s *Shaper) alive(a Attachment) bool {
	if nsIno(a.Device) != a.NetnsIno {
		return false
	}
	// Only a namespace or device that is provably gone counts as dead: on any
	// other error (EMFILE, EPERM) keep the attachment, since pruning a live one
	// would unshape it.
	ns, err := openNetns(a.Device)
	if err != nil {
		return !errors.Is(err, ErrNoNetns)
	}
	defer ns.close()
	if _, err := ns.nl.LinkByIndex(a.Ifindex); err != nil {
		var nf netlink.LinkNotFoundError
		return !errors.As(err, &nf)
	}
	return true
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
