"""Tune a training config: `python -m audio_cls.tune [experiment=NAME] [any train override] [tune.KEY=VALUE]`.

    the training run's config -> datamodule, network, AudioClassifier (as audio_cls.train builds them)
    -> Lightning's batch-size scaler (tune.batch_size; the largest data.batch_size that fits in the device's memory)
    -> Lightning's learning-rate range test (tune.lr_find; at that batch size)
    -> lr_find.png, lr_find.csv, tune.json (the suggested optimizer.lr and data.batch_size, and the command that
       trains with them) in the run directory; with tune.apply=true, that training run in <run dir>/train/

Both tools leave the weights as they found them (Lightning restores them), and neither is a search: the range
test suggests the learning rate where the loss falls fastest, a starting point to confirm with a short sweep.
Both train the network as the `transfer` settings train it (`as_the_run_starts`): a linear probe's backbone
frozen, a slowed-down backbone at its fraction of the rate.
"""

from __future__ import annotations

import csv
import json
import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, open_dict
from torch.optim.optimizer import register_optimizer_step_pre_hook

from audio_cls import CONF_DIR
from audio_cls.errors import ConfigError
from audio_cls.model.layers import backbone_parameters
from audio_cls.module import AudioClassifier
from audio_cls.runs import run_task, write_json
from audio_cls.train import build_run, train
from audio_cls.transfer import freeze_backbone, thaw_backbone

log = logging.getLogger(__name__)


