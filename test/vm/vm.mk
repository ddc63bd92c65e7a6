# VM test harness: Go tests inside qemu guests running Debian's 6.1 and 6.12 kernels (fq, TCX vs legacy tc).
# Included by the top-level Makefile; paths are relative to the repository root. See test/vm/README.md.
#
#   make vm-test                      every VM package (below) in every kernel, one boot per kernel
#   make vm-smoke                     only the harness's own smoke tests
#   make vm-test VM_KERNELS=6.12 VM_TEST_RUN='TestVMFq' VM_FLAGS=-v
#   make vm-test VM_PKGS=./pkg/shaper
#   make vm-shell VM_KERNELS=6.12     interactive bash in a guest (Ctrl-A x quits)
#   NETSHAPE_VM_ACCEL=kvm make vm-test   (where nested KVM works; default is TCG)
#
# VM packages: the smoke tests plus every package with a test file that calls RequireFq
# (test/nettest) or carries the `vm` build tag. Each is compiled with -tags vm and run from its own
# directory inside the guest, which sets NETSHAPE_VM=1 and NETSHAPE_REQUIRE_FQ=1.

VM_OUT        ?= test/vm/out
VM_KERNELS    ?= 6.1,6.12
VM_TIMEOUT    ?= 40m
VM_TEST_RUN   ?=
VM_FLAGS      ?=
# containernetworking/plugins release whose bandwidth plugin test/cni runs (k3s bundles its own build of it).
CNI_PLUGINS_VERSION ?= v1.9.1

VM_AUTO_PKGS  := $(patsubst %/,./%,$(dir $(shell grep -rlE --include='*_test.go' \
                   -e 'RequireFq' -e '^//go:build.*\bvm\b' pkg cmd test 2>/dev/null)))
