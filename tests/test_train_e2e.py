"""End to end through the real entry points on a small slice of FSDD."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score

from audio_cls.module import AudioClassifier
from helpers import REPO, run_entry

# Every test runs an entry point (training, eval, console scripts) in a subprocess.
pytestmark = pytest.mark.slow


def scalar_tags(tb_dir):
    tags = set()
    for events in tb_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


# Not the defaults: a rebuild that ignored the saved config (hop, mel bands, fitted global statistics) would
# give other outputs or fail to load.
RUN_FEATURES = ("features.n_mels=40", "features.hop_length=100", "features.normalize=global")
BATCHES, BATCH_SIZE = 2, 16  # debug=limit's limit_val_batches / limit_test_batches, data.batch_size below


@pytest.fixture(scope="module")
def trained_run(fsdd_slice, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={run_dir / 'cache'}",
        f"data.batch_size={BATCH_SIZE}",
        "trainer.limit_train_batches=4",
        *RUN_FEATURES,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def run_datamodule(run_dir, features, stage):
    """The run's datamodule, rebuilt from the config it saved (.hydra/config.yaml), with `features`."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    datamodule = instantiate(cfg.data, features=features)
    datamodule.setup(stage)
    return datamodule


def evaluate(module, datamodule, loader, batches=BATCHES):
    """Logits and targets of a checkpoint's module on the first `batches` batches of a loader, in eval mode,
    as Lightning's validation/test loop feeds them (the loader's own order)."""
    module.eval()
    logits, targets = [], []
    with torch.no_grad():
        for _, batch in zip(range(batches), loader):
            batch = datamodule.features_of(batch)  # what the datamodule's hook does (data.placement=device)
            logits.append(module(batch["inputs"], batch["lengths"]))
            targets.append(batch["targets"])
    return torch.cat(logits), torch.cat(targets)


def logged(run_dir, tag):
    """Every value of a scalar in the run's TensorBoard events, in step order."""
    events = []
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            events += acc.Scalars(tag)
    return [e.value for e in sorted(events, key=lambda e: (e.step, e.wall_time))]


def test_train_writes_every_file_of_a_run(trained_run):
    run_dir, proc = trained_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()
    ckpts = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("epoch_") for n in ckpts)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs"] == 2  # debug=limit: max_epochs=2
    # The final training metrics are the last epoch's, as logged.
    for key in ("train/loss", "train/acc"):
        values = logged(run_dir, key)
        assert len(values) == 2, key  # one per epoch
        assert metrics[key] == pytest.approx(values[-1], rel=1e-6), key
    # The best validation accuracy is the best epoch's, and the best checkpoint is the epoch that had it.
    val_acc = logged(run_dir, "val/acc")
    assert len(val_acc) == 2 and metrics["val/acc"] == pytest.approx(val_acc[-1], rel=1e-6)
    assert metrics["val/acc_best"] == pytest.approx(max(val_acc), rel=1e-6)
    best_epoch = int(Path(metrics["best_checkpoint"]).stem.split("_")[1])
    assert val_acc[best_epoch] == max(val_acc)
    assert metrics["class_names"] == [str(d) for d in range(10)]
    matrix = metrics["test/confusion_matrix"]
    assert sum(map(sum, matrix)) == BATCHES * BATCH_SIZE  # limit_test_batches=2 of data.batch_size=16
    assert metrics["test/acc"] == pytest.approx(sum(matrix[i][i] for i in range(10)) / (BATCHES * BATCH_SIZE), abs=1e-6)
    per_class = metrics["test/per_class"]
    assert list(per_class) == metrics["class_names"]
    for i, (label, row) in enumerate(zip(per_class, matrix)):
        assert per_class[label]["support"] == sum(row)
        assert set(per_class[label]) == {"precision", "recall", "f1", "support"}
        if sum(row):
            assert per_class[label]["recall"] == pytest.approx(row[i] / sum(row), abs=1e-6), label
    assert "Test results per class" in (run_dir / "train.log").read_text()
    splits = (run_dir / "splits.csv").read_text().splitlines()
    assert splits[0] == "split,path,label,group,start,end" and len(splits) == 1 + 200  # every file of the slice
    tags = scalar_tags(run_dir / "tensorboard")
    assert {"train/loss", "val/acc", "test/acc", "val/acc_best", "lr-Adam", "hp/test_acc"} <= tags
    printed = re.search(r"test/acc\W+([0-9.]+)", proc.stdout)  # the test metrics are printed (Lightning's table)
    assert printed and float(printed[1]) == pytest.approx(metrics["test/acc"], abs=1e-6), proc.stdout[-2000:]


