"""The template learns: through the training entry point, as users run it, on the small FSDD slice
(2 speakers x 10 digits; recordings 5-9 train/val, 0-4 test).

Measured (CPU): the overfit run fits its batch by epoch 2 (train/acc 1.0 from then on, loss 0.004 after 15
epochs); the 5-epoch run reaches test/acc 0.88-0.94 (chance: 0.10). The bounds below leave a wide margin
for other seeds and machines, and fail for a training loop that does not learn (labels not aligned with
their inputs, gradients not reaching the weights, features that carry no information).
"""

import csv
import json
import math

import pytest

from helpers import run_entry

# Every test trains through the audio_cls.train entry point.
pytestmark = pytest.mark.slow

CHANCE = 0.1  # ten digits


def test_overfit_debug_config_fits_one_batch(fsdd_slice, tmp_path):
    # debug=overfit as shipped (one batch, no early stopping), on a batch of 16 with fewer epochs than its 60.
    proc = run_entry(
        "audio_cls.train",
        "debug=overfit",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=16",
        "trainer.max_epochs=15",
        "logger=csv",
        "test=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs"] == 15
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        epochs = [row for row in csv.DictReader(f) if row["train/acc"]]
    assert len(epochs) == 15
    # Fitted, and the same batch every epoch: not one lucky epoch among different batches.
    assert all(float(row["train/acc"]) >= 0.95 for row in epochs[-5:]), epochs
    assert float(epochs[-1]["train/loss"]) < 0.1 * math.log(10), epochs  # a tenth of a uniform guess's loss
    assert math.isclose(metrics["train/acc"], float(epochs[-1]["train/acc"]), rel_tol=1e-6)


def test_short_run_beats_chance_by_a_wide_margin(fsdd_slice, tmp_path):
    # The shipped defaults (the default CNN1d on log-mel, feature placement, workers, cosine schedule), 5 epochs.
    proc = run_entry(
        "audio_cls.train",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=5",
        "data.batch_size=16",
        "trainer.accelerator=cpu",
        "logger=none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert sum(map(sum, metrics["test/confusion_matrix"])) == 100  # the whole test split of the slice
    assert metrics["test/acc"] >= 0.6 > 5 * CHANCE, metrics
    assert metrics["test/f1"] >= 0.5, metrics
    assert metrics["test/loss"] < 0.75 * math.log(10), metrics  # measured 0.74-0.77; a uniform guess: 2.30
