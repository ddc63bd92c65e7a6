# dokku-netshape. `make test` is the whole suite (run it as root: BPF, netns, dockerd, VMs).
GO        ?= go
BIN       ?= bin/dokku-netshape
TEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: all build generate test test-deps test-host bench lint clean plugin-tarball

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

# Benchmarks with targets (test/bench); results in BENCH.md. Needs root (BPF). The soak runs in
# a VM (vm-bench, test/vm/vm.mk); a failed or missing soak still writes BENCH.md, then fails.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/... > bench.out || (cat bench.out; exit 1)
	$(MAKE) vm-bench || echo "bench: the VM soak failed; see $(VM_BENCH_OUT)/console-*.log"
	$(GO) run ./test/bench -out BENCH.md -vm $(VM_BENCH_OUT)/summary.json < bench.out
	@rm -f bench.out

lint:
	gofmt -l . | grep -v '_bpfel.go' | (! grep .)
	$(GO) vet ./...

# A release tarball with the binary, for Dokku servers without Go.
plugin-tarball:
	scripts/plugin-tarball.sh

clean:
	rm -rf bin dist

include test/vm/vm.mk
include test/vm/demo.mk
