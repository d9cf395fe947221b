"""Every config composes and builds: experiments, and each option of each group."""

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from audio_cls.config_checks import check_config, check_types
from audio_cls.errors import ConfigError
from audio_cls.model import CNN1d
from audio_cls.module import AudioClassifier
from audio_cls.runs import instantiate_group, user_message
from helpers import REPO

CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def options(group):
    """The choices of a config group (a leading underscore marks a shared base, not a choice)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def compose_train(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)  # outside a Hydra run there is no hydra:runtime.output_dir
    return cfg


def build_everything(cfg, num_classes=10, frames=40):
    features = instantiate(cfg.features)
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=num_classes)
    config = OmegaConf.to_container(cfg, resolve=True)
    module = AudioClassifier(
        net,
        features,
        [str(i) for i in range(num_classes)],
        optimizer=config["optimizer"],
        scheduler=config["scheduler"],
        loss=config["loss"],
        config=config,
    )
    logits = module(torch.randn(2, frames, features.num_features), torch.tensor([frames, frames // 2]))
    assert logits.shape == (2, num_classes)
    return features, net, module


def test_experiments_exist():
    assert {"fsdd_cnn", "fsdd_lstm", "note_conv1d", "note_lstm"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    build_everything(cfg)
    assert instantiate_group(cfg.callbacks) and instantiate_group(cfg.logger)
    trainer = instantiate(
        cfg.trainer, callbacks=instantiate_group(cfg.callbacks), logger=instantiate_group(cfg.logger), accelerator="cpu"
    )
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_default_is_fsdd_cnn(tmp_path):
    default = OmegaConf.to_container(compose_train([], tmp_path), resolve=True)
    explicit = OmegaConf.to_container(compose_train(["experiment=fsdd_cnn"], tmp_path), resolve=True)
    explicit.pop("tags")
    assert default == explicit


def test_note_experiments_reproduce_the_note(tmp_path):
    _, net, _ = build_everything(compose_train(["experiment=note_conv1d"], tmp_path))
    conv = net.blocks[0][0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (256, 100, (2,), (0,))
    _, lstm, _ = build_everything(compose_train(["experiment=note_lstm"], tmp_path))
    assert (lstm.lstm.hidden_size, lstm.lstm.num_layers, lstm.lstm.batch_first, lstm.readout) == (64, 3, True, "last")


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in ("features", "model", "optimizer", "scheduler", "loss") for o in options(g)]
)
def test_each_group_option_builds(group, option, tmp_path):
    overrides, frames = [f"{group}={option}"], 40
    if (group, option) == ("model", "hf"):  # a pretrained model: a tiny one saved here, on the waveform
        pytest.importorskip("transformers")
        from tiny_hf import save_tiny

        overrides += [f"model.pretrained={save_tiny('whisper', tmp_path / 'whisper')}", "features=raw"]
        frames = 4000
    module = build_everything(compose_train(overrides, tmp_path), frames=frames)[2]
    module.trainer = None
    optim = module.configure_optimizers()
    assert optim is not None


@pytest.mark.parametrize("group", ["trainer", "callbacks", "logger", "debug"])
def test_runtime_groups_compose(group, tmp_path):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        instantiate_group(cfg.callbacks)
        instantiate_group(cfg.logger)
        if group == "trainer" and option not in ("gpu", "mixed", "ddp"):
            instantiate(cfg.trainer, accelerator="cpu", logger=False)


def test_optimizer_and_lr_are_config(tmp_path):
    cfg = compose_train(["optimizer=sgd", "optimizer.lr=0.123", "scheduler=plateau"], tmp_path)
    module = build_everything(cfg)[2]
    opt = module.configure_optimizers()
    assert isinstance(opt["optimizer"], torch.optim.SGD) and opt["optimizer"].param_groups[0]["lr"] == 0.123
    assert isinstance(opt["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_label_smoothing_and_class_weights_reach_the_loss(tmp_path):
    cfg = compose_train(["loss.label_smoothing=0.2", "loss.weight=[1,2,3,4,5,6,7,8,9,10]"], tmp_path)
    crit = build_everything(cfg)[2].criterion
    assert crit.label_smoothing == 0.2 and crit.weight.tolist() == [float(i) for i in range(1, 11)]


def test_unknown_model_is_a_composition_error(tmp_path):
    with pytest.raises(ConfigCompositionException, match="model/transformer"):
        compose_train(["model=transformer"], tmp_path)


# A user's network in a module with postponed annotations, one of which names a type imported only for type
# checkers: typing.get_type_hints fails on the whole signature.
USER_NET = """
from __future__ import annotations
from typing import TYPE_CHECKING
from torch import nn
if TYPE_CHECKING:
    from mypackage.norms import NormConfig

class UserNet(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int = 8, norm: NormConfig | None = None):
        super().__init__()
        self.head = nn.Linear(in_features, num_classes)
