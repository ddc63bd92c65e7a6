#!/bin/sh
# Install what the VM tests (make vm-test) need and fetch/cache the guest kernels. Idempotent and quick
# when everything is already there: apt is only asked about packages that are missing.
set -eu

cd "$(dirname "$0")/.."

# qemu-system-x86: the VM; cpio/busybox-static: handy for poking at an initramfs by hand;
# kmod: depmod for the extracted kernels and modprobe in the guest; xz-utils: 6.12's .ko.xz modules;
# iproute2: ip/tc in the guest (it runs the host's userland); iperf3: reference numbers.
pkgs="qemu-system-x86 cpio kmod busybox-static xz-utils iproute2 iperf3"
missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing="$missing $p"
	fi
done
if [ -n "$missing" ]; then
	echo "vm-deps: installing$missing"
	# Lists are refreshed only when a package has no candidate or the install meets stale lists
	# (.ci/apt.sh): otherwise installs stay offline-fast.
	. .ci/apt.sh
	# shellcheck disable=SC2086 # one word per package
	apt_install $missing
else
	echo "vm-deps: packages present"
fi

test/vm/fetch-kernels.sh
