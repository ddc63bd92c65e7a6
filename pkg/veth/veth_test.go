package veth

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// needRoot fails under CI=true and skips elsewhere when the test cannot create namespaces.
func needRoot(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs iproute2's ip"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true, so this is a failure)", why)
	}
	t.Skip(why)
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// addNetns makes a named netns that is deleted when the test ends.
func addNetns(t *testing.T, name string) string {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return filepath.Join("/run/netns", name)
}

func handleIn(t *testing.T, path string) (*netlink.Handle, netns.NsHandle) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, ns
}

type topo struct {
	ns1, ns3         string // the "container" netns and a third one
	host1, host2, br string // host-side names
}

// buildTopo: ns1 has ceth0 and ceth1 paired with host veths (host1 enslaved to bridge br),
// ceth2 paired with oeth0 in ns3, cin0<->cin1 both inside ns1, and a bridge (not a veth; this kernel has no dummy driver).
// Names avoid iproute2 keyword prefixes ("a", "br", ...) even though netlink is used here.
func buildTopo(t *testing.T) topo {
	t.Helper()
	tag := fmt.Sprintf("%d", os.Getpid()%100000)
	tp := topo{
		ns1:   addNetns(t, "nsvt-c"+tag),
		ns3:   addNetns(t, "nsvt-o"+tag),
		host1: "nvh1x" + tag,
		host2: "nvh2x" + tag,
		br:    "nvbrx" + tag,
	}
	h1, fd1 := handleIn(t, tp.ns1)
	// Not handleIn: a test may delete ns3, and an open fd would keep it alive.
	fd3, err := netns.GetFromPath(tp.ns3)
	if err != nil {
		t.Fatal(err)
	}
	defer fd3.Close()

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: tp.br}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("add bridge: %v", err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(br) })
	for _, v := range []struct{ host, peer string }{{tp.host1, "ceth0"}, {tp.host2, "ceth1"}} {
		l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.host}, PeerName: v.peer, PeerNamespace: netlink.NsFd(fd1)}
		if err := netlink.LinkAdd(l); err != nil {
			t.Fatalf("add veth %s: %v", v.host, err)
		}
		t.Cleanup(func() { _ = netlink.LinkDel(l) })
	}
	hl, err := netlink.LinkByName(tp.host1)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMaster(hl, br); err != nil {
		t.Fatalf("enslave: %v", err)
	}
	if err := h1.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ceth2"}, PeerName: "oeth0", PeerNamespace: netlink.NsFd(fd3)}); err != nil {
		t.Fatalf("add ceth2: %v", err)
	}
	if err := h1.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cin0"}, PeerName: "cin1"}); err != nil {
		t.Fatalf("add cin0: %v", err)
	}
	if err := h1.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cdum0"}}); err != nil {
		t.Fatalf("add non-veth device: %v", err)
	}
	return tp
}

func byName(pairs []Pair) map[string]Pair {
	m := map[string]Pair{}
	for _, p := range pairs {
		m[p.ContainerIf.Name] = p
	}
	return m
}

func TestRootInterfaces(t *testing.T) {
	needRoot(t)
	tp := buildTopo(t)
	h1, _ := handleIn(t, tp.ns1)
	h3, _ := handleIn(t, tp.ns3)

	pairs, err := Interfaces(tp.ns1)
	if err != nil {
		t.Fatal(err)
	}
	got := byName(pairs)
	if len(pairs) != 5 || len(got) != 5 {
		t.Fatalf("want 5 veths (ceth0-2, cin0, cin1), got %+v", pairs)
	}
	if _, ok := got["lo"]; ok {
		t.Error("lo reported")
	}
	if _, ok := got["cdum0"]; ok {
		t.Error("bridge cdum0 reported")
	}

	for _, c := range []struct{ cif, host, master string }{{"ceth0", tp.host1, tp.br}, {"ceth1", tp.host2, ""}} {
		p := got[c.cif]
		want, err := netlink.LinkByName(c.host)
		if err != nil {
			t.Fatal(err)
		}
		inner, err := h1.LinkByName(c.cif)
		if err != nil {
			t.Fatal(err)
		}
		if p.Peer != PeerHost || p.HostIf.Name != c.host || p.HostIf.Index != want.Attrs().Index {
			t.Errorf("%s: want host peer %s/%d, got %+v", c.cif, c.host, want.Attrs().Index, p)
		}
		if p.PeerIndex != want.Attrs().Index || p.ContainerIf.Index != inner.Attrs().Index || p.Netns != tp.ns1 {
			t.Errorf("%s: indexes/netns wrong: %+v", c.cif, p)
		}
		if p.HostMaster != c.master {
			t.Errorf("%s: master %q, want %q", c.cif, p.HostMaster, c.master)
		}
		if p.PeerNetnsID < 0 {
			t.Errorf("%s: host peer without a netns id: %+v", c.cif, p)
		}
	}

	o := got["ceth2"]
	oeth, err := h3.LinkByName("oeth0")
	if err != nil {
		t.Fatal(err)
	}
	if o.Peer != PeerOtherNetns || o.PeerIndex != oeth.Attrs().Index || o.HostIf != (Iface{}) {
		t.Errorf("ceth2: want peer oeth0/%d in another netns, got %+v", oeth.Attrs().Index, o)
	}
	if o.Peer.String() != "other-netns" {
		t.Errorf("String() = %q", o.Peer)
	}
	for _, n := range []string{"cin0", "cin1"} {
		p := got[n]
		if p.Peer != PeerSameNetns || p.PeerNetnsID != -1 {
			t.Errorf("%s: want same-netns peer, got %+v", n, p)
		}
	}
	if got["cin0"].PeerIndex != got["cin1"].ContainerIf.Index {
		t.Errorf("cin0 peer index %d, cin1 index %d", got["cin0"].PeerIndex, got["cin1"].ContainerIf.Index)
	}

	// Seen with ns3 as "the host", ceth2's peer is the host one and the real host veths are elsewhere.
	pairs, err = InterfacesFrom(tp.ns3, tp.ns1)
	if err != nil {
		t.Fatal(err)
	}
	got = byName(pairs)
	if p := got["ceth2"]; p.Peer != PeerHost || p.HostIf.Name != "oeth0" {
		t.Errorf("from ns3: ceth2 = %+v", p)
	}
	if p := got["ceth0"]; p.Peer != PeerOtherNetns {
		t.Errorf("from ns3: ceth0 = %+v", p)
	}
}

