"""Lightning callbacks that make runs survive interruptions (configured in conf/callbacks/default.yaml), and
Lightning's weight averaging tested on the weights it checkpoints (conf/callbacks/ema.yaml)."""

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


class WeightAveraging(L.pytorch.callbacks.WeightAveraging):
    """Lightning's WeightAveraging (callbacks=ema), whose checkpoints hold the averaged weights in `state_dict` (what
    validation scored, and what eval, predict and export load) and the current ones in `current_model_state`,
    tested on the averaged weights.

    Lightning's loads `current_model_state` into the model whenever the callback holds an average, also when
    `trainer.test(ckpt_path=best)` follows `fit`: the run's test numbers were then those of the raw weights of
    the best epoch, not of the checkpoint (measured: segment F1 0.839 reported, 0.788 for the checkpoint). The
    current weights are needed only to go on training (fit resuming from a checkpoint).
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
