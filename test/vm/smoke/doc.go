// Package smoke holds the VM harness's own smoke tests (build tag vm): they run inside the qemu guest
// (make vm-smoke / make vm-test) and prove fq, veth, netns, bpffs, module autoloading and the traffic
// tools work there, and record what TCP rate the emulated guest can carry unshaped.
package smoke
