# One-command set-up: a .venv with the pinned CPU torch, then the package.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-mlp test test-fast lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; run 'make PYTHON=python3 ...'"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, so the package's torch range installs nothing more.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The paper's study at the quick preset (<= 15 min on 2 cores); running it again resumes.
demo: $(STAMP)
	$(VENV)/bin/trajreg study paper --preset quick --out demo-out/paper-quick

# One MLP on digits with and without batch norm (about 20 s of CPU).
demo-mlp: $(STAMP)
	$(PY) -m trajreg.demo --out demo-out/mlp

# Two workers (pytest-xdist), one per core, each on one thread (tests/conftest.py); a
# test file stays on one worker, so its module fixtures are built once.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

test: $(STAMP)
	$(PYTEST) trajreg tests

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" trajreg tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_recording.py

clean:
	rm -rf $(VENV) demo-out
