package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// heldTCKeys keeps the boot-time attachments alive for the guest's lifetime (a collected link
// would be closed by its finalizer and release the keys again).
var heldTCKeys []link.Link

// holdTCKeys turns the kernel's tc ingress/egress static keys on at boot and keeps them on, the
// same way holdMemcgKey does for memcg. Every first attach on a quiet guest flips the key from 0 to 1
// (and every last detach back) with int3-based text patching in __netif_receive_skb_core and
// __dev_queue_xmit. Under qemu's multi-threaded TCG a vCPU inside that code can run a stale
// translation with the int3 after the patch finished; the trap then finds no patch in progress and
// resumes in the middle of the NOP: "invalid opcode" and a panic in interrupt context (seen in CI
// on 6.12, and once as a 6.1 lockup). A clsact qdisc on lo holds ingress_needed_key and
// egress_needed_key; on kernels with TCX a pass-through link in each direction holds TCX's own
// accounting too. Nothing in the tests runs in the guest's root lo, so these change no result.
// Best effort: a guest where this fails only loses the workaround.
func holdTCKeys() {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestinit: hold tc keys: %v\n", err)
		return
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: lo.Attrs().Index,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscReplace(q); err != nil {
		fmt.Fprintf(os.Stderr, "guestinit: hold tc keys: clsact on lo: %v\n", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "vm_hold_tckeys",
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TCX_NEXT / TC_ACT_UNSPEC
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestinit: hold tc keys: load program: %v\n", err)
		return
	}
	defer prog.Close() // the links keep their own reference
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Attrs().Index, Program: prog, Attach: at})
		if errors.Is(err, ebpf.ErrNotSupported) {
			return // pre-6.6: clsact alone drives the keys
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "guestinit: hold tc keys: tcx on lo: %v\n", err)
			return
		}
		heldTCKeys = append(heldTCKeys, l)
	}
}
