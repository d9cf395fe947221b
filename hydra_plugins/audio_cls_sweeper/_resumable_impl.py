"""ResumableOptunaSweeper's work (resumable_optuna.py says what it does); imported only when a sweep runs, since
Hydra imports every module under hydra_plugins at each start and Optuna with its database layer takes seconds."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from optuna.trial import TrialState

log = logging.getLogger(__name__)

SWEEP_DIR = "audio_cls:sweep_dir"  # trial user attr: the sweep directory whose process ran the trial
INTERRUPTED = "audio_cls:interrupted"  # trial user attr: failed because its sweep stopped (rerun), not by itself
SETUP = "audio_cls:setup"  # study user attr: what the trials ran with (search space, overrides, direction)


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def sweep(self, arguments: list[str]) -> None:
        self.sweep_path = Path(self.sweep_dir).resolve()
        self.sweep_path.mkdir(parents=True, exist_ok=True)
        if self.storage is None:
            self.storage = f"sqlite:///{self.sweep_path / 'optuna.db'}"
        with (self.sweep_path / "optuna.lock").open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                # One line, not a traceback (Hydra prints one for any exception a sweeper raises).
                raise SystemExit(
                    f"Error: {self.sweep_path}: another sweep ({lock.read().strip() or 'a process'}) is running "
                    "this study; wait for it, or choose another hydra.sweep.dir or hydra.sweeper.study_name"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"process {os.getpid()} on {socket.gethostname()}")
            lock.flush()
            if self._continue_study(arguments):
                super().sweep(arguments)

    def _setup(self, arguments: list[str]) -> str:
        params = {str(k): str(v) for k, v in (self.params or {}).items()}
        return json.dumps({"directions": self._get_directions(), "params": params, "overrides": sorted(arguments)})

    def _continue_study(self, arguments: list[str]) -> bool:
        """Open the stored study (or create it); for one with trials, recover it: False when it already has
        `n_trials` finished trials. Exits with one line when it was run with other settings."""
        setup = self._setup(arguments)
        directions = self._get_directions()
        try:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        except KeyError:  # a new study: remember what it runs
            study = optuna.create_study(study_name=self.study_name, storage=self.storage, directions=directions)
            study.set_user_attr(SETUP, setup)
            return True
        earlier = study.user_attrs.get(SETUP)
        if earlier is not None and earlier != setup:
            old, new = json.loads(earlier), json.loads(setup)
            differs = ", ".join(key for key in new if old.get(key) != new[key])
            raise SystemExit(
                f"Error: study {self.study_name} in {self.storage} was run with other {differs}: to continue it, "
                "rerun its command unchanged; for a new study, add hydra.sweeper.study_name=NEW_NAME"
            )
        trials = study.get_trials(deepcopy=False)
        if not trials:
            return True
        if self._is_grid():
            raise SystemExit(
                f"Error: study {self.study_name} in {self.storage} has trials, and Optuna's GridSampler cannot "
                "resume a grid; start another study (hydra.sweeper.study_name=NEW_NAME) or use the basic sweeper"
            )
        # Trials left running by an earlier sweep in this directory died with it: the lock says none runs now.
        # Those of other sweeps sharing the storage (another directory, another machine) are left alone.
        here = str(self.sweep_path)
        orphans = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get(SWEEP_DIR) == here]
        done = sum(
            t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED))
            for t in trials
        )
        self.job_idx = len(trials)  # new jobs (and their folders) come after every earlier trial's
        for trial in orphans:  # Optuna's ask() hands out enqueued (WAITING) trials first
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)  # Optuna 2.10 has no public way
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
        if orphans:
            log.warning(
                "Study %s: trial(s) %s did not finish (their sweep stopped): marked failed, run again first",
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
        if hasattr(self.sampler, "reseed_rng"):  # not to draw the random start-up trials it drew before
            self.sampler.reseed_rng()
        return self.n_trials > 0

    def _is_grid(self) -> bool:
        sampler = getattr(self.sampler, "func", self.sampler)  # Hydra passes GridSampler as a partial
        return sampler is optuna.samplers.GridSampler or isinstance(sampler, optuna.samplers.GridSampler)

    def _configure_trials(self, trials, search_space_distributions, fixed_params):
        for trial in trials:  # which sweep runs it: a rerun here may fail it if it never finishes
            trial.set_user_attr(SWEEP_DIR, str(self.sweep_path))
        return super()._configure_trials(trials, search_space_distributions, fixed_params)
