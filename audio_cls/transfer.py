"""Transfer learning: start a training run from a trained model, and freeze or slow down its backbone.

    transfer.init_from=PATH -> torch.load(weights_only=True) -> the checkpoint's features (with their fitted
    normalization statistics) and data.sample_rate become the run's -> data -> the run's network: every tensor
    of the file that fits it by name and shape is loaded, the head is rebuilt when the classes differ

A network's `head` is its classifier and every other child module its backbone (audio_cls/model/layers.py).
`transfer.linear_probe` freezes the backbone throughout and `transfer.freeze_epochs` for the first epochs
(FreezeBackbone); `transfer.backbone_lr_scale` trains it at a fraction of the learning rate (AudioClassifier's
optimizer param groups). `model.init_from`, `model.init_strict` and `optimizer.backbone_lr_scale` are accepted
on train's command line for `transfer.*` (`command_line`). docs/transfer.md has the commands and the measurements.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import BaseFinetuning
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from audio_cls.checkpoints import TRUSTED_MODULES, check_targets, features_config, load_file
from audio_cls.errors import ConfigError
from audio_cls.model.layers import backbone

log = logging.getLogger(__name__)

# The spellings, rewritten to the transfer node's keys before Hydra reads the command line.
ALIASES = {
    "model.init_from": "transfer.init_from",
    "model.init_strict": "transfer.init_strict",
    "optimizer.backbone_lr_scale": "transfer.backbone_lr_scale",
}


@dataclass
class Settings:
    """The `transfer` node of conf/train.yaml (its comments say what each key does)."""

    init_from: str | None = None
    init_strict: bool = False
    freeze_epochs: int = 0
    linear_probe: bool = False
    backbone_lr_scale: float = 1.0


def command_line(args: list[str]) -> list[str]:
    """Hydra overrides with ALIASES' keys replaced (`model.init_from=a.ckpt` -> `transfer.init_from=a.ckpt`)."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+")
        if sep and bare in ALIASES:  # `+key=`: the key exists in `transfer`, so it is set, not added
            arg = f"{'++' if key.startswith('++') else ''}{ALIASES[bare]}={value}"
        out.append(arg)
    return out


def check_settings(config: dict) -> None:
    """The `transfer` node of a resolved config: types, ranges and settings that contradict each other."""
    from audio_cls.config_checks import describe, matches

    node = config.get("transfer")
    if node is None:
        return
    hints = typing.get_type_hints(Settings)
    for key, value in node.items():
        if key in hints and not matches(value, hints[key]):
            raise ConfigError(f"transfer.{key}={value!r}: expected {describe(hints[key])}")
    s = Settings(**{f.name: node[f.name] for f in fields(Settings) if f.name in node})
    if s.freeze_epochs < 0:
        raise ConfigError(f"transfer.freeze_epochs={s.freeze_epochs}: must be non-negative")
    if s.backbone_lr_scale <= 0:
        raise ConfigError(
            f"transfer.backbone_lr_scale={s.backbone_lr_scale}: must be positive (a frozen backbone is "
            f"transfer.linear_probe=true)"
        )
    if s.linear_probe and (s.freeze_epochs or s.backbone_lr_scale != 1):
        key = "freeze_epochs" if s.freeze_epochs else "backbone_lr_scale"
        raise ConfigError(
            f"transfer.{key}={getattr(s, key)}: has no effect with transfer.linear_probe=true (the backbone is "
            f"frozen throughout)"
        )
    max_epochs = (config.get("trainer") or {}).get("max_epochs")
    if s.freeze_epochs and isinstance(max_epochs, int) and s.freeze_epochs >= max_epochs:
        raise ConfigError(
            f"transfer.freeze_epochs={s.freeze_epochs}: the backbone would never be trained in "
            f"trainer.max_epochs={max_epochs} (transfer.linear_probe=true freezes it throughout)"
        )
    if s.init_strict and s.init_from is None:
        raise ConfigError("transfer.init_strict=true: there is no transfer.init_from to load strictly")
    if s.init_from is None and (s.linear_probe or s.freeze_epochs):
        log.warning("transfer: freezing a randomly initialized backbone (no transfer.init_from)")


def callbacks(cfg: DictConfig) -> list:
    """The callbacks the `transfer` settings need: FreezeBackbone for linear probing or freeze_epochs."""
    settings = cfg.get("transfer")
    if settings is None:
        return []
    if settings.linear_probe:
        return [FreezeBackbone()]
    return [FreezeBackbone(settings.freeze_epochs)] if settings.freeze_epochs else []


def freeze_backbone(net: nn.Module) -> list[nn.Module]:
    """Freeze `net`'s backbone (`audio_cls.model.layers.backbone`) as linear probing trains it: its parameters
    (requires_grad=False, so the optimizer skips them) and its batch-norm statistics (eval mode, which also
    switches its dropout off). Returns the backbone's modules (`thaw_backbone` undoes it)."""
    modules = backbone(net)
    BaseFinetuning.freeze(modules, train_bn=False)
    for module in modules:
        module.eval()
    return modules


