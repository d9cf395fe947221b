"""callbacks=ema and callbacks=swa: Lightning's weight averaging, as a user runs it (real training on an FSDD slice)."""

import json

import pytest
import torch

from helpers import run_entry

pytestmark = pytest.mark.slow


def train(run_dir, data_root, *overrides):
    proc = run_entry(
        "audio_cls.train",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        "logger=csv",
        "callbacks.progress_bar=null",
        *overrides,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text()), proc.stderr + proc.stdout


def test_ema_checkpoints_hold_the_averaged_weights(tmp_path, fsdd_slice):
    metrics, _ = train(
        tmp_path,
        fsdd_slice,
        "callbacks=ema",
        "trainer.max_epochs=2",
        "callbacks.weight_averaging.multi_avg_fn.decay=0.9",
    )
    assert metrics["status"] == "finished" and 0 <= metrics["test/acc"] <= 1
    checkpoint = torch.load(metrics["best_checkpoint"], weights_only=False)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    weights = [k for k in averaged if k.endswith("weight")]
    assert weights and any(not torch.equal(averaged[k], current[k]) for k in weights)  # the average, not the last
    # The run's test numbers are those of the averaged weights, which eval, predict and export read.
    proc = run_entry(
        "audio_cls.eval", f"ckpt_path={metrics['best_checkpoint']}", "logger=none", f"hydra.run.dir={tmp_path / 'eval'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-4)


def test_swa_averages_the_last_quarter_of_the_epochs(tmp_path, fsdd_slice):
    metrics, log = train(tmp_path, fsdd_slice, "callbacks=swa", "trainer.max_epochs=4")
    assert metrics["status"] == "finished" and 0 <= metrics["test/acc"] <= 1
    assert "SWALR" in log  # the schedule switched to SWA's constant rate for the averaged epochs


def test_swa_with_no_monitor_tests_the_average(tmp_path, fsdd_slice):
    """callbacks=swa with `callbacks.model_checkpoint.monitor=null`: the run tests the averaged weights (with batch
    norm recomputed for them), the checkpoint it names holds them, and eval of that checkpoint gives its numbers."""
    metrics, _ = train(
        tmp_path, fsdd_slice, "callbacks=swa", "trainer.max_epochs=4", "callbacks.model_checkpoint.monitor=null"
    )
    checkpoint = torch.load(metrics["best_checkpoint"], weights_only=False)
    (swa,) = [state for name, state in checkpoint["callbacks"].items() if "StochasticWeightAveraging" in name]
    assert swa["n_averaged"] >= 2  # an average of several weights, not one epoch's
    average = swa["average_model_state"]
    weights = [k for k in checkpoint["state_dict"] if k.endswith("weight")]
    assert weights
    for key in weights:
        torch.testing.assert_close(checkpoint["state_dict"][key], average[key])
    proc = run_entry(
        "audio_cls.eval", f"ckpt_path={metrics['best_checkpoint']}", "logger=none", f"hydra.run.dir={tmp_path / 'eval'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-4)
