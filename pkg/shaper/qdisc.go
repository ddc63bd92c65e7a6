package shaper

import (
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The kernel dumps the qdiscs of every device in a namespace whatever device
// one asks about (tc filters the dump itself), and the host namespace holds a
// veth per container: with a thousand containers, each root-qdisc question
// answered by a dump reads two thousand qdiscs. These answer the questions
// attach asks about one device without a dump.

// rootIsOurFq reports whether our fq is dev's root qdisc. In the host
// namespace it asks the kernel for the root qdisc with our handle and kind
// (a get, not a dump: EINVAL when the root is anything else); in a
// container's namespace (two devices) a dump costs no more.
func rootIsOurFq(ns *nsRef, l netlink.Link, dev Device) (bool, error) {
	if ns.path != hostPath {
		root, err := rootQdisc(ns, l, dev)
		return err == nil && root != nil && isOurFq(root), err
	}
	sock, err := hostSocket()
	if err != nil {
		return false, fmt.Errorf("device %s: read root qdisc: %w", dev, err)
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETQDISC, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: sock}
	req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(l.Attrs().Index), Handle: fqHandle, Parent: netlink.HANDLE_ROOT})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("fq")))
	_, err = req.Execute(unix.NETLINK_ROUTE, 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("device %s: read root qdisc: %w", dev, err)
}

// addOurFq installs our fq as dev's root if the root is the device's default
// (no handle): "tc qdisc add", which the kernel refuses with EEXIST when a
// root qdisc with a handle is there (ours or another's), changing nothing.
// It reports whether it installed ours; false with a nil error means
// something is there and the caller must look.
func addOurFq(ns *nsRef, l netlink.Link, dev Device) (bool, error) {
	err := ns.nl.QdiscAdd(ourFq(l))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EEXIST):
		return false, nil
	case errors.Is(err, unix.ENOENT):
		return false, fmt.Errorf("device %s: %w", dev, ErrNoFq)
	}
	return false, fmt.Errorf("device %s: install fq root qdisc: %w", dev, err)
}

// hostSocket is a route netlink socket in the host namespace (hostNetns) for
// the requests netlink.Handle has no call for, opened once per process; the
// library serialises requests on it.
var hostSocket = sync.OnceValues(func() (*nl.SocketHandle, error) {
	if hostNetnsErr != nil {
		return nil, fmt.Errorf("host network namespace: %w", hostNetnsErr)
	}
	s, err := nl.GetNetlinkSocketAt(hostNetns, hostNetns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket in the host namespace: %w", err)
	}
	return &nl.SocketHandle{Socket: s}, nil
})
