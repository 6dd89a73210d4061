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

# Two lanes, so CI pays for the longer one, not their sum (the suite waits on processes and
# disks for much of its time): the main lane runs the suite in .venv; the background lane
# installs .venv-ref and runs `make parity` there, then the benchmark smoke runs and the
# kill tests, the ONNX Runtime / OpenVINO and runtime-interface tests, the quickstart and notebook runs in .venv (whole scripts and processes,
# independent of the rest; chosen so that the two lanes take about as long; every test that starts a
# Ray cluster is in this lane, so two clusters never share the 2 cores). Its log follows
# the main lane's report; either lane failing fails `make test`.
BACKGROUND_TESTS ?= tests/test_benchmarks.py tests/test_reliability.py tests/test_backends.py tests/test_quickstart.py tests/test_runtimes.py \
	tests/test_notebook.py tests/test_serve_ray.py tests/test_ray.py
BACKGROUND_LOG ?= tests-background.log

test: $(VENV)/.installed
	@{ $(MAKE) --no-print-directory parity; parity=$$?; \
	   HF_HUB_OFFLINE=1 $(PY) -m pytest -p no:cacheprovider --basetemp="$$(mktemp -d)/t" --durations=5 $(BACKGROUND_TESTS); \
	   tests=$$?; [ $$parity -eq 0 ] && [ $$tests -eq 0 ]; } > $(BACKGROUND_LOG) 2>&1 & background=$$!; \
	HF_HUB_OFFLINE=1 $(PY) -m pytest --durations=15 $(addprefix --ignore=,$(BACKGROUND_TESTS)); status=$$?; \
	wait $$background; background_status=$$?; \
	echo "========== background lane: make parity (.venv-ref, the floors), then $(BACKGROUND_TESTS) =========="; \
	cat $(BACKGROUND_LOG); \
	[ $$status -eq 0 ] || { echo "the main suite failed"; exit $$status; }; \
	[ $$background_status -eq 0 ] || { echo "the background lane failed (make parity or $(BACKGROUND_TESTS))"; exit 1; }

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
	$(PY) benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) $(REF_VENV) $(BACKGROUND_LOG) .pytest_cache build *.egg-info
