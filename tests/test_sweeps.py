"""Multiruns through the real entry point: grid, Optuna, failures, submitit, and the report command."""

import csv
import fcntl
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from audio_cls.compare import write_predictions
from audio_cls.data.base import Item
from helpers import REPO, run_entry

# Every test runs an entry point (sweeps, audio_cls.report) in a subprocess.
pytestmark = pytest.mark.slow


def read_report(sweep_dir):
    with (sweep_dir / "report.csv").open() as f:
        return list(csv.DictReader(f))


def sweep(tmp_path, fsdd_slice, *overrides):
    proc = run_entry(
        "audio_cls.train", "-m", "debug=limit", f"data.root={fsdd_slice}", f"hydra.sweep.dir={tmp_path}", *overrides
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_report(tmp_path)


def hparams_logged(job_dir):
    """The job's TensorBoard events hold an HPARAMS session (hyperparameters linked to metrics)."""
    tags = set()
    for events in (job_dir / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            tags |= {v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == "hparams"}
    return "_hparams_/session_start_info" in tags


def test_grid_multirun_runs_every_combination_and_reports(tmp_path, fsdd_slice):
    rows = sweep(tmp_path, fsdd_slice, "model=cnn1d,lstm", "optimizer.lr=0.001,0.003", "trainer.max_epochs=1")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert {(r["model"], r["optimizer.lr"]) for r in rows} == {
        ("cnn1d", "0.001"),
        ("cnn1d", "0.003"),
        ("lstm", "0.001"),
        ("lstm", "0.003"),
    }
    values = [float(r["val/acc_best"]) for r in rows]
    assert values == sorted(values, reverse=True)
    for job in range(4):
        metrics = json.loads((tmp_path / str(job) / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["wall_time_s"] > 0
        assert hparams_logged(tmp_path / str(job))  # every job is in TensorBoard's HPARAMS tab
    assert (tmp_path / "report.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "4 jobs: 4 finished, 0 failed" in report and "python -m audio_cls.train" in report


def test_failing_jobs_are_reported_and_the_sweep_goes_on(tmp_path, fsdd_slice):
    rows = sweep(
        tmp_path,
        fsdd_slice,
        "optimizer=sgd",
        "optimizer.lr=0.01,1e30",
        "model.kernel_size=3,999",
        "model.padding=valid",
        "model.pool_size=1",
    )
    by_params = {(r["optimizer.lr"], r["model.kernel_size"]): r for r in rows}
    assert by_params[("0.01", "3")]["status"] == "finished"
    assert by_params[("1e+30", "3")]["status"] == "failed"
    assert "training loss is nan" in by_params[("1e+30", "3")]["error"]
    assert by_params[("0.01", "999")]["status"] == "failed" and "shrinks" in by_params[("0.01", "999")]["error"]
    assert rows[0]["status"] == "finished"  # finished jobs rank above failed ones
    assert "4 jobs: 1 finished, 3 failed" in (tmp_path / "report.md").read_text()


def test_optuna_sweep(tmp_path, fsdd_slice):
    rows = sweep(tmp_path, fsdd_slice, "hparams_search=fsdd_optuna", "hydra.sweeper.n_trials=3")
    assert len(rows) == 3
    assert {"optimizer.lr", "model.channels", "model.dropout"} <= set(rows[0])
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best = max(float(r["val/acc_best"]) for r in rows if r["status"] == "finished")
    assert math.isclose(results["best_value"], best, abs_tol=1e-6)
    assert results["best_params"]["optimizer.lr"] == pytest.approx(float(rows[0]["optimizer.lr"]))


def test_a_killed_optuna_sweep_continues_where_it_stopped(tmp_path, fsdd_slice):
    """SIGKILL during the second trial, then the same command again: the finished trial is kept, the killed one is
    marked failed and run again with its parameters, the study ends with n_trials finished, and the report lists
    every job. A sweep started while another runs the study is refused; one on a finished study runs nothing."""
    import optuna

    command = [
        sys.executable,
        "-m",
        "audio_cls.train",
        "-m",
        "hparams_search=fsdd_optuna",
        "hydra.sweeper.n_trials=3",
        "trainer.max_epochs=5",
        f"data.root={fsdd_slice}",
        f"hydra.sweep.dir={tmp_path}",
        "logger=csv",
        "callbacks.progress_bar=null",
    ]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = tmp_path / "1" / "train.log"
        deadline = time.monotonic() + 240
        while not (log.is_file() and "Network" in log.read_text()):  # the second trial is training
            assert first.poll() is None and time.monotonic() < deadline, "the sweep ended before its second trial"
            time.sleep(0.1)
    finally:
        first.kill()
        first.wait()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    trials = optuna.load_study(study_name="fsdd_optuna", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"]
    killed = trials[1].params

    rerun = run_entry("audio_cls.train", *command[3:])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = optuna.load_study(study_name="fsdd_optuna", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["audio_cls:interrupted"]  # so that later reruns do not count it as a finished trial
    assert trials[2].params == killed  # retried first, with the killed trial's parameters
    assert trials[3].params not in ({**t.params} for t in trials[:3])  # the sampler did not repeat itself
    overrides = {job: yaml.safe_load((tmp_path / str(job) / ".hydra" / "overrides.yaml").read_text()) for job in (1, 2)}
    assert overrides[1] == overrides[2]
    rows = {row["job"]: row["status"] for row in read_report(tmp_path)}
    assert rows == {"0": "finished", "1": "incomplete", "2": "finished", "3": "finished"}

    again = run_entry("audio_cls.train", *command[3:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="fsdd_optuna", storage=storage).trials) == 4

    changed = [a.replace("trainer.max_epochs=5", "trainer.max_epochs=4") for a in command[3:]]
    other = run_entry("audio_cls.train", *changed)  # not the settings the study ran with
    assert other.returncode != 0 and "was run with other overrides" in other.stderr.splitlines()[-1]

    with (tmp_path / "optuna.lock").open("a+") as lock:  # as a sweep still running holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = run_entry("audio_cls.train", *command[3:])
    assert busy.returncode != 0 and "another sweep (process" in busy.stderr
    assert len(optuna.load_study(study_name="fsdd_optuna", storage=storage).trials) == 4


def test_submitit_local_launcher(tmp_path, fsdd_slice):
    rows = sweep(tmp_path, fsdd_slice, "launcher=submitit_local", "model=cnn1d,lstm", "trainer.max_epochs=1")
    assert sorted(r["model"] for r in rows) == ["cnn1d", "lstm"]
    assert {r["status"] for r in rows} == {"finished"}
    assert (tmp_path / ".submitit").is_dir()


def make_job(sweep_dir, num, overrides, metrics=None):
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"optimized_metric": "val/acc_best", "optimized_direction": "maximize"})
    )
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_report_command_on_a_prepared_sweep(tmp_path):
    accs = {
        ("cnn1d", 1): 0.90,
        ("cnn1d", 2): 0.92,
        ("cnn1d", 3): 0.94,
        ("lstm", 1): 0.80,
        ("lstm", 2): 0.82,
        ("lstm", 3): 0.84,
    }
    for num, ((model, seed), acc) in enumerate(accs.items()):
        make_job(
            tmp_path,
            num,
            [f"model={model}", f"seed={seed}"],
            {"status": "finished", "val/acc_best": acc, "test/acc": acc - 0.1, "wall_time_s": 10 + num},
        )
    # test predictions of three jobs: job 1 two items behind the best (job 2), job 5 forty
    truth = np.random.default_rng(0).integers(0, 3, 200)
    for num, wrong in ((2, 10), (1, 12), (5, 50)):
        scores = np.eye(3)[truth]
        scores[:wrong] = np.roll(scores[:wrong], 1, axis=1)
        items = [Item(f"/data/{k}.wav", "abc"[t]) for k, t in enumerate(truth)]
        write_predictions(tmp_path / str(num) / "test_predictions.csv", items, ["a", "b", "c"], scores, False)
    make_job(tmp_path, 6, ["model=cnn2d", "seed=1"], {"status": "failed", "error": "boom", "wall_time_s": 1})
    make_job(tmp_path, 7, ["model=cnn2d", "seed=2"])  # killed: no metrics.json
    proc = run_entry("audio_cls.report", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = read_report(tmp_path)
    assert [r["job"] for r in rows[:6]] == ["2", "1", "0", "5", "4", "3"]
    assert [r["status"] for r in rows[6:]] == ["failed", "incomplete"]
    assert rows[6]["error"] == "boom"
    report = (tmp_path / "report.md").read_text()
    assert "8 jobs: 6 finished, 1 failed, 1 incomplete" in report
    assert "| model=cnn1d | 3 | 0.9200 ± 0.0200 |" in report  # mean +- std over seeds
    assert "| model=lstm | 3 | 0.8200 ± 0.0200 |" in report
    assert "python -m audio_cls.train model=cnn1d seed=3" in report
    marks = {r["job"]: r["vs_best"] for r in rows}
    assert marks["2"] == "best" and marks["1"].startswith("same [") and marks["5"].startswith("worse [")
    assert marks["0"] == ""  # no test_predictions.csv: not compared
    assert (tmp_path / "report.png").is_file()


def test_report_command_on_a_directory_without_jobs(tmp_path):
    proc = run_entry("audio_cls.report", str(tmp_path))
    assert proc.returncode == 1 and "no job directories" in proc.stderr
