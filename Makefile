# dokku-netshape. `make test` is the whole suite (run it as root: BPF, netns, dockerd, VMs).
GO        ?= go
BIN       ?= bin/dokku-netshape
TEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: all build generate test test-host bench demo lint clean

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
test: test-host vm-test

test-host:
	$(GO) vet ./...
	$(GO) test $(TEST_FLAGS) ./...

bench:
	$(GO) run ./test/bench -out BENCH.md

lint:
	gofmt -l . | grep -v '_bpfel.go' | (! grep .)
	$(GO) vet ./...

clean:
	rm -rf bin

include test/vm/vm.mk
