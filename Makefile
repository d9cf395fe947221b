PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help install lint format test test-fast train sweep report bench tensorboard clean predict export notebook bench-scale
.DEFAULT_GOAL := help

help:  ## list the targets (this list)
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

install:  ## create .venv and install the package with its dev extras
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'

lint:  ## ruff: lint and check the formatting (changes nothing)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:  ## ruff: fix what the linter can and format the code
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

test:  ## run the test suite
	$(BIN)/python -m pytest

test-fast:  ## the tests not marked slow (no training runs or subprocess entry points); under 90 s on 2 CPU cores
	$(BIN)/python -m pytest -m "not slow"

train:  ## train the default experiment (CNN1d on FSDD) and print the test metrics
	$(BIN)/python -m audio_cls.train $(ARGS)

sweep:  ## a small ready-made sweep on FSDD (2 networks x 2 learning rates); writes report.md/.csv/.png
	$(BIN)/python -m audio_cls.train hparams_search=fsdd_grid $(ARGS)

report:  ## rewrite the report of a sweep: make report DIR=logs/train/multiruns/<sweep>
	$(BIN)/python -m audio_cls.report $(DIR)

bench:  ## benchmarks (not tests): features, training overhead, time to 97% and make train against the plain reference
	$(BIN)/pip install -q -e '.[bench]'
	cd benchmarks && ../$(BIN)/python bench_features.py && ../$(BIN)/python bench_training.py \
		&& ../$(BIN)/python bench_time_to_accuracy.py && ../$(BIN)/python bench_make_train.py

SCALE_SIZES ?= 10000 100000
SCALE_ROWS ?= 1000000
bench-scale:  ## data at scale (not in test/bench): generates 10k/100k recordings and a 1M-row manifest in logs/scale_data, then times start-up, memory and clips/s against FSDD (SCALE_SIZES=10000 SCALE_ROWS=0: the small set)
	cd benchmarks && ../$(BIN)/python gen_scale_data.py --sizes $(SCALE_SIZES) --manifest-rows $(SCALE_ROWS) \
		&& ../$(BIN)/python bench_scale.py --sizes $(SCALE_SIZES) --manifest-rows $(SCALE_ROWS) $(ARGS)

tensorboard:  ## serve the TensorBoard logs of every run under logs/
	$(BIN)/tensorboard --logdir logs --bind_all

clean:  ## delete logs/ and .pytest_cache
	rm -rf logs .pytest_cache

predict:  ## label recordings: make predict CKPT=path/to.ckpt INPUT=file|folder|manifest.csv [ARGS="window=1.0 ..."]
	$(BIN)/python -m audio_cls.predict ckpt_path=$(CKPT) input=$(INPUT) $(ARGS)

export:  ## export a checkpoint: make export CKPT=path/to.ckpt [FORMAT=onnx|torchscript] [ARGS="output_dir=..."]
	$(BIN)/python -m audio_cls.export ckpt_path=$(CKPT) format=$(or $(FORMAT),onnx) $(ARGS)

notebook:  ## Jupyter Lab in the project's environment (installs it into .venv first if missing); notebooks in notebooks/
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/pip install -e '.[notebook]'
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)
