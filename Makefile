# Local tooling and the local AWS stack. `make tools` installs what is missing;
# everything it installs lives in ignored folders (.tools/, infra/node_modules/).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .tools/venv
PY := $(VENV)/bin/python
STATE ?= .local/test
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# The template checks resolve region-specific resource specs; no credentials needed.
export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0

.PHONY: tools java browser lint-template stack-up stack-down test demo build deploy

tools: $(VENV)/.installed infra/node_modules/.package-lock.json java browser

# Rebuilt whenever infra/requirements.txt is newer than the last install.
$(VENV)/.installed: infra/requirements.txt
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r infra/requirements.txt
	touch $@

# npm ci writes node_modules/.package-lock.json; reinstall when the lock changes.
infra/node_modules/.package-lock.json: infra/package-lock.json infra/package.json
	command -v node >/dev/null || { echo "node (>= 20) is required" >&2; exit 1; }
	npm ci --prefix infra --no-audit --no-fund
	touch $@

# DynamoDB Local is a Java program (Java 17 or newer).
java:
	@command -v java >/dev/null || { \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends default-jre-headless; }

# The sale page's browser test drives Debian's headless Chromium (and installs its
# WebDriver, chromium-driver, for tools that want one). Fails loudly if apt cannot.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; }

lint-template: $(VENV)/.installed
	$(VENV)/bin/sam validate --lint -t template.yaml
	$(VENV)/bin/cfn-lint template.yaml

stack-up: tools
	$(PY) infra/stack.py up --state $(STATE)

stack-down: | $(VENV)/.installed
	$(PY) infra/stack.py down --state $(STATE)

# Everything CI checks. The emulator tests run against a stack of their own (STATE), which is
# stopped however the tests end; a stack that cannot start fails the run.
# TEST_BUILD_FUNCTIONS: which functions `make test` builds with `make build` (each release
# build of a further function adds 2-3 minutes; empty builds them all).
TEST_BUILD_FUNCTIONS ?= PlaceOrderFunction
# Test threads get 16 MiB of stack: a debug build polls a whole handler's future through many
# frames, more than the harness's 2 MiB leaves room for on some runs.
TEST_STACK_BYTES := 16777216
test: tools
	cargo build --workspace --all-targets --locked
	$(MAKE) --no-print-directory lint-template
	$(MAKE) --no-print-directory build FUNCTIONS="$(TEST_BUILD_FUNCTIONS)"
	$(PY) infra/stack.py up --state $(STATE) >/dev/null
	trap '$(PY) infra/stack.py down --state $(STATE)' EXIT; \
	STACK_ENV=$(CURDIR)/$(STATE)/stack.env RUST_MIN_STACK=$(TEST_STACK_BYTES) cargo test --workspace --locked; \
	$(PY) infra/lambda-runtime-check.py $(STATE)/stack.env; \
	$(PY) infra/api-check.py --state $(STATE) --gateway-bin target/debug/local-gateway
	$(PY) infra/test_template_check.py
	$(PY) infra/template-check.py template.yaml

# The deploy path. `sam build --beta-features` (Rust through cargo-lambda is a beta builder)
# compiles each function for arm64 / provided.al2023 into .aws-sam/build; cargo-lambda and the
# Zig it cross-compiles with live in the venv, which sam only finds on PATH. Then every
# artifact is checked (an aarch64 ELF `bootstrap`, zipped under 5 MB) and the built template
# linted. FUNCTIONS=PlaceOrderFunction builds only the logical ids named (default: all).
SAM := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/sam
FUNCTIONS ?=
build: $(VENV)/.installed
	$(SAM) build --beta-features $(FUNCTIONS)
	$(PY) infra/artifact-check.py .aws-sam/build $(FUNCTIONS)
	$(SAM) validate --lint -t .aws-sam/build/template.yaml

# `sam deploy --guided` the first time (it asks for the stack name, region, JwtIssuer,
# JwtAudience and the optional AlarmTopicArn, and saves the answers in samconfig.toml); with
# samconfig.toml present, `sam deploy` with the saved answers.
deploy: build
	if [ -f samconfig.toml ]; then $(SAM) deploy; else $(SAM) deploy --guided; fi

# The local stack in the background, in a state directory of its own (the tests use STATE).
UP_STATE := .local
PORT ?= 3000
# The local stack and the demo are what people time, so they run optimised builds (the
# `local` profile: release without LTO); the first build takes a few minutes.
LOCAL_BUILD := cargo build --profile local -p local-gateway -p flash-demo
GATEWAY := target/local/local-gateway

.PHONY: up down token flashctl

# The operator's command line: target/debug/flashctl (README, "Operating a sale"). `make test`
# builds it too, with the rest of the workspace.
flashctl:
	cargo build --locked -p flashctl

# DynamoDB Local, fauxqs, the tables and queues of template.yaml, and the local gateway (API
# Gateway with its JWT authorizer, and the SQS event source) on 127.0.0.1:$(PORT). Writes
# $(UP_STATE)/stack.env; the last line printed is API_URL=... REDRIVE_DELAY_SECONDS=N sets
# place-order's re-drive delay (template.yaml's 900 s otherwise). With CAPACITY_SCALE=F the
# functions reach DynamoDB through the capacity model (1,000 WU/s x F per item and per
# partition key, transaction conflicts), so a local sale throttles as on DynamoDB; off by default.
up: tools
	$(LOCAL_BUILD)
	$(if $(REDRIVE_DELAY_SECONDS),REDRIVE_DELAY_SECONDS='$(REDRIVE_DELAY_SECONDS)') \
	  $(PY) infra/stack.py up --state $(UP_STATE) --gateway-port $(PORT) --gateway-bin $(GATEWAY) \
	  $(if $(CAPACITY_SCALE),--capacity-scale $(CAPACITY_SCALE))

