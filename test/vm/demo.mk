# make demo: a newcomer's first look, no Dokku needed. Boots a throw-away Debian 6.12 guest
# (test/vm), runs a container of a Dokku-labelled app in it, and prints a live line per second
# ("t=3s limit 20.0 Mbit/s measured 19.1 Mbit/s") while dokku-netshape sets 20mbit, changes it to
# 50mbit and clears it. Under two minutes. Included by the top-level Makefile; see demo/run.sh.
#
#   make demo                       (root; needs the VM kernels: make vm-deps vm-kernels)
#   make demo DEMO_PHASE=10s        longer at each limit

DEMO_KERNEL ?= 6.12
DEMO_PHASE  ?= 7s

.PHONY: demo

demo: vm-kernels
	DEMO_KERNEL=$(DEMO_KERNEL) DEMO_PHASE=$(DEMO_PHASE) DEMO_OUT=$(VM_OUT)/demo demo/run.sh
