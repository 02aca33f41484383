# One entry point for Eddy's dev tasks. The first two are the README's commands.
#   make demo   build, start a local cluster and run the demo job (Ctrl-C stops it)
#   make test   install what is missing, lint, build, and run every test

CARGO ?= cargo
PROFILE_FLAG ?= --release
BIN_DIR = $(or $(CARGO_TARGET_DIR),target)/release

.PHONY: demo test setup fmt lint build unit test-cluster bench bench-dataplane clean

demo: setup
	$(CARGO) build $(PROFILE_FLAG) --locked --bins
	$(BIN_DIR)/eddy local --demo

test: setup lint build
	$(CARGO) nextest run --workspace --locked --profile ci

setup:
	@scripts/setup.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	python3 scripts/check-deps.py

build:
	$(CARGO) build --workspace --all-targets --locked

unit: build
	$(CARGO) nextest run --workspace --locked -E 'not package(eddy-tests)'

test-cluster: build
	$(CARGO) nextest run --workspace --locked -E 'package(eddy-tests)'

# The Nexmark suite (docs/benchmarks.md): every query at parallelism 1 and 2.
bench: setup
	$(CARGO) build --release --locked --bins
	$(BIN_DIR)/eddy bench --out bench-results $(BENCH_ARGS)

# Data-plane micro-benchmark: datagen -> filter / window -> blackhole.
bench-dataplane: setup
	$(CARGO) build --release --locked --bins
	python3 scripts/bench.py

clean:
	$(CARGO) clean
