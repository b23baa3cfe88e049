# The README's quick start: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

# fstore installs as one `fstore` package built from several folders (pyproject.toml: package-dir).
# A "strict" editable install links every file into build/__editable__*/fstore/, a real tree that mypy and
# import-linter can read too; it is redone (in a second) whenever a file is added, moved or removed.
STRICT := --config-settings editable_mode=strict
LINKED := $(VENV)/.linked
SOURCES := $(shell git ls-files -co --exclude-standard sdk store ingest api codegen 2>/dev/null | sort | md5sum | cut -c1-12)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" $(STRICT)
	$(BIN)/python -m fstore.codegen.typescript
	touch $(STAMP)

$(LINKED)-$(SOURCES): $(STAMP)
	rm -f $(LINKED)-*
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . $(STRICT)
	touch $@

install: $(LINKED)-$(SOURCES)

demo: install
	$(BIN)/fstore demo

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo
	$(BIN)/fstore codegen --check
	$(BIN)/python -m pytest -rs $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports --no-logo

clean:
	rm -rf $(VENV) .fstore demo-out build
