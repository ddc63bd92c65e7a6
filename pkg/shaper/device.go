package shaper

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Device names one network interface in one network namespace.
type Device struct {
	// Netns is a path to the namespace (/proc/PID/ns/net, a Docker sandbox
	// key, /run/netns/NAME); empty means the caller's own namespace.
	Netns string
	// Name is the interface name inside that namespace.
	Name string
}

func (d Device) String() string {
	if d.Netns == "" {
		return d.Name
	}
	return d.Name + "@" + d.Netns
}

// nsRef is an open network namespace and a netlink handle inside it.
type nsRef struct {
	path string
	ino  uint64
	ns   netns.NsHandle
	nl   *netlink.Handle
	// shared: the process's host namespace reference (hostRef), never closed.
	shared bool
}

// hostNetns is the namespace this process started in, captured before any
// goroutine can move a thread: /proc/self/ns/net follows the main thread,
// which netlink.NewHandleAt may briefly move into another namespace.
var hostNetns, hostNetnsErr = netns.Get()

// hostPath is the nsRef path of this process's own namespace.
const hostPath = "host"

func (d Device) nsPath() string {
	if d.Netns == "" {
		return hostPath
	}
	return d.Netns
}

// openNetns opens the device's namespace without entering it. The host's is
// opened once per process and shared (hostRef): it holds a veth per container.
func openNetns(d Device) (*nsRef, error) {
	if d.Netns == "" {
		ref, err := hostRef()
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d, err)
		}
		return ref, nil
	}
	return dialNetns(d)
}

// hostRef is this process's own namespace, opened on first use and kept:
// netlink handles are safe for concurrent use, and opening one per device
// cost a namespace switch and a socket each time.
var hostRef = sync.OnceValues(func() (*nsRef, error) {
	ref, err := dialNetns(Device{})
	if err != nil {
		return nil, err
	}
	ref.shared = true
	return ref, nil
})

func dialNetns(d Device) (*nsRef, error) {
	path := d.nsPath()
	var ns netns.NsHandle
	var err error
	if d.Netns == "" {
		if hostNetnsErr != nil {
			return nil, fmt.Errorf("device %s: host network namespace: %w", d, hostNetnsErr)
		}
		var fd int
		if fd, err = unix.Dup(int(hostNetns)); err == nil {
			ns = netns.NsHandle(fd)
		}
	} else {
		ns, err = netns.GetFromPath(path)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("device %s: %w: %v", d, ErrNoNetns, err)
		}
		return nil, fmt.Errorf("device %s: open network namespace: %w", d, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		ns.Close()
		return nil, fmt.Errorf("device %s: stat network namespace: %w", d, err)
	}
	// Route netlink only (links, qdiscs, filters): a handle opens a socket
	// per family it is given, each by entering the namespace.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("device %s: netlink in its namespace: %w", d, err)
	}
	return &nsRef{path: path, ino: st.Ino, ns: ns, nl: h}, nil
}

func (r *nsRef) close() {
	if r.shared {
		return
	}
	r.nl.Close()
	r.ns.Close()
}

func (r *nsRef) link(d Device) (netlink.Link, error) {
	l, err := r.nl.LinkByName(d.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("device %s: %w", d, ErrNoDevice)
		}
		return nil, fmt.Errorf("device %s: look up link: %w", d, err)
	}
	return l, nil
}

// do runs fn with the calling OS thread inside the namespace. Only TCX attach
// needs this (its ifindex is resolved in the caller's namespace); everything
// else goes through netlink handles. If the thread cannot be switched back it
// is left locked so the Go runtime retires it instead of reusing it.
func (r *nsRef) do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(r.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", r.path, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(fnErr, fmt.Errorf("return from network namespace %s: %w", r.path, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// nsIno is the inode identifying a device's namespace, 0 when it is gone.
func nsIno(d Device) uint64 {
	var st unix.Stat_t
	var err error
	if d.Netns == "" {
		err = unix.Fstat(int(hostNetns), &st)
	} else {
		err = unix.Stat(d.Netns, &st)
	}
	if err != nil {
		return 0
	}
	return st.Ino
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func sortBudgets(b []BudgetStatus) {
	slices.SortFunc(b, func(x, y BudgetStatus) int { return strings.Compare(x.Name, y.Name) })
}
