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

# Until the relay and the adapters exist, the demo makes a complete development deployment in a
# temporary folder and shows what it made.
demo: $(STAMP)
	@d=$$(mktemp -d) && $(BIN)/ketenpost init "$$d/covenant" && cat "$$d/covenant/README.txt" \
	  && $(BIN)/ketenpost config check --config "$$d/covenant/gateway.toml" \
	  && $(BIN)/ketenpost schema example signal

bench: $(STAMP)
	$(BIN)/ketenpost bench --out bench-results.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
