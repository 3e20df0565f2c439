# The two commands of the README: `make demo` and `make test`. Both bootstrap .venv when missing
# and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
BIN    := $(VENV)/bin

.PHONY: demo lint test test-all bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/plastix run supervised

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Two test processes, each test file in one of them (its module fixtures compile once): on 2 cores
# ~1.3x faster than one process (test programs are small, and tracing them is single-threaded).
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" 

bench: $(STAMP)
	$(BIN)/python benchmarks/diagnostics_overhead.py
	$(BIN)/python benchmarks/dqn_minatar_throughput.py --seeds 1 8 --chunk-periods 1
	$(BIN)/python benchmarks/dqn_purejaxrl_settings.py --repeats 15

clean:
	rm -rf $(VENV) runs .pytest_cache
