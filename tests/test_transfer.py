"""Transfer learning (audio_cls/transfer.py): a run started from a trained model's weights and features, the
classifier head rebuilt for other classes, and the backbone frozen (linear probing, freeze_epochs) or slowed
down (backbone_lr_scale)."""

import json
import logging

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from audio_cls.config_checks import check_config
from audio_cls.errors import ConfigError
from audio_cls.model.layers import backbone
from audio_cls.module import AudioClassifier
from audio_cls.transfer import FreezeBackbone, command_line, read_init
from helpers import run_entry, write_tone_dataset
from test_configs import compose_train

SMALL = ["model.channels=[8,16]", "features.n_mels=20"]
DIGITS = [str(d) for d in range(10)]


def build(cfg, num_classes, **module_args):
    """Features, network and AudioClassifier of a composed training config."""
    features = instantiate(cfg.features)
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=num_classes)
    config = OmegaConf.to_container(cfg, resolve=True)
    names = DIGITS[:num_classes]
    module = AudioClassifier(net, features, names, optimizer=config["optimizer"], config=config, **module_args)
    return module


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint as audio_cls.train writes it (state_dict and hyper_parameters with the training config) of a
    small CNN1d over 10 digits, at 8 kHz, with random weights, batch-norm statistics and normalization statistics."""
    torch.manual_seed(0)
    module = build(compose_train(SMALL, tmp_path), 10)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and name.startswith(("net.", "features.norm.")):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
        module.features.norm.fitted.fill_(True)
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path, module


def fine_tune_config(tmp_path, path, *overrides):
    cfg = compose_train([*SMALL, f"transfer.init_from={path}", *overrides], tmp_path)
    check_config(cfg)
    return cfg


def test_head_is_rebuilt_for_other_classes_and_the_backbone_loaded(checkpoint, tmp_path, caplog):
    path, pretrained = checkpoint
    cfg = fine_tune_config(tmp_path, path, "data=folder", "data.root=x", "data.sample_rate=16000")
    caplog.set_level(logging.INFO)
    init = read_init(cfg)
    assert cfg.data.sample_rate == 8000 and cfg.features.sample_rate == 8000  # the checkpoint's features
    module = build(cfg, 3)
    init.load_features(module.features)
    init.load_network(module.net, ["a", "b", "c"])

    trained, own = pretrained.net.state_dict(), module.net.state_dict()
    body = [k for k in own if not k.startswith("head.")]
    assert len(body) == 12 and all(torch.equal(own[k], trained[k]) for k in body)  # batch-norm statistics too
    assert own["head.weight"].shape == (3, 32) and trained["head.weight"].shape == (10, 32)
    assert torch.equal(module.features.norm.mean, pretrained.features.norm.mean)  # the fitted statistics came along
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Initialized from {path}: 12 of 14 tensors loaded: blocks.0.0, blocks.0.1, blocks.1.0, blocks.1.1" in (
        messages
    )
    assert "Re-initialized: head.weight, head.bias (classes 10 -> 3)" in messages
    assert "Left out" not in messages and "Features of" in messages and "sample_rate=16000 -> 8000" in messages


def test_same_classes_keep_the_head(checkpoint, tmp_path):
    path, pretrained = checkpoint
    init = read_init(fine_tune_config(tmp_path, path))
    module = build(compose_train(SMALL, tmp_path), 10)
    init.load_network(module.net, DIGITS)
    assert torch.equal(module.net.head.weight, pretrained.net.head.weight)
    net = build(compose_train(SMALL, tmp_path), 10).net
    init.load_network(net, DIGITS[::-1])  # the same classes in another order: the rows would mean others
    assert not torch.equal(net.head.weight, pretrained.net.head.weight)


def test_a_mismatch_is_logged_or_with_init_strict_an_error(checkpoint, tmp_path, caplog):
    path, pretrained = checkpoint
    cfg = fine_tune_config(tmp_path, path, "model.channels=[8,12]")
    init = read_init(cfg)
    net = build(cfg, 10).net
    with pytest.raises(ConfigError, match=r"init_strict=true: .*: blocks\.1\.0\.weight \(\(16, 8, 3\) in the file, "):
        init.load_network(net, DIGITS, strict=True)
    init.load_network(net, DIGITS)
    assert torch.equal(net.state_dict()["blocks.0.0.weight"], pretrained.net.state_dict()["blocks.0.0.weight"])
    assert (
        "Left out (kept as initialized here, or unused from the file): blocks.1.0.weight ((16, 8, 3) in the file, "
        in (caplog.text)
    )
    with pytest.raises(ConfigError, match="none of its backbone's tensors fits this run's LSTMClassifier"):
        init.load_network(build(compose_train(["model=lstm"], tmp_path), 10).net, DIGITS)
    with pytest.raises(ConfigError, match="no transfer.init_from to load strictly"):
        check_config(compose_train(["transfer.init_strict=true"], tmp_path))


def test_a_state_dict_of_the_network(checkpoint, tmp_path, caplog):
    path, pretrained = checkpoint
    state = tmp_path / "net.pt"
    torch.save(pretrained.net.state_dict(), state)
    cfg = fine_tune_config(tmp_path, state, "data.sample_rate=16000")
    caplog.set_level(logging.INFO)
    init = read_init(cfg)
    assert cfg.data.sample_rate == 16000 and init.features_state is None  # no features in a state dict
    net = build(cfg, 4).net
    init.load_network(net, DIGITS[:4], strict=True)
    assert torch.equal(net.state_dict()["blocks.1.0.weight"], pretrained.net.state_dict()["blocks.1.0.weight"])
    assert "a state dict without a training config: this run's features apply" in caplog.text
    assert "Re-initialized: head.weight, head.bias (head.weight (10, 32) -> (4, 32), head.bias (10,) -> (4,))" in (
        caplog.text
    )
    torch.save({"weights": [1, 2]}, state)
    with pytest.raises(ConfigError, match="neither a checkpoint of audio_cls.train nor a state dict"):
        read_init(cfg)


def test_the_issue_spellings_on_the_command_line():
    assert command_line(["model.init_from=a.ckpt", "+model.init_strict=true", "optimizer.backbone_lr_scale=0.1"]) == [
        "transfer.init_from=a.ckpt",
        "transfer.init_strict=true",
        "transfer.backbone_lr_scale=0.1",
    ]
    assert command_line(["model.channels=[8]", "model.init_fromage=1", "-m"]) == [
        "model.channels=[8]",
        "model.init_fromage=1",
        "-m",
    ]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["transfer.linear_probe=true", "transfer.freeze_epochs=2"], "freeze_epochs=2: has no effect with"),
        (["transfer.freeze_epochs=30"], "never be trained in trainer.max_epochs=30"),
        (["transfer.backbone_lr_scale=0"], "must be positive"),
        (["transfer.freeze_epochs=1.5"], "transfer.freeze_epochs=1.5: expected int"),
    ],
)
def test_contradicting_settings_stop_at_start_up(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_train(overrides, tmp_path))


# --- freezing ---------------------------------------------------------------------------------------------------
def batches(n=4, num_classes=3):
    """Padded batches of random features, as the datamodule hands them to training_step."""
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "inputs": torch.randn(6, 30, 20, generator=gen) * 3 + 1,
            "lengths": torch.tensor([30, 28, 25, 30, 22, 30]),
            "targets": torch.randint(0, num_classes, (6,), generator=gen),
        }
        for _ in range(n)
    ]


class Snapshots(L.Callback):
    """The backbone's state (weights and batch-norm statistics) and the head's weights after every epoch, and in
    every epoch whether some module of the backbone ran its training steps in train mode (batch statistics)."""

    def __init__(self):
        self.epochs, self.train_mode = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.train_mode.append(False)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.train_mode[-1] |= any(m.training for b in backbone(pl_module.net) for m in b.modules())

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(state(pl_module.net))


def state(net):
    """(the backbone's state dict, the head's weights), copied."""
    body = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    return body, net.head.weight.detach().clone()


def fit(tmp_path, epochs, callbacks, **module_args):
    torch.manual_seed(0)
    module = build(compose_train([*SMALL, "scheduler=none"], tmp_path), 3, **module_args)
    start = state(module.net)
    snapshots = Snapshots()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[*callbacks, snapshots],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(batches(), batch_size=None), DataLoader(batches(1), batch_size=None))
    return [start, *snapshots.epochs], snapshots.train_mode


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_linear_probe_trains_the_head_only(tmp_path):
    states, train_mode = fit(tmp_path, 2, [FreezeBackbone()])
    (body0, head0), (body2, head2) = states[0], states[-1]
    assert any(k.endswith("running_mean") for k in body0) and same(body0, body2)  # weights and statistics
    assert not torch.equal(head0, head2)
    assert train_mode == [False, False]  # batch norm normalizes with its running statistics, dropout is off


def test_freeze_epochs_then_the_backbone_trains(tmp_path):
    states, train_mode = fit(tmp_path, 3, [FreezeBackbone(2)])
    assert train_mode == [False, False, True]
    bodies = [body for body, _ in states]
    assert same(bodies[0], bodies[1]) and same(bodies[0], bodies[2])  # epochs 0 and 1: frozen
    changed = [k for k in bodies[0] if not torch.equal(bodies[0][k], bodies[3][k])]
    assert {"blocks.0.0.weight", "blocks.0.1.running_mean", "blocks.1.1.running_var"} <= set(changed)
    assert all(not torch.equal(states[i][1], states[i + 1][1]) for i in range(3))  # the head learns throughout


def test_backbone_lr_scale_is_a_second_param_group_the_scheduler_scales(tmp_path):
    cfg = compose_train([*SMALL, "optimizer.lr=0.01"], tmp_path)
    module = build(cfg, 3, backbone_lr_scale=0.1)
    module.hparams.scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    head, body = optimizer.param_groups
    assert (head["lr"], body["lr"]) == (0.01, pytest.approx(0.001))
    assert {id(p) for p in body["params"]} == {id(p) for m in backbone(module.net) for p in m.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in module.net.head.parameters()}
    for _ in range(15):  # cosine over trainer.max_epochs=30: half-way, both at half their rate
        optimizer.step()
        scheduler.step()
    assert (head["lr"], body["lr"]) == (pytest.approx(0.005), pytest.approx(0.0005))
    assert len(build(cfg, 3).configure_optimizers().param_groups) == 1  # the default: one group, as before


# --- from the command line ---------------------------------------------------------------------------------------
def test_a_conflicting_features_override_is_an_error(checkpoint, tmp_path):
    path, _ = checkpoint
    proc = run_entry("audio_cls.train", f"model.init_from={path}", "features.n_mels=40", f"hydra.run.dir={tmp_path}/r")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: features.n_mels=40: {path} was trained on other features (features.n_mels=20 there); a run "
        f"started from it keeps them (leave the override out, or train from scratch)"
    )


@pytest.mark.slow
def test_fine_tune_a_trained_model_from_the_command_line(trained_checkpoint, tmp_path):
    """A model trained on 10 digits, fine-tuned with a linear probe on 3 classes of tones at 16 kHz."""
    write_tone_dataset(tmp_path / "tones", per_class=6)
    run = tmp_path / "run"
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        "data=folder",
        f"data.root={tmp_path / 'tones'}",
        "data.batch_size=8",
        "model.channels=[32,32,32]",
        f"model.init_from={trained_checkpoint}",
        "model.init_strict=true",
        "transfer.linear_probe=true",
        "logger=none",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
    log = (run / "train.log").read_text()
    assert "Re-initialized: head.weight, head.bias (classes 10 -> 3)" in log
    assert "Features of" in log and "at 8000 Hz" in log
    tuned = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    pretrained = torch.load(trained_checkpoint, weights_only=True)
    assert tuned["hyper_parameters"]["config"]["features"] == pretrained["hyper_parameters"]["config"]["features"]
    for key, value in pretrained["state_dict"].items():
        if key.startswith(("net.blocks", "features.")):  # the linear probe left the backbone as it was
            assert torch.equal(tuned["state_dict"][key], value), key
