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

# fetch ALIAS PACKAGE: make kernels/ALIAS point at an extracted, depmod'ed copy of PACKAGE.
fetch() {
	alias=$1 pkg=$2
	if [ -z "$pkg" ]; then
		# apt has no candidate (no lists?): keep using what is cached rather than failing.
		if [ -f "$kdir/$alias/.complete" ]; then
			echo "fetch-kernels: $alias: no apt candidate, using cached $(readlink "$kdir/$alias")"
			return 0
		fi
		echo "fetch-kernels: $alias: no package found in apt (run apt-get update)" >&2
		return 1
	fi
	# Release name = package name minus "linux-image-" and a trailing "-unsigned".
	rel=${pkg#linux-image-}
	rel=${rel%-unsigned}
	dst=$kdir/$rel
	if [ -f "$dst/.complete" ]; then
		[ -f "$dst/vmlinux" ] || extract_vmlinux "$dst" # caches made before vmlinux was extracted
		ln -sfn "$rel" "$kdir/$alias"
		echo "fetch-kernels: $alias: cached $rel"
		return 0
	fi

	echo "fetch-kernels: $alias: downloading $pkg"
	deb=$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
	if [ -z "$deb" ]; then
		(cd "$cache/debs" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
		deb=$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
		[ -n "$deb" ] || { echo "fetch-kernels: apt-get download $pkg failed" >&2; return 1; }
	fi

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

fetch 6.1 "${NETSHAPE_VM_PKG_61:-$(pkg61)}"
fetch 6.12 "${NETSHAPE_VM_PKG_612:-$(pkg612)}"
