# The two commands a newcomer needs: `make run` and `make test`. `make bench` measures.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench lint clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "clinic-events needs Python 3.11 or later; this is " + sys.version.split()[0] + ": run make with PYTHON=python3.11 (or later)")'
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/clinic db upgrade
	$(BIN)/clinic seed-demo
	@echo "clinic-events on the embedded defaults (SQLite under var/, in-process broker, console SMS and email):"
	$(BIN)/clinic dev

test: $(STAMP)
	$(BIN)/pytest -q -rs

test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var build *.egg-info