"""


def test_unresolvable_annotations_keep_the_other_checks_and_say_so(tmp_path, monkeypatch, caplog):
    (tmp_path / "user_net_module.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    node = {"_target_": "user_net_module.UserNet", "width": 16, "norm": {"kind": "batch"}}
    with caplog.at_level(logging.WARNING, logger="audio_cls.config_checks"):
        check_types(node, "model")  # the values that can be checked are fine; `norm` cannot be checked
    assert len(caplog.records) == 1
    assert (
        caplog.records[0]
        .getMessage()
        .startswith(
            "model: the annotation of user_net_module.UserNet argument norm ('NormConfig | None') does not evaluate"
        )
    )
    with pytest.raises(ConfigError, match=r"model.width='abc': expected int"):
        check_types({**node, "width": "abc"}, "model")
    with pytest.raises(ConfigError, match="model.widht: user_net_module.UserNet takes no such argument"):
        check_types({**node, "widht": 3}, "model")


def test_a_signature_that_cannot_be_read_is_named(caplog):
    with caplog.at_level(logging.WARNING, logger="audio_cls.config_checks"):
        check_types({"_target_": "math.hypot", "x": "not checked"}, "loss")  # a builtin: no signature
    assert "loss: cannot read the signature of math.hypot" in caplog.text


def test_lstm_activation_is_used_or_refused(tmp_path):
    """The shipped LSTM (head_hidden: 0) has no layer for an activation: the YAML leaves it null, and
    setting it is an error naming the key; with a hidden head layer it is used (relu when null)."""
    _, net, _ = build_everything(compose_train(["model=lstm"], tmp_path))
    assert isinstance(net.head, torch.nn.Linear)
    with pytest.raises(Exception) as raised:  # Hydra's instantiate wraps it; the run prints its one line
        build_everything(compose_train(["model=lstm", "model.activation=gelu"], tmp_path))
    assert user_message(raised.value).startswith("model.activation='gelu': has no effect with model.head_hidden=0")
    _, net, _ = build_everything(
        compose_train(["model=lstm", "model.head_hidden=16", "model.activation=gelu"], tmp_path)
    )
    assert isinstance(net.head[1], torch.nn.GELU)
    _, net, _ = build_everything(compose_train(["model=lstm", "model.head_hidden=16"], tmp_path))
    assert isinstance(net.head[1], torch.nn.ReLU)
    for experiment in ("fsdd_lstm", "note_lstm"):  # the experiments built on it still build
        build_everything(compose_train([f"experiment={experiment}"], tmp_path))


class WiderCNN(CNN1d):
    """A network of a user's own on top of CNN1d: its arguments, CNN1d's and (through **conv) ConvStack's."""

    def __init__(self, in_features: int, num_classes: int, extra: int = 1, **kwargs):
        super().__init__(in_features, num_classes, **kwargs)


def test_config_checks_follow_conv_settings_to_the_conv_stack():
    from audio_cls.config_checks import check_types

    check_types({"_target_": "audio_cls.model.CNN1d", "kernel_size": 3, "channels": [8, 8], "readout": "max"}, "model")
    check_types({"_target_": "test_configs.WiderCNN", "extra": 2, "readout": "max", "pool_size": 1}, "model")
    with pytest.raises(ConfigError, match=r"model.kernel_size='x': expected int"):
        check_types({"_target_": "audio_cls.model.CRNN", "kernel_size": "x"}, "model")
    with pytest.raises(ConfigError, match="model.dims: audio_cls.model.CNN1d takes no such argument"):
        check_types({"_target_": "audio_cls.model.CNN1d", "dims": 2}, "model")  # CNN1d sets it itself


@pytest.mark.parametrize(
    "group,key,value,message",
    [
        ("data", "duration", "abc", "data.duration='abc': expected float or null"),
        ("augment.waveform", "speed", True, "augment.waveform.speed=True: expected list of float or null"),
        ("augment.waveform", "gain_db", [1, "x"], r"augment.waveform.gain_db=\[1, 'x'\]: expected"),
    ],
)
def test_optional_settings_take_null_or_their_type_and_nothing_else(group, key, value, message):
    """An optional setting (`float | None`) is checked against its type: null is not a wildcard."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/unused"])
    node = OmegaConf.to_container(OmegaConf.select(cfg, group), resolve=True)
    check_types({**node, key: None}, group)
    with pytest.raises(ConfigError, match=message):
        check_types({**node, key: value}, group)


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.weight=balanced"],
        ["loss.weight=[1,2,3,4,5,6,7,8,9,10]"],
        ["task=multilabel", "loss.pos_weight=balanced"],
    ],
)
def test_documented_class_weights_pass_the_config_check(overrides):
    """loss.weight / loss.pos_weight are tensors to torch; in a config they are a word or a list, which
    audio_cls.train.loss_config turns into one (and checks)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/unused", *overrides])
    check_config(cfg)
