"""What every entry point does with a run: build callbacks and loggers from config, write
metrics.json, log hyperparameters, and turn user errors into one line instead of a traceback."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from audio_cls.errors import AudioClsError, ConfigError

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a group such as `callbacks` or `logger`; null entries are switched off."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Lightning's callback_metrics (tensors) as plain floats, sorted by name."""
    return {k: float(v) for k, v in sorted(metrics.items()) if not isinstance(v, torch.Tensor) or v.numel() == 1}


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader (or a crash) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"channels": [64, 128]}} -> {"model.channels": "[64, 128]"} (TensorBoard takes scalars only)."""
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node if isinstance(node, (int, float, str, bool)) else str(node)}


def hparams_of(config: dict) -> dict[str, Any]:
    """The hyperparameters a sweep compares: data, features, model, loss, optimizer, scheduler, trainer."""
    sections = ("data", "features", "model", "loss", "optimizer", "scheduler", "seed")
    params = flatten({k: config.get(k) for k in sections})
    trainer = config.get("trainer") or {}
    params.update({f"trainer.{k}": str(trainer.get(k)) for k in ("max_epochs", "precision", "accelerator")})
    return params


def log_hparams(loggers: list, config: dict, metrics: dict[str, float]) -> None:
    """Link the run's hyperparameters to its final metrics (TensorBoard HPARAMS tab)."""
    params = hparams_of(config)
    hp_metrics = {
        f"hp/{k.replace('/', '_')}": v
        for k, v in metrics.items()
        if k in ("val/acc_best", "val/acc", "val/mAP_best", "test/acc", "test/mAP", "test/f1", "test/loss")
        and math.isfinite(v)
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
        logger.finalize("success")


def user_message(err: BaseException) -> str | None:
    """One line for an error the user can fix (ours, wrapped by Hydra's instantiate or re-raised from a
    DataLoader worker, or an OmegaConf config error); None for a bug."""
    cause = err
    while cause is not None:
        if isinstance(cause, (AudioClsError, OmegaConfBaseException)):
            lines = [line for line in str(cause).splitlines() if line.strip()]
            if "Original Traceback" in str(cause):  # from a DataLoader worker: the original message is last
                return lines[-1].split(": ", 1)[-1]
            return lines[0] if lines else type(cause).__name__
        cause = cause.__cause__
    if isinstance(err, InstantiationException):
        return " ".join(str(err).split())
    return None


def refuse_to_overwrite(output_dir: Path, outputs: tuple[str, ...] | None = None) -> None:
    """A directory that already holds results is never written over silently: a training run's
    (metrics.json, checkpoints), or with `outputs` those files of another task (predict, export)."""
    if outputs is None:
        earlier = [
            p.name for p in (output_dir / "metrics.json", *(output_dir / "checkpoints").glob("*.ckpt")) if p.is_file()
        ]
        if earlier:
            raise ConfigError(
                f"hydra.run.dir={output_dir} already holds an earlier run ({', '.join(earlier[:3])}); "
                f"pass ckpt_path=last to resume it, or choose a new hydra.run.dir"
            )
        return
    earlier = [name for name in outputs if (output_dir / name).is_file()]
    if earlier:
        raise ConfigError(
            f"output_dir={output_dir} already holds {', '.join(earlier)}; choose another output_dir "
            f"or pass overwrite=true"
        )


def check_writable(output_dir: Path) -> None:
    """Fail now, not after an hour of training, if the run directory cannot take files."""
    probe = output_dir / f".write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"  # ranks may probe at once
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"hydra.run.dir={output_dir}: cannot write there ({err.strerror})") from None
    free_gb = shutil.disk_usage(output_dir).free / 2**30
    if free_gb < 1:
        log.warning("Only %.2f GB free under %s: checkpoints may not fit", free_gb, output_dir)


def run_file_task(
    task: Callable[[DictConfig], dict], cfg: DictConfig, outputs: tuple[str, ...], listed_in: str
) -> None:
    """`run_task` for a task over files (predict, embed), whose result counts `files` and `failed_files`: when some
    could not be read, one line names the file `listed_in` that lists them with their errors, and the command exits
    with status 2 (the rest was done and written)."""
    summary: dict = {}
    run_task(lambda c: summary.update(task(c)) or summary, cfg, reuse_dir=cfg.overwrite, outputs=outputs)
    if summary.get("failed_files"):
        print(
            f"error: {summary['failed_files']} of {summary['files']} files could not be read; they are listed "
            f"with their error in {Path(cfg.paths.output_dir) / listed_in}",
            file=sys.stderr,
        )
        raise SystemExit(2)


def run_task(
    task: Callable[[DictConfig], dict], cfg: DictConfig, reuse_dir: bool = False, outputs: tuple[str, ...] | None = None
) -> float:
    """Run `task` in its run directory and write its metrics.json, finished or failed.

    `task` returns a dict of results (metrics as floats, plus anything JSON can hold).
    `reuse_dir`: the task continues the run already in the directory (train with ckpt_path, cv resume=true)
    or may write over it (overwrite=true); otherwise earlier results stop it (`outputs`: see refuse_to_overwrite).
    Returns the metric named by `optimized_metric`, for Hydra sweepers. A job that fails in a multirun
    returns the worst value (-inf when maximizing) instead of raising, so the rest of the sweep runs and
    sweepers can still rank it (NaN would stop the Optuna sweeper); metrics.json and the sweep report
    say it failed. A user error in a single run prints one line and exits with status 1; a bug raises.
    """
    output_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    worst = -math.inf if cfg.get("optimized_direction", "maximize") == "maximize" else math.inf
    started = time.perf_counter()
    try:
        if not reuse_dir:
            refuse_to_overwrite(output_dir, outputs)
        check_writable(output_dir)
    except ConfigError as err:
        if multirun:
            log.error(str(err))
            return worst
        _exit_with(str(err))
    try:
        result = task(cfg)
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, or SIGTERM (Lightning's SIGTERMException)
        _write_result(
            output_dir,
            {
                "status": "interrupted",
                "error": f"{type(err).__name__}; resume with ckpt_path=last hydra.run.dir={output_dir}",
                "wall_time_s": time.perf_counter() - started,
            },
        )
        if isinstance(err, SIGTERMException):
            raise SystemExit(128 + signal.SIGTERM) from None  # Lightning exits 0 here; a scheduler must see it
        raise
    except Exception as err:
        message = user_message(err)
        if rank_zero_only.rank == 0:
            (output_dir / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
        _write_result(
            output_dir,
            {
                "status": "failed",
                "error": message or f"{type(err).__name__}: {err}",
                "wall_time_s": time.perf_counter() - started,
            },
        )
        if multirun:
            log.error("Job failed: %s (traceback in %s)", message or repr(err), output_dir / "traceback.txt")
            return worst
        if message is None:
            raise  # a bug, not a user error: the traceback is what a developer needs
        _exit_with(message)
    _write_result(output_dir, {"status": "finished", **result, "wall_time_s": time.perf_counter() - started})
    value = float(result.get(cfg.get("optimized_metric"), math.nan))
    return worst if math.isnan(value) else value


def _write_result(output_dir: Path, result: dict) -> None:
    if rank_zero_only.rank == 0:  # under DDP every process runs the task; one writes
        write_json(output_dir / "metrics.json", result)


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
