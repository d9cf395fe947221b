"""Hydra's Optuna sweeper, made to survive: the study is kept in SQLite and a rerun continues it.

    hydra.sweeper._target_: hydra_plugins.audio_cls_sweeper.resumable_optuna.ResumableOptunaSweeper

What it adds to `hydra_plugins.hydra_optuna_sweeper` (same settings, same behaviour otherwise):
- `storage: null` keeps the study in `<sweep dir>/optuna.db` (any Optuna storage URL still goes).
- Rerunning the command with the same sweep dir and study name continues the study: its finished and failed
  trials are kept, `n_trials` counts them, and new jobs are numbered after theirs, so the sweep report shows every
  trial. Trials left running by a sweep that was killed are marked failed, and their parameters run again first.
- A lock file in the sweep dir tells a stopped sweep (the lock is released whenever its process ends, even on
  SIGKILL) from one still running: a second sweep on a running study is an error, not a race.
- The sampler is reseeded on a rerun, so that it does not draw again the random start-up trials it drew before.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import optuna
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import DictConfig
from optuna.trial import TrialState

log = logging.getLogger(__name__)

DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def sweep(self, arguments: list[str]) -> None:
        sweep_dir = Path(self.sweep_dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.storage is None:
            self.storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
        with (sweep_dir / "optuna.lock").open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                # One line, not a traceback (Hydra prints one for any exception a sweeper raises).
                raise SystemExit(
                    f"Error: {sweep_dir}: another sweep (process {lock.read().strip() or '?'}) is running this "
                    "study; wait for it, or choose another hydra.sweep.dir or hydra.sweeper.study_name"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
            if self._continue_study():
                super().sweep(arguments)

    def _continue_study(self) -> bool:
        """Recover the stored study, if any: False when it already has `n_trials` finished trials."""
        try:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        except KeyError:  # a new study
            return True
        trials = study.get_trials(deepcopy=False)
        if not trials:
            return True
        orphans = [t for t in trials if t.state == TrialState.RUNNING]
        done = sum(t.state in DONE for t in trials)
        self.job_idx = len(trials)  # new jobs (and their folders) come after every earlier trial's
        for trial in orphans:  # Optuna's ask() hands out enqueued (WAITING) trials first
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
        if orphans:
            log.warning(
                "Study %s: trial(s) %s did not finish (the sweep was stopped): marked failed, run again first",
                self.study_name,
                ", ".join(str(t.number) for t in orphans),
            )
        self.n_trials = max(0, self.n_trials - done)
        log.info(
            "Study %s in %s: %d trial(s) finished earlier; %d to run (hydra.sweeper.n_trials counts all)",
            self.study_name,
            self.storage,
            done,
            self.n_trials,
        )
        if hasattr(self.sampler, "reseed_rng"):
            self.sampler.reseed_rng()
        return self.n_trials > 0


class ResumableOptunaSweeper(Sweeper):
    """Hydra's OptunaSweeper (the same config keys) on a ResumableOptunaSweeperImpl."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: DictConfig | None = None,
        custom_search_space: str | None = None,
        params: DictConfig | None = None,
    ) -> None:
        self.sweeper = ResumableOptunaSweeperImpl(
            sampler,
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate,
            search_space,
            custom_search_space,
            params,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
