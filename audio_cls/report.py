"""Sweep report: one table of every job of a Hydra multirun, sorted by the optimized metric.

Written automatically at the end of every multirun (the `SweepReport` Hydra callback), and on any
existing sweep directory with `python -m audio_cls.report SWEEP_DIR` (or `audio-cls-report`):

    report.csv        one row per job: number, status, swept parameters, metrics, wall time, error
    report.md         the same as a table, the best job's rerun command, and mean +- std over seeds
    report.png        the optimized metric against each swept parameter
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from audio_cls.compare import PREDICTIONS, compare_runs, natural_order, read_predictions
from audio_cls.errors import DataError

log = logging.getLogger(__name__)

# Columns shown when some job has them: single-label, then multi-label and sound event detection metrics.
METRICS = (
    "val/acc_best",
    "val/acc",
    "val/mAP_best",
    "val/mAP",
    "val/loss",
    "test/acc",
    "test/mAP",
    "test/f1",
    "test/segment_f1",
    "test/event_f1",
    "test/loss",
)
SEED_KEYS = ("seed",)


def read_job(job_dir: Path) -> dict[str, Any]:
    """A job directory -> {"job", "dir", "overrides": {key: value}, "status", metrics..., "error"}."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8")) or {}
    metrics_file = job_dir / "metrics.json"
    result = (
        json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {"status": "incomplete"}
    )
    parsed = {}
    for override in overrides:
        key, _, value = override.partition("=")
        parsed[key.lstrip("+~")] = value
    return {
        "job": job_dir.name,
        "dir": str(job_dir),
        "overrides": parsed,
        "override_list": overrides,
        "optimized_metric": optimized_metric(config),
        "direction": config.get("optimized_direction", "maximize"),
        **result,
    }


