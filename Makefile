# Two entry points: `make demo` runs the quickstart, `make test` runs the tests.
# Each creates .venv and installs what it needs (CPU torch pinned here, not in the package).
# `make test` runs the suite in .venv on the newest versions and, beside it (`make parity`), the library's
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

# The floors' env installs and runs its tests (`make parity`) in the background while the main
# suite runs; its log follows the main suite's report. The main suite waits on processes and
# disks for much of its time, so CI pays for less than the sum of the two.
test: $(VENV)/.installed
	@$(MAKE) --no-print-directory parity > $(REF_VENV).log 2>&1 & ref=$$!; \
	HF_HUB_OFFLINE=1 $(PY) -m pytest --durations=15; status=$$?; \
	wait $$ref; ref_status=$$?; \
	echo "==================== make parity (.venv-ref, the floors) ===================="; \
	cat $(REF_VENV).log; \
	[ $$status -eq 0 ] || { echo "the main suite failed"; exit $$status; }; \
	[ $$ref_status -eq 0 ] || { echo "make parity failed"; exit $$ref_status; }

# The library's own tests on the floors: every reference comparison, the goldens, the functions,
# engines and options. The service, CLI, notebook, benchmark and multi-process tests run in .venv
# only (they call the same library code, and twice the suite would not fit CI's time).
PARITY_TESTS ?= tests/test_golden.py tests/test_device.py tests/test_m3.py tests/test_reranker.py \
	tests/test_embeddings.py tests/test_options.py tests/test_loading.py tests/test_catalog.py \
	tests/test_hub.py tests/test_batching.py tests/test_reprs.py tests/test_trust.py \
	tests/test_fingerprint.py tests/test_drift.py tests/test_reembed.py
# Runs in .venv already and asks nothing of the floors (ten fresh processes, a minute of CI).
PARITY_DESELECT ?= --deselect tests/test_device.py::test_ten_fresh_processes_under_load_agree

parity: $(REF_VENV)/.installed
	HF_HUB_OFFLINE=1 LANCEDB_BAAI_REQUIRE_REFERENCE=1 $(REF_PY) -m pytest -p no:cacheprovider --basetemp="$$(mktemp -d)/t" $(PARITY_TESTS) $(PARITY_DESELECT)

# Redraw the goldens from the reference libraries on purpose (ARGS=--models: the tiny weights too).
golden: $(REF_VENV)/.installed
	HF_HUB_OFFLINE=1 $(REF_PY) tests/golden/regenerate.py $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m lancedb_baai bench

clean:
	rm -rf $(VENV) $(REF_VENV) $(REF_VENV).log .pytest_cache build *.egg-info
