VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo demo-finetune table test lint

# the virtual environment, rebuilt when the project's dependencies change
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

# the offline demo: digits x {pixels, random-init ResNet-10-T} x {linear, sgd, sea, isda, noise, afan, flow},
# then the table
demo: install
	$(BIN)/seabench run -m experiment=demo
	$(BIN)/seabench table

# fine-tuning on the demo's data: the random-init ResNet-10-T end to end at the demo's 64 px, 200 steps of
# 32 images, lr 0.1 or 0.01 (largest first, as ssl-transfer: a tie goes to it), one seed (3 training runs;
# too long for `make demo`); its row joins the demo's
demo-finetune: install
	$(BIN)/seabench run dataset=digits backbone=random_resnet10t method=finetune seeds=1 \
		method.params.steps=200 method.params.batch_size=32 'method.grid.lr=[0.1,0.01]' \
		'method.grid.lr_weight_decay=[0.0]'
	$(BIN)/seabench table

table: install
	$(BIN)/seabench table

# ruff, then the test suite, one worker per core (pytest-xdist); the 15 slowest tests are printed at the end
test: install
	$(BIN)/ruff check bench tests benchmarks
	$(BIN)/pytest -q -n auto

lint: install
	$(BIN)/ruff check bench tests benchmarks
