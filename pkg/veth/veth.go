// Package veth finds, for a network namespace (a container's), every veth interface in it and
// the host-side peer of each one.
//
// It knows nothing about Docker: callers pass a netns path, either /proc/PID/ns/net (see PidNetns)
// or a bind-mounted namespace file such as Docker's SandboxKey or /run/netns/NAME.
//
// The namespace is never entered by a goroutine: every query goes through a netlink socket opened
// inside it (netlink.NewHandleAt, which locks its OS thread while it creates the socket).
package veth

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// hostNetns is "the host": the network namespace this process started in, opened once at
// package init. Reading /proc/self/ns/net later is not safe: netlink.NewHandleAt briefly moves
// whatever OS thread it runs on (possibly the main one) into the target namespace, so a
// concurrent reader of /proc/self can see a container's netns there.
var hostNetns, hostNetnsErr = captureHostNetns()

func captureHostNetns() (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return openNetns("/proc/thread-self/ns/net")
}

var (
	// ErrHostNetwork is returned when the namespace asked about is the host's own (a container
	// run with --network host): it has no veth of its own to shape.
	ErrHostNetwork = errors.New("network namespace is the host's")
	// ErrGone is returned when the namespace no longer exists: the process behind
	// /proc/PID/ns/net exited, or the bind-mounted namespace file was removed or unmounted.
	ErrGone = errors.New("network namespace gone")
)

// PidNetns is the path of the network namespace of process pid.
func PidNetns(pid int) string {
	return "/proc/" + strconv.Itoa(pid) + "/ns/net"
}

// Iface names one network interface inside one network namespace. An ifindex only means
// something together with its namespace.
type Iface struct {
	Name  string
	Index int
}

// PeerLocation says where the other end of a veth lives.
type PeerLocation int

const (
	// PeerUnknown: the peer could not be found or did not point back (it vanished while we
	// looked, or the namespaces changed under us).
	PeerUnknown PeerLocation = iota
	// PeerHost: the peer is in the host netns (HostNetns); Pair.HostIf names it.
	PeerHost
	// PeerSameNetns: both ends are in the namespace asked about.
	PeerSameNetns
	// PeerOtherNetns: the peer is in a third namespace, neither this one nor the host's.
	PeerOtherNetns
)

func (l PeerLocation) String() string {
	switch l {
	case PeerHost:
		return "host"
	case PeerSameNetns:
		return "same-netns"
	case PeerOtherNetns:
		return "other-netns"
	default:
		return "unknown"
	}
}

// Pair is one veth in the namespace asked about and what is known of its peer.
type Pair struct {
	// Netns is the namespace path the caller passed.
	Netns string
	// ContainerIf is the veth end inside Netns (a container's eth0, eth1, ...).
	ContainerIf Iface
	// PeerIndex is the peer's ifindex in the peer's own namespace (IFLA_LINK).
	PeerIndex int
	// PeerNetnsID is the id Netns uses for the peer's namespace (IFLA_LINK_NETNSID), -1 when
	// the peer is in Netns itself.
	PeerNetnsID int
	// Peer says where the peer is; HostIf and HostMaster are only set for PeerHost.
	Peer PeerLocation
	// HostIf is the peer in the host netns (vethXXXX).
	HostIf Iface
	// HostMaster is the name of the device HostIf is enslaved to (docker0, br-...), "" if none.
	HostMaster string
}

// Interfaces lists the veths in the namespace at netnsPath and resolves each peer in the
// host netns: the one this process was in when it started. Loopback and non-veth devices are
// left out.
//
// Errors: ErrHostNetwork when netnsPath is the host's own namespace, ErrGone (wrapped) when it
// no longer exists.
func Interfaces(netnsPath string) ([]Pair, error) {
	if hostNetnsErr != nil {
		return nil, fmt.Errorf("host netns: %w", hostNetnsErr)
	}
	return interfaces(hostNetns, netnsPath)
}

// InterfacesFrom is Interfaces with another namespace playing the host.
func InterfacesFrom(hostNetnsPath, netnsPath string) ([]Pair, error) {
	hns, err := openNetns(hostNetnsPath)
	if err != nil {
		return nil, fmt.Errorf("host netns: %w", err)
	}
	defer hns.Close()
	return interfaces(hns, netnsPath)
}

