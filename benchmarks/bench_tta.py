"""Test-time augmentation measured against none, on the same checkpoints and the same test recordings.

    python bench_tta.py GROUP [GROUP ...] [--views 5 9] [--shift SECONDS] [--parallel N] [--out DIR]

A GROUP is a training run folder (metrics.json naming its best checkpoint, test_predictions.csv) or a folder of
them: cross-validation folds (`python -m audio_cls.cv`), one recipe of `esc10_recipes.py`, a multirun's jobs.
Every checkpoint is tested again by `python -m audio_cls.eval ckpt_path=... tta.views=V` (the test split rebuilt
from the checkpoint), and the table gives each group's accuracy without views (the training run's own test) and
with them, and `audio_cls.compare`'s verdict on the paired predictions: every test item of the group's runs
(cross-validation tests each recording once) with views against without (McNemar, paired bootstrap).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from audio_cls.compare import Predictions, compare_runs, load, verdict
from common import REPO, best_checkpoint, print_table


def runs_of(group: Path) -> list[Path]:
    """The finished training runs in `group`: itself, or its sub-folders."""
    candidates = (
        [group] if (group / "metrics.json").is_file() else sorted(p.parent for p in group.glob("*/metrics.json"))
    )
    runs = [r for r in candidates if best_checkpoint(r)]
    if not runs:
        raise SystemExit(f"{group}: no finished training run (metrics.json with best_checkpoint) in it")
    return runs


def pooled(group: Path) -> Predictions:
    """The test predictions of a group's runs as one run's: keys carry the run, so the same recording tested by
    two runs (seeds) counts twice."""
    runs = load(group)
    if isinstance(runs, Predictions):
        return runs
    parts = list(runs.items())
    first = parts[0][1]
    return Predictions(
        run=group,
        class_names=first.class_names,
        multilabel=first.multilabel,
        keys=[(name, *key) for name, p in parts for key in p.keys],
        labels=np.concatenate([p.labels for _, p in parts]),
        predicted=np.concatenate([p.predicted for _, p in parts]),
        scores=np.concatenate([p.scores for _, p in parts]),
    )


def evaluate(run: Path, out: Path, views: int, shift: float | None) -> dict:
    """`audio_cls.eval` of the run's best checkpoint with `views` shifted crops, in `out`."""
    done = out / "metrics.json"
    if done.is_file() and json.loads(done.read_text()).get("status") == "finished":
        return json.loads(done.read_text())
    checkpoint = best_checkpoint(run)
    command = [
        sys.executable,
        "-m",
        "audio_cls.eval",
        f"ckpt_path={checkpoint}",
        f"tta.views={views}",
        *([f"tta.shift={shift}"] if shift is not None else []),
        "logger=csv",
        f"hydra.run.dir={out}",
    ]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "stdout.log").open("w") as log:
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if code != 0 or not done.is_file():
        raise SystemExit(f"eval of {checkpoint} with {views} views failed (exit {code}): see {out / 'stdout.log'}")
    return json.loads(done.read_text())


def main(groups: list[Path], views: list[int], shift: float | None, parallel: int, out: Path) -> str:
    started = time.perf_counter()
    jobs = [(g, r, v) for g in groups for r in runs_of(g) for v in views]

    def job(args):
        group, run, v = args
        return evaluate(run, out / f"views_{v}" / group.name / run.relative_to(group), v, shift)

    with ThreadPoolExecutor(parallel) as pool:
        results = dict(zip(jobs, pool.map(job, jobs)))
    largest = "each run's augment.waveform.shift" if shift is None else f"{shift} s"
    rows = []
    for group in groups:
        runs = runs_of(group)
        plain = [json.loads((r / "metrics.json").read_text())["test/acc"] for r in runs]
        rows.append([group.name, 1, f"{statistics.mean(plain):.2%}", " ".join(f"{a:.1%}" for a in plain), "-"])
        for v in views:
            accs = [results[(group, r, v)]["test/acc"] for r in runs]
            result = compare_runs(pooled(group), pooled(out / f"views_{v}" / group.name), "acc")
            text = verdict(result, "acc", ("none", f"{v} views")).splitlines()
            rows.append([group.name, v, f"{statistics.mean(accs):.2%}", " ".join(f"{a:.1%}" for a in accs), text[2]])
            print(f"{group.name}, {v} views against none:", *text[2:], sep="\n", flush=True)
    return print_table(
        f"Test-time views against none, same checkpoints ({len(jobs)} evaluations, "
        f"{time.perf_counter() - started:.0f} s; largest shift: {largest})",
        ["runs", "views", "test accuracy (mean)", "per run", "audio_cls.compare, views against none"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", type=Path, nargs="+")
    parser.add_argument("--views", type=int, nargs="+", default=[5])
    parser.add_argument("--shift", type=float, default=None, help="seconds; default: each run's augment shift")
    parser.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "bench_tta")
    args = parser.parse_args()
    main([g.resolve() for g in args.groups], args.views, args.shift, args.parallel, args.out.resolve())
