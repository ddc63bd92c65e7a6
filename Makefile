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
	@# The comparison's guest harness builds only with its own tag (make bench-compare): keep it compiling.
	$(GO) vet -tags vmbench ./test/benchcompare/...
	$(GO) test $(TEST_FLAGS) ./...

# Benchmarks with targets (test/bench); results in BENCH.md. Needs root (BPF). Host benchmarks, then
# one VM guest (vm-bench, test/vm/vm.mk) with dockerd and a running watcher: container start → shaped and
# resource property write → in force (TestVMBench* in test/e2e), and the soak at 1,000 events (test/faults).
# A failed or missing VM run still writes BENCH.md, then fails. Then the peer comparison (bench-compare,
# test/vm/vm.mk): BENCHMARKS.md, BENCHMARKS.json and docs/bench/*.png; BENCH_COMPARE_SET=ci for the small matrix.
# test/scale's host run (BenchmarkScale): BENCH_SCALE_APPS apps of 4 containers.
BENCH_SCALE_APPS ?= 250
bench:
	NETSHAPE_SCALE_APPS=$(BENCH_SCALE_APPS) $(GO) test -run '^$$' -bench . -benchmem ./pkg/... ./test/scale > bench.out || (cat bench.out; exit 1)
	$(MAKE) vm-bench || echo "bench: a VM benchmark failed; see $(VM_BENCH_OUT)/console-*.log"
	$(MAKE) bench-compare || echo "bench: the peer comparison failed a check or a run; see BENCHMARKS.md and $(BENCH_COMPARE_OUT)/*/console-*.log"
	$(GO) run ./test/bench -out BENCH.md -vm $(VM_BENCH_OUT)/summary.json < bench.out
	@rm -f bench.out

lint:
	gofmt -l . | grep -v '_bpfel.go' | (! grep .)
	$(GO) vet ./...
	$(GO) vet -tags vmbench ./test/benchcompare/...

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
