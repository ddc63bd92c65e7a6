#!/bin/sh
# Fetch the guest kernels for the VM tests from Debian's apt archive and cache them, extracted, under
# ${NETSHAPE_VM_CACHE:-$HOME/.cache/netshape-vm}/kernels/<release>/ with an alias symlink per series:
#   kernels/6.1  -> <6.1 release>   (Debian 12 default kernel: no TCX, legacy tc attach path)
#   kernels/6.12 -> <6.12 release>  (bookworm backport: TCX path)
# Each release dir holds vmlinuz (+ vmlinux, see extract_vmlinux), config, lib/modules/<release>/ (plain .ko, depmod run) and a .complete stamp.
# Idempotent: a release that is already complete is not downloaded or extracted again.
#
# Overrides: NETSHAPE_VM_PKG_61 / NETSHAPE_VM_PKG_612 pin exact package names; NETSHAPE_VM_REFRESH=1
# asks apt for the current packages even when both series are cached.
set -eu

# apt_refresh and friends: refresh stale package lists once when a kernel package cannot be found.
. "$(dirname "$0")/../../.ci/apt.sh"

cache=${NETSHAPE_VM_CACHE:-${HOME:-/root}/.cache/netshape-vm}
kdir=$cache/kernels
mkdir -p "$kdir" "$cache/debs"

# The package linux-image-amd64 depends on is Debian 12's current 6.1 ABI (e.g. linux-image-6.1.0-56-amd64).
pkg61() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-6\.1\.[0-9]*-[0-9]*-amd64\)$/\1/p' | head -n1
}

# Highest 6.12 point release of the plain (not cloud, not rt) unsigned flavour.
pkg612() {
	apt-cache pkgnames linux-image-6.12. 2>/dev/null |
		grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | sort -V | tail -n1
}

# extract_vmlinux DIR: write DIR/vmlinux, the uncompressed ELF kernel inside DIR/vmlinuz, when the kernel
# can be booted that way (CONFIG_PVH). qemu then starts it directly, which skips the kernel's own
# decompression: 1-3 s per boot under TCG. vmrun falls back to vmlinuz when there is no vmlinux.
extract_vmlinux() {
	d=$1
	grep -q '^CONFIG_PVH=y' "$d/config" || return 0
	for c in 'xz -dc:\xfd7zXZ\x00' 'zstd -dc:\x28\xb5\x2f\xfd' 'gzip -dc:\x1f\x8b\x08'; do
		tool=${c%%:*} magic=${c#*:}
		command -v "${tool%% *}" >/dev/null || continue
		off=$(LC_ALL=C grep -obUaP "$magic" "$d/vmlinuz" | head -n1 | cut -d: -f1)
		[ -n "$off" ] || continue
		# The compressed payload is followed by other data; the decompressors complain about it, but
		# what they wrote before that is the whole kernel, which the ELF check below confirms.
		tail -c +"$((off + 1))" "$d/vmlinuz" | $tool >"$d/vmlinux" 2>/dev/null || true
		if [ "$(head -c4 "$d/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
			return 0
		fi
	done
	rm -f "$d/vmlinux"
}

# resolve ALIAS: the package of a series, pinned by the environment or as apt's lists name it.
resolve() {
	case $1 in
	6.1) echo "${NETSHAPE_VM_PKG_61:-$(pkg61)}" ;;
	6.12) echo "${NETSHAPE_VM_PKG_612:-$(pkg612)}" ;;
	esac
}

# fetch ALIAS: make kernels/ALIAS point at an extracted, depmod'ed copy of its package. Stale apt
# lists show as no package at all, or as one the mirror no longer has (its download fails): either
# way the lists are refreshed once and the package resolved and fetched again.
fetch() {
	alias=$1
	pkg=$(resolve "$alias")
	if [ -z "$pkg" ] && apt_refresh "no $alias kernel package in the lists"; then
		pkg=$(resolve "$alias")
	fi
	if [ -z "$pkg" ]; then
		# Still none (no network for apt?): keep using what is cached rather than failing.
		if [ -f "$kdir/$alias/.complete" ]; then
			echo "fetch-kernels: $alias: no apt candidate, using cached $(readlink "$kdir/$alias")"
			return 0
		fi
		echo "fetch-kernels: $alias: no package found in apt, even after apt-get update" >&2
		return 1
	fi
	cached "$alias" "$pkg" && return 0
	if ! deb=$(download "$pkg"); then
		apt_refresh "apt-get download $pkg failed" || return 1
		pkg=$(resolve "$alias")
		[ -n "$pkg" ] || { echo "fetch-kernels: $alias: no package found in apt after apt-get update" >&2; return 1; }
		cached "$alias" "$pkg" && return 0
		deb=$(download "$pkg") || return 1
	fi
	extract "$alias" "$pkg" "$deb"
}

