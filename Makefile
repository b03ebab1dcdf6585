# The two commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install the package with its dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clipattr-installed
PRESET ?= sandbox

.PHONY: demo test install benchmarks clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m clipattr_utils.series --preset $(PRESET)

test: $(STAMP)
	$(BIN)/python -m pytest -q

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/sae_step.py
	$(BIN)/python benchmarks/attribution.py

clean:
	rm -rf $(VENV) runs .pytest_cache