def thaw_backbone(modules: list[nn.Module]) -> None:
    """Train the modules `freeze_backbone` froze again, in train mode."""
    BaseFinetuning.make_trainable(modules)
    for module in modules:
        module.train()


class FreezeBackbone(BaseFinetuning):
    """Freezes the network's backbone (`audio_cls.model.layers.backbone`: every child of `pl_module.net` but its
    `head`) for the first `epochs` epochs, or throughout when `epochs` is None (linear probing): its parameters
    (requires_grad=False, so the optimizer skips them) and its batch-norm statistics (eval mode, which also
    switches its dropout off). Then it is trained as the rest, in train mode.

    Unlike Lightning's BackboneFinetuning, which adds the backbone to the optimizer as a new param group when it
    unfreezes it, the backbone's parameters are in the optimizer from the start (AudioClassifier's
    configure_optimizers): the scheduler and `transfer.backbone_lr_scale` apply to them throughout, and a resumed
    run finds the same param groups.
    """

    def __init__(self, epochs: int | None = None):
        super().__init__()
        self.epochs = epochs

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.epochs is not None and trainer.world_size > 1:
            # DDP registers the parameters that need gradients when it wraps the model: ones unfrozen later
            # would be trained on each process alone.
            raise ConfigError(
                f"transfer.freeze_epochs={self.epochs}: not with {trainer.world_size} processes (DDP would not "
                f"synchronize the backbone once unfrozen); use transfer.linear_probe or transfer.backbone_lr_scale"
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module) -> None:
        freeze_backbone(pl_module.net)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        """At the start of every training epoch (after Lightning's own start-up, which leaves modes alone)."""
        modules = backbone(pl_module.net)
        if self.epochs is None or epoch < self.epochs:
            for module in modules:
                module.eval()  # validation restores each module's mode as it found it
        elif not all(p.requires_grad for module in modules for p in module.parameters()):
            thaw_backbone(modules)
            log.info("Epoch %d: the backbone is trained from now on (transfer.freeze_epochs=%d)", epoch, self.epochs)


@dataclass
class InitSource:
    """What `transfer.init_from` holds: the network's tensors (keys as in `net.state_dict()`), and where the file
    is a checkpoint of audio_cls.train, its class names and its feature extractor's state."""

    path: str
    weights: dict[str, torch.Tensor]
    class_names: list[str] | None = None
    features_state: dict[str, torch.Tensor] | None = None

    def load_features(self, features: nn.Module) -> None:
        """The checkpoint's feature state (fitted normalization statistics) into the run's extractor, built from
        the same config; `normalize=global` statistics are then not fitted again on the run's data."""
        if not self.features_state:
            return
        try:
            features.load_state_dict(self.features_state)
        except RuntimeError as err:
            raise ConfigError(f"{self.path}: its feature state does not fit its features config ({err})") from None

    def load_network(self, net: nn.Module, class_names: list[str], strict: bool = False) -> None:
        """Load every layer whose tensors fit `net` by name and shape; `head` stays newly initialized when the classes
        differ (other names or order, or for a file without names, other head shapes). Logs what was loaded,
        re-initialized and left out; `strict`: anything left out, in either direction, is a ConfigError."""
        own, theirs = net.state_dict(), self.weights
        head = [k for k in own if in_head(k)]
        fits = {k for k in own if k in theirs and theirs[k].shape == own[k].shape}
        if self.class_names is not None:
            new_classes = list(self.class_names) != list(class_names)
        else:
            new_classes = any(k in theirs and k not in fits for k in head)
        replaced = head if new_classes else []
        # A layer is loaded whole or not at all (not a batch norm's counter without its statistics).
        misfit_layers = {layer(k) for k in own if k not in fits and k not in replaced}
        loaded = [k for k in own if k in fits and k not in replaced and layer(k) not in misfit_layers]
        left_out = [
            *(
                f"{k} ({tuple(theirs[k].shape)} in the file, {tuple(own[k].shape)} here)"
                for k in own
                if k in theirs and k not in fits and k not in replaced
            ),
            *(f"{k} (not in the file)" for k in own if k not in theirs and k not in replaced),
            *(f"{k} (only in the file)" for k in theirs if k not in own and not (new_classes and in_head(k))),
        ]
        if all(in_head(k) for k in loaded):
            raise ConfigError(
                f"{self.path}: none of its backbone's tensors fits this run's {type(net).__name__} (the file has "
                f"{', '.join(list(theirs)[:3])}, ...): give the model settings it was trained with"
            )
        if strict and left_out:
            more = f" and {len(left_out) - 3} more" if len(left_out) > 3 else ""
            raise ConfigError(
                f"transfer.init_strict=true: {self.path} does not fit this run's {type(net).__name__}: "
                f"{', '.join(left_out[:3])}{more}"
            )
        net.load_state_dict({k: theirs[k] for k in loaded}, strict=False)
        log.info("Initialized from %s: %d of %d tensors loaded: %s", self.path, len(loaded), len(own), layers(loaded))
        if replaced:
            if self.class_names is None:
                why = ", ".join(f"{k} {tuple(theirs[k].shape)} -> {tuple(own[k].shape)}" for k in head if k in theirs)
            elif len(self.class_names) != len(class_names):
                why = f"classes {len(self.class_names)} -> {len(class_names)}"
            else:
                why = f"other classes than the file's {', '.join(self.class_names[:5])}"
            log.info("Re-initialized: %s (%s)", ", ".join(replaced), why)
        if left_out:
            log.warning("Left out (kept as initialized here, or unused from the file): %s", ", ".join(left_out))


