# One-command set-up: a .venv with the pinned CPU torch, then the package.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-mlp test test-fast test-kernels lint bench docs clean

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

# The tests whose outcome is a number of float32 training, again under a second kernel
# selection (CI runs it after `make test`), so that a test that holds only for this CPU's
# kernels fails here before it fails for a user whose CPU picks others (issue 20). What
# each variable changes, measured on an AMD EPYC (AVX-512, torch 2.13 CPU): ATen's own
# kernels (reductions, softmax, batch norm, the RNG) with ATEN_CPU_CAPABILITY; oneDNN's
# convolutions with DNNL_MAX_CPU_ISA; MKL's SGEMM with MKL_CBWR=COMPATIBLE (MKL ignores
# MKL_ENABLE_INSTRUCTIONS on a non-Intel CPU: no bit changed; on Intel ones it caps the ISA).
# 68 s on two shared cores (2026-12-06).
KERNELS_2 := ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41 MKL_CBWR=COMPATIBLE \
	MKL_ENABLE_INSTRUCTIONS=SSE4_2
NUMERIC_TESTS := tests/run tests/record tests/principle \
	tests/regressions/test_sample_default_size.py \
	tests/regressions/test_sketch_error_missed_gamma_error.py

test-kernels: $(STAMP)
	env $(KERNELS_2) $(PYTEST) $(NUMERIC_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_recording.py

# The docs site (mkdocs.yml) into site/, offline; --strict: a broken link, a missing
# reference or a docstring warning is an error (tests/test_docs.py runs the same build).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) demo-out site
