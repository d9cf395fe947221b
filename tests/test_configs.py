"""Every config composes and builds: experiments, and each option of each group."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from audio_cls.module import AudioClassifier
from audio_cls.runs import instantiate_group
from conftest import REPO

CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


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
    module = AudioClassifier(net, features, [str(i) for i in range(num_classes)], optimizer=config["optimizer"],
                             scheduler=config["scheduler"], loss=config["loss"], config=config)
    logits = module(torch.randn(2, frames, features.num_features), torch.tensor([frames, frames // 2]))
    assert logits.shape == (2, num_classes)
    return features, net, module


def test_experiments_exist():
    assert {"fsdd_cnn", "fsdd_lstm", "seed_conv1d", "seed_lstm"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    build_everything(cfg)
    assert instantiate_group(cfg.callbacks) and instantiate_group(cfg.logger)
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks),
                          logger=instantiate_group(cfg.logger), accelerator="cpu")
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_default_is_fsdd_cnn(tmp_path):
    default = OmegaConf.to_container(compose_train([], tmp_path), resolve=True)
    explicit = OmegaConf.to_container(compose_train(["experiment=fsdd_cnn"], tmp_path), resolve=True)
    explicit.pop("tags")
    assert default == explicit


def test_seed_experiments_reproduce_the_note(tmp_path):
    _, net, _ = build_everything(compose_train(["experiment=seed_conv1d"], tmp_path))
    conv = net.blocks[0][0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (256, 100, (2,), (0,))
    _, lstm, _ = build_everything(compose_train(["experiment=seed_lstm"], tmp_path))
    assert (lstm.lstm.hidden_size, lstm.lstm.num_layers, lstm.lstm.batch_first, lstm.readout) == (64, 3, True, "last")


@pytest.mark.parametrize("group,option", [(g, o) for g in ("features", "model", "optimizer", "scheduler", "loss")
                                          for o in options(g)])
def test_each_group_option_builds(group, option, tmp_path):
    module = build_everything(compose_train([f"{group}={option}"], tmp_path))[2]
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
