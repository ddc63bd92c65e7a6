// Package integration holds the measured-rate tests that run inside the qemu guests of
// `make vm-test` (build tag vm): real TCP through the EDT shaper on Debian 6.1 (legacy tc) and
// 6.12 (TCX) kernels, measured at the receiver, with every result reported via vmresult into
// test/vm/out/summary.json. See docs/MEASUREMENTS.md for what they found.
package integration
