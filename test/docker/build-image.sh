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
docker import --change 'CMD ["/app"]' "$tmp/app.tar" "$image" >/dev/null
echo "built $image"
