package main

import (
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// keyCgroup is a cgroup made at boot and kept, empty, for the guest's lifetime.
const keyCgroup = "/sys/fs/cgroup/netshape-static-keys"

// heldCgroupKeys keeps the boot-time cgroup program attached (see holdTCKeys).
var heldCgroupKeys []link.Link

// holdCgroupKeys turns on at boot, while nothing else runs, the static keys that containers
// otherwise flip with int3-based text patching, and keeps them on. Under qemu's multi-threaded
// TCG such a patch can race a vCPU inside the patched code (see holdTCKeys) and oops the guest:
//   - memcg_kmem_online_key, on when the first memory cgroup appears (kmem_cache_alloc; oopsed
//     6.12 guests when dockerd's first container started);
//   - cpusets_enabled_key, counting cpuset cgroups: 0 -> 1 with every first container after none,
//     checked on every page allocation (__alloc_pages; oopsed a 6.12 guest the same way);
//   - __cfs_bandwidth_used, counting cgroups with a CPU quota (docker --cpus), in the scheduler;
//   - cgroup_bpf_enabled_key for device programs, which runc attaches to every container's cgroup.
//
// One empty cgroup with the memory, cpuset and cpu controllers, a quota that never binds, and an
// allow-all device program holds them all. Best effort: a guest where a step fails only loses
// that part of the workaround.
func holdCgroupKeys() {
	warn := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "guestinit: hold cgroup keys: %s: %v\n", what, err)
	}
	for _, c := range []string{"+memory", "+cpuset", "+cpu"} {
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte(c), 0o644); err != nil {
			warn("enable "+c[1:], err)
		}
	}
	if err := os.Mkdir(keyCgroup, 0o755); err != nil && !os.IsExist(err) {
		warn("mkdir", err)
		return
	}
	if err := os.WriteFile(keyCgroup+"/cpu.max", []byte("1000000 100000"), 0o644); err != nil {
		warn("cpu.max", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "vm_hold_cgkeys",
		Type:         ebpf.CGroupDevice,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}, // allow
	})
	if err != nil {
		warn("load device program", err)
		return
	}
	defer prog.Close() // the link keeps its own reference
	l, err := link.AttachCgroup(link.CgroupOptions{Path: keyCgroup, Attach: ebpf.AttachCGroupDevice, Program: prog})
	if err != nil {
		warn("attach device program", err)
		return
	}
	heldCgroupKeys = append(heldCgroupKeys, l)
}
