package shaper

import (
	"testing"

	"github.com/dokku-netshape/dokku-netshape/test/nettest"
	"github.com/vishvananda/netlink"
)

// The dump-free root qdisc questions answer as a dump does, in the host
// namespace (the get) and a container's (the dump): nothing or another
// kind under our handle is not our fq, and removeOurFq leaves it alone.
func TestRootRootIsOurFqWithoutDump(t *testing.T) {
	nettest.RequireRoot(t)
	app, host := testPair(t)
	for _, dev := range []Device{host, app} {
		ns, err := openNetns(dev)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.close()
		l, err := ns.link(dev)
		if err != nil {
			t.Fatal(err)
		}
		if ours, err := rootIsOurFq(ns, l, dev); err != nil || ours {
			t.Fatalf("%s with its default root: ours=%v %v", dev, ours, err)
		}
		// Someone else's qdisc that happens to use our handle.
		htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: fqHandle, Parent: netlink.HANDLE_ROOT})
		if err := ns.nl.QdiscAdd(htb); err != nil {
			t.Fatal(err)
		}
		if ours, err := rootIsOurFq(ns, l, dev); err != nil || ours {
			t.Fatalf("%s with htb under our handle: ours=%v %v", dev, ours, err)
		}
		if err := removeOurFq(ns, l, dev); err != nil {
			t.Fatal(err)
		}
		if st := inspect(t, dev); st.rootKind != "htb" {
			t.Fatalf("%s: removeOurFq took the htb: %+v", dev, st)
		}
		if added, err := addOurFq(ns, l, dev); err != nil || added {
			t.Fatalf("%s: addOurFq over a foreign root: added=%v %v", dev, added, err)
		}
		if err := ns.nl.QdiscDel(htb); err != nil {
			t.Fatal(err)
		}
		if !nettest.HaveFq(t) {
			continue
		}
		if added, err := addOurFq(ns, l, dev); err != nil || !added {
			t.Fatalf("%s: addOurFq on the default root: added=%v %v", dev, added, err)
		}
		if ours, err := rootIsOurFq(ns, l, dev); err != nil || !ours {
			t.Fatalf("%s with our fq: ours=%v %v", dev, ours, err)
		}
		if added, err := addOurFq(ns, l, dev); err != nil || added {
			t.Fatalf("%s: addOurFq over our own: added=%v %v", dev, added, err)
		}
		if err := removeOurFq(ns, l, dev); err != nil {
			t.Fatal(err)
		}
		if st := inspect(t, dev); st.rootHandle != 0 {
			t.Fatalf("%s: our fq left: %+v", dev, st)
		}
	}
}
