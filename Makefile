# Two commands: `make demo` and `make test`. Everything else is a building block.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# pip reads the machine's own pip config too (a local wheel of torch lies in /opt/wheels).
STAMP  := $(VENV)/.install-stamp

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

# Re-runs only when the pins or the project metadata change.
$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(shell command -v $(PYTHON) || echo python3) -m venv $(VENV)
	@# -qq: pip's warnings about this machine's own pip config (missing find-links folders)
	@# drown the output; errors still print.
	$(PIP) install -qq --upgrade "pip>=24" wheel setuptools
	$(PIP) install -qq -c requirements/constraints.txt -e ".[dev,train,server]"
	@touch $(STAMP)

demo: install
	$(BIN)/fraudctl demo

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

# The README's benchmark table is generated from the JSON the benchmarks write.
bench: install
	$(BIN)/fraudctl bench
	$(BIN)/python -m benchmarks.readme_table --write

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core pipelines feature_repo models services monitoring

clean:
	rm -rf var
