# Two commands are all the set-up there is: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= .render
DEMO_MODEL := $(DATA_DIR)/models/demo
HOST ?= 127.0.0.1
PORT ?= 8080
WORKER_PORT ?= 8001
# Re-install whenever the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py src/render_gateway/audit/_batch_sha256.c | sha256sum | cut -c1-16)

# Real Triton for the tests (issue 13): PyTriton 0.7.0 bundles tritonserver 2.51 and wants
# numpy<2, so it lives in its own venv; tests/support/triton_server.py starts it.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-pytriton-0.7.0

.PHONY: install system-deps triton-env run worker cluster demo-model test test-fast lint format bench openapi screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py src/render_gateway/audit/_batch_sha256.c
	@test -x $(PY) || python3 -m venv $(VENV)
	@# OpenSSL's headers for the one C extension (setup.py); Python's hashlib links the library.
	@test -f /usr/include/openssl/evp.h || { \
		echo "installing Debian's libssl-dev (headers for render_gateway.audit._batch_sha256)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev; }
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: pip takes the CPU build from this machine's disk; a looser
	# requirement would let pip pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[worker,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

$(DEMO_MODEL)/model_index.json: | $(STAMP)
	$(VENV)/bin/render-gateway models make-demo $(DEMO_MODEL)

demo-model: $(DEMO_MODEL)/model_index.json

# The gateway on the embedded default; with no backend configured it starts a local reference
# worker on the demo model itself. On first start it prints an admin API key, once.
run: install demo-model
	$(VENV)/bin/render-gateway serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

# The reference worker alone, on the demo model.
worker: install demo-model
	$(VENV)/bin/render-gateway worker --host $(HOST) --port $(WORKER_PORT) \
		--data-dir $(DATA_DIR)/worker --model demo=$(DEMO_MODEL)

# Three gateway replicas on one local redis-server (never 6379) with two workers, all on
# 127.0.0.1 under $(DATA_DIR)/cluster (reused on the next run); Ctrl-C stops them in order.
# Flags through ARGS, e.g. make cluster ARGS="--replicas 2 --workers 1".
cluster: install demo-model system-deps
	$(PY) scripts/cluster.py --data-dir $(DATA_DIR)/cluster --model $(DEMO_MODEL) $(ARGS)

# Debian packages the tests start as real servers (redis-server on free ports, never 6379),
# and the headless browser the console and /docs tests drive (chromium through chromedriver).
system-deps:
	@command -v redis-server >/dev/null || { \
		echo "installing Debian's redis-server (the tests start their own on free ports)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { \
		echo "installing Debian's chromium and chromium-driver (the browser tests run it headless)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

$(TRITON_STAMP):
	@test -x $(TRITON_VENV)/bin/python || python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2"
	@touch $(TRITON_STAMP)

triton-env: $(TRITON_STAMP)

test: install system-deps triton-env
	$(PY) -m pytest -q

# Unit, contract and in-process application tests: no worker or gateway process is started.
test-fast: install system-deps
	$(PY) -m pytest -q -m "not processes"

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install system-deps
	$(PY) bench/run_all.py
	@echo "bench/gpu_smoke.py is a check for a CUDA machine (python bench/gpu_smoke.py MODEL_DIR)"

# The console's pictures in docs/console/ (README links them), taken by its browser test
# against a live gateway and worker.
screenshots: install system-deps
	RENDER_CONSOLE_SCREENSHOTS=docs/console $(PY) -m pytest -q tests/console/test_console_e2e.py

# Regenerate docs/openapi.json from the app (a test fails when it is stale).
openapi: install
	$(PY) -m render_gateway.api.openapi > docs/openapi.json

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
