PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test train sweep report tensorboard clean

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

tensorboard:  ## serve the TensorBoard logs of every run under logs/
	$(BIN)/tensorboard --logdir logs --bind_all

clean:
	rm -rf logs .pytest_cache
