"""What every entry point does with a run: build callbacks and loggers from config, write
metrics.json, log hyperparameters, figures and tables to every tracker (TensorBoard, MLflow, W&B), and turn
user errors into one line instead of a traceback."""

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
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
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


def log_hparams(loggers: list, config: dict, metrics: dict[str, float], best_checkpoint: str = "") -> None:
    """Log the run's hyperparameters (flattened) with its final metrics and the best checkpoint's path, then close
    each logger. TensorBoard links them in its HPARAMS tab (`hp/*`); MLflow gets the hyperparameters as params,
    every final metric it has not had yet (train_time_s, epochs, the detection metrics) and the path as the tag
    `best_checkpoint`; W&B gets them in the run's config and summary, and its run is finished, so that the next
    run in this process (a cross-validation fold, a sweep's job) gets one of its own."""
    params = hparams_of(config)
    hp_metrics = {
        f"hp/{k.replace('/', '_')}": v
        for k, v in metrics.items()
        if k in ("val/acc_best", "val/acc", "val/mAP_best", "test/acc", "test/mAP", "test/f1", "test/loss")
        and math.isfinite(v)
    }
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
        if isinstance(logger, MLFlowLogger):
            logged = logger.experiment.get_run(logger.run_id).data.metrics
            missing = {k: v for k, v in final.items() if k not in logged}
            if missing:
                logger.log_metrics(missing)
            if best_checkpoint:
                logger.experiment.set_tag(logger.run_id, "best_checkpoint", best_checkpoint)
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update({**final, **({"best_checkpoint": best_checkpoint} if best_checkpoint else {})})
            if best_checkpoint:
                run.config.update({"best_checkpoint": best_checkpoint}, allow_val_change=True)
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def log_figure(loggers: list, tag: str, figure, step: int) -> None:
    """A matplotlib figure to every logger that shows images: TensorBoard (an image under `tag`), MLflow (the
    artifact `<tag>.png`), W&B (an image under `tag`); the others (CSV) pass. `figure` may be a function that
    makes it, called only when some logger shows it. Rank zero logs; the figure is closed."""
    import matplotlib.pyplot as plt

    shown = [lg for lg in loggers if _shows_images(lg)] if rank_zero_only.rank == 0 else []
    if callable(figure):
        if not shown:
            return
        figure = figure()
    try:
        for logger in shown:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_figure(logger.run_id, figure, f"{tag}.png")
            elif isinstance(logger, WandbLogger):
                logger.log_image(tag, [figure], step=step)
            else:
                logger.experiment.add_figure(tag, figure, global_step=step, close=False)
    finally:
        plt.close(figure)


def _shows_images(logger) -> bool:
    return isinstance(logger, (MLFlowLogger, WandbLogger)) or hasattr(logger.experiment, "add_figure")


def log_text(loggers: list, tag: str, text: str, step: int) -> None:
    """Markdown text (such as the per-class table) to every logger that shows text: TensorBoard (a text summary),
    MLflow (the artifact `<tag>.md`), W&B (a table: the rows of a Markdown table, or the text in one cell)."""
    if rank_zero_only.rank != 0:
        return
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_text(logger.run_id, text, f"{tag}.md")
        elif isinstance(logger, WandbLogger):
            columns, rows = markdown_table(text) or (["text"], [[text]])
            logger.log_table(tag, columns=columns, data=rows, step=step)
        elif hasattr(logger.experiment, "add_text"):
            logger.experiment.add_text(tag, text, global_step=step)


def markdown_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """A Markdown table (a header row, a |---| row, then rows) as (header cells, rows of cells); None for other
    text."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or not all(line.startswith("|") and line.endswith("|") for line in lines):
        return None
    cells = [[cell.strip() for cell in line[1:-1].split("|")] for line in lines]
    if not all(set(cell) <= set("-: ") and cell for cell in cells[1]) or any(len(r) != len(cells[0]) for r in cells):
        return None
    return cells[0], cells[2:]


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
        _finish_wandb(1)
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
        _finish_wandb(1)
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
    _finish_wandb(0)
    _write_result(output_dir, {"status": "finished", **result, "wall_time_s": time.perf_counter() - started})
    value = float(result.get(cfg.get("optimized_metric"), math.nan))
    return worst if math.isnan(value) else value


def _finish_wandb(exit_code: int) -> None:
    """A W&B run still open when the task ends (it failed, or never logged hyperparameters, as eval does) ends with
    it, marked failed or finished: the next task in this process (a sweep's next job) starts a run of its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def _write_result(output_dir: Path, result: dict) -> None:
    if rank_zero_only.rank == 0:  # under DDP every process runs the task; one writes
        write_json(output_dir / "metrics.json", result)


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