# release PACKAGE: the kernel release, i.e. the package name minus "linux-image-" and "-unsigned".
release() {
	rel=${1#linux-image-}
	echo "${rel%-unsigned}"
}

# cached ALIAS PACKAGE: point ALIAS at PACKAGE's release if it is already extracted.
cached() {
	rel=$(release "$2")
	[ -f "$kdir/$rel/.complete" ] || return 1
	[ -f "$kdir/$rel/vmlinux" ] || extract_vmlinux "$kdir/$rel" # caches made before vmlinux was extracted
	ln -sfn "$rel" "$kdir/$1"
	echo "fetch-kernels: $1: cached $rel"
}

# download PACKAGE: print the path of its .deb, downloaded unless a copy is there (progress on stderr).
download() {
	echo "fetch-kernels: downloading $1" >&2
	deb=$(ls "$cache/debs/${1}_"*.deb 2>/dev/null | head -n1 || true)
	if [ -z "$deb" ]; then
		(cd "$cache/debs" && apt-get download -q "$1" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
		deb=$(ls "$cache/debs/${1}_"*.deb 2>/dev/null | head -n1 || true)
		[ -n "$deb" ] || { echo "fetch-kernels: apt-get download $1 failed" >&2; return 1; }
	fi
	echo "$deb"
}

# extract ALIAS PACKAGE DEB: unpack the kernel and its modules, trim and depmod them, point ALIAS at them.
extract() {
	alias=$1 pkg=$2 deb=$3
	rel=$(release "$pkg")
	dst=$kdir/$rel
	tmp=$dst.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp"
	dpkg -x "$deb" "$tmp/x"
	mv "$tmp/x/boot/vmlinuz-$rel" "$tmp/vmlinuz"
	mv "$tmp/x/boot/config-$rel" "$tmp/config"
	mkdir -p "$tmp/lib/modules"
	mv "$tmp/x/lib/modules/$rel" "$tmp/lib/modules/$rel"
	rm -rf "$tmp/x"

	extract_vmlinux "$tmp"

	m=$tmp/lib/modules/$rel/kernel
	# A VM with no hardware needs none of these; dropping them keeps the cache at ~100 MB per kernel.
	rm -rf "$m/sound" "$m/drivers/gpu" "$m/drivers/media" "$m/drivers/infiniband" "$m/drivers/iio" \
		"$m/drivers/usb" "$m/drivers/scsi" "$m/drivers/hwmon" "$m/drivers/staging" "$m/drivers/bluetooth" \
		"$m/drivers/net/wireless" "$m/drivers/net/ethernet" "$m/drivers/hid" "$m/drivers/input" \
		"$m/drivers/video" "$m/drivers/mfd" "$m/drivers/platform" "$m/drivers/isdn" "$m/drivers/nfc" \
		"$m/net/wireless" "$m/net/mac80211" "$m/net/bluetooth" "$m/fs/nls"
	# 6.12 ships .ko.xz; the guest init loads plain .ko with finit_module, so decompress once here.
	find "$m" -name '*.ko.xz' -print0 | xargs -0 -r -P"$(nproc)" -n100 xz -d
	depmod -b "$tmp" "$rel"

	rm -rf "$dst"
	mv "$tmp" "$dst"
	echo "$pkg" >"$dst/package"
	touch "$dst/.complete"
	rm -f "$deb" # re-downloading takes seconds; keeping it costs ~100 MB
	ln -sfn "$rel" "$kdir/$alias"
	echo "fetch-kernels: $alias: ready $rel"
}

# apt-cache takes seconds here; when both kernels are cached and no refresh is asked for, skip it.
if [ -z "${NETSHAPE_VM_REFRESH:-}" ] && [ -f "$kdir/6.1/.complete" ] && [ -f "$kdir/6.12/.complete" ]; then
	echo "fetch-kernels: cached $(readlink "$kdir/6.1") $(readlink "$kdir/6.12") (NETSHAPE_VM_REFRESH=1 to look for newer)"
	exit 0
fi

fetch 6.1
fetch 6.12