def in_head(key: str) -> bool:
    """Whether a state-dict key of a network is its head's."""
    return key.split(".")[0] == "head"


def layer(key: str) -> str:
    """The layer (module path) of a state-dict key: blocks.0.0.weight -> blocks.0.0."""
    return key.rpartition(".")[0] or key


def layers(keys: list[str]) -> str:
    """The layers of state-dict keys, in order, once each."""
    return ", ".join(dict.fromkeys(layer(k) for k in keys))


def read_init(cfg: DictConfig) -> InitSource | None:
    """Read `transfer.init_from` (None when unset), before any data is read: a checkpoint of audio_cls.train, or
    a state dict of the network's tensors (`torch.save(net.state_dict(), PATH)`; `net.`-prefixed keys of a whole
    module's state dict are taken too). A checkpoint brings its feature extractor: its features config and
    data.sample_rate replace the run's (see `adopt_features`), its fitted statistics come with `load_features`."""
    path = OmegaConf.select(cfg, "transfer.init_from")
    if path is None:
        return None
    path = str(path)
    loaded = load_file(path, "cpu")
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):  # a Lightning checkpoint
        hparams, state = loaded.get("hyper_parameters") or {}, loaded["state_dict"]
        config, class_names = hparams.get("config"), hparams.get("class_names")
        weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        if isinstance(config, dict) and isinstance(config.get("features"), dict) and config.get("data"):
            adopt_features(cfg, path, features_config(config), config["data"]["sample_rate"])
        else:
            log.info("%s holds no training config: this run's features apply, fitted on its data", path)
            features = None
    elif isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        net_keys = any(k.startswith("net.") for k in loaded)
        weights = {k.removeprefix("net."): v for k, v in loaded.items() if k.startswith("net.") or not net_keys}
        class_names, features = None, None
        log.info("%s is a state dict without a training config: this run's features apply, fitted on its data", path)
    else:
        found = sorted(loaded)[:5] if isinstance(loaded, Mapping) else type(loaded).__name__
        raise ConfigError(f"{path}: neither a checkpoint of audio_cls.train nor a state dict (found {found})")
    if not weights:
        raise ConfigError(f"{path}: holds no network tensors (no net.* keys in its state_dict)")
    return InitSource(path, weights, list(class_names) if class_names else None, features)


def adopt_features(cfg: DictConfig, path: str, features: dict, sample_rate: int) -> None:
    """Make a checkpoint's features config and data.sample_rate the run's. A `features=NAME`, `features.KEY=VALUE`
    or `data.sample_rate=N` override on the command line that disagrees with them is a ConfigError; other
    differences (the config's defaults, an experiment's choice) are logged."""
    from audio_cls.config_checks import check_types

    check_targets(features, "features", path, TRUSTED_MODULES)
    run = OmegaConf.to_container(cfg.features, resolve=True)
    theirs = OmegaConf.create({"features": features, "data": {"sample_rate": sample_rate}})
    for override in HydraConfig.get().overrides.task if HydraConfig.initialized() else []:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "features":
            differ = differences(run, features, ignore=("sample_rate",))  # the rate is data.sample_rate's
        elif key.startswith("features.") or key == "data.sample_rate":
            wanted, trained = OmegaConf.select(cfg, key), OmegaConf.select(theirs, key)
            differ = f"{key}={trained} there" if wanted != trained else ""
        else:
            continue
        if differ:
            raise ConfigError(
                f"{key}={value}: {path} was trained on other features ({differ}); a run started from it keeps "
                f"them (leave the override out, or train from scratch)"
            )
    differ = differences(run, features)
    with open_dict(cfg):
        cfg.features = features
        cfg.data.sample_rate = sample_rate
    check_types(features, "features")
    log.info(
        "Features of %s: %s at %d Hz%s",
        path,
        features["_target_"].rpartition(".")[2],
        sample_rate,
        f" (this config's differed: {differ})" if differ else "",
    )


def differences(ours: dict, theirs: dict, ignore: tuple[str, ...] = ()) -> str:
    """The keys two flat configs disagree on, as `key=OURS -> THEIRS`."""
    keys = [k for k in dict.fromkeys([*ours, *theirs]) if k not in ignore and ours.get(k) != theirs.get(k)]
    return ", ".join(f"{k}={ours.get(k)} -> {theirs.get(k)}" for k in keys)
