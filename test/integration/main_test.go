//go:build vm

package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/dokku-netshape/dokku-netshape/test/vm/vmresult"
)

// TestMain pins the kernel's tc static keys on for the whole run inside a guest: a clsact qdisc on
// the root netns's lo, which nothing here shapes. Every attach and detach otherwise flips
// ingress_needed_key/egress_needed_key between 0 and 1, i.e. live-patches kernel text, once per
// subtest. One 6.1 guest under multi-threaded TCG locked up with both vCPUs stuck on exactly that
// static-branch site in __netif_receive_skb_core (docs/MEASUREMENTS.md, finding 7); the shaper's
// own attach/detach paths are still exercised, only the 0↔1 transitions of the keys are avoided.
func TestMain(m *testing.M) {
	var pin *netlink.GenericQdisc
	if vmresult.InVM() {
		if lo, err := netlink.LinkByName("lo"); err == nil {
			q := &netlink.GenericQdisc{
				QdiscAttrs: netlink.QdiscAttrs{LinkIndex: lo.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
				QdiscType:  "clsact",
			}
			if err := netlink.QdiscAdd(q); err != nil {
				fmt.Fprintf(os.Stderr, "integration: clsact on lo to hold the tc static keys: %v\n", err)
			} else {
				pin = q
			}
		}
	}
	code := m.Run()
	if pin != nil {
		netlink.QdiscDel(pin)
	}
	os.Exit(code)
}
