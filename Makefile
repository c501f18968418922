# Two commands do everything: `make train` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install train test test-all lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/fourm21-train $(ARGS)

lint: install
	$(BIN)/ruff check .

# pytest exits 5 when it collects no test; make treats any non-zero exit as failure.
test: install lint
	$(BIN)/python -m pytest -m "not slow" -q $(ARGS)

test-all: install lint
	$(BIN)/python -m pytest -q $(ARGS)

clean:
	rm -rf runs outputs .pytest_cache .ruff_cache
