# One place that sets up and runs everything. Every target is idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# ONNX Runtime flavour: cpu (default) or gpu. Never both in one environment.
ORT    ?= cpu
EXTRAS ?= $(ORT),train,dev,ray

.PHONY: all venv install tools demo test test-all bench clean

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(PY)
install: $(STAMP)

# System tools the tests need: promtool from Debian's prometheus package.
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus (promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The main job end to end on embedded defaults.
demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh demo-out

# The default test suite (fast; slow tests are opt-in with `make test-all`).
test: install tools
	$(PY) -m pytest -q

test-all: install tools
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