def optimized_metric(config: dict) -> str:
    """The job's optimized_metric, resolved: Hydra saves the config unresolved, and the default is
    `${task.monitor}_best` (val/acc_best, or val/mAP_best for multi-label)."""
    try:
        value = OmegaConf.select(OmegaConf.create(config), "optimized_metric", default="val/acc_best")
    except OmegaConfBaseException:
        value = None
    return str(value) if value else "val/acc_best"


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = [
        read_job(d)
        for d in sorted(Path(sweep_dir).iterdir(), key=lambda d: natural_order(d.name))
        if (d / ".hydra" / "overrides.yaml").is_file()
    ]
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job directories (with .hydra/overrides.yaml) in it")
    return jobs


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def swept_keys(jobs: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs (in first-seen order)."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job["overrides"] if k not in keys]
    return [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]


def sort_jobs(jobs: list[dict], metric: str, direction: str) -> list[dict]:
    """Finished jobs best first by `metric`; failed and incomplete ones after them."""
    sign = -1 if direction == "maximize" else 1

    def key(job):
        value = _number(job.get(metric))
        return (job["status"] != "finished" or math.isnan(value), sign * value if not math.isnan(value) else 0)

    return sorted(jobs, key=key)


def aggregate_seeds(jobs: list[dict], keys: list[str], metric: str) -> list[dict]:
    """Jobs that differ only in their seed -> one row with mean and std (n-1) of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        if job["status"] == "finished":
            config = tuple((k, job["overrides"].get(k)) for k in keys if k not in SEED_KEYS)
            groups.setdefault(config, []).append(job)
    rows = []
    for config, members in groups.items():
        row = {"config": " ".join(f"{k}={v}" for k, v in config) or "(all)", "n": len(members)}
        for m in dict.fromkeys((metric, *METRICS)):
            values = [_number(j.get(m)) for j in members if not math.isnan(_number(j.get(m)))]
            if values:
                row[m] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        rows.append(row)
    return sorted(rows, key=lambda r: -r.get(metric, (-math.inf, 0))[0])


def write_report(sweep_dir: str | Path, metric: str | None = None, direction: str | None = None) -> Path:
    """Write report.csv, report.md and report.png into `sweep_dir`; returns the report.md path."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    metric = metric or jobs[0]["optimized_metric"]
    direction = direction or jobs[0]["direction"]
    keys = swept_keys(jobs)
    jobs = sort_jobs(jobs, metric, direction)
    metric_columns = list(dict.fromkeys((metric, *(m for m in METRICS if any(m in job for job in jobs)))))
    versus = against_best(jobs)

    with (sweep_dir / "report.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "job", "status", *keys, *metric_columns, "vs_best", "wall_time_s", "error", "dir"])
        for rank, job in enumerate(jobs, 1):
            writer.writerow(
                [
                    rank,
                    job["job"],
                    job["status"],
                    *(job["overrides"].get(k, "") for k in keys),
                    *(_fmt(job.get(m), 6) for m in metric_columns),
                    versus.get(job["job"], ""),
                    _fmt(job.get("wall_time_s"), 1),
                    job.get("error", ""),
                    job["dir"],
                ]
            )

    counts = {s: sum(j["status"] == s for j in jobs) for s in ("finished", "failed", "incomplete")}
    lines = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(jobs)} jobs: {counts['finished']} finished, {counts['failed']} failed, "
        f"{counts['incomplete']} incomplete. Sorted by `{metric}` ({direction}).",
        "",
    ]
    fixed = {k: v for k, v in jobs[0]["overrides"].items() if k not in keys}
    if fixed:
        lines += ["Same in every job: " + " ".join(f"`{k}={v}`" for k, v in fixed.items()), ""]
    header = ["rank", "job", "status", *keys, *metric_columns, "test: vs best", "wall time (s)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, job in enumerate(jobs, 1):
        cells = [
            str(rank),
            job["job"],
            job["status"],
            *(job["overrides"].get(k, "") for k in keys),
            *(_fmt(job.get(m), 4) for m in metric_columns),
            versus.get(job["job"], ""),
            _fmt(job.get("wall_time_s"), 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if versus:
        lines += [
            "",
            "`test: vs best`: each job against the best on the same test items (`python -m audio_cls.compare`: paired "
            "bootstrap 95% interval of the difference, in points): `same` where the interval holds zero, i.e. not "
            "distinguishable from the best on this test set.",
        ]
    failed = [j for j in jobs if j["status"] != "finished"]
    if failed:
        lines += ["", "## Jobs that did not finish", ""]
        lines += [
            f"- job {j['job']} ({j['status']}): {j.get('error', 'no metrics.json: killed or still running')}"
            for j in failed
        ]
    best = jobs[0]
    if best["status"] == "finished":
        command = "python -m audio_cls.train " + " ".join(shlex.quote(o) for o in best["override_list"])
        lines += [
            "",
            "## Best job",
            "",
            f"Job {best['job']}: `{metric}` = {_fmt(best.get(metric), 4)}. Its full config is "
            f"`{best['dir']}/.hydra/config.yaml`; to run it again:",
            "",
            "```bash",
            command,
            "```",
        ]
    seeds = aggregate_seeds(jobs, keys, metric)
    if any(row["n"] > 1 for row in seeds):
        lines += [
            "",
            "## Repeated configurations (mean ± std over seeds)",
            "",
            "| config | n | " + " | ".join(metric_columns) + " |",
            "|---|---|" + "---|" * len(metric_columns),
        ]
        for row in seeds:
            cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if m in row else "" for m in metric_columns]
            lines.append(f"| {row['config']} | {row['n']} | " + " | ".join(cells) + " |")
    if plot_metric(jobs, [k for k in keys if k not in SEED_KEYS] or keys, metric, sweep_dir / "report.png"):
        lines += ["", f"![{metric} against each swept parameter](report.png)"]
    (sweep_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sweep_dir / "report.md"


def against_best(jobs: list[dict]) -> dict[str, str]:
    """{job: "same [-1.2, +0.4]" | "worse [...]" | "better [...]"}: each finished job's test predictions against
    those of the best job (jobs[0]), by compare's paired bootstrap; empty without test_predictions.csv."""
    best = jobs[0] if jobs and jobs[0]["status"] == "finished" else None
    if best is None or not (Path(best["dir"]) / PREDICTIONS).is_file():
        return {}
    reference = read_predictions(Path(best["dir"]))
    metric = "map" if reference.multilabel else "acc"
    marks = {best["job"]: "best"}
    for job in jobs[1:]:
        if job["status"] != "finished" or not (Path(job["dir"]) / PREDICTIONS).is_file():
            continue
        try:
            result = compare_runs(reference, read_predictions(Path(job["dir"])), metric)
        except DataError:  # another test split (a swept data.split_seed): not comparable item by item
            marks[job["job"]] = "other test items"
            continue
        word = "same" if result["low"] <= 0 <= result["high"] else ("worse" if result["diff"] < 0 else "better")
        marks[job["job"]] = f"{word} [{100 * result['low']:+.1f}, {100 * result['high']:+.1f}]"
    return marks


def plot_metric(jobs: list[dict], keys: list[str], metric: str, path: Path) -> bool:
    """One panel per swept parameter: `metric` of each finished job against the parameter's value."""
    done = [j for j in jobs if j["status"] == "finished" and not math.isnan(_number(j.get(metric)))]
    if not keys or not done:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [j["overrides"].get(key) for j in done]
        y = [_number(j[metric]) for j in done]
        numeric = [_number(v) for v in values]
        if all(not math.isnan(v) for v in numeric):
            ax.scatter(numeric, y)
            if min(numeric) > 0 and max(numeric) / min(numeric) >= 10:
                ax.set_xscale("log")
        else:
            categories = sorted(set(map(str, values)))
            ax.scatter([categories.index(str(v)) for v in values], y)
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _fmt(value, digits: int) -> str:
    number = _number(value)
    return "" if math.isnan(number) else f"{number:.{digits}f}"


class SweepReport(Callback):
    """Hydra callback: write the report when a multirun ends (see conf/hydra/default.yaml)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            path = write_report(config.hydra.sweep.dir)
            log.info("Sweep report: %s", path)
        except Exception as err:  # a report must never turn a finished sweep into a failed command
            log.error("Could not write the sweep report: %s", err)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a multirun directory, e.g. logs/train/multiruns/2026-...")
    parser.add_argument("--metric", help="sort by this metric (default: the jobs' optimized_metric)")
    parser.add_argument("--direction", choices=("maximize", "minimize"), help="default: optimized_direction")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.sweep_dir, args.metric, args.direction)
    except (FileNotFoundError, NotADirectoryError) as err:
        sys.exit(f"error: {err}")
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
