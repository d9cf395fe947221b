"""`make train` as a user runs it, once per seed: the whole command's wall time (start-up, data checks, feature
cache, training, test) and the test metrics it prints, with the mean and the lowest over seeds.

    python bench_make_train.py [--seeds 0 1 2] [overrides ...]   e.g. experiment=fsdd_lstm
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, print_table


def run(seed: int, overrides: list[str], keep_in: str | None = None) -> dict:
    """One `python -m audio_cls.train` (its run directory deleted afterwards, unless `keep_in` names one)."""
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = keep_in or scratch
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "audio_cls.train", f"seed={seed}", f"hydra.run.dir={run_dir}", *overrides],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"seed {seed} failed:\n{proc.stderr[-2000:]}")
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"wall": wall, **metrics}


def main(seeds: list[int], overrides: list[str]) -> str:
    results = {seed: run(seed, overrides) for seed in seeds}
    rows = [
        [
            seed,
            f"{r['wall']:.1f}",
            f"{r['train_time_s']:.1f}",
            r["epochs"],
            f"{r['test/acc']:.4f}",
            f"{r['test/f1']:.4f}",
        ]
        for seed, r in results.items()
    ]
    accs = [r["test/acc"] for r in results.values()]
    walls = [r["wall"] for r in results.values()]
    rows.append(["mean", f"{statistics.mean(walls):.1f}", "", "", f"{statistics.mean(accs):.4f}", ""])
    rows.append(["lowest / slowest", f"{max(walls):.1f}", "", "", f"{min(accs):.4f}", ""])
    name = " ".join(overrides) or "default"
    return print_table(
        f"make train ({name}), FSDD official split, {len(seeds)} seeds ({machine()})",
        ["seed", "whole command (s)", "Trainer.fit (s)", "epochs", "test acc", "test macro-F1"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    main(args.seeds, args.overrides)
