"""Lightning callbacks that make runs survive interruptions (configured in conf/callbacks/default.yaml)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    """On SIGTERM (a preempted or cancelled cluster job) or Ctrl-C, save `last.ckpt` before exiting,
    so `ckpt_path=last` resumes from where the run stopped rather than from the last epoch end.

    Lightning turns SIGTERM into SIGTERMException at the end of the current batch; the checkpoint
    is written atomically like every Lightning checkpoint. Other exceptions (a NaN loss, a bug)
    save nothing: the last good checkpoint stays.
    """

    def __init__(self, dirpath: str, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == TrainerFn.FITTING and isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            trainer.save_checkpoint(self.path)
            log.warning("Interrupted at step %d: saved %s; resume with ckpt_path=last", trainer.global_step, self.path)


class RNGState(L.Callback):
    """Saves the Python, NumPy and torch (and CUDA) random states in checkpoints and restores them when
    training resumes, so a resumed run draws the same shuffles and dropout masks as an uninterrupted one.

    The states are restored at `on_train_start`, after Lightning's own start-up, which also draws.
    Stored as tensors and tuples so checkpoints stay loadable with `weights_only=True`.
    """

    def __init__(self):
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
