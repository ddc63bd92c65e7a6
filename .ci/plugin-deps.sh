#!/bin/sh
# Packages the Dokku plugin tests (test/plugin, test/release, cmd/dokku-netshape
# TestRoot*Install*) need: sudo and visudo, to run triggers as the dokku user
# through the sudoers file the install trigger writes; curl and wget, the two
# downloaders the install trigger fetches a release with (test/release serves
# it from loopback). Idempotent: installs only what is missing.
set -eu

missing=""
command -v sudo >/dev/null 2>&1 && command -v visudo >/dev/null 2>&1 || missing="$missing sudo"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v wget >/dev/null 2>&1 || missing="$missing wget"
if [ -z "$missing" ]; then
	echo "plugin-deps: sudo, visudo, curl and wget present"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "plugin-deps: must run as root to install$missing" >&2
	exit 1
fi
# Debian's sudo ships /etc/sudoers with `@includedir /etc/sudoers.d`, which
# the plugin relies on.
# shellcheck disable=SC2086
"$(dirname "$0")/apt.sh" install $missing ca-certificates # refreshes stale lists once if needed
