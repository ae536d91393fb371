# The two quickstart commands: `make serve` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/listkeeper: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: setup serve test bench
setup: $(BIN)/listkeeper

serve: setup
	mkdir -p var/outbox
	$(BIN)/listkeeper serve

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench accept
