# make demo: a newcomer's first look, no Dokku needed. Boots a throw-away Debian 6.12 guest
# (test/vm), runs a container of a Dokku-labelled app in it, and prints a live line per second
# ("t=3s limit 20.0 Mbit/s measured 19.1 Mbit/s") while dokku-netshape sets 20mbit, changes it to
# 50mbit and clears it. Under two minutes. Included by the top-level Makefile; see demo/run.sh.
#
#   make demo                       (root; installs qemu, docker.io and the kernels if missing)
#   make demo DEMO_PHASE=10s        longer at each limit

DEMO_KERNEL ?= 6.12
DEMO_PHASE  ?= 7s

.PHONY: demo

# The guest runs the host's own dockerd (it is a copy-on-write clone of the host's root).
demo: vm-deps
	@command -v dockerd >/dev/null || .ci/apt.sh install docker.io
	DEMO_KERNEL=$(DEMO_KERNEL) DEMO_PHASE=$(DEMO_PHASE) DEMO_OUT=$(VM_OUT)/demo demo/run.sh
