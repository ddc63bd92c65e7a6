#!/bin/sh
# Start a host dockerd for dokku-netshape's Docker tests, unless one already answers.
# Idempotent: running it again while the daemon is up does nothing.
#
# The daemon gets its own address ranges inside 10.0.0.0/8 and does not touch iptables
# or IP forwarding: tests only talk to containers on the same host, nothing is routed off it.
#
# Environment (all optional):
#   NETSHAPE_DOCKER_DATA   data-root            (default /var/lib/docker)
#   NETSHAPE_DOCKER_STATE  log + pidfile dir    (default /tmp/netshape-dockerd)
#   NETSHAPE_DOCKER_BIP    docker0 address      (default 10.213.0.1/24)
#   NETSHAPE_DOCKER_POOL   pool for user-defined networks (default 10.214.0.0/16, /24 each)
#   NETSHAPE_DOCKER_WAIT   seconds to wait for the socket (default 60)
set -eu

data=${NETSHAPE_DOCKER_DATA:-/var/lib/docker}
state=${NETSHAPE_DOCKER_STATE:-/tmp/netshape-dockerd}
bip=${NETSHAPE_DOCKER_BIP:-10.213.0.1/24}
pool=${NETSHAPE_DOCKER_POOL:-10.214.0.0/16}
wait_s=${NETSHAPE_DOCKER_WAIT:-60}
sock=/var/run/docker.sock

answers() {
	# `docker version` needs the server half to succeed; DOCKER_HOST is ignored on purpose,
	# this script manages the default socket only.
	DOCKER_HOST= docker -H "unix://$sock" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

if answers; then
	echo "docker-up: dockerd already answering on $sock"
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "docker-up: must run as root to start dockerd" >&2
	exit 1
fi
command -v dockerd >/dev/null || { echo "docker-up: dockerd not installed (apt-get install docker.io)" >&2; exit 1; }

mkdir -p "$state" "$data"

# A pidfile left by a dead daemon makes dockerd refuse to start.
if [ -f "$state/dockerd.pid" ]; then
	pid=$(cat "$state/dockerd.pid")
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		echo "docker-up: dockerd pid $pid exists but does not answer yet; waiting"
	else
		rm -f "$state/dockerd.pid"
		pid=
	fi
else
	pid=
fi

if [ -z "$pid" ]; then
	# setsid + nohup: the daemon must outlive the shell (and test process) that started it.
	setsid nohup dockerd \
		--host "unix://$sock" \
		--data-root "$data" \
		--pidfile "$state/dockerd.pid" \
		--bip "$bip" \
		--default-address-pool "base=$pool,size=24" \
		--iptables=false \
		--ip-forward=false \
		--ip-masq=false \
		--userland-proxy=false \
		>"$state/dockerd.log" 2>&1 </dev/null &
	echo "docker-up: started dockerd (log $state/dockerd.log)"
fi

i=0
while [ "$i" -lt "$((wait_s * 4))" ]; do
	if answers; then
		echo "docker-up: dockerd answering on $sock ($(docker -H "unix://$sock" version --format '{{.Server.Version}}'))"
		exit 0
	fi
	sleep 0.25
	i=$((i + 1))
done
echo "docker-up: dockerd did not answer within ${wait_s}s; last log lines:" >&2
tail -n 30 "$state/dockerd.log" >&2 || true
exit 1
