#!/bin/sh
# apt with one retry on stale lists. A machine image can carry package lists that are weeks old:
# a package the suite needs then has no candidate, or its .deb is gone from the mirror. The lists
# are refreshed (apt-get update) once per run, only when a needed package shows that, and the
# failed step is tried once more.
#
# Sourced (". .ci/apt.sh") for the functions, or run: .ci/apt.sh install PKG...
# Tests put fake apt-get/apt-cache first on PATH (test/vm/apt_test.go).

# apt_candidate PKG: true when apt has an installable version of PKG ("Candidate: (none)" or no
# policy at all, as for a name the lists do not know, means it has none).
apt_candidate() {
	c=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n1)
	[ -n "$c" ] && [ "$c" != "(none)" ]
}

# apt_refresh WHY: apt-get update, at most once per run (the variable is inherited by child scripts).
apt_refresh() {
	if [ -n "${NETSHAPE_APT_REFRESHED:-}" ]; then
		return 1
	fi
	echo "apt: refreshing the package lists: $1" >&2
	NETSHAPE_APT_REFRESHED=1
	export NETSHAPE_APT_REFRESHED
	apt-get update -q
}

# apt_stale LOG: the output of a failed apt-get says the lists do not know a package or lost a file.
apt_stale() {
	grep -qE 'Unable to locate package|[Nn]o (installation candidate|package)|has no installation candidate|404 +Not Found|Failed to fetch' "$1"
}

# apt_run LOG CMD...: run CMD with its output shown and kept in LOG; return its exit code.
apt_run() {
	log=$1
	shift
	st=$log.status
	# A pipeline's status is tee's: the command's own goes through a file
	# (an and-or list, so that set -e does not end the group first).
	{
		"$@" && s=0 || s=$?
		echo "$s" >"$st"
	} 2>&1 | tee "$log"
	return "$(cat "$st")"
}

# apt_retry CMD...: run an apt-get command; when it fails on stale lists, refresh them and run it once more.
apt_retry() {
	log=$(mktemp)
	if apt_run "$log" "$@"; then
		rm -f "$log" "$log.status"
		return 0
	fi
	if apt_stale "$log" && apt_refresh "'$*' failed on a package the lists do not have"; then
		rm -f "$log" "$log.status"
		"$@"
		return
	fi
	rm -f "$log" "$log.status"
	return 1
}

# apt_install PKG...: install, refreshing the lists first when any package has no candidate.
apt_install() {
	for p in "$@"; do
		if ! apt_candidate "$p"; then
			apt_refresh "no candidate for $p" || true
			break
		fi
	done
	DEBIAN_FRONTEND=noninteractive
	export DEBIAN_FRONTEND
	apt_retry apt-get install -y -q --no-install-recommends "$@"
}

# apt_download PKG: download PKG's .deb into the current directory (same retry).
apt_download() {
	if ! apt_candidate "$1"; then
		apt_refresh "no candidate for $1" || true
	fi
	apt_retry apt-get download -q "$1"
}

if [ "${0##*/}" = apt.sh ] && [ $# -gt 0 ]; then
	set -eu
	cmd=$1
	shift
	case $cmd in
	install) apt_install "$@" ;;
	download) apt_download "$@" ;;
	*)
		echo "usage: $0 install|download PKG..." >&2
		exit 2
		;;
	esac
fi
