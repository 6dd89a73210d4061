# Two entry points: `make demo` runs the quickstart, `make test` runs the tests.
# Each creates .venv and installs what it needs (CPU torch pinned here, not in the package).
# `make test` runs the suite in .venv on the newest versions, then (`make parity`) the library's
# tests in .venv-ref on the declared floors (lowest-versions.txt) with FlagEmbedding, where every
# reference-parity test must run: a reference that does not import fails, never skips.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REF_VENV ?= .venv-ref
REF_PY := $(REF_VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test parity golden bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH_PIN)"
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) examples/quickstart.py

$(REF_VENV)/.installed: pyproject.toml lowest-versions.txt
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_PY) -m pip install -q --upgrade pip
	$(REF_PY) -m pip install -q "$(TORCH_PIN)"
	$(REF_PY) -m pip install -q -c lowest-versions.txt -e ".[test,ref]" "$(TORCH_PIN)"
	touch $@

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest
	$(MAKE) parity

# The library's own tests on the floors: every reference comparison, the goldens, the functions,
# engines and options. The service, CLI, notebook, benchmark and multi-process tests run in .venv
# only (they call the same library code, and twice the suite would not fit CI's time).
PARITY_TESTS ?= tests/test_golden.py tests/test_device.py tests/test_m3.py tests/test_reranker.py \
	tests/test_embeddings.py tests/test_options.py tests/test_loading.py tests/test_catalog.py \
	tests/test_hub.py tests/test_batching.py tests/test_reprs.py tests/test_trust.py

parity: $(REF_VENV)/.installed
	HF_HUB_OFFLINE=1 LANCEDB_BAAI_REQUIRE_REFERENCE=1 $(REF_PY) -m pytest $(PARITY_TESTS)

# Redraw the goldens from the reference libraries on purpose (ARGS=--models: the tiny weights too).
golden: $(REF_VENV)/.installed
	HF_HUB_OFFLINE=1 $(REF_PY) tests/golden/regenerate.py $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m lancedb_baai bench

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache build *.egg-info
