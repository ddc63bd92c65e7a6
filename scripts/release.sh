#!/usr/bin/env bash
# `make release`: the release tarballs of plugin.toml's version for every
# architecture the install trigger downloads, their SHA256SUMS, and the pin
# of those sums in release/SHA256SUMS (the file the install trigger checks
# downloads against). See release/README.md for the whole flow.
#
#   dist/release/dokku-netshape-VERSION-linux-{amd64,arm64}.tar.gz
#   dist/release/SHA256SUMS
#   release/SHA256SUMS   this version's lines replaced, the others kept
#
# Go is the exact version go.mod names (GOTOOLCHAIN), so a developer's build
# and CI's build of the same commit are byte-identical.
#
# Environment: GO (default go), OUT (default dist/release), PIN (default
# release/SHA256SUMS; PIN=none writes no pin).
set -euo pipefail
export LC_ALL=C

root=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-dist/release}
pin=${PIN:-release/SHA256SUMS}
version=$(sed -n 's/^version *= *"\(.*\)"$/\1/p' plugin.toml)
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "release: plugin.toml version \"$version\" is not X.Y.Z" >&2; exit 1; }
gover=$(awk '$1 == "go" {print $2}' go.mod)
export GOTOOLCHAIN="go$gover"

rm -rf "$out"
mkdir -p "$out"
for arch in amd64 arm64; do
	GOARCH=$arch OUT=$out VERSION=$version scripts/plugin-tarball.sh
	rm -f "$out/dokku-netshape-$version-linux-$arch.tar.gz.sha256"
done
(cd "$out" && sha256sum -- *.tar.gz >SHA256SUMS)

if [[ "$pin" != none ]]; then
	mkdir -p "$(dirname "$pin")"
	touch "$pin"
	# Keep other versions' pins; replace this version's.
	{
		grep -v -F -e "  dokku-netshape-$version-linux-" "$pin" || true
		cat "$out/SHA256SUMS"
	} | sort -k2,2 -V >"$pin.tmp"
	mv -f "$pin.tmp" "$pin"
	echo "release: pinned in $pin:"
fi
cat "$out/SHA256SUMS"