def test_test_metrics_are_those_of_the_best_checkpoint(trained_run):
    """metrics.json's test results = the best checkpoint, rebuilt from the file alone, on the same test batches."""
    run_dir, _ = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    module = AudioClassifier.from_checkpoint(metrics["best_checkpoint"])
    datamodule = run_datamodule(run_dir, module.features, "test")
    logits, targets = evaluate(module, datamodule, datamodule.test_dataloader())
    assert len(targets) == BATCHES * BATCH_SIZE
    predictions = logits.argmax(-1)
    assert metrics["test/acc"] == pytest.approx((predictions == targets).double().mean().item(), abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    assert metrics["test/f1"] == pytest.approx(
        multiclass_f1_score(logits, targets, 10, average="macro").item(), abs=1e-6
    )
    assert metrics["test/confusion_matrix"] == multiclass_confusion_matrix(predictions, targets, 10).tolist()


def test_checkpoint_alone_rebuilds_the_model(trained_run):
    """The model rebuilt from a checkpoint alone gives what the trained module gave: the validation of the
    checkpoint's epoch (logged in training) is reproduced to float precision on the same batches, and the
    front end is the run's (its settings, and its global statistics as measured afresh on the training split)."""
    run_dir, _ = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = AudioClassifier.from_checkpoint(metrics["best_checkpoint"])
    assert model.class_names == [str(d) for d in range(10)]
    epoch = torch.load(metrics["best_checkpoint"], weights_only=True)["epoch"]
    datamodule = run_datamodule(run_dir, model.features, "fit")
    logits, targets = evaluate(model, datamodule, datamodule.val_dataloader())
    assert logged(run_dir, "val/acc")[epoch] == pytest.approx(
        (logits.argmax(-1) == targets).double().mean().item(), abs=1e-6
    )
    assert logged(run_dir, "val/loss")[epoch] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)

    features = model.features
    assert (features.num_features, features.hop_length, features.normalize) == (40, 100, "global")
    fresh = run_datamodule(run_dir, instantiate(OmegaConf.load(run_dir / ".hydra" / "config.yaml").features), "fit")
    assert bool(fresh.features.norm.fitted)
    torch.testing.assert_close(features.norm.mean, fresh.features.norm.mean)
    torch.testing.assert_close(features.norm.std, fresh.features.norm.std)


def test_last_checkpoint_is_the_end_of_training(fsdd_slice, tmp_path):
    """last.ckpt (what `ckpt_path=last`, eval and predict read) holds the weights and state of the last epoch,
    also when that epoch did not improve val/acc: here no epoch can (a learning rate of 1e-12, no batch norm)."""
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "data.batch_size=8",
        "optimizer.lr=1e-12",
        "model.norm=none",
        "logger=none",
        "test=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 2
    best = torch.load(next((tmp_path / "checkpoints").glob("epoch_*.ckpt")), weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (best["epoch"], best["global_step"]) == (0, 1)  # the only epoch that "improved"
    assert (last["epoch"], last["global_step"]) == (1, 2)


def test_eval_entry_point_tests_a_checkpoint(trained_run, fsdd_slice, tmp_path):
    run_dir, _ = trained_run
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    proc = run_entry(
        "audio_cls.eval",
        f"ckpt_path={best}",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
        "trainer.limit_test_batches=2",
        "data.batch_size=16",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(train_metrics["test/acc"], abs=1e-6)


def test_eval_requires_ckpt_path(tmp_path):
    proc = run_entry("audio_cls.eval", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "ckpt_path" in proc.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.root=/nonexistent/fsdd"], "error: data.root=/nonexistent/fsdd: no such directory"),
        (["model.channels=[8,8,8,8,8,8,8]", "model.padding=valid"], "error: model: an input of"),
        (["model.activation=swish"], "error: model.activation='swish'"),
        (["features.normalize=batch"], "error: features.normalize='batch'"),
        (["loss.weight=[1,2]"], "error: loss.weight: 2 values for 10 classes (in this order: 0, 1, 2,"),
        (
            ["loss.weight=[1,1,1,1,1,1,1,1,1,-3]"],
            "error: loss.weight=[1, 1, 1, 1, 1, 1, 1, 1, 1, -3]: expected non-negative",
        ),
    ],
)
def test_bad_config_is_one_line(overrides, message, tmp_path):
    proc = run_entry("audio_cls.train", *overrides, f"hydra.run.dir={tmp_path}", "debug=fast")
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_unknown_model_lists_the_options(tmp_path):
    proc = run_entry("audio_cls.train", "model=transformer", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Could not find 'model/transformer'" in proc.stderr and "cnn1d" in proc.stderr


def test_existing_run_dir_is_not_overwritten(trained_run):
    run_dir, _ = trained_run
    before = (run_dir / "metrics.json").read_text()
    proc = run_entry("audio_cls.train", "debug=fast", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 1 and "ckpt_path=last" in proc.stderr
    assert (run_dir / "metrics.json").read_text() == before


def test_runs_started_together_get_their_own_directories(fsdd_slice, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "audio_cls.train",
        "debug=fast",
        f"data.root={fsdd_slice}",
        f"paths.log_dir={tmp_path}",
    ]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 2
    assert all((r / "metrics.json").is_file() for r in runs)


@pytest.mark.parametrize(
    "script", ["audio-cls-train", "audio-cls-eval", "audio-cls-predict", "audio-cls-export", "audio-cls-cv"]
)
def test_console_scripts_find_the_configs_from_any_directory(script, tmp_path):
    # Installed entry points are not run as files, so a relative config_path would be looked up as a module.
    exe = Path(sys.executable).with_name(script)
    proc = subprocess.run([str(exe), "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task_name:" in proc.stdout