func interfaces(hns netns.NsHandle, netnsPath string) ([]Pair, error) {
	if netnsPath == "" {
		// Not ErrGone: an empty path is a caller's bug, not a container that went away.
		return nil, errors.New("list veths: empty netns path")
	}
	cns, err := openNetns(netnsPath)
	if err != nil {
		return nil, err
	}
	defer cns.Close()
	if cns.Equal(hns) {
		return nil, fmt.Errorf("%s: %w", netnsPath, ErrHostNetwork)
	}

	ch, err := netlink.NewHandleAt(cns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", netnsPath, err)
	}
	defer ch.Close()
	links, err := ch.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", netnsPath, err)
	}
	// Ask for the host's nsid only after the dump: reporting a veth peer's namespace makes the
	// kernel allocate that namespace an id, so the dump guarantees the host has one if any
	// peer lives there.
	hostID, err := ch.GetNetNsIdByFd(int(hns))
	if err != nil {
		return nil, fmt.Errorf("id of the host netns as seen from %s: %w", netnsPath, err)
	}

	var hh *netlink.Handle
	defer func() {
		if hh != nil {
			hh.Close()
		}
	}()
	// The id the host uses for this namespace, to check that a host veth points back at us.
	backID := -2

	byIndex := make(map[int]netlink.Link, len(links))
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}

	var pairs []Pair
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); !ok {
			continue
		}
		a := l.Attrs()
		p := Pair{
			Netns:       netnsPath,
			ContainerIf: Iface{Name: a.Name, Index: a.Index},
			PeerIndex:   a.ParentIndex,
			PeerNetnsID: a.NetNsID,
		}
		switch {
		case a.ParentIndex <= 0:
			p.Peer = PeerUnknown
		case a.NetNsID < 0:
			if _, ok := byIndex[a.ParentIndex]; ok {
				p.Peer = PeerSameNetns
			}
		case hostID >= 0 && a.NetNsID == hostID:
			if hh == nil {
				hh, err = netlink.NewHandleAt(hns, unix.NETLINK_ROUTE)
				if err != nil {
					return nil, fmt.Errorf("netlink socket in host netns: %w", err)
				}
				backID, err = hh.GetNetNsIdByFd(int(cns))
				if err != nil {
					return nil, fmt.Errorf("id of %s as seen from the host: %w", netnsPath, err)
				}
			}
			resolveHostPeer(hh, &p, backID)
		default:
			p.Peer = PeerOtherNetns
		}
		pairs = append(pairs, p)
	}
	return pairs, nil
}

// resolveHostPeer fills in the host side of p, or leaves p.Peer at PeerUnknown when the link
// at that index is missing or is not our peer (an index can be reused after a veth goes).
func resolveHostPeer(hh *netlink.Handle, p *Pair, backID int) {
	hl, err := hh.LinkByIndex(p.PeerIndex)
	if err != nil {
		return
	}
	if _, ok := hl.(*netlink.Veth); !ok {
		return
	}
	ha := hl.Attrs()
	if ha.ParentIndex != p.ContainerIf.Index || backID < 0 || ha.NetNsID != backID {
		return
	}
	p.Peer = PeerHost
	p.HostIf = Iface{Name: ha.Name, Index: ha.Index}
	if ha.MasterIndex > 0 {
		if m, err := hh.LinkByIndex(ha.MasterIndex); err == nil {
			p.HostMaster = m.Attrs().Name
		}
	}
}

// openNetns opens path and checks that it is a network namespace. A missing path, a dead
// process, or a file that is no longer a namespace (an unmounted bind mount) is ErrGone.
func openNetns(path string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return netns.None(), fmt.Errorf("open %s: %w (%v)", path, ErrGone, err)
		}
		return netns.None(), fmt.Errorf("open %s: %w", path, err)
	}
	typ, err := unix.IoctlRetInt(int(h), unix.NS_GET_NSTYPE)
	if err != nil {
		h.Close()
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			// Not an nsfs file: what is left at a SandboxKey path once Docker unmounts it.
			return netns.None(), fmt.Errorf("%s is not a namespace any more: %w", path, ErrGone)
		}
		return netns.None(), fmt.Errorf("namespace type of %s: %w", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		h.Close()
		return netns.None(), fmt.Errorf("%s is a namespace but not a network namespace (type %#x)", path, typ)
	}
	return h, nil
}
