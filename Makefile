# Everything a new user needs on a fresh Debian machine, as root:
#   make demo   runs examples/quickstart
#   make test   runs the test suite (race detector on)
#   make test-cgroup2  runs the cgroup v2 lane: Linux 6.1, pure cgroup v2,
#               runc and crun, in a QEMU guest (.ci/cgroup2/run)
GO ?= go
TESTFLAGS ?= -race -count=1 -timeout 30m
# Modules of their own, so that runckit does not depend on what they use
# (go-containerregistry); `go test ./...` at the root does not enter them.
NESTED := image examples/harness
# The containerd shim (shim/) is a module of its own too, with containerd's
# dependencies; `make test` builds and vets it, its tests need containerd.
SHIM := shim

.PHONY: deps demo test test-cgroup2 vet bench-quick bench-shim

# Installs runc and busybox-static (and criu, for the checkpoint tests)
# when they are missing.
deps:
	@if ! command -v runc >/dev/null 2>&1 || [ ! -x /bin/busybox ] || ! command -v criu >/dev/null 2>&1; then \
		echo "installing runc, busybox-static and criu"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc busybox-static criu >/dev/null; \
	fi

demo: deps
	$(GO) run ./examples/quickstart

vet:
	$(GO) vet ./...
	@for m in $(NESTED); do (cd $$m && $(GO) vet ./...) || exit 1; done
	cd $(SHIM) && $(GO) build ./... && $(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# The bench's -quick smoke run keeps the benchmark program from rotting;
# it asserts nothing about speed.
test: deps vet
	$(GO) test $(TESTFLAGS) ./...
	@for m in $(NESTED); do echo "== $$m"; (cd $$m && $(GO) test $(TESTFLAGS) ./...) || exit 1; done
	$(GO) run ./bench -quick

# Installs qemu-system-x86, linux-image-amd64 and crun if missing, adds
# the 9p modules to that kernel's initramfs (once), builds the test binary
# and runs .ci/cgroup2/tests in the guest, against runc and then crun.
test-cgroup2: deps
	GO=$(GO) .ci/cgroup2/run

bench-quick: deps
	$(GO) run ./bench -quick

# The containerd shim bench (shim/bench): the stock runc shim and the runckit
# shim through containerd's Go client, with the raw runc floor, interleaved;
# writes shim/bench/results.json. Needs containerd v2.4.2 and its stock
# shim in /root/go/bin (CONTAINERD=... to point elsewhere). Takes minutes;
# BENCH_SHIM_FLAGS=-quick for a smoke run.
CONTAINERD ?= /root/go/bin/containerd
bench-shim: deps
	cd $(SHIM) && $(GO) run ./bench -containerd $(CONTAINERD) $(BENCH_SHIM_FLAGS)
