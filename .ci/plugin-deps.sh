#!/bin/sh
# Packages the Dokku plugin tests (test/plugin, cmd/dokku-netshape TestRoot*Install*)
# need: sudo and visudo, to run triggers as the dokku user through the sudoers
# file the install trigger writes. Idempotent: installs only what is missing.
set -eu

if command -v sudo >/dev/null 2>&1 && command -v visudo >/dev/null 2>&1; then
	echo "plugin-deps: sudo and visudo present"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "plugin-deps: must run as root to install sudo" >&2
	exit 1
fi
# Debian's sudo ships /etc/sudoers with `@includedir /etc/sudoers.d`, which
# the plugin relies on.
"$(dirname "$0")/apt.sh" install sudo # refreshes stale lists once if needed
