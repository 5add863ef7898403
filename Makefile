# The few commands a person types. Everything installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Builds the pinned control-plane binaries on first use (minutes), then answers from the cache.
TOOLS_BIN = $$(bash tools/build.sh)

.PHONY: help venv tools dev-up dev-down dev-env test unit e2e smoke-oldest chaos demo bench bench-kueue lint crds check-crds clean

help:
	@echo "make demo      run the local control plane and show it working"
	@echo "make test      run every test (unit and end-to-end)"
	@echo "make smoke-oldest  the tests marked oldest on the oldest supported Kubernetes (1.35)"
	@echo "make dev-up    start a local control plane and Postgres in the background"
	@echo "               (ARGS=--with-kueue: and Kueue, for Runs that name a queue)"
	@echo "make dev-env   their environment: eval \"\$$(make -s dev-env)\""
	@echo "make dev-down  stop them"
	@echo "make chaos     the crash test at twice its scale (300 Runs, 40 operator kills)"
	@echo "make bench     latency and throughput figures (bench/summary.md)"
	@echo "make bench-kueue  apply → step Pod Running with and without Kueue (bench/kueue.md)"
	@echo "make lint      ruff and mypy"
	@echo "make crds      regenerate crds/ from the API types, copy policies/ into the chart"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

tools:
	@bash tools/build.sh >/dev/null

dev-up: venv
	@NOFX_TOOLS_BIN=$(TOOLS_BIN) $(PY) -m nofx_dev up $(ARGS)

dev-down: venv
	@$(PY) -m nofx_dev down

# The environment of `make dev-up`, for eval "$$(make -s dev-env)": KUBECONFIG, NOFX_DATABASE_URL,
# the operator's ports, and kubectl and nofx on PATH.
dev-env: venv
	@$(PY) -m nofx_dev env

# Two workers, each with its own control plane and Postgres; a test module stays on one worker
# (its fixtures are shared within it). End-to-end tests mostly wait on the control plane, so two
# of them share 2 cores well: about 10 minutes instead of 16. TEST_WORKERS=0 runs them in turn.
TEST_WORKERS ?= 2
test: venv
	NOFX_TOOLS_BIN=$(TOOLS_BIN) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

unit: venv
	$(PY) -m pytest tests/unit

e2e: venv
	NOFX_TOOLS_BIN=$(TOOLS_BIN) $(PY) -m pytest tests/e2e

# The tests marked `oldest` (CRDs, the chart and its admission policies, a Run with the mirror)
# on a Kubernetes 1.35 control plane; `make test` runs them with the rest on 1.37. The build is a
# step of its own so that its failure stops here rather than leave the tests on the 1.37 tools.
smoke-oldest: venv
	bin=$$(bash tools/build.sh 1.35) && NOFX_TOOLS_BIN=$$bin $(PY) -m pytest -m oldest tests/e2e

# The crash test of `make test` at twice its scale: 300 Runs, 40 SIGKILLs, a Postgres outage.
chaos: venv
	NOFX_TOOLS_BIN=$(TOOLS_BIN) NOFX_CHAOS_RUNS=300 NOFX_CHAOS_KILLS=40 $(PY) -m pytest tests/e2e/test_crash.py

demo: venv
	@NOFX_TOOLS_BIN=$(TOOLS_BIN) $(PY) -m nofx_dev.demo $(ARGS)

# Not part of `make test`: timings are figures, never pass/fail. Writes bench/results.json,
# bench/summary.md and bench/latency.png.
bench: venv
	$(VENV)/bin/pip install --quiet -e '.[dev,bench]'
	NOFX_TOOLS_BIN=$(TOOLS_BIN) $(PY) bench/run.py

# What Kueue's admission adds to a step's start, at 5 Runs/s: bench/kueue.json, bench/kueue.md.
bench-kueue: venv
	NOFX_TOOLS_BIN=$(TOOLS_BIN) $(PY) bench/kueue.py

lint: venv
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy

crds: venv
	$(PY) -m nofx.api.crdgen --out crds
	$(PY) -m nofx.api.crdgen --out charts/nofx/crds
	$(PY) -m nofx.api.crdgen --out manifests/kustomize/base/crds
	find policies -name '*.yaml' ! -name kustomization.yaml -exec cp {} charts/nofx/files/policies/ \;

check-crds: venv
	$(PY) -m nofx.api.crdgen --check crds
	$(PY) -m nofx.api.crdgen --check charts/nofx/crds
	$(PY) -m nofx.api.crdgen --check manifests/kustomize/base/crds
	diff -r -x kustomization.yaml policies charts/nofx/files/policies

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
