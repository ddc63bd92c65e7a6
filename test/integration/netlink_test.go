//go:build vm

package integration

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// The topology is built over netlink from this process, not with ip(8): under TCG every exec of a
// fresh binary is translated from scratch and costs 0.1–0.3 s, and a topology needs ~20 of them.
// The namespaces are ordinary named ones (/run/netns/NAME), so nettest.Netns works on them.

// newNetns creates /run/netns/<prefix><suffix> with lo up; removed at cleanup (its veths go with it).
func newNetns(t *testing.T, prefix string) *nettest.Netns {
	t.Helper()
	name := prefix + nettest.Suffix()
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace; this thread is never unlocked,
		// so it exits with the goroutine instead of serving other goroutines from the wrong netns.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() { netns.DeleteNamed(name) })
	ns := &nettest.Netns{Name: name, Path: "/run/netns/" + name}
	withHandle(t, ns, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	return ns
}

// withHandle runs fn with a netlink handle inside ns (nil: the root netns).
func withHandle(t *testing.T, ns *nettest.Netns, fn func(h *netlink.Handle) error) {
	t.Helper()
	var h *netlink.Handle
	var err error
	if ns == nil {
		h, err = netlink.NewHandle()
	} else {
		var nh netns.NsHandle
		if nh, err = netns.GetFromPath(ns.Path); err == nil {
			h, err = netlink.NewHandleAt(nh)
			nh.Close()
		}
	}
	if err != nil {
		t.Fatalf("netlink in %v: %v", nsName(ns), err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		t.Fatalf("netlink in %s: %v", nsName(ns), err)
	}
}

func nsName(ns *nettest.Netns) string {
	if ns == nil {
		return "root netns"
	}
	return ns.Name
}

type veth struct {
	inner, outer     string // inner lives in the namespace, outer in the root netns
	innerIP, outerIP string
}

// newVeth joins ns to the root netns by a veth pair addressed 10.X.Y.1 (inner) / .2 (outer) /24,
// and gives ns a default route via the outer end.
func newVeth(t *testing.T, ns *nettest.Netns, subnet int) veth {
	t.Helper()
	s := nettest.Suffix()
	v := veth{inner: "vi" + s, outer: "vo" + s,
		innerIP: fmt.Sprintf("10.%d.%d.1", 200+subnet/256, subnet%256),
		outerIP: fmt.Sprintf("10.%d.%d.2", 200+subnet/256, subnet%256)}
	nh, err := netns.GetFromPath(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	la := netlink.NewLinkAttrs()
	la.Name = v.outer
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: v.inner, PeerNamespace: netlink.NsFd(int(nh))}); err != nil {
		t.Fatalf("add veth %s/%s: %v", v.outer, v.inner, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(v.outer); err == nil {
			netlink.LinkDel(l)
		}
	})
	up := func(h *netlink.Handle, name, ip string) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(ip + "/24")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("address %s on %s: %w", ip, name, err)
		}
		return h.LinkSetUp(l)
	}
	withHandle(t, nil, func(h *netlink.Handle) error { return up(h, v.outer, v.outerIP) })
	withHandle(t, ns, func(h *netlink.Handle) error {
		if err := up(h, v.inner, v.innerIP); err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{Gw: net.ParseIP(v.outerIP)})
	})
	return v
}

// readIn reads a per-netns /proc file (net/snmp, sys/net/...) from a thread inside ns.
func readIn(t *testing.T, ns *nettest.Netns, path string) string {
	t.Helper()
	var b []byte
	err := traffic.InNetns(ns.Path, func() (err error) {
		b, err = os.ReadFile(strings.Replace(path, "/proc/net/", "/proc/thread-self/net/", 1))
		return err
	})
	if err != nil {
		t.Fatalf("read %s in %s: %v", path, ns.Name, err)
	}
	return string(b)
}

// writeIn writes a sysctl of ns: /proc/sys/net resolves to the netns of the thread opening it.
func writeIn(t *testing.T, ns *nettest.Netns, path, val string) {
	t.Helper()
	err := traffic.InNetns(ns.Path, func() error { return os.WriteFile(path, []byte(val), 0o644) })
	if err != nil {
		t.Fatalf("write %s=%s in %s: %v", path, val, ns.Name, err)
	}
}
