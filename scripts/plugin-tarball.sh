#!/usr/bin/env bash
# Build a Dokku plugin tarball with the binary inside, for servers without Go:
#
#   scripts/plugin-tarball.sh            -> dist/dokku-netshape-VERSION-linux-amd64.tar.gz (+ .sha256)
#   GOARCH=arm64 scripts/plugin-tarball.sh
#
# Install it with (the name is not derived from a tarball's file name):
#   sudo dokku plugin:install https://HOST/dokku-netshape-VERSION-linux-amd64.tar.gz --name netshape
#   sudo dokku plugin:install file:///path/to/dokku-netshape-VERSION-linux-amd64.tar.gz --name netshape
#
# The tarball holds one directory (plugn moves its contents into the plugin
# dir): plugin.toml, the install/update and commands scripts, the trigger and
# subcommand links, bin/dokku-netshape (static) and bin/.release, which tells
# the install trigger to use the shipped binary instead of building. Entries
# are owned by root (uid/gid 0): plugn untars as root, which keeps owners, and
# the binary is granted sudo.
#
# Reproducible: the same source and Go version give the same bytes, whatever
# the checkout path, commit, clock, umask or user (release/SHA256SUMS pins
# these bytes before the tag is built, see release/README.md). So nothing
# in it names the commit, the binary carries no VCS stamp or build ID, and
# the tar has fixed owners, modes, order and mtimes, gzipped without a name
# or timestamp.
#
# Environment: GO (default go), GOARCH (default amd64), OUT (default dist),
# VERSION (default plugin.toml's version).
set -euo pipefail
export LC_ALL=C

root=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
go=${GO:-go}
arch=${GOARCH:-amd64}
out=${OUT:-dist}
version=${VERSION:-$(sed -n 's/^version *= *"\(.*\)"$/\1/p' plugin.toml)}
[[ -n "$version" ]] || { echo "plugin-tarball: no version in plugin.toml" >&2; exit 1; }

name="dokku-netshape-$version-linux-$arch"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir="$stage/dokku-netshape"
mkdir -p "$dir/bin" "$dir/subcommands"

echo "plugin-tarball: building $name with $("$go" env GOVERSION)"
# GOFLAGS and the per-arch levels are fixed: a user's settings would change the bytes.
CGO_ENABLED=0 GOOS=linux GOARCH="$arch" GOAMD64=v1 GOARM64=v8.0 GOFLAGS='' \
	"$go" build -trimpath -buildvcs=false -ldflags=-buildid= \
	-o "$dir/bin/dokku-netshape" ./cmd/dokku-netshape
# The install trigger reads the first line: "VERSION linux/ARCH".
printf '%s linux/%s\n' "$version" "$arch" >"$dir/bin/.release"

# The plugin's entry points, exactly as committed (links stay links).
cp -P plugin.toml install update commands "$dir/"
for f in subcommands/*; do cp -P "$f" "$dir/subcommands/"; done
for f in *; do
	if [[ -L "$f" && "$(readlink "$f")" == bin/dokku-netshape ]]; then
		cp -P "$f" "$dir/"
	fi
done
for f in README.md LICENSE; do
	[[ -f "$f" ]] && cp "$f" "$dir/"
done

# Dangling links in the tarball would mean a trigger or subcommand without a binary.
while IFS= read -r -d '' l; do
	[[ -e "$l" ]] || { echo "plugin-tarball: dangling link $l" >&2; exit 1; }
done < <(find "$dir" -type l -print0)

mkdir -p "$out"
# A constant mtime, not the commit's: the pin is committed after the build.
mtime=@${SOURCE_DATE_EPOCH:-946684800}
tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
	--mode=u+w,go-w -C "$stage" -cf - dokku-netshape | gzip -9 -n >"$out/$name.tar.gz.tmp"
mv -f "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "plugin-tarball: $out/$name.tar.gz"
