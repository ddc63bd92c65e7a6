package shaper

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/dokku-netshape/dokku-netshape/test/tools/traffic"
)

// policePackets sums a budget's backstop counter of passed frames over CPUs.
func policePackets(t *testing.T, s *Shaper, id uint32) uint64 {
	t.Helper()
	var per []edtPoliceStats
	if err := s.maps.NetshapePstats.Lookup(id, &per); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range per {
		n += c.Packets
	}
	return n
}

// TestRootSharedInstanceChargesEachFilterItsBudget: every cls_bpf filter
// runs one shared program instance, and the filter's classid is the only
// thing that says which budget a packet is charged to. Real TCP through one
// app's devices must move that app's counters (shaper and backstop) and
// nobody else's, for each of two apps in turn.
func TestRootSharedInstanceChargesEachFilterItsBudget(t *testing.T) {
	s := openTestShaper(t)
	noFq := errors.Is(FqSupport(), ErrNoFq)
	type app struct {
		ns     *nettest.Netns
		pair   *nettest.Pair
		budget string
		egress uint32 // its id
	}
	var apps []app
	for i, name := range []string{"sa", "sb"} {
		ns := nettest.NewNetns(t, name)
		p := nettest.NewPair(t, ns, nil, 40+i)
		b := name + "/egress"
		if err := s.UpsertBudget(Budget{Name: b, Rate: 10e9}); err != nil { // never binding
			t.Fatal(err)
		}
		if _, err := s.Attach(Device{Netns: ns.Path, Name: p.NameA}, b, AttachOptions{NoFq: noFq}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Attach(Device{Name: p.NameB}, b, AttachOptions{Hook: HookPolice}); err != nil {
			t.Fatal(err)
		}
		apps = append(apps, app{ns, p, b, budgetID(t, s, b)})
	}

	// One kernel program behind all four filters, each with its budget's classid.
	progs := map[ebpf.ProgramID]bool{}
	for _, a := range apps {
		for _, f := range []struct {
			ns     string
			dev    string
			parent uint32
		}{{a.ns.Path, a.pair.NameA, netlink.HANDLE_MIN_EGRESS}, {"", a.pair.NameB, netlink.HANDLE_MIN_INGRESS}} {
			ref, err := openNetns(Device{Netns: f.ns, Name: f.dev})
			if err != nil {
				t.Fatal(err)
			}
			l, err := ref.link(Device{Netns: f.ns, Name: f.dev})
			if err != nil {
				t.Fatal(err)
			}
			fs, err := ref.nl.FilterList(l, f.parent)
			ref.close()
			if err != nil || len(fs) != 1 {
				t.Fatalf("%s: filters %v %v, want ours alone", f.dev, fs, err)
			}
			bf := fs[0].(*netlink.BpfFilter)
			if bf.ClassId != a.egress {
				t.Fatalf("%s: filter %s has classid %d, want budget %d", f.dev, bf.Name, bf.ClassId, a.egress)
			}
			if bf.Name != policeName {
				progs[ebpf.ProgramID(bf.Id)] = true
			}
		}
	}
	if len(progs) != 1 {
		t.Fatalf("the two apps' shaping filters run programs %v, want one shared instance", progs)
	}

	for i, a := range apps {
		other := apps[1-i]
		counts := func(x app) (uint64, uint64) {
			st, err := s.Budget(x.budget)
			if err != nil {
				t.Fatal(err)
			}
			return st.Stats.Packets, policePackets(t, s, x.egress)
		}
		ownShape0, ownPolice0 := counts(a)
		otherShape0, otherPolice0 := counts(other)

		ln, err := traffic.ListenIn("", a.pair.IPB+":0")
		if err != nil {
			t.Fatal(err)
		}
		sink := traffic.NewSink(ln)
		if _, err := traffic.Send(context.Background(), traffic.SendOptions{Addr: sink.Addr().String(), Duration: 500 * time.Millisecond,
			Dial: traffic.DialIn(a.ns.Path)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		got := sink.Bytes()
		sink.Close()

		ownShape, ownPolice := counts(a)
		otherShape, otherPolice := counts(other)
		// At least one frame per 64 KiB received went through each of this app's filters.
		if min := uint64(got / 65536); ownShape-ownShape0 < min || ownPolice-ownPolice0 < min || got == 0 {
			t.Errorf("app %d: %d bytes received, its shaper counted %d packets and its backstop %d; want ≥ %d each",
				i, got, ownShape-ownShape0, ownPolice-ownPolice0, min)
		}
		// The other app's own background (IPv6 neighbour and router
		// solicitations on its veth) is a handful of packets; this app's
		// traffic would be thousands.
		if otherShape-otherShape0 > 20 || otherPolice-otherPolice0 > 20 {
			t.Errorf("app %d's traffic charged the other app: shaper +%d, backstop +%d packets", i, otherShape-otherShape0, otherPolice-otherPolice0)
		}
		t.Logf("app %d: %d bytes received; its shaper +%d, backstop +%d packets; the other's +%d, +%d",
			i, got, ownShape-ownShape0, ownPolice-ownPolice0, otherShape-otherShape0, otherPolice-otherPolice0)
	}
}
