// Package guest is the in-guest half of `make bench-compare`: TestVMBenchCompare (build tag
// vmbench, so `make vm-test` does not pick it up) starts a dockerd in a test VM guest, runs one
// container labelled as Dokku labels an app's, and shapes its two devices in turn with each scheme
// of test/benchcompare/cells — dokku-netshape through its CLI, TBF, docker-tc's chain, HTB, a
// Cilium-style EDT program, nothing — measuring every cell of the matrix at the receiver. Each cell
// is a NETSHAPE-RESULT line ("compare_cell") that vmrun collects; test/benchcompare turns them into
// BENCHMARKS.md. The run fails when cells.Check finds a scheme that did not do what its row claims.
package guest
