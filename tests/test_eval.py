"""`audio_cls.eval` rebuilds the training run's data from the checkpoint: the same test split whatever the
eval config's defaults, overrides on top of it, a warning when one may change the split, and data=NAME
for other data."""

import csv
import json
import logging

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from audio_cls import CONF_DIR
from audio_cls.eval import evaluate
from helpers import run_entry, write_tone_dataset

# Every test uses a training run (tones_run) made by the audio_cls.train entry point.
pytestmark = pytest.mark.slow

# Not the defaults (split_seed 0, test_fraction 0.1): a test split that eval's config alone would not give.
SPLIT = ("data.split_seed=3", "data.test_fraction=0.3")


@pytest.fixture(scope="module")
def tones_run(tmp_path_factory):
    """A tiny CNN trained on a folder of tones, split per file with SPLIT: (data root, run directory)."""
    root = tmp_path_factory.mktemp("tones")
    write_tone_dataset(root)
    run_dir = tmp_path_factory.mktemp("tones_run")
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        "data=folder",
        f"data.root={root}",
        *SPLIT,
        "model.channels=[16,16]",
        "data.batch_size=8",
        "logger=none",
        "test=false",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, run_dir


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def files_of_test_split(path):
    """The test split's recordings in a splits.csv."""
    return sorted(r["path"] for r in rows(path) if r["split"] == "test")


def eval_config(ckpt, output_dir, overrides=()):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={ckpt}", "logger=none", "trainer.accelerator=cpu", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)  # outside a Hydra run there is no hydra:runtime.output_dir
    return cfg


def test_eval_tests_exactly_the_training_runs_test_split(tones_run, tmp_path):
    root, run_dir = tones_run
    trained_test = files_of_test_split(run_dir / "splits.csv")
    assert 0 < len(trained_test) < len(rows(run_dir / "splits.csv"))
    # as a user runs it: the eval config's own data defaults (FSDD) play no part; batch size from the command line
    proc = run_entry(
        "audio_cls.eval",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "data.batch_size=1",
        "data.num_workers=0",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "splits.csv").read_text() == (run_dir / "splits.csv").read_text()  # every split as trained
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert sum(map(sum, metrics["test/confusion_matrix"])) == len(trained_test)  # all of it, nothing else
    log = (tmp_path / "eval.log").read_text()
    assert "differs from the training run's" not in log
    # per-item predictions (what audio_cls.compare pairs runs on): every test item once, their accuracy the metric
    predicted = rows(tmp_path / "test_predictions.csv")
    assert sorted(r["path"] for r in predicted) == trained_test
    assert sum(r["label"] == r["predicted"] for r in predicted) / len(predicted) == pytest.approx(metrics["test/acc"])


def test_eval_overrides_apply_on_top_of_the_checkpoint_data(tones_run, tmp_path, caplog):
    root, run_dir = tones_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = ["data.batch_size=5"]
    with caplog.at_level(logging.INFO, logger="audio_cls.eval"):
        result = evaluate(eval_config(ckpt, tmp_path, overrides), overrides=overrides)
    assert files_of_test_split(tmp_path / "splits.csv") == files_of_test_split(run_dir / "splits.csv")
    assert sum(map(sum, result["test/confusion_matrix"])) == len(files_of_test_split(run_dir / "splits.csv"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    from audio_cls.eval import eval_data_config
    from audio_cls.module import AudioClassifier

    trained = AudioClassifier.from_checkpoint(str(ckpt)).hparams.config["data"]
    cfg = eval_config(ckpt, tmp_path)
    data = eval_data_config(cfg, trained, ["data.batch_size=5", "data.num_workers=0", "~data.group_pattern"], str(ckpt))
    assert data["batch_size"] == 5 and data["split_seed"] == 3 and data["test_fraction"] == 0.3
    assert data["root"] == str(root) and "group_pattern" not in data
    assert data == {**{k: v for k, v in trained.items() if k != "group_pattern"}, "batch_size": 5, "num_workers": 0}


def test_eval_loss_does_not_depend_on_the_batch_size(tones_run, tmp_path):
    """The issue's acceptance, on recordings of different lengths (so batches are padded): the same test
    loss with data.batch_size=1, 7 and 64."""
    _, run_dir = tones_run
    losses = []
    for batch_size in (1, 7, 64):
        overrides = [f"data.batch_size={batch_size}"]
        (tmp_path / str(batch_size)).mkdir()
        cfg = eval_config(run_dir / "checkpoints" / "last.ckpt", tmp_path / str(batch_size), overrides)
        losses.append(evaluate(cfg, overrides=overrides)["test/loss"])
    assert losses == pytest.approx([losses[0]] * 3, abs=1e-4)


@pytest.mark.parametrize("override", ["data.split_seed=0", "data.duration=0.2"])
def test_eval_warns_when_an_override_may_change_the_test_split(override, tones_run, tmp_path, caplog):
    root, run_dir = tones_run
    overrides = [override, "data.num_workers=0"]
    with caplog.at_level(logging.WARNING, logger="audio_cls.eval"):
        evaluate(eval_config(run_dir / "checkpoints" / "last.ckpt", tmp_path, overrides), overrides=overrides)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{override} (trained with" in warnings[0]
    assert "num_workers" not in warnings[0]  # a loader setting is not a change of data
    if override.startswith("data.split_seed"):  # and the warning is warranted: another test split
        assert files_of_test_split(tmp_path / "splits.csv") != files_of_test_split(run_dir / "splits.csv")


def test_eval_with_data_name_tests_on_other_data(tones_run, tmp_path, caplog):
    _, run_dir = tones_run
    other = tmp_path / "other_tones"
    write_tone_dataset(other, per_class=4)
    overrides = ["data=folder", f"data.root={other}", "data.test_fraction=0.3", "data.num_workers=0"]
    with caplog.at_level(logging.INFO, logger="audio_cls.eval"):
        result = evaluate(eval_config(run_dir / "checkpoints" / "last.ckpt", tmp_path, overrides), overrides=overrides)
    tested = files_of_test_split(tmp_path / "splits.csv")
    assert tested and all(path.startswith(str(other)) for path in tested)
    assert sum(map(sum, result["test/confusion_matrix"])) == len(tested)
    # conf/data/folder.yaml's split settings, not the training run's: said so
    assert any("data.split_seed=0 (trained with 3)" in r.getMessage() for r in caplog.records)


def test_eval_refuses_a_checkpoint_whose_data_target_is_not_trusted(tones_run, tmp_path):
    import torch

    from audio_cls.errors import ConfigError

    _, run_dir = tones_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["data"]["_target_"] = "shutil.rmtree"
    ckpt = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, ckpt)
    with pytest.raises(
        ConfigError,
        match=r"data._target_=shutil.rmtree is not a class of .*; or choose the data "
        r"explicitly with data=NAME",
    ):
        evaluate(eval_config(ckpt, tmp_path), overrides=[])
