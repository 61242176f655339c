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

.PHONY: tools java lint-template stack-up stack-down test

tools: $(VENV)/.installed infra/node_modules/.package-lock.json java

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

lint-template: $(VENV)/.installed
	$(VENV)/bin/sam validate --lint -t template.yaml
	$(VENV)/bin/cfn-lint template.yaml

stack-up: tools
	$(PY) infra/stack.py up --state $(STATE)

stack-down: | $(VENV)/.installed
	$(PY) infra/stack.py down --state $(STATE)

# Everything CI checks. The emulator tests run against a stack of their own (STATE), which is
# stopped however the tests end; a stack that cannot start fails the run.
test: tools
	cargo build --workspace --all-targets --locked
	$(MAKE) --no-print-directory lint-template
	$(PY) infra/stack.py up --state $(STATE) >/dev/null
	trap '$(PY) infra/stack.py down --state $(STATE)' EXIT; \
	STACK_ENV=$(CURDIR)/$(STATE)/stack.env cargo test --workspace --locked
