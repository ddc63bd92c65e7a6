# VM test harness: Go tests inside qemu guests running Debian's 6.1 and 6.12 kernels (fq, TCX vs legacy tc).
# Included by the top-level Makefile; paths are relative to the repository root. See test/vm/README.md.
#
#   make vm-test                      smoke + integration tests (test/integration, tag vm) in every kernel
#   make vm-smoke                     only the harness's own smoke tests
#   make vm-shell VM_KERNELS=6.12     interactive bash in a guest (Ctrl-A x quits)
#   make vm-test VM_KERNELS=6.12 VM_TEST_RUN='TestVMFq' VM_FLAGS=-v
#   NETSHAPE_VM_ACCEL=kvm make vm-test   (where nested KVM works; default is TCG)

VM_OUT        ?= test/vm/out
VM_KERNELS    ?= 6.1,6.12
VM_TIMEOUT    ?= 5m
VM_TEST_RUN   ?=
VM_FLAGS      ?=

VM_ABS_OUT     = $(abspath $(VM_OUT))
VM_TEST_FLAGS  = -test.v -test.count=1 $(if $(VM_TEST_RUN),-test.run '$(VM_TEST_RUN)')
VM_HAVE_INTEG  = $(wildcard test/integration/*.go)
VM_RUN         = $(VM_OUT)/vmrun -init $(VM_OUT)/init -out $(VM_OUT) -kernels $(VM_KERNELS) \
                 -timeout $(VM_TIMEOUT) -env NETSHAPE_LOADGEN=$(VM_ABS_OUT)/loadgen $(VM_FLAGS)
VM_CMD_SMOKE   = -cmd 'cd test/vm/smoke && $(VM_ABS_OUT)/smoke.test $(VM_TEST_FLAGS)'
VM_CMD_INTEG   = -cmd 'cd test/integration && $(VM_ABS_OUT)/integration.test $(VM_TEST_FLAGS)'

.PHONY: vm-deps vm-kernels vm-tools vm-smoke vm-test vm-shell vm-clean

vm-deps:
	.ci/vm-deps.sh

vm-kernels:
	test/vm/fetch-kernels.sh

# go build is incremental, so rebuilding every time costs little and never runs a stale binary.
vm-tools:
	@mkdir -p $(VM_OUT)
	CGO_ENABLED=0 go build -o $(VM_OUT)/init ./test/vm/guestinit
	CGO_ENABLED=0 go build -o $(VM_OUT)/loadgen ./test/tools/loadgen
	go build -o $(VM_OUT)/vmrun ./test/vm/vmrun
	go test -c -tags vm -o $(VM_OUT)/smoke.test ./test/vm/smoke/

vm-smoke: vm-kernels vm-tools
	$(VM_RUN) $(VM_CMD_SMOKE)

# One boot per kernel runs the smoke tests and then the integration tests (when the package exists).
vm-test: vm-kernels vm-tools
	$(if $(VM_HAVE_INTEG),go test -c -tags vm -o $(VM_OUT)/integration.test ./test/integration/)
	$(VM_RUN) $(VM_CMD_SMOKE) $(if $(VM_HAVE_INTEG),$(VM_CMD_INTEG))

# Interactive bash in the first kernel of VM_KERNELS (the host's userland, copy-on-write). Ctrl-A x quits.
vm-shell: vm-kernels vm-tools
	$(VM_OUT)/vmrun -init $(VM_OUT)/init -out $(VM_OUT) -kernels $(VM_KERNELS) -timeout 1h \
		-env NETSHAPE_LOADGEN=$(VM_ABS_OUT)/loadgen -shell

vm-clean:
	rm -rf $(VM_OUT)
