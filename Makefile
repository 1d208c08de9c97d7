# Every target creates and uses .venv itself, so a fresh clone needs nothing but python3 >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The covenant scenario: a fresh deployment, the gateway, every fake partner system and every
# adapter; it keeps serving (and prints the /metrics URL) until Ctrl-C.
demo: $(STAMP)
	$(BIN)/ketenpost demo

bench: $(STAMP)
	$(BIN)/ketenpost bench --out bench-results.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