# The smoke tests first: when they fail, the guest itself is broken and the rest says little.
# test/integration is included whatever its build tags.
VM_PKGS       ?= ./test/vm/smoke $(filter-out ./test/vm/smoke ./test/integration,$(sort $(VM_AUTO_PKGS))) \
                 $(if $(wildcard test/integration/*_test.go),./test/integration)

VM_ABS_OUT     = $(abspath $(VM_OUT))
VM_TEST_FLAGS  = -test.v -test.count=1 -test.timeout $(VM_TIMEOUT) $(if $(VM_TEST_RUN),-test.run '$(VM_TEST_RUN)')
# ./pkg/shaper/ -> pkg_shaper.test
vm_bin         = $(subst /,_,$(patsubst ./%,%,$(patsubst %/,%,$(1)))).test
VM_RUN         = $(VM_OUT)/vmrun -init $(VM_OUT)/init -out $(VM_OUT) -kernels $(VM_KERNELS) \
                 -timeout $(VM_TIMEOUT) -env NETSHAPE_LOADGEN=$(VM_ABS_OUT)/loadgen \
                 -env NETSHAPE_BIN=$(VM_ABS_OUT)/dokku-netshape \
                 -env NETSHAPE_CNI_BANDWIDTH=$(VM_ABS_OUT)/cni/bandwidth $(VM_FLAGS)
vm_cmd         = -cmd 'cd $(1) && $(VM_ABS_OUT)/bin/$(call vm_bin,$(1)) $(VM_TEST_FLAGS)'

.PHONY: vm-deps vm-kernels vm-tools vm-bins vm-smoke vm-test vm-bench vm-shell vm-clean

vm-deps:
	.ci/vm-deps.sh

vm-kernels:
	test/vm/fetch-kernels.sh

# go build is incremental, so rebuilding every time costs little and never runs a stale binary.
vm-tools:
	@mkdir -p $(VM_OUT)/bin
	CGO_ENABLED=0 go build -o $(VM_OUT)/init ./test/vm/guestinit
	CGO_ENABLED=0 go build -o $(VM_OUT)/loadgen ./test/tools/loadgen
	CGO_ENABLED=0 go build -o $(VM_OUT)/dokku-netshape ./cmd/dokku-netshape
	go build -o $(VM_OUT)/vmrun ./test/vm/vmrun
	@# The CNI bandwidth plugin k3s chains, for test/cni: built here on the host (the guest has no
	@# network), from the module proxy, never committed.
	CGO_ENABLED=0 GOBIN=$(VM_ABS_OUT)/cni go install github.com/containernetworking/plugins/plugins/meta/bandwidth@$(CNI_PLUGINS_VERSION)

vm-bins: vm-tools
	$(foreach p,$(VM_PKGS),go test -c -tags vm -o $(VM_OUT)/bin/$(call vm_bin,$(p)) $(p) &&) true

vm-smoke: vm-kernels vm-tools
	go test -c -tags vm -o $(VM_OUT)/bin/$(call vm_bin,./test/vm/smoke) ./test/vm/smoke
	$(VM_RUN) $(call vm_cmd,./test/vm/smoke)

vm-test: vm-kernels vm-bins
	$(VM_RUN) $(foreach p,$(VM_PKGS),$(call vm_cmd,$(p)))

# The VM benchmarks, one guest: the watcher's latencies (test/e2e TestVMBench*, only with
# NETSHAPE_BENCH=1: container start → shaped over VM_BENCH_STARTS starts, resource property write →
# in force) and the soak at bench size (test/faults TestVMSoakWatch: container restarts, stops and
# starts against a running watcher, then leak counts against a warm-up baseline). `make bench` runs
# it and test/bench turns summary.json into BENCH.md. One kernel by default (the CI test run already
# runs both tests on both kernels at a smaller count), and test/scale's thousand containers (the real
# CLI timed: apply --all, apply APP, report). Each part is bounded in time as well as count.
VM_BENCH_OUT            ?= test/vm/out-bench
VM_BENCH_KERNELS        ?= 6.12
VM_BENCH_EVENTS         ?= 1000
VM_BENCH_MINUTES        ?= 40
VM_BENCH_START_MINUTES  ?= 12
VM_BENCH_TIMEOUT        ?= 70m
VM_BENCH_SCALE_APPS     ?= 250

vm-bench: vm-kernels vm-tools
	@rm -f $(VM_BENCH_OUT)/summary.json
	go test -c -tags vm -o $(VM_OUT)/bin/$(call vm_bin,./test/faults) ./test/faults
	go test -c -tags vm -o $(VM_OUT)/bin/$(call vm_bin,./test/e2e) ./test/e2e
	go test -c -tags vm -o $(VM_OUT)/bin/$(call vm_bin,./test/scale) ./test/scale
	$(VM_OUT)/vmrun -init $(VM_OUT)/init -mem 4G -out $(VM_BENCH_OUT) -kernels $(VM_BENCH_KERNELS) -timeout $(VM_BENCH_TIMEOUT) \
		-env NETSHAPE_LOADGEN=$(VM_ABS_OUT)/loadgen -env NETSHAPE_BIN=$(VM_ABS_OUT)/dokku-netshape \
		-env NETSHAPE_BENCH=1 -env NETSHAPE_BENCH_MINUTES=$(VM_BENCH_START_MINUTES) \
		-env NETSHAPE_SOAK_EVENTS=$(VM_BENCH_EVENTS) -env NETSHAPE_SOAK_MINUTES=$(VM_BENCH_MINUTES) \
		-env NETSHAPE_SCALE_APPS=$(VM_BENCH_SCALE_APPS) $(VM_FLAGS) \
		-cmd 'cd ./test/e2e && $(VM_ABS_OUT)/bin/$(call vm_bin,./test/e2e) -test.v -test.count=1 -test.timeout $(VM_BENCH_TIMEOUT) -test.run TestVMBench' \
		-cmd 'cd ./test/faults && $(VM_ABS_OUT)/bin/$(call vm_bin,./test/faults) -test.v -test.count=1 -test.timeout $(VM_BENCH_TIMEOUT) -test.run TestVMSoakWatch' \
		-cmd 'cd ./test/scale && $(VM_ABS_OUT)/bin/$(call vm_bin,./test/scale) -test.v -test.count=1 -test.timeout $(VM_BENCH_TIMEOUT) -test.run TestVMBenchScale'

vm-shell: vm-kernels vm-tools
	$(VM_OUT)/vmrun -init $(VM_OUT)/init -out $(VM_OUT) -kernels $(VM_KERNELS) -timeout 1h \
		-env NETSHAPE_LOADGEN=$(VM_ABS_OUT)/loadgen -shell

vm-clean:
	rm -rf $(VM_OUT)

# The peer comparison (test/benchcompare, BENCHMARKS.md): one guest per kernel, one container whose
# two devices get each scheme in turn (dokku-netshape through its CLI, TBF as the CNI plugin gets it at
# runtime and with a sane burst, docker-tc's netem+tbf, HTB, Cilium-style EDT+fq, nothing), every cell
# measured at the receiver. BENCH_COMPARE_SET=full (default: 2 rates × 2 directions × 1/4/16 flows,
# 5 s cells, ~10 min per kernel under TCG) or ci (20 Mbit/s, 1 and 16 flows, 4 s cells, ~3 min);
# BENCH_COMPARE_CELL=6s changes the cell length. Each kernel is its own VM run (bench-compare-vm, run
# it per kernel to keep each under 15 minutes), then bench-compare-report writes BENCHMARKS.md, the
# plots (docs/bench/) and BENCHMARKS.json from each kernel's summary.json (a kernel without one is
# named, left out, and fails the target).
BENCH_COMPARE_SET      ?= full
BENCH_COMPARE_CELL     ?=
BENCH_COMPARE_KERNELS  ?= 6.12 6.1
BENCH_COMPARE_OUT      ?= test/vm/out-compare
BENCH_COMPARE_MINUTES  ?= 14
BENCH_COMPARE_TIMEOUT  ?= 20m

.PHONY: bench-compare bench-compare-vm bench-compare-report

# The report is written whatever the VM runs did (it says which kernel's checks failed); the target
# then fails if any did.
bench-compare:
	@rc=0; $(MAKE) bench-compare-vm || rc=$$?; $(MAKE) bench-compare-report || rc=1; exit $$rc

bench-compare-vm: vm-kernels vm-tools
	go test -c -tags vmbench -o $(VM_OUT)/bin/benchcompare.test ./test/benchcompare/guest
	@fail=0; for k in $(BENCH_COMPARE_KERNELS); do \
		rm -f $(BENCH_COMPARE_OUT)/$$k/summary.json; \
		$(VM_OUT)/vmrun -init $(VM_OUT)/init -out $(BENCH_COMPARE_OUT)/$$k -kernels $$k -timeout $(BENCH_COMPARE_TIMEOUT) \
			-env NETSHAPE_LOADGEN=$(VM_ABS_OUT)/loadgen -env NETSHAPE_BIN=$(VM_ABS_OUT)/dokku-netshape \
			-env NETSHAPE_COMPARE_SET=$(BENCH_COMPARE_SET) -env NETSHAPE_COMPARE_CELL=$(BENCH_COMPARE_CELL) \
			-env NETSHAPE_COMPARE_MINUTES=$(BENCH_COMPARE_MINUTES) $(VM_FLAGS) \
			-cmd 'cd ./test/benchcompare/guest && $(VM_ABS_OUT)/bin/benchcompare.test -test.v -test.count=1 -test.timeout $(BENCH_COMPARE_TIMEOUT) -test.run TestVMBenchCompare' \
			|| fail=1; \
	done; exit $$fail

bench-compare-report:
	go run ./test/benchcompare -md BENCHMARKS.md -json BENCHMARKS.json -plots docs/bench \
		-command "make bench-compare BENCH_COMPARE_SET=$(BENCH_COMPARE_SET)$(if $(BENCH_COMPARE_CELL), BENCH_COMPARE_CELL=$(BENCH_COMPARE_CELL))" \
		$(foreach k,$(BENCH_COMPARE_KERNELS),$(BENCH_COMPARE_OUT)/$(k)/summary.json)
