# The two commands of the README's quick start; each creates or reuses .venv and installs what it needs.
#   make demo   - the main job
#   make test   - the test suite
# torch is installed first with an exact pin: on the project's CPU machines `torch==2.13.0` is the CPU
# wheel already on disk, and pyproject's range then installs nothing more (no multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tinypipe-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,ui]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tinypipe demo --output demo-output

# One worker per core (at most 4), each on one thread; a test module's tests stay on one worker (their shared
# module-scoped fixtures are built once).
TEST_WORKERS ?= $(shell $(PY) -c "import os; print(min(4, len(os.sched_getaffinity(0))))" 2>/dev/null || echo 2)

test: $(STAMP)
	$(PY) -m pytest -x -q -n $(TEST_WORKERS) --dist loadscope

bench: $(STAMP)
	$(PY) bench/bench_repo_load.py

clean:
	rm -rf $(VENV) demo-output .bench
