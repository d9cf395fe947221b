"""`python -m audio_cls.tune`: Lightning's batch-size scaler and learning-rate range test on the composed training
config, the suggested values written down, and tune.apply=true training with them."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch.optim.optimizer import register_optimizer_step_post_hook

import audio_cls.tune
from audio_cls import CONF_DIR
from audio_cls.errors import ConfigError
from audio_cls.model.layers import backbone
from audio_cls.train import build_run
from audio_cls.tune import check_settings, suggest_lr, tune
from helpers import run_entry


def test_the_suggestion_is_where_the_loss_falls_fastest_along_log_lr():
    lrs = np.logspace(-6, 0, 100)
    rng = np.random.default_rng(0)
    # Flat (with noise) up to 1e-4, a fall that is steepest at 1e-2 in log(lr), a blow-up after 1e-1.
    loss = 2.3 - 1.0 / (1 + np.exp(-3 * (np.log10(lrs) + 2))) + 0.01 * rng.standard_normal(100)
    loss[lrs > 0.1] += 5 * (np.log10(lrs[lrs > 0.1]) + 1)
    lr = suggest_lr(lrs.tolist(), loss.tolist(), "exponential")
    assert 10**-2.5 < lr < 10**-1.5
    # Along lr itself (Lightning 2.6's suggestion()) the smallest rates' noise is steepest: what this avoids.
    steepest_along_lr = lrs[10:-1][
        torch.gradient(torch.tensor(loss[10:-1]), spacing=[torch.tensor(lrs[10:-1])])[0].argmin()
    ]
    assert steepest_along_lr < 1e-4
    assert suggest_lr([1e-3, 1e-2], [1.0, float("nan")], "exponential", skip_begin=0, skip_end=0) is None


def tune_config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("tune", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tune.min_lr=0.1", "tune.max_lr=0.01"], "need 0 < min_lr < max_lr"),
        (["tune.lr_find=false", "tune.batch_size=false"], "nothing to tune"),
        (["tune.batch_size=true", "data.max_batch_seconds=20"], "data.max_batch_seconds fills batches by duration"),
        (["tune.lr_mode=cosine"], "tune.lr_mode='cosine'"),
        (["trainer.devices=2"], "runs on one device"),
        (["debug=fast"], "trainer.fast_dev_run"),
        (["tune.num_training=0"], "tune.num_training=0: must be a positive integer"),
        (["tune.max_lr=high"], "tune.max_lr='high': must be a number"),
        (["tune.batch_size=true", "tune.max_batch_size=8"], "tune.max_batch_size=8 is below data.batch_size=64"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_settings(tune_config(tmp_path, *overrides))


@pytest.mark.slow
def test_tune_scales_the_batch_finds_a_rate_and_trains_with_them(tmp_path, fsdd_slice):
    proc = run_entry(
        "audio_cls.tune",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
        "data.batch_size=16",
        "tune.batch_size=true",  # on the CPU too, where nothing runs out of memory: it stops at max_batch_size
        "tune.max_batch_size=64",
        "tune.num_training=30",
        "tune.apply=true",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks.progress_bar=null",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned = json.loads((tmp_path / "tune.json").read_text())
    suggested = tuned["suggested"]
    assert suggested["data.batch_size"] == 64  # 16 -> 32 -> 64, the limit
    assert 1e-6 <= suggested["optimizer.lr"] <= 1.0
    assert tuned["command"].startswith("python -m audio_cls.train ") and "data.batch_size=64" in tuned["command"]
    rows = (tmp_path / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "lr,loss" and len(rows) > 10
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    # tune.apply: a training run with those values, in train/
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    config = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["hyper_parameters"]["config"]
    assert config["data"]["batch_size"] == 64 and config["optimizer"]["lr"] == pytest.approx(suggested["optimizer.lr"])
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    "transfer, slower, backbone_trains",
    [
        (["transfer.backbone_lr_scale=0.1", "transfer.freeze_epochs=1"], 0.1, True),
        (["transfer.linear_probe=true"], None, False),
    ],
)
def test_the_tuner_trains_the_network_as_the_transfer_settings_do(
    tmp_path, fsdd_slice, monkeypatch, transfer, slower, backbone_trains
):
    """The tuner's trainer has no callbacks (FreezeBackbone) and Lightning's range test sets every parameter group
    to the rate it sweeps: the tuner trained a linear probe's frozen backbone, and a slowed-down backbone at the
    head's rate. Now the first is frozen (parameters and batch norm, as the run freezes it) and the second kept
    at its scale of the swept rate; with freeze_epochs the backbone trains, as in all but the run's first epochs.
    Afterwards the network is as it was."""
    cfg = tune_config(
        tmp_path,
        f"data.root={fsdd_slice}",
        *transfer,
        "tune.num_training=12",
        "tune.min_lr=1e-5",
        "tune.max_lr=1",
        "tune.early_stop_threshold=null",  # every step runs, whatever the loss does at the largest rates
    )
    built = {}

    def build_and_keep(cfg):
        built["run"] = build_run(cfg)
        return built["run"]

    monkeypatch.setattr(audio_cls.tune, "build_run", build_and_keep)
    seen = []

    def record(optimizer, args, kwargs):  # the rates each step used (the range test's scheduler steps after it)
        modules = backbone(built["run"][1].net)
        if any(p is optimizer.param_groups[0]["params"][0] for p in built["run"][1].parameters()):  # not LBFGS's
            trainable = {p.requires_grad for m in modules for p in m.parameters()}
            training = {sub.training for m in modules for sub in m.modules()}
            seen.append(([group["lr"] for group in optimizer.param_groups], trainable, training))

    hook = register_optimizer_step_post_hook(record)
    try:
        tune(cfg)
    finally:
        hook.remove()
    assert len(seen) == 12
    rates = np.array([rates for rates, _, _ in seen])
    assert rates[-1, 0] > 1000 * rates[0, 0]  # the sweep
    if slower is not None:
        np.testing.assert_allclose(rates[:, 1], slower * rates[:, 0])
    else:
        assert rates.shape[1] == 1
    assert all(trainable == {backbone_trains} and training == {backbone_trains} for _, trainable, training in seen)
    modules = backbone(built["run"][1].net)
    assert all(p.requires_grad for m in modules for p in m.parameters())
    assert all(m.training for m in built["run"][1].net.modules())
