# Two entry points, both self-contained on a fresh machine with Python 3.11:
#   make demo   set up .venv and run a whole region (the main job)
#   make test   set up .venv and run lint + tests
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# label-studio-sdk pins an older numpy: it gets its own venv, used only to check our exports.
LS_VENV ?= .venv-ls
LS_STAMP := $(LS_VENV)/.installed

.PHONY: demo test lint install clean repro
.DEFAULT_GOAL := demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing into $(VENV) (about 2 minutes on a fresh machine)..."
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

$(LS_STAMP):
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -qq --disable-pip-version-check 'label-studio-sdk==2.1.2'
	@touch $(LS_STAMP)

demo: $(STAMP)
	$(BIN)/damnet demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(LS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LS_VENV) runs .pytest_cache .ruff_cache

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
