# One place that sets up and runs everything. Every target is idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# ONNX Runtime flavour: cpu (default) or gpu. Never both in one environment.
ORT    ?= cpu
EXTRAS ?= $(ORT),serve,gate,train,tracking,dev,ray,emoji

.PHONY: all venv install tools demo test test-all bench lock clean

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata or the extras chosen here change.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(PY)
install: $(STAMP)

# System tools the tests and benchmarks need: promtool from Debian's prometheus package, wrk
# (the C load generator of benchmarks/serving.py).
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus (promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing Debian's wrk"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

# The main job end to end on embedded defaults.
demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh demo-out

# The default test suite (fast; slow tests are opt-in with `make test-all`).
test: install tools
	$(PY) -m pytest -q

test-all: install tools
	$(PY) -m pytest -q -m "slow or not slow"

# The serving image's constraints file (Dockerfile): every package ".[serve,gpu]" installs, pinned
# to what pip resolves for the image's CPython 3.12 on x86_64 (a dry run: nothing is installed).
# Rerun after changing the base, serve or gpu dependencies and commit requirements/serve-gpu.txt.
lock: $(PY)
	$(PY) scripts/lock.py

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
