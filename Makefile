VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo table test lint

# the virtual environment, rebuilt when the project's dependencies change
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

# the offline demo: digits x {pixels, random-init ResNet-10-T} x {linear, sgd, sea, isda, afan, flow, noise}, then the table
demo: install
	$(BIN)/seabench run -m experiment=demo
	$(BIN)/seabench table

table: install
	$(BIN)/seabench table

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check bench tests
