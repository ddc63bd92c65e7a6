#!/usr/bin/env bash
# make demo: dokku-netshape limiting a Dokku app's container, live, with no Dokku and no
# change to this machine. It boots a throw-away Debian 6.12 guest under qemu (the test VM of
# test/vm: a copy-on-write clone of this machine's root, no network card), starts dockerd in
# it, runs one container labelled as Dokku labels an app's web process, and shows the limit
# and the measured rate once a second while the limit goes 20 Mbit/s -> 50 Mbit/s -> none.
#
# Needs root, qemu and the cached Debian kernels (make vm-deps vm-kernels). About a minute.
# Environment: DEMO_KERNEL (6.12), DEMO_OUT (test/vm/out/demo), DEMO_PHASE (7s per limit).
set -euo pipefail
cd "$(dirname "$0")/.."

kernel=${DEMO_KERNEL:-6.12}
out=${DEMO_OUT:-test/vm/out/demo}
phase=${DEMO_PHASE:-7s}
mkdir -p "$out"
abs=$(cd "$out" && pwd)

echo "==> Building the guest init, loadgen (the demo app), dokku-netshape and the demo driver"
CGO_ENABLED=0 go build -o "$out/init" ./test/vm/guestinit
CGO_ENABLED=0 go build -o "$out/loadgen" ./test/tools/loadgen
CGO_ENABLED=0 go build -o "$out/dokku-netshape" ./cmd/dokku-netshape
CGO_ENABLED=0 go build -o "$out/demo" ./demo
go build -o "$out/vmrun" ./test/vm/vmrun

# One VM at a time on this machine: test runs and demos share the CPUs.
exec 9>/tmp/netshape-vm.lock
if ! flock -n 9; then
	echo "==> Waiting for another VM run to finish"
	flock 9
fi

echo "==> Booting Debian $kernel under qemu (software emulation: a few seconds)"
status=0
# -v streams the guest console as it happens; only the demo's own lines (marked "DEMO ") and
# vmrun's summary are shown. sed -u: no buffering between the guest and this terminal.
"$out/vmrun" -init "$out/init" -out "$out" -kernels "$kernel" -timeout 2m -v \
	-cmd "$abs/demo -netshape $abs/dokku-netshape -loadgen $abs/loadgen -phase $phase" |
	sed -u -n -e 's/^.*DEMO //p' -e 's/^\[[0-9.]*\] \(FAILED.*\)/\1/p' -e '/^vmrun summary:/,$p' || status=$?

if [ "$status" != 0 ]; then
	echo "==> The demo failed (exit $status); last lines of the guest console ($out/console-$kernel.log):"
	tail -n 40 "$out/console-$kernel.log" || true
fi
exit "$status"
