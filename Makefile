PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test train sweep report bench tensorboard clean

install:  ## create .venv and install the package with its dev extras
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'

test:  ## run the test suite
	$(BIN)/python -m pytest

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

tensorboard:  ## serve the TensorBoard logs of every run under logs/
	$(BIN)/tensorboard --logdir logs --bind_all

clean:
	rm -rf logs .pytest_cache

.PHONY: predict export
predict:  ## label recordings: make predict CKPT=path/to.ckpt INPUT=file|folder|manifest.csv [ARGS="window=1.0 ..."]
	$(BIN)/python -m audio_cls.predict ckpt_path=$(CKPT) input=$(INPUT) $(ARGS)

export:  ## export a checkpoint: make export CKPT=path/to.ckpt [FORMAT=onnx|torchscript] [ARGS="output_dir=..."]
	$(BIN)/python -m audio_cls.export ckpt_path=$(CKPT) format=$(or $(FORMAT),onnx) $(ARGS)

.PHONY: notebook
notebook:  ## Jupyter Lab in the project's environment (installs it into .venv first if missing); notebooks in notebooks/
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/pip install -e '.[notebook]'
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)
