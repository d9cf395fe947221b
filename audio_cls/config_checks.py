"""Check a composed config before any data is read: every value against the type its `_target_`
declares, a few ranges, and no missing (`???`) values. Each problem is one line naming the key."""

from __future__ import annotations

import inspect
import logging
import types
import typing
from collections.abc import Mapping, Sequence

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from audio_cls.data.splits import STRATIFY
from audio_cls.errors import ConfigError

log = logging.getLogger(__name__)

# Groups whose nodes are built by `_target_`: their values are checked against its signature.
TARGET_GROUPS = (
    "data",
    "features",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "augment.waveform",
    "augment.spec_augment",
)
POSITIVE = (
    "data.batch_size",
    "data.sample_rate",
    "data.duration",
    "trainer.max_epochs",
    "optimizer.lr",
    "features.n_fft",
    "features.hop_length",
    "features.win_length",
    "features.n_mels",
    "features.n_mfcc",
    "features.frame_length",
    "model.hidden_size",
    "model.num_layers",
    "model.num_blocks",
)
NON_NEGATIVE = (
    "data.num_workers",
    "model.dropout",
    "optimizer.weight_decay",
    "loss.label_smoothing",
    "data.val_fraction",
    "data.test_fraction",
    "augment.mixup_alpha",
    "augment.waveform.shift",
)
# Keys with a fixed set of values: a typo stops here, before anything is built or read.
CHOICES = {"data.stratify": STRATIFY}


def check_config(cfg: DictConfig) -> None:
    try:
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {reason}" if key and key not in reason else reason) from None
    for group in TARGET_GROUPS:
        node = config
        for key in group.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "_target_" in node:
            check_types(node, group)
    check_front_end(config)
    task, loss = config.get("task") or {}, config.get("loss") or {}
    if task.get("name") == "multilabel" and str(loss.get("_target_", "")).endswith("CrossEntropyLoss"):
        raise ConfigError("task=multilabel needs a sigmoid loss (loss=bce or loss=focal), not cross entropy")
    from audio_cls.module import THRESHOLD_MODES

    for key in ("thresholds", "frame_thresholds"):
        if key in task and task[key] not in THRESHOLD_MODES:
            raise ConfigError(f"task.{key}={task[key]!r}: expected one of {', '.join(THRESHOLD_MODES)}")
    median = task.get("median_frames", 1)
    if not isinstance(median, int) or isinstance(median, bool) or (median > 1 and median % 2 == 0):
        raise ConfigError(f"task.median_frames={median!r}: must be an odd number of frames (a centred window), or 1")
    from audio_cls import distill, transfer, tta

    transfer.check_settings(config)
    distill.check_settings(config)
    tta.check_settings(config)
    if "augment" in config and "data" in config:  # a training run's: its shift is known now
        tta.from_config(config, config)
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    for key in POSITIVE + NON_NEGATIVE:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or (value == 0 and key in POSITIVE):
                raise ConfigError(f"{key}={value}: must be {'positive' if key in POSITIVE else 'non-negative'}")


def check_front_end(config: dict) -> None:
    """A network that takes one front end only declares it as `takes_features` (config keys and values, e.g.
    HFEncoder's waveform); the run's features config must have them."""
    model, features = config.get("model") or {}, config.get("features") or {}
    try:
        target = get_object(model["_target_"])
    except Exception:
        return  # check_types has said why
    wanted = getattr(target, "takes_features", None) or {}
    for key, value in wanted.items():
        if features.get(key) != value:
            settings = ", ".join(f"{k}={v}" for k, v in wanted.items() if k != "_target_")
            option = getattr(target, "takes_features_option", wanted.get("_target_"))
            raise ConfigError(
                f"features.{key}={features.get(key)}: {target.__name__} takes only features={option} with {settings}"
            )


def check_types(node: dict, group: str) -> None:
    """Compare each value of a `_target_` node with the annotation of that argument."""
    try:
        target = get_object(node["_target_"])
    except Exception:
        raise ConfigError(f"{group}._target_={node['_target_']}: cannot be imported") from None
    hints, parameters, accepts_any = signature_of(target, f"{group}: ")
    for name, value in node.items():
        if name.startswith("_"):
            continue
        if name not in parameters and not accepts_any:
            raise ConfigError(f"{group}.{name}: {node['_target_']} takes no such argument")
        if name in hints and value is not None and not matches(value, hints[name]):
            raise ConfigError(f"{group}.{name}={value!r}: expected {describe(hints[name])}")


def signature_of(target, where: str = "") -> tuple[dict, dict, bool]:
    """Annotations and parameters of a callable or class, following **kwargs up the class hierarchy
    (a dataset's own arguments plus those it passes on to AudioDataModule), and to the class named by
    `passes_kwargs_to` where a class declares one (a CNN's `**conv` goes to ConvStack). What cannot be
    read is logged as a warning (prefixed by `where`) instead of silently going unchecked."""
    hints, parameters = {}, {}
    inits, forwarded_init, filled = [target], None, set()
    if inspect.isclass(target):
        inits = []
        for cls in inspect.getmro(target):
            if "__init__" in cls.__dict__:
                inits.append(cls.__dict__["__init__"])
            forwarded = cls.__dict__.get("passes_kwargs_to")
            if forwarded is not None:  # its **kwargs go to `forwarded`, less the arguments it fills itself
                forwarded_init = forwarded.__init__
                inits.append(forwarded_init)
                filled = set(cls.__dict__.get("fills_arguments", ()))
                break
    name = _name(target)
    for init in inits:
        try:
            own = inspect.signature(init).parameters
        except (TypeError, ValueError) as err:  # builtins without a signature
            log.warning(
                "%scannot read the signature of %s (%s); its config keys and values are not checked", where, name, err
            )
            return hints, parameters, True
        hints = {**type_hints(init, name, where), **hints}
        if init is forwarded_init:
            own = {k: p for k, p in own.items() if k not in filled}
        parameters = {**{k: p for k, p in own.items() if p.kind is not p.VAR_KEYWORD}, **parameters}
        if not any(p.kind is p.VAR_KEYWORD for p in own.values()):
            return hints, parameters, False
    return hints, parameters, True


def type_hints(function, name: str, where: str = "") -> dict:
    """typing.get_type_hints of `function`; when some annotations do not evaluate (a name imported only
    under TYPE_CHECKING, a typo in a string annotation), the others one by one, and a warning for each that
    does not, so that one bad annotation leaves the rest checked."""
    try:
        return typing.get_type_hints(function)
    except Exception:
        pass
    hints = {}
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    for argument, annotation in inspect.get_annotations(function).items():
        try:
            hints.update(
                typing.get_type_hints(types.SimpleNamespace(__annotations__={argument: annotation}), namespace)
            )
        except Exception as err:
            if argument != "return":
                log.warning(
                    "%sthe annotation of %s argument %s (%r) does not evaluate (%s: %s); its value is not type-checked",
                    where,
                    name,
                    argument,
                    annotation,
                    type(err).__name__,
                    err,
                )
    return hints


def _name(target) -> str:
    return f"{getattr(target, '__module__', None) or '?'}.{getattr(target, '__qualname__', repr(target))}"


def matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if hint is type(None):  # the null of an optional setting, and nothing else
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is torch.Tensor:  # a config's list or word (loss.weight=balanced) becomes a tensor later, checked there
        return True
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else typing.Any  # list[int], tuple[int, ...]: every element an int
        return all(matches(v, item) for v in value)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, dict)
    return True  # classes, callables, ...: not something a YAML value can be checked against


def describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint) if a is not torch.Tensor)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple, Sequence) and args:
        return f"list of {describe(args[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
