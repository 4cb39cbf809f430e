VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo demo-augment demo-finetune demo-flow table test lint gpu-wheels bench-gpu

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

# the feature augmentations with their ablation rows, on the demo's data: linear (the table's baseline), the
# sgd pipeline, isda (full covariance), afan (re-injection in its grid), flow (the official CIFAR settings)
# and flow_linear (the same perturbations through the PCA whitening alone: what the flow's coupling layers
# add) on pixels and the random-init ResNet-10-T; records shared with `make demo` are not run again
demo-augment: install
	$(BIN)/seabench run -m dataset=digits backbone=pixels,random_resnet10t \
		method=linear,sgd,isda,afan,flow,flow_linear
	$(BIN)/seabench table

# fine-tuning on the demo's data: the random-init ResNet-10-T end to end at the demo's 64 px, 200 steps of
# 32 images, lr 0.1 or 0.01 (largest first, as ssl-transfer: a tie goes to it), one seed (3 training runs
# each; too long for `make demo`): plain, finetune_twoview (AugSelf's two views, no auxiliary loss) and
# finetune_augself, so the table shows what AugSelf's views and its own loss each add; rows join the demo's.
# One run per method: a Hydra sweep over methods cannot also set their params
demo-finetune: install
	for method in finetune finetune_twoview finetune_augself; do \
		$(BIN)/seabench run dataset=digits backbone=random_resnet10t method=$$method seeds=1 \
			method.params.steps=200 method.params.batch_size=32 'method.grid.lr=[0.1,0.01]' \
			'method.grid.lr_weight_decay=[0.0]' || exit 1; \
	done
	$(BIN)/seabench table

# the flow seed in its native form on the demo's data: a tiny Glow (8 px, 2 levels x 4 steps, 32 channels, 400
# steps) trained on the digits and cached, then the random-init ResNet-10-T fine-tuned at 64 px with each batch
# perturbed by a one-step latent PGD (L2, eps 1.0), 100 steps of 32 images, one seed (2 training runs); its row
# joins the demo's. One torch thread: the tiny Glow's many small ops ran 12x slower on 2 threads of a busy machine
demo-flow: install
	$(BIN)/seabench run dataset=digits backbone=random_resnet10t method=finetune_flow seeds=1 threads=1 \
		method.params.steps=100 method.params.batch_size=32 method.params.pgd_steps=1 \
		'method.grid.lr=[0.1]' 'method.grid.lr_weight_decay=[0.0]' 'method.grid.mode=[adv]' 'method.grid.eps=[1.0]' \
		method.params.glow.resolution=8 method.params.glow.levels=2 method.params.glow.steps_per_level=4 \
		method.params.glow.hidden=32 method.params.glow.train_steps=400 method.params.glow.lr=0.001 \
		method.params.glow.warmup_images=6400
	$(BIN)/seabench table

table: install
	$(BIN)/seabench table

# ruff, then the test suite, one worker per core (pytest-xdist); the 15 slowest tests are printed at the end
test: install
	$(BIN)/ruff check bench tests benchmarks
	$(BIN)/pytest -q -n auto

lint: install
	$(BIN)/ruff check bench tests benchmarks

# the GPU check (docs/performance.md, "The GPU check"): `make gpu-wheels` gathers into wheels/ (git-ignored)
# the wheels the GPU machine lacks (it has no network) and rehearses their offline install here, about 3 min;
# `make bench-gpu` then runs the check where this is (install, CUDA tests, benchmarks/gpu.py: <= 520 s on an
# H200); on the lent GPU machine, carry wheels/ and run `sh benchmarks/gpu_check.sh`
gpu-wheels: install
	$(BIN)/python benchmarks/gpu_wheels.py gather wheels
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/gpu_wheels.py check wheels

bench-gpu: gpu-wheels
	sh benchmarks/gpu_check.sh