def tune(cfg: DictConfig) -> dict:
    settings = cfg.tune
    check_settings(cfg)
    output_dir = Path(cfg.paths.output_dir)
    # No checkpoints, early stopping or loggers of the training config: the tuner's short fits are not a run.
    # max_epochs=-1: the tuner counts steps (num_training, steps_per_trial), however few batches an epoch has.
    trainer = instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False, max_epochs=-1)
    scale = settings.batch_size
    if scale == "auto":  # the scaler finds the largest batch that fits in a GPU's memory
        scale = not isinstance(trainer.accelerator, CPUAccelerator) and cfg.data.get("max_batch_seconds") is None
        log.info(
            "tune.batch_size=auto: %s",
            "scaling data.batch_size"
            if scale
            else "not scaling (on the CPU, or "
            "data.max_batch_seconds sets the batches); tune.batch_size=true scales it anyway",
        )
    datamodule, module, _ = build_run(cfg)
    tuner = Tuner(trainer)
    suggested: dict = {}
    if scale:
        with as_the_run_starts(module, cfg.transfer):
            size = tuner.scale_batch_size(
                module,
                datamodule=datamodule,
                mode=settings.batch_size_mode,
                steps_per_trial=settings.steps_per_trial,
                init_val=datamodule.batch_size,
                max_val=settings.max_batch_size,
            )
        suggested["data.batch_size"] = int(size)
        log.info("Batch-size scaler: data.batch_size=%d (from %d)", size, cfg.data.batch_size)

    if settings.lr_find:
        with as_the_run_starts(module, cfg.transfer):
            finder = tuner.lr_find(
                module,
                datamodule=datamodule,
                min_lr=settings.min_lr,
                max_lr=settings.max_lr,
                num_training=settings.num_training,
                mode=settings.lr_mode,
                early_stop_threshold=settings.early_stop_threshold,
                update_attr=False,  # the rate is optimizer.lr in the config: tune.json and tune.apply set it
            )
        if finder is None:
            raise ConfigError("tune.lr_find: Lightning's range test ran no steps (trainer.fast_dev_run?)")
        lr = suggest_lr(finder.results["lr"], finder.results["loss"], settings.lr_mode)
        write_range_test(output_dir, finder.results)
        plot_range_test(finder.results, lr).savefig(output_dir / "lr_find.png", dpi=120, bbox_inches="tight")
        if lr is None:
            log.warning(
                "lr_find: no suggestion: %d steps ran (fewer than 12, or no finite loss); see %s",
                len(finder.results["lr"]),
                output_dir / "lr_find.csv",
            )
        else:
            suggested["optimizer.lr"] = float(lr)
            log.info(
                "Learning-rate range test: optimizer.lr=%.3g (was %g); plot in %s",
                lr,
                cfg.optimizer.lr,
                output_dir / "lr_find.png",
            )

    overrides = [
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in suggested.items()
    ]
    kept = [o for o in _task_overrides() if o.split("=", 1)[0].lstrip("+~") not in suggested]
    command = shlex.join(["python", "-m", "audio_cls.train", *kept, *overrides])
    result = {"suggested": suggested, "command": command}
    (output_dir / "tune.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("To train with these values: %s", command)
    if settings.apply and suggested:
        trained = train(_applied(cfg, suggested, output_dir / "train"))
        write_json(output_dir / "train" / "metrics.json", {"status": "finished", **trained})  # as a training run's
        result["train"] = {k: v for k, v in trained.items() if isinstance(v, (int, float, str))}
    return result


def check_settings(cfg: DictConfig) -> None:
    settings = cfg.tune
    for key in ("num_training", "steps_per_trial", "max_batch_size"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"tune.{key}={value!r}: must be a positive integer")
    for key in ("min_lr", "max_lr"):
        if isinstance(settings[key], bool) or not isinstance(settings[key], (int, float)):
            raise ConfigError(f"tune.{key}={settings[key]!r}: must be a number")
    if cfg.trainer.get("fast_dev_run"):
        raise ConfigError("tune: trainer.fast_dev_run (debug=fast) runs one batch, too few to tune anything")
    if settings.batch_size not in (True, False, "auto"):
        raise ConfigError(f"tune.batch_size={settings.batch_size!r}: expected true, false or auto")
    if settings.batch_size_mode not in ("power", "binsearch"):
        raise ConfigError(f"tune.batch_size_mode={settings.batch_size_mode!r}: expected power or binsearch")
    if settings.batch_size is True and cfg.data.get("max_batch_seconds") is not None:
        raise ConfigError(
            "tune.batch_size: data.max_batch_seconds fills batches by duration, not by data.batch_size; "
            "set data.max_batch_seconds=null to scale the batch size, or tune.batch_size=false"
        )
    if not 0 < settings.min_lr < settings.max_lr:
        raise ConfigError(f"tune.min_lr={settings.min_lr}, tune.max_lr={settings.max_lr}: need 0 < min_lr < max_lr")
    if settings.lr_mode not in ("exponential", "linear"):
        raise ConfigError(f"tune.lr_mode={settings.lr_mode!r}: expected exponential or linear")
    if settings.batch_size is not False and settings.max_batch_size < cfg.data.batch_size:
        raise ConfigError(
            f"tune.max_batch_size={settings.max_batch_size} is below data.batch_size={cfg.data.batch_size}, "
            "where the scaler starts"
        )
    if not settings.lr_find and not settings.batch_size:
        raise ConfigError("tune.lr_find=false and tune.batch_size=false: nothing to tune")
    if cfg.trainer.get("devices", 1) not in (1, "1") or cfg.trainer.get("num_nodes", 1) != 1:
        raise ConfigError("tune: Lightning's tuner runs on one device; use trainer.devices=1 (then train with DDP)")


@contextmanager
def as_the_run_starts(module: AudioClassifier, settings: DictConfig) -> Iterator[None]:
    """The network as the `transfer` settings train it for most of the run, for the tuner's short fits. The
    tuner's trainer has no callbacks (FreezeBackbone is one; Lightning's tuners would replace them anyway), and
    Lightning's range test sets every parameter group to the rate it sweeps. Inside: the backbone frozen as
    `transfer.linear_probe` freezes it, or kept at `transfer.backbone_lr_scale` times the head's rate before every
    optimizer step (a global optimizer hook, removed on the way out, as the backbone is thawed). Under
    `transfer.freeze_epochs` the backbone is left trainable: the run trains it for all but its first epochs, and a
    batch size found with it frozen would run out of memory when it thaws."""
    frozen, hooks = [], []
    if settings.linear_probe:
        frozen = freeze_backbone(module.net)
    if settings.backbone_lr_scale != 1:
        slower = {id(p) for p in backbone_parameters(module.net)}

        def backbone_at_its_scale(optimizer, args, kwargs) -> None:
            groups = optimizer.param_groups  # configure_optimizers: the head (and the rest), then the backbone
            if len(groups) == 2 and groups[1]["params"] and id(groups[1]["params"][0]) in slower:
                groups[1]["lr"] = groups[0]["lr"] * settings.backbone_lr_scale

        hooks.append(register_optimizer_step_pre_hook(backbone_at_its_scale))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        if frozen:
            thaw_backbone(frozen)


def suggest_lr(lrs: list[float], losses: list[float], mode: str, skip_begin: int = 10, skip_end: int = 1):
    """Lightning's rule, the learning rate where the smoothed loss falls fastest (the first `skip_begin` and last
    `skip_end` steps left out), with the slope taken along the axis the rates were spaced on: log10(lr) in
    exponential mode. Lightning 2.6's `suggestion()` takes it along lr itself, which in exponential mode makes the
    smallest rates' noise look steepest (Lightning-AI/pytorch-lightning#21141; the fix, #21171, is not released).
    None when fewer than two finite losses remain."""
    lr = torch.tensor(lrs[skip_begin : len(lrs) - skip_end], dtype=torch.float64)
    loss = torch.tensor(losses[skip_begin : len(losses) - skip_end], dtype=torch.float64)
    finite = torch.isfinite(loss)
    lr, loss = lr[finite], loss[finite]
    if len(loss) < 2:
        return None
    axis = torch.log10(lr) if mode == "exponential" else lr
    return float(lr[torch.argmin(torch.gradient(loss, spacing=[axis])[0])])


def plot_range_test(results: dict, suggestion: float | None):
    """The range test's smoothed loss against the learning rate, the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4))
    ax.plot(results["lr"], results["loss"])
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.3g}")
        ax.legend()
    figure.tight_layout()
    return figure


def write_range_test(output_dir: Path, results: dict) -> None:
    """lr_find.csv: the learning rate of each step of the range test and the smoothed loss there."""
    with (output_dir / "lr_find.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "loss"])
        writer.writerows(zip(results["lr"], results["loss"]))


def _task_overrides() -> list[str]:
    """The command line's overrides (minus tune.*), to repeat in the suggested training command."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("tune.")]


def _applied(cfg: DictConfig, suggested: dict, output_dir: Path) -> DictConfig:
    applied = cfg.copy()
    with open_dict(applied):
        for key, value in suggested.items():
            section, name = key.split(".")
            applied[section][name] = value
        applied.paths.output_dir = str(output_dir)  # trainer.default_root_dir follows it
    output_dir.mkdir(parents=True, exist_ok=True)
    return applied


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="tune")
def main(cfg: DictConfig) -> float:
    return run_task(tune, cfg)


if __name__ == "__main__":
    main()
