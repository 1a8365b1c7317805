# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Ray on one node: loopback only, no usage stats.
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test test-gpu bench quality install clean

# The venv is rebuilt only when pyproject.toml changes, so a second call installs nothing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m jobs.pipeline --config configs/fashion-mnist.toml --run-dir runs/fashion-mnist

# The cluster test runs `ray stop` at its end, so it gets a pytest session of its own, last.
test: $(STAMP)
	$(PY) -m pytest -m "not cluster and not gpu"
	$(PY) -m pytest -m cluster

# Where a GPU is present: its results against the CPU's.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

quality: $(STAMP)
	$(PY) -m benchmarks.quality

clean:
	rm -rf runs .pytest_cache
