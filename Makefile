# grmwrap build, test and demo. Every target installs what it needs (deps).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: e2e all deps deps-generate build examples generate generate-check verifier-report test test-unit lint fuzz bench demo clean

all: build

deps:
	@scripts/deps.sh

deps-generate:
	@GRMWRAP_DEPS_GENERATE=1 scripts/deps.sh

# Regenerate the BPF objects and their Go bindings with the pinned clang-14.
generate: deps-generate
	$(GO) generate ./bpf ./cmd/grmbench

# CI: the committed objects must equal a fresh generation.
generate-check: generate
	@git diff --exit-code -- bpf/ cmd/grmbench/ || { echo "bpf/, cmd/grmbench/: committed objects differ from a fresh 'make generate'"; exit 1; }

# Instructions the verifier processed and stack use of the steering program.
verifier-report: deps
	$(GO) run ./cmd/grmverifier

build: deps
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/grmwrap ./cmd/grmwrap
	$(GO) build -o bin/grmload ./cmd/grmload

# The bundled example server: the C echo server the tests use.
examples: deps
	@mkdir -p bin
	gcc -O2 -Wall -o bin/echo-server testdata/servers/echo.c

# The whole suite: unit tests and the privileged integration tests (root;
# each integration test runs in its own network, mount and PID namespace).
test: deps build
	$(GO) test -race -count=1 -timeout 30m ./...

# Unit tests only: no root needed.
test-unit: deps
	$(GO) test -race -count=1 -short ./...

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [[ -n "$$out" ]]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# A short run of every fuzz target.
# Budgets are counts, not durations: a duration races Go's fuzz coordinator
# (golang/go#75804, "context deadline exceeded" with no crasher on a loaded
# machine). About 15 s each on this machine kind.
fuzz: deps
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeSockaddr$$' -fuzztime=300000x ./notify
	$(GO) test -run='^$$' -fuzz='^FuzzParseListen$$' -fuzztime=300000x ./notify

# Benchmarks (root, about 4 minutes): writes docs/BENCHMARKS.md
# with every figure, the command and the machine, and prints it.
bench: deps build
	@mkdir -p bin
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/grmbench ./cmd/grmbench
	bin/grmbench -via 'make bench' -out docs/BENCHMARKS.md

# End to end: real servers from Debian packages under grmwrap, driven by real
# clients across upgrades (root; each test in its own namespaces).
e2e: deps build
	@scripts/e2e-deps.sh
	$(GO) test -tags e2e -count=1 -timeout 20m ./e2e/

demo: deps build examples
	@scripts/demo.sh

clean:
	rm -rf bin

# Packaging. `make static`: bin/grmwrap-static, statically linked (libseccomp
# and the C library included; netgo and osusergo keep glibc's NSS, which a
# static binary cannot load, out). `make deb`: the Debian package of that
# binary with the man page, bash completion, docs and the example unit
# (scripts/deb.sh), written to DEB_DIR. -s -w: no symbol table, no DWARF
# (Go's stack traces do not need them).
.PHONY: static deb
DEB_DIR ?= bin
STATIC_LDFLAGS = $(LDFLAGS) -s -w -linkmode external -extldflags "-static"

static: deps
	@mkdir -p bin
	CGO_ENABLED=1 $(GO) build -tags netgo,osusergo -ldflags '$(STATIC_LDFLAGS)' -o bin/grmwrap-static ./cmd/grmwrap
	@ldd bin/grmwrap-static 2>&1 | grep -q 'not a dynamic executable' || { echo "static: bin/grmwrap-static is dynamically linked:"; ldd bin/grmwrap-static; exit 1; }
	@if readelf -lW bin/grmwrap-static | grep -q INTERP; then echo "static: bin/grmwrap-static asks for a dynamic loader"; exit 1; fi
	@if command -v file >/dev/null; then file bin/grmwrap-static; fi
	@bin/grmwrap-static version | head -1

deb: static
	@scripts/deb.sh bin/grmwrap-static '$(DEB_DIR)'
