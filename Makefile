# dokku-netshape. `make test` is the whole suite (run it as root: BPF, netns, dockerd, VMs).
GO        ?= go
BIN       ?= bin/dokku-netshape
TEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: all build generate test test-deps test-host bench lint clean plugin-tarball release

all: build

build:
	$(GO) build -o $(BIN) ./cmd/dokku-netshape

# Regenerate the BPF object and its Go bindings (committed; needs clang).
generate:
	@command -v clang >/dev/null || (apt-get update && apt-get install -y clang llvm libbpf-dev)
	$(GO) generate ./...

# Host tests (root, this kernel: BPF test runs, attach paths, dockerd), then
# the same packages' fq tests and the rate measurements inside Debian 6.1 and
# 6.12 guests.
test: test-deps test-host vm-test

# Idempotent and quick when done: dockerd for the Docker tests, qemu + kernels for the VM tests.
test-deps:
	.ci/plugin-deps.sh
	.ci/vm-deps.sh
	.ci/docker-up.sh

test-host:
	$(GO) vet ./...
	$(GO) test $(TEST_FLAGS) ./...

# Benchmarks with targets (test/bench); results in BENCH.md. Needs root (BPF).
# Host benchmarks, then the watcher's latencies in a VM guest (TestVMBench* in
# test/e2e, run only with NETSHAPE_BENCH=1): container start → shaped, and
# resource property write → in force.
BENCH_VM_KERNELS ?= 6.12
BENCH_VM_OUT     ?= test/vm/out-bench
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/... > bench.out || (cat bench.out; exit 1)
	NETSHAPE_BENCH=1 $(MAKE) vm-test VM_KERNELS=$(BENCH_VM_KERNELS) VM_PKGS=./test/e2e VM_OUT=$(BENCH_VM_OUT) \
		VM_TIMEOUT=90m VM_TEST_FLAGS='-test.v -test.count=1 -test.timeout=85m -test.run=TestVMBench' \
		|| echo "bench: a VM benchmark failed (above); BENCH.md marks what is missing" 
	$(GO) run ./test/bench -out BENCH.md -vm $(BENCH_VM_OUT)/summary.json < bench.out
	@rm -f bench.out

lint:
	gofmt -l . | grep -v '_bpfel.go' | (! grep .)
	$(GO) vet ./...

# A release tarball with the binary, for Dokku servers without Go.
plugin-tarball:
	scripts/plugin-tarball.sh

# The release tarballs (linux/amd64, linux/arm64), reproducibly, their
# SHA256SUMS, and the pin the install trigger checks downloads against
# (release/SHA256SUMS). Flow: release/README.md.
release:
	GO=$(GO) scripts/release.sh

clean:
	rm -rf bin dist

include test/vm/vm.mk
include test/vm/demo.mk
