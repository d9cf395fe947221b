"""Shared by the benchmarks: the bundled FSDD, the default config, and a results table."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
# Every benchmark runs where `make train` would: the GPU when there is one (both sides of each comparison).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_config(*overrides: str, output_dir: str | None = None):
    """The training config as `python -m audio_cls.train` composes it, outside a Hydra run."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={REPO}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir or str(REPO / "logs" / "bench")
    return cfg


def best_checkpoint(run: Path) -> str | None:
    """The checkpoint a training run folder's metrics.json names as its best; None for an unfinished run."""
    return json.loads((run / "metrics.json").read_text()).get("best_checkpoint")


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def sync() -> None:
    """Wait for the GPU's queued work, so that a host clock read after it is honest."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def print_table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def bare_trainer(epochs: int, callbacks: list, **settings):
    """A Lightning Trainer on DEVICE without logging, checkpoints or progress bar: what the benchmarks time."""
    import lightning as L

    off = dict.fromkeys(("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary"), False)
    # use_distributed_sampler=False: our samplers shard batches themselves, as conf/trainer/default.yaml says
    return L.Trainer(
        accelerator=DEVICE.type,
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        use_distributed_sampler=False,
        **off,
        **settings,
    )
