"""Hydra's Optuna sweeper, made to survive: the study is kept in SQLite and a rerun continues it.

    hydra.sweeper._target_: hydra_plugins.audio_cls_sweeper.resumable_optuna.ResumableOptunaSweeper

What it adds to `hydra_plugins.hydra_optuna_sweeper` (same settings, same behaviour otherwise; _resumable_impl.py):
- `storage: null` keeps the study in `<sweep dir>/optuna.db` (any Optuna storage URL still goes).
- Rerunning the command with the same sweep dir and study name continues the study: its finished and failed
  trials are kept, `n_trials` counts them, and new jobs are numbered after theirs, so the sweep report shows every
  trial. Trials left running by a sweep of this directory that was killed are marked failed (and "interrupted",
  so that they do not count), and their parameters run again first.
- The study remembers its search space, overrides and direction: a rerun with other ones is refused in one line.
- A lock file in the sweep dir tells a stopped sweep (the lock is released whenever its process ends, even on
  SIGKILL) from one still running: a second sweep on a running study is an error, not a race.
- The sampler is reseeded on a rerun, so that it does not draw again the random start-up trials it drew before
  (a resumed seeded study is therefore not reproducible). A grid (GridSampler) study is not resumable.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


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
        from ._resumable_impl import ResumableOptunaSweeperImpl  # Optuna loads only when a sweep runs

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
