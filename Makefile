# Two entry points: `make demo` runs the quickstart, `make test` runs the tests.
# Each creates .venv and installs what it needs (CPU torch pinned here, not in the package).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH_PIN)"
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) examples/quickstart.py

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m lancedb_baai bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
