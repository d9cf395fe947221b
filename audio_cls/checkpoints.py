"""Loading a trained model from a checkpoint of `audio_cls.train`, and deciding whether to trust it.

    path -> torch.load(weights_only=True) -> every `_target_` of the saved config checked against
         trusted modules -> feature extractor + network rebuilt from the config -> weights loaded

Used by `audio_cls.eval`, `audio_cls.inference` (and so `predict` and `export`),
`AudioClassifier.from_checkpoint`, and `audio_cls.transfer` (a run started from a trained model). Every way
a file can fail is one ConfigError naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate

from audio_cls.errors import ConfigError
from audio_cls.module import AudioClassifier

# Keys that checkpoints of earlier versions hold in their `features` config: now data.placement and
# augment.spec_augment, neither of which changes what the extractor computes.
MOVED_FEATURE_KEYS = ("placement", "spec_augment")

# Modules whose classes a checkpoint's config may name as `_target_`: instantiating a config calls what it names.
TRUSTED_MODULES = ("audio_cls.", "torch.nn.", "torch.optim.")


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    trusted_modules: tuple[str, ...] = TRUSTED_MODULES,
    module_class: type[AudioClassifier] = AudioClassifier,
) -> AudioClassifier:
    """Rebuild network and feature extractor from the config saved in a checkpoint written by
    `audio_cls.train`, then load the weights.

    Safe on a file from elsewhere: `torch.load(weights_only=True)` unpickles tensors and plain data
    only, and every `_target_` of the saved config must be a class defined under `trusted_modules`
    (this package, torch.nn and torch.optim; add your own package for networks defined outside
    audio_cls), because instantiating a config calls what it names. Every problem (no such file, a
    corrupt or truncated file, another program's checkpoint, weights that do not fit the network the
    config describes) is a ConfigError naming the file.
    """
    checkpoint = read_checkpoint(path, map_location)
    hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
    config = hparams.get("config")
    if not isinstance(config, dict) or not config:
        raise ConfigError(
            f"{path}: no training config saved in it (not written by audio_cls.train); use "
            f"AudioClassifier.load_from_checkpoint(path, net=..., features=...)"
        )
    for key in ("features", "model"):
        if not isinstance(config.get(key), dict) or "_target_" not in config[key]:
            raise ConfigError(f"{path}: its training config has no `{key}` to rebuild the network from")
    if not (config.get("data") or {}).get("sample_rate"):
        raise ConfigError(f"{path}: its training config has no data.sample_rate")
    if not hparams.get("class_names"):
        raise ConfigError(f"{path}: no class_names saved in it")
    for key, node in (
        ("features", config["features"]),
        ("model", config["model"]),
        ("loss", hparams.get("loss")),
        ("optimizer", hparams.get("optimizer")),
        ("scheduler", hparams.get("scheduler")),
    ):
        check_targets(node, key, path, trusted_modules)

    try:
        features = instantiate(features_config(config))
        net = instantiate(config["model"], in_features=features.num_features, num_classes=len(hparams["class_names"]))
        model = module_class(net=net, features=features, **hparams)
    except Exception as err:
        reason = first_line(err)
        if err.__cause__ is not None:  # hydra's InstantiationException names the target, its cause the problem
            reason = f"{reason} {first_line(err.__cause__)}"
        raise ConfigError(f"{path}: cannot rebuild the model from its saved config ({reason})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        # Lightning's message lists every missing/unexpected/mis-shaped tensor; the first says enough.
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise ConfigError(
            f"{path}: its weights do not fit the {config['model']['_target_']} its config describes "
            f"({details[0] if details else first_line(err)})"
        ) from None
    return model


def features_config(config: dict) -> dict:
    """The feature extractor's config of a checkpoint's training config (keys since moved elsewhere left out)."""
    return {k: v for k, v in config["features"].items() if k not in MOVED_FEATURE_KEYS}


def first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch's go on for a paragraph), or the error's type."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(err).__name__


def read_checkpoint(path: str, map_location) -> dict:
    """A checkpoint of audio_cls.train (`load_file`, then its state_dict and hyper_parameters required)."""
    checkpoint = load_file(path, map_location)
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConfigError(
            f"{path}: not a checkpoint of audio_cls.train (no state_dict and hyper_parameters; found {found})"
        )
    return checkpoint


def load_file(path: str, map_location) -> Any:
    """torch.load(weights_only=True) with one clear message per way a file can fail."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        if refused:  # e.g. "GLOBAL mypackage.MyClass was not an allowed global by default"
            name = refused[0].split("GLOBAL ", 1)[-1].split(" ", 1)[0]
            raise ConfigError(
                f"{path}: holds a pickled Python object ({name}) that is not loaded, since loading it "
                f"could run code (torch.load weights_only=True); audio_cls.train checkpoints hold "
                f"only tensors and plain data"
            ) from None
        raise ConfigError(f"{path}: not a readable PyTorch checkpoint ({first_line(err)})") from None
    except Exception as err:  # truncated zip, text, empty file: torch raises RuntimeError, EOFError, KeyError...
        reason = (
            "an empty file"
            if Path(path).stat().st_size == 0
            else f"corrupt, truncated or not a PyTorch file; {type(err).__name__}: {first_line(err)}"
        )
        raise ConfigError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    return checkpoint


def check_targets(node: Any, key: str, path: str, trusted: tuple[str, ...]) -> None:
    """Every `_target_` under `node` must be a class defined in a trusted module. The class is looked
    up by its defining module, so `audio_cls.runs.shutil.rmtree` (reachable through an import) is refused."""
    if isinstance(node, list):
        for item in node:
            check_targets(item, key, path, trusted)
        return
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        target = str(node["_target_"])
        try:
            obj = get_object(target)
        except Exception:
            raise ConfigError(
                f"{path}: {key}._target_={target} cannot be imported here (a checkpoint of another project or version?)"
            ) from None
        module = f"{getattr(obj, '__module__', '')}."
        if not isinstance(obj, type) or not module.startswith(trusted):
            raise ConfigError(
                f"{path}: {key}._target_={target} is not a class of {', '.join(trusted)}; refusing "
                f"to call it (pass trusted_modules=... to load_model if you trust this file)"
            )
    for name, value in node.items():
        if name != "_target_":
            check_targets(value, f"{key}.{name}", path, trusted)
