"""End to end through the real entry points on a small slice of FSDD."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from audio_cls.module import AudioClassifier
from conftest import REPO, run_entry


def scalar_tags(tb_dir):
    tags = set()
    for events in tb_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.fixture(scope="module")
def trained_run(fsdd_slice, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = run_entry("audio_cls.train", "debug=limit", f"data.root={fsdd_slice}", f"hydra.run.dir={run_dir}",
                     "data.batch_size=16", "trainer.limit_train_batches=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_train_writes_every_file_of_a_run(trained_run):
    run_dir, proc = trained_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()
    ckpts = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("epoch_") for n in ckpts)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    for key in ("train/loss", "train/acc", "val/acc", "val/acc_best", "val/f1", "test/acc", "test/f1"):
        assert 0.0 <= metrics[key] < 100, key
    assert metrics["class_names"] == [str(d) for d in range(10)]
    assert sum(map(sum, metrics["test/confusion_matrix"])) == 2 * 16  # limit_test_batches=2 of data.batch_size=16
    per_class = metrics["test/per_class"]
    assert list(per_class) == metrics["class_names"]
    for label, row in zip(per_class, metrics["test/confusion_matrix"]):
        assert per_class[label]["support"] == sum(row)
        assert set(per_class[label]) == {"precision", "recall", "f1", "support"}
    assert "Test results per class" in (run_dir / "train.log").read_text()
    splits = (run_dir / "splits.csv").read_text().splitlines()
    assert splits[0] == "split,path,label,group,start,end" and len(splits) == 1 + 200  # every file of the slice
    tags = scalar_tags(run_dir / "tensorboard")
    assert {"train/loss", "val/acc", "test/acc", "val/acc_best", "lr-Adam", "hp/test_acc"} <= tags
    assert "test/acc" in proc.stdout  # the test metrics are printed


def test_checkpoint_alone_rebuilds_the_model(trained_run, fsdd_slice):
    run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    model = AudioClassifier.from_checkpoint(str(ckpt)).eval()
    assert model.class_names == [str(d) for d in range(10)]
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    wave = torch.randn(4000)
    x = model.features(wave)[None]
    probs = model(x, torch.tensor([x.shape[1]])).softmax(-1)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))


def test_eval_entry_point_tests_a_checkpoint(trained_run, fsdd_slice, tmp_path):
    run_dir, _ = trained_run
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    proc = run_entry("audio_cls.eval", f"ckpt_path={best}", f"data.root={fsdd_slice}", f"hydra.run.dir={tmp_path}",
                     "trainer.limit_test_batches=2", "data.batch_size=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(train_metrics["test/acc"], abs=1e-6)


def test_eval_requires_ckpt_path(tmp_path):
    proc = run_entry("audio_cls.eval", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "ckpt_path" in proc.stderr


@pytest.mark.parametrize("overrides,message", [
    (["data.root=/nonexistent/fsdd"], "error: data.root=/nonexistent/fsdd: no such directory"),
    (["model.channels=[8,8,8,8,8,8,8]", "model.padding=valid"], "error: model: an input of"),
    (["model.activation=swish"], "error: model.activation='swish'"),
    (["features.normalize=batch"], "error: features.normalize='batch'"),
    (["loss.weight=[1,2]"], "error: loss.weight: 2 values for 10 classes (in this order: 0, 1, 2,"),
    (["loss.weight=[1,1,1,1,1,1,1,1,1,-3]"], "error: loss.weight=[1, 1, 1, 1, 1, 1, 1, 1, 1, -3]: expected non-negative"),
])
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
    cmd = [sys.executable, "-m", "audio_cls.train", "debug=fast", f"data.root={fsdd_slice}",
           f"paths.log_dir={tmp_path}"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 2
    assert all((r / "metrics.json").is_file() for r in runs)


@pytest.mark.parametrize("script", ["audio-cls-train", "audio-cls-eval", "audio-cls-predict", "audio-cls-export", "audio-cls-cv"])
def test_console_scripts_find_the_configs_from_any_directory(script, tmp_path):
    # Installed entry points are not run as files, so a relative config_path would be looked up as a module.
    exe = Path(sys.executable).with_name(script)
    proc = subprocess.run([str(exe), "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task_name:" in proc.stdout
