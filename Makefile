# The two commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install the package with its dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clipattr-installed
PRESET ?= sandbox

.PHONY: demo test test-e2e test-all install browser benchmarks clean

install: $(STAMP)

# Before anything is created: Python >= 3.10 and room on the disk for torch (clipattr_utils/precheck.py
# parses on old Pythons and imports nothing of the package), each failure said in one message.
$(STAMP): pyproject.toml
	@PY=$$(test -x $(BIN)/python && echo $(BIN)/python || echo $(PYTHON)); \
	command -v $$PY >/dev/null 2>&1 || { echo "error: no '$(PYTHON)' command: clipattr needs Python 3.10 or newer (make demo PYTHON=/path/to/python3.11)" >&2; exit 1; }; \
	$$PY clipattr_utils/precheck.py --venv $(VENV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

# make demo [PRESET=sandbox-fast] [ONLY=02,04] [CACHE_DIR=dir]: runs/<timestamp>-<preset>/index.html
# and the latent atlas. A second demo while one runs on the same feature cache is refused (status 3).
demo: $(STAMP)
	$(BIN)/python -m clipattr_utils.series --preset $(PRESET) $(if $(ONLY),--only $(ONLY)) $(if $(CACHE_DIR),--cache-dir $(CACHE_DIR))

# make test: every test but the end-to-end ones, in two pytest-xdist workers (TEST_WORKERS=n to
# change), the ten slowest printed at the end. make test-e2e: the sandbox-fast series run end to
# end and the real-browser tests (marked e2e / browser). make test-all: both; .ci/run runs both.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=10
E2E    := e2e or browser

test: $(STAMP)
	$(PYTEST) -m "not ($(E2E))"

test-e2e: $(STAMP) browser
	$(PYTEST) -m "$(E2E)"

test-all: test test-e2e

# The real-browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright
# (installed with the dev extra). Install chromium when it is missing and apt-get can run as
# root; otherwise say so and go on: those tests then skip, or fail under CI=true.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$CLIPATTR_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Chromium for the browser tests (apt-get install chromium)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -qq chromium || \
	    { apt-get update -qq && apt-get install -y -qq chromium; }; } >/dev/null 2>&1 \
	  || echo "apt-get could not install chromium: the browser tests will skip (fail under CI=true)"; \
	else echo "No chromium, and apt-get cannot run as root here: the browser tests will skip (fail under CI=true)"; fi

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/sae_step.py
	$(BIN)/python benchmarks/attribution.py

clean:
	rm -rf $(VENV) runs .pytest_cache
