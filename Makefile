# Everything a new user needs on a fresh Debian machine, as root:
#   make demo   runs examples/quickstart
#   make test   runs the test suite (race detector on)
#   make test-shim  runs the containerd shim's tests (shim/) against a
#               containerd v2.4.2 and crictl they start themselves
#   make test-cgroup2  runs the cgroup v2 lane: Linux 6.1, pure cgroup v2,
#               runc and crun, in a QEMU guest (.ci/cgroup2/run)
#   make conformance   runs containerd's integration/client suite against
#               a shim (default: shim/'s runckit shim), offline (conformance/)
GO ?= go
TESTFLAGS ?= -race -count=1 -timeout 30m
# Modules of their own, so that runckit does not depend on what they use
# (go-containerregistry); `go test ./...` at the root does not enter them.
NESTED := image examples/harness conformance
# The containerd shim (shim/) is a module of its own too, with containerd's
# dependencies; `make test` builds, vets and tests it (test-shim), its tests
# start a containerd and run crictl, installed by shim-deps when missing.
SHIM_DIR := shim
CONTAINERD_VERSION ?= v2.4.2
CRICTL_VERSION ?= v1.37.0
GOBIN_DIR = $(shell $(GO) env GOPATH)/bin
# The harness bench (runckittest against testcontainers-go and a Docker
# daemon) is a module of its own too; CI only vets it, since its one test
# needs dockerd (bench/harness/run.sh runs it).
HARNESS_BENCH := bench/harness

.PHONY: deps shim-deps demo test test-shim test-cgroup2 vet bench-quick bench-shim conformance

# Installs runc and busybox-static (and criu, for the checkpoint tests)
# when they are missing.
deps:
	@if ! command -v runc >/dev/null 2>&1 || [ ! -x /bin/busybox ] || ! command -v criu >/dev/null 2>&1; then \
		echo "installing runc, busybox-static and criu"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc busybox-static criu >/dev/null; \
	fi

# containerd (the daemon the shim tests start; btrfs left out, it needs
# cgo headers) and crictl (the CRI test), with go install when missing.
shim-deps: deps
	@if ! command -v containerd >/dev/null 2>&1 && [ ! -x "$(GOBIN_DIR)/containerd" ]; then \
		echo "installing containerd $(CONTAINERD_VERSION)"; \
		GOFLAGS=-tags=no_btrfs $(GO) install github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION); \
	fi
	@if ! command -v crictl >/dev/null 2>&1 && [ ! -x "$(GOBIN_DIR)/crictl" ]; then \
		echo "installing crictl $(CRICTL_VERSION)"; \
		$(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION); \
	fi

demo: deps
	$(GO) run ./examples/quickstart

vet:
	$(GO) vet ./...
	@for m in $(NESTED); do (cd $$m && $(GO) vet ./...) || exit 1; done
	cd $(SHIM_DIR) && $(GO) build ./... && $(GO) vet ./...
	cd $(HARNESS_BENCH) && $(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# The bench's -quick smoke run keeps the benchmark program from rotting;
# it asserts nothing about speed.
test: deps vet
	$(GO) test $(TESTFLAGS) ./...
	@for m in $(NESTED); do echo "== $$m"; (cd $$m && $(GO) test $(TESTFLAGS) ./...) || exit 1; done
	$(MAKE) test-shim
	$(GO) run ./bench -quick

# The shim's tests: each starts a containerd of its own (temp dir config,
# root, state and socket) with the shim it builds on containerd's PATH.
# No -race: the code under test is the shim binary the tests build and
# containerd runs, not the test process, and a race build of containerd's
# client costs minutes.
SHIM_TESTFLAGS ?= -count=1 -timeout 15m
test-shim: shim-deps
	cd $(SHIM_DIR) && $(GO) test $(SHIM_TESTFLAGS) ./...

# Installs qemu-system-x86, linux-image-amd64 and crun if missing, adds
# the 9p modules to that kernel's initramfs (once), builds the test binary
# and runs .ci/cgroup2/tests in the guest, against runc and then crun.
test-cgroup2: deps
	GO=$(GO) .ci/cgroup2/run

bench-quick: deps
	$(GO) run ./bench -quick

# containerd's own integration/client suite, offline, against any shim and
# any containerd version (conformance/main.go lists every setting):
#   make conformance                                  the runckit shim from shim/
#   make conformance TEST_RUNTIME=io.containerd.runc.v2   containerd's runc shim
#   make conformance SHIM=/path/containerd-shim-foo-v1    any other shim
#   CTRD_VERSION=v2.4.2 (default), EXPECT_FILE=..., TEST_RUN=regexp
# Prints CONFORMANCE: pass=N fail=N skip=N; results in $(CONFORMANCE_DIR).
CONFORMANCE_DIR ?= /tmp/runckit-conformance
export CONFORMANCE_DIR
conformance: deps
	cd conformance && $(GO) build -o $(CONFORMANCE_DIR)/bin/conformance .
	@if [ -z "$(SHIM)$(TEST_RUNTIME)" ]; then \
		echo "building containerd-shim-runckit-v1 from shim/"; \
		cd $(SHIM_DIR) && CGO_ENABLED=0 $(GO) build -o $(CONFORMANCE_DIR)/runckit-shim/containerd-shim-runckit-v1 ./cmd/containerd-shim-runckit-v1; \
	fi
	SHIM="$(if $(SHIM)$(TEST_RUNTIME),$(SHIM),$(CONFORMANCE_DIR)/runckit-shim/containerd-shim-runckit-v1)" $(CONFORMANCE_DIR)/bin/conformance

# The containerd shim bench (shim/bench): the stock runc shim and the runckit
# shim through containerd's Go client, with the raw runc floor, interleaved;
# writes shim/bench/results.json. Needs containerd v2.4.2 and its stock
# shim in /root/go/bin (CONTAINERD=... to point elsewhere). Takes minutes;
# BENCH_SHIM_FLAGS=-quick for a smoke run.
CONTAINERD ?= /root/go/bin/containerd
bench-shim: deps shim-deps
	cd $(SHIM_DIR) && $(GO) run ./bench -containerd $(CONTAINERD) $(BENCH_SHIM_FLAGS)
