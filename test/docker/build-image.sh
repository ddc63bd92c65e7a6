#!/bin/sh
# Build netshape's test image: the static binary from test/docker/app as /app, nothing else,
# imported with `docker import` (no registry, no Dockerfile base image needed).
# Usage: test/docker/build-image.sh [IMAGE]   (default netshape-test-app:latest)
set -eu
image=${1:-netshape-test-app:latest}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/root"
(cd "$here/app" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$tmp/root/app" .)
tar -C "$tmp/root" -cf "$tmp/app.tar" app
# Same labels as dockertest.EnsureImage, which then reuses this image instead of re-importing.
old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
sum=$(sha256sum "$tmp/root/app" | cut -d' ' -f1)
docker import --change 'CMD ["/app"]' --change "LABEL netshape.app-sha256=$sum netshape.test=1" \
	"$tmp/app.tar" "$image" >/dev/null
# The replaced image, unless a container still uses it.
[ -n "$old" ] && docker rmi "$old" >/dev/null 2>&1 || true
echo "built $image"