// Several goroutines at once must not move any thread (least of all the caller's) out of the
// host netns.
func TestRootInterfacesConcurrentKeepsHostNetns(t *testing.T) {
	needRoot(t)
	tp := buildTopo(t)
	before, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				pairs, err := Interfaces(tp.ns1)
				if err != nil {
					errs <- err
					return
				}
				if len(pairs) != 5 {
					errs <- fmt.Errorf("got %d pairs", len(pairs))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	after, _ := os.Readlink("/proc/self/ns/net")
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	self, err := netns.GetFromPath("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if before != after || !cur.Equal(self) {
		t.Fatalf("netns changed: %s -> %s, thread equal=%v", before, after, cur.Equal(self))
	}
}

func TestRootHostNetns(t *testing.T) {
	needRoot(t)
	for _, p := range []string{"/proc/self/ns/net", PidNetns(os.Getpid())} {
		_, err := Interfaces(p)
		if !errors.Is(err, ErrHostNetwork) {
			t.Errorf("%s: want ErrHostNetwork, got %v", p, err)
		}
	}
}

func TestRootNetnsVanished(t *testing.T) {
	needRoot(t)
	tp := buildTopo(t)

	// A process in ns1: its /proc path works while it lives and is ErrGone after.
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(tp.ns1), "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	path := PidNetns(cmd.Process.Pid)
	deadline := time.Now().Add(5 * time.Second)
	var pairs []Pair
	var err error
	for {
		// ip execs sleep after setns; until then the pid is still in the host netns.
		pairs, err = Interfaces(path)
		if err == nil || !errors.Is(err, ErrHostNetwork) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || len(pairs) != 5 {
		t.Fatalf("via %s: %v, %+v", path, err, pairs)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if _, err := Interfaces(path); !errors.Is(err, ErrGone) {
		t.Errorf("dead pid: want ErrGone, got %v", err)
	}

	// A deleted named netns.
	run(t, "ip", "netns", "del", filepath.Base(tp.ns3))
	if _, err := Interfaces(tp.ns3); !errors.Is(err, ErrGone) {
		t.Errorf("deleted netns: want ErrGone, got %v", err)
	}
	// ceth2 goes with its peer, once the kernel's asynchronous netns cleanup has run.
	deadline = time.Now().Add(10 * time.Second)
	for {
		pairs, err = Interfaces(tp.ns1)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := byName(pairs)["ceth2"]; !ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok := byName(pairs)["ceth2"]; ok || len(pairs) != 4 {
		t.Errorf("after deleting ns3: %+v", pairs)
	}

	// What a SandboxKey path looks like once Docker unmounts it: a plain file.
	stale := filepath.Join(t.TempDir(), "sandbox")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Interfaces(stale); !errors.Is(err, ErrGone) {
		t.Errorf("plain file: want ErrGone, got %v", err)
	}
	if err := unix.Mount(tp.ns1, stale, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if pairs, err := Interfaces(stale); err != nil || len(pairs) != 4 {
		t.Errorf("bind-mounted: %v %+v", err, pairs)
	}
	if err := unix.Unmount(stale, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if _, err := Interfaces(stale); !errors.Is(err, ErrGone) {
		t.Errorf("unmounted: want ErrGone, got %v", err)
	}

	if _, err := Interfaces(""); err == nil || errors.Is(err, ErrGone) {
		t.Errorf("empty path: want a plain error, got %v", err)
	}
	// Another kind of namespace is an error, but neither gone nor host.
	_, err = Interfaces("/proc/self/ns/mnt")
	if err == nil || errors.Is(err, ErrGone) || errors.Is(err, ErrHostNetwork) {
		t.Errorf("mount namespace: want a plain error, got %v", err)
	}
}
