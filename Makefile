# ebb — build, run, test, benchmark and fuzz.
#
#   make build   bin/ebb plus the example binaries
#   make run     build, start `bin/ebb serve`, deploy every example, stay in the foreground
#   make test    what CI runs: gofmt check, go vet, go test (prepares what tests need)
#   make test-race  the packages with the most shared state, under the race detector (CI runs it too)
#   make bench   proxy-overhead and cold-start benchmarks (bench/*.sh), tables on stdout
#   make fuzz    every Fuzz target for FUZZTIME each
#   make clean   remove build outputs, local data and benchmark output

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO ?= go
# Where `make run` serves and keeps its state.
EBB_LISTEN ?= 127.0.0.1:8080
EBB_DATA ?= ./ebb-data
# Generous: the whole suite runs on 2 shared cores in CI.
TEST_TIMEOUT ?= 15m
TESTFLAGS ?=
FUZZTIME ?= 30s
# Where scripts/fetch-onnxruntime.sh installs ONNX Runtime. Tests get the
# absolute path, since they run in their package directories.
ORT_LIB := $(CURDIR)/.cache/onnxruntime/lib/libonnxruntime.so.1
# Where make fuzz looks for Fuzz targets (directories, searched recursively).
FUZZDIRS ?= cmd internal web

# Example binaries are shipped inside their bundles, so they are static
# (CGO_ENABLED=0) and built without local paths.
EXAMPLE_GOFLAGS := -trimpath -ldflags=-s\ -w

.PHONY: all build ebb examples run test test-race fmt-check vet onnxruntime bench bench-proxy bench-coldstart bench-zygote bench-async bench-onnx bench-sandbox fuzz clean

all: build

build: ebb examples

# Always invoke go build: its cache decides what is stale, make cannot.
ebb:
	$(GO) build -o bin/ebb ./cmd/ebb

examples:
	CGO_ENABLED=0 $(GO) build $(EXAMPLE_GOFLAGS) -tags lambda.norpc -o examples/hello-go/bootstrap ./examples/hello-go
	CGO_ENABLED=0 $(GO) build $(EXAMPLE_GOFLAGS) -o examples/hello-http/server ./examples/hello-http

run: build
	@$(MAKE) --no-print-directory onnxruntime || echo "make: could not fetch ONNX Runtime: onnx functions will answer Runtime.ONNXRuntimeMissing"
	EBB_LISTEN='$(EBB_LISTEN)' EBB_DATA='$(EBB_DATA)' ./scripts/run.sh

# The ONNX Runtime library is not in the repository; tests of the onnx runtime
# load it from ./.cache/onnxruntime/lib, where this script puts it.
onnxruntime:
	@if [[ -f scripts/fetch-onnxruntime.sh ]]; then bash scripts/fetch-onnxruntime.sh; \
	else echo "make: no scripts/fetch-onnxruntime.sh; onnx tests will use what is installed"; fi

fmt-check:
	@files=$$(gofmt -l $$(find . -name '*.go' -not -path './.cache/*' -not -path './ebb-data/*' -not -path './bench/out/*')); \
	if [[ -n "$$files" ]]; then echo "gofmt needed on:"; echo "$$files"; exit 1; fi

vet:
	$(GO) vet ./...

test: fmt-check build onnxruntime vet
	@if [[ -z "$${EBB_ONNXRUNTIME_LIB:-}" && -f '$(ORT_LIB)' ]]; then export EBB_ONNXRUNTIME_LIB='$(ORT_LIB)'; fi; \
	echo "$(GO) test -timeout $(TEST_TIMEOUT) $(TESTFLAGS) ./...   (EBB_ONNXRUNTIME_LIB=$${EBB_ONNXRUNTIME_LIB:-unset})"; \
	$(GO) test -timeout $(TEST_TIMEOUT) $(TESTFLAGS) ./...

# The packages whose goroutines share the most state (dispatcher, instances,
# process manager, job queue, usage meter, monitor, and the platform that
# ties them together), under the race detector; CI runs it after `make
# test`. -short trims the platform's ONNX conformance run (every backend
# case through ebb, already run in full by `make test`) to 60 cases: with
# it these packages take about 7 minutes on 2 busy cores, without it about
# 20.
RACE_PKGS ?= ./internal/dispatch ./internal/instance ./internal/process ./internal/queue ./internal/platform ./internal/usage ./internal/monitor

test-race: build onnxruntime
	@if [[ -z "$${EBB_ONNXRUNTIME_LIB:-}" && -f '$(ORT_LIB)' ]]; then export EBB_ONNXRUNTIME_LIB='$(ORT_LIB)'; fi; \
	echo "$(GO) test -race -short -timeout $(TEST_TIMEOUT) $(TESTFLAGS) $(RACE_PKGS)"; \
	$(GO) test -race -short -timeout $(TEST_TIMEOUT) $(TESTFLAGS) $(RACE_PKGS)

bench: bench-proxy bench-coldstart bench-zygote bench-async bench-onnx bench-sandbox

bench-proxy: build
	./bench/proxy.sh

bench-coldstart: build
	./bench/coldstart.sh

bench-zygote:
	bash bench/zygote.sh

bench-async:
	N=3000 bash bench/async.sh

# Cold starts as ratios against RIE, a direct start and a fresh interpreter,
# measured in the same run; ROUNDS, WARMUP, SANDBOX_COMPARE pass through.
bench-sandbox: build
	./bench/sandbox.sh

bench-onnx: onnxruntime
	EBB_ONNX_BENCH=1 $(GO) test -p 1 -run 'TestONNXBatchingThroughEbb|TestONNXColdStart|TestBenchmarkReport' -v -timeout 20m ./internal/platform ./internal/onnx

# scripts/fuzz.sh finds Fuzz targets in the test sources (a `func FuzzX(` at
# the start of a line in a _test.go file) rather than with `go test -list`,
# which links every package's test binary first, fuzzes each on its own (go
# test -fuzz takes one target per run), and repeats once a run that only hit
# Go 1.26's -fuzztime deadline race (golang/go#75804) with no input written.
fuzz:
	GO='$(GO)' FUZZTIME='$(FUZZTIME)' FUZZDIRS='$(FUZZDIRS)' bash scripts/fuzz.sh

clean:
	rm -rf bin bench/out examples/hello-go/bootstrap examples/hello-http/server
	rm -rf '$(EBB_DATA)'
