"""Knowledge distillation on FSDD: `experiment=fsdd_lstm` (the LSTM of 99-100%) as the teacher of `make train`'s
CNN1d, against the same CNN1d from scratch, both `make train`'s recipe, seeds 0-2; the whole command each time.

    python bench_distill.py [--seeds 0 1 2] [--teacher CKPT] [distill overrides ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_make_train import run
from common import machine, print_table


def main(seeds: list[int], teacher: str | None, overrides: list[str]) -> str:
    with tempfile.TemporaryDirectory() as keep:
        if teacher is None:
            lstm = run(0, ["experiment=fsdd_lstm"], keep_in=f"{keep}/teacher")
            teacher = str(min(Path(keep, "teacher", "checkpoints").glob("epoch_*.ckpt")))  # the best (top 1)
            rows = [["teacher: experiment=fsdd_lstm, seed 0", f"{lstm['test/acc']:.4f}", "", f"{lstm['wall']:.1f}"]]
        else:
            rows = [[f"teacher: {teacher}", "", "", ""]]
        for name, extra in (
            ("CNN1d from scratch", []),
            ("CNN1d distilled", [f"distill.teacher={teacher}", *overrides]),
        ):
            results = [run(seed, extra) for seed in seeds]
            accs = [r["test/acc"] for r in results]
            rows.append(
                [
                    f"{name} ({(' '.join(extra[1:]) or 'alpha 0.5, T 4') if extra else 'make train'})",
                    f"{statistics.mean(accs):.4f}",
                    f"{min(accs):.4f}",
                    f"{statistics.mean(r['wall'] for r in results):.1f}",
                ]
            )
    return print_table(
        f"Distillation, FSDD official split, seeds {', '.join(map(str, seeds))} ({machine()})",
        ["student", "test acc, mean", "lowest", "whole command (s), mean"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", default=None, help="a trained checkpoint (default: train experiment=fsdd_lstm)")
    parser.add_argument("overrides", nargs="*", help="distill settings, e.g. distill.alpha=0.3")
    args = parser.parse_args()
    main(args.seeds, args.teacher, args.overrides)
