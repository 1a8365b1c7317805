# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Ray on one node: loopback only, no usage stats.
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test test-faults test-readme test-gpu bench quality install system-packages clean

# Debian packages: the official Fashion-MNIST files (`make run`, the tests), headless Chromium (the
# report's browser test) and R's fpc (the clusterboot reference test). Installed when missing, by
# root or with passwordless sudo; otherwise make stops and prints the one command to run.
SYSTEM_PACKAGES := dataset-fashion-mnist chromium chromium-driver r-base-core r-cran-fpc

# The venv is rebuilt only when pyproject.toml changes, so a second call installs nothing.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
	  echo "featurelens: missing system packages:$$missing; install them with:"; \
	  echo "  sudo apt-get install -y$$missing"; exit 1; fi; \
	command -v apt-get >/dev/null || { echo "featurelens: install these with your package manager:$$missing"; exit 1; }; \
	echo "featurelens: installing$$missing (apt-get)"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null

run: $(STAMP) system-packages
	$(PY) -m jobs.pipeline --config configs/fashion-mnist.toml --out runs/fashion-mnist

# The tests that start clusters of their own (autoscaling, two nodes) get a pytest session of their own, last.
test: $(STAMP) system-packages
	$(PY) -m pytest -m "not cluster and not gpu and not readme and not faults"
	$(PY) -m pytest -m "cluster and not submit"

# Killed workers, killed jobs, interrupted sweeps on a real local Ray, then the whole pipeline
# through `ray job submit` (which runs `ray stop` at its end, so last): about 5 minutes; CI runs
# them after `make test`, kept out of it so that it stays under 10 minutes on 2 cores.
test-faults: $(STAMP) system-packages
	$(PY) -m pytest -m faults
	$(PY) -m pytest -m submit

# Every command block of the README run as written (small sizes appended) from a clone-like folder:
# about 15 minutes; `make test` only parses them.
test-readme: $(STAMP) system-packages
	$(PY) -m pytest -m readme

# Where a GPU is present: its results against the CPU's.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

quality: $(STAMP)
	$(PY) -m benchmarks.quality

clean:
	rm -rf runs .pytest_cache