# Stops what `make up` started, by the pids it recorded, and says what it stopped.
down: | $(VENV)/.installed
	$(PY) infra/stack.py down --state $(UP_STATE)

# Prints a bearer token the running stack accepts: make token SUB=alice [ADMIN=1]
token:
	@[ -n "$(SUB)" ] || { echo "usage: make token SUB=<user> [ADMIN=1]" >&2; exit 2; }
	@$(LOCAL_BUILD) -q
	@$(GATEWAY) token --state $(UP_STATE) --sub '$(SUB)' $(if $(filter 1 true yes,$(ADMIN)),--admin)

# A flash sale on the local stack: starts it, runs the sale through the HTTP API, prints the
# report, stops the stack (KEEP=1 leaves it running). Exits non-zero if an invariant fails.
STOCK ?= 1000
BUYERS ?= 10000
CONCURRENCY ?= 64
demo: up
	@echo "live sale page: http://127.0.0.1:$(PORT)/_local/sale (local only; the product created last)"
	status=0; ./target/local/flash-demo --state $(UP_STATE) --stock $(STOCK) --buyers $(BUYERS) \
	  --concurrency $(CONCURRENCY) || status=$$?; \
	$(if $(filter 1 true yes,$(KEEP)),,$(PY) infra/stack.py down --state $(UP_STATE);) exit $$status

# Fuzzing (cargo-fuzz, libFuzzer) of the request and message parsers: each target runs for
# FUZZ_SECONDS, then a line per target says how long it ran, how many inputs it tried and
# whether it crashed; any crash fails the run (its input is saved under fuzz/artifacts/).
# cargo-fuzz's instrumentation flags are nightly-only; RUSTC_BOOTSTRAP lets the stable
# compiler accept them. The corpus grows in fuzz/corpus/ (ignored), seeded from fuzz/seeds/
# and, for whole events, from events/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= request_body lambda_event order_message
CARGO_FUZZ := .tools/bin/cargo-fuzz
FUZZ := RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) fuzz
FUZZ_LOGS := fuzz/artifacts/logs

.PHONY: fuzz

$(CARGO_FUZZ):
	cargo install --root .tools cargo-fuzz --locked

fuzz: $(CARGO_FUZZ)
	$(FUZZ) build
	mkdir -p $(FUZZ_LOGS)
	status=0; summary=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  seeds=fuzz/seeds/$$t; [ $$t = lambda_event ] && seeds=events; \
	  start=$$(date +%s); rc=0; \
	  $(FUZZ) run $$t fuzz/corpus/$$t $$seeds -- -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=10 -dict=fuzz/json.dict -print_final_stats=1 2>&1 | tee $(FUZZ_LOGS)/$$t.log \
	    || rc=$$?; \
	  secs=$$(( $$(date +%s) - start )); \
	  execs=$$(grep -o 'stat::number_of_executed_units: [0-9]*' $(FUZZ_LOGS)/$$t.log | grep -o '[0-9]*$$' || echo '?'); \
	  result=$$([ $$rc = 0 ] && echo "0 crashes" || echo "FAILED (exit $$rc): $(FUZZ_LOGS)/$$t.log, input in fuzz/artifacts/$$t/"); \
	  summary="$$summary$$t: $$secs s, $$execs execs, $$result"$$'\n'; \
	  [ $$rc = 0 ] || status=1; \
	done; \
	printf '\nfuzz summary (FUZZ_SECONDS=$(FUZZ_SECONDS)):\n%s' "$$summary"; exit $$status

# The benchmark: one flash sale (BUYERS buyers for STOCK units of one product, CONCURRENCY at
# a time) through version_lock, lease_lock, per_order and our pipeline, then the same buyers
# and units as a catalog (a hot SKU and a Zipf-picked tail) through per_order and the
# pipeline, each run on fresh SKUs under its own instance of the capacity model at the same
# scale (SCALE overrides the bench's default), every rehearsal before every measured run
# (MEASURE_ORDER=pipeline,per_order,... chooses the measured order), against emulators of
# its own (BENCH_STATE), stopped however the run ends; then each function's cold start from
# x86_64 release builds (the deployed target is arm64). Prints the tables, the cost per order
# on AWS and the AWS projection, and writes .local/reports/bench.json. The first release
# build takes several minutes.
BENCH_STATE := .local/bench
BENCH_LAMBDA_DIR := target/lambda-bench
BENCH_FUNCTIONS := place-order process-orders get-order advance-order products expire-orders reconcile
bench: BUYERS = 20000
bench: STOCK = 2000

.PHONY: bench

bench: tools
	cargo build --locked --profile local -p flash-bench
	$(VENV)/bin/cargo-lambda lambda build --release --x86-64 --compiler cargo \
	  --lambda-dir $(BENCH_LAMBDA_DIR) $(addprefix -p ,$(BENCH_FUNCTIONS))
	$(PY) infra/stack.py up --state $(BENCH_STATE) >/dev/null
	trap '$(PY) infra/stack.py down --state $(BENCH_STATE)' EXIT; \
	status=0; ./target/local/flash-bench --state $(BENCH_STATE) --buyers $(BUYERS) \
	  --stock $(STOCK) --concurrency $(CONCURRENCY) $(if $(SCALE),--scale $(SCALE)) \
	  $(if $(MEASURE_ORDER),--measure-order $(MEASURE_ORDER)) || status=$$?; \
	./target/local/flash-bench --cold-start --lambda-dir $(BENCH_LAMBDA_DIR) || status=$$?; \
	exit $$status
