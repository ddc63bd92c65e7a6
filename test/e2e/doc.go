// Package e2e holds end-to-end tests that run inside the test VM (build tag vm, `make
// vm-test VM_PKGS=./test/e2e`): a real dockerd in the guest, containers labelled the way Dokku
// labels them, a Dokku tree fixture, and the dokku-netshape binary driven exactly as Dokku
// drives it (post-deploy trigger) and as an operator does (set, report, watch). Rates are
// measured at the receivers.
//
// The tests need the dokku-netshape binary: $NETSHAPE_BIN if set (the host's NETSHAPE_*
// variables reach the guest), else they build it with `go build`; and the static loadgen at
// $NETSHAPE_LOADGEN (set by vm.mk), which becomes the app image.
package e2e
