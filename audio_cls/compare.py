"""Is run B better than run A, or is the difference noise? `python -m audio_cls.compare RUN_A RUN_B`.

Every training and evaluation run writes `test_predictions.csv`: one row per test item (path, start, end), its
label(s), the prediction and each class's probability. A comparison pairs the two runs on the same items:

    two runs        McNemar's exact test on the items one run gets right and the other wrong, and a paired
                    bootstrap confidence interval of the difference in the metric (accuracy, macro-F1 or mAP)
    two groups      (sweeps over seeds, cross-validation folds: folders whose sub-folders are runs) runs paired
                    by their names (job numbers, fold_K): the difference in the metric per pair, a paired t-test
                    with its confidence interval, and Wilcoxon's signed-rank test

and prints a Markdown verdict: "B is better than A by 0.9 points of accuracy, 95% CI [0.3, 1.5]" or "no detectable
difference". The statistics are scipy's (binomtest, bootstrap, ttest_rel, wilcoxon).

    python -m audio_cls.compare logs/train/runs/A logs/train/runs/B [--metric acc|f1|map] [--output verdict.md]
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio_cls.errors import ConfigError, DataError

PREDICTIONS = "test_predictions.csv"
METRICS = {"acc": "accuracy", "f1": "macro-F1", "map": "mAP"}


def write_predictions(path: Path, items: list, class_names: list[str], scores, multilabel: bool, thresholds=None):
    """test_predictions.csv: per test item (Item: path, start, end, label/labels) its prediction and the
    probability of each class. `scores` (N, C) in the order of `items`; multi-label predictions are the classes
    at or above `thresholds` (C,)."""
    scores = np.asarray(scores, dtype=np.float64)
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        label = "labels" if multilabel else "label"  # ;-joined sets: how a reader tells the task
        out.writerow(["path", "start", "end", label, "predicted", *(f"p_{name}" for name in class_names)])
        for item, row in zip(items, scores):
            if multilabel:
                predicted = ";".join(n for n, s, t in zip(class_names, row, thresholds) if s >= t)
            else:
                predicted = class_names[int(row.argmax())]
            span = ["" if item.start is None else item.start, "" if item.end is None else item.end]
            out.writerow([item.path, *span, item.label, predicted, *(f"{s:.6g}" for s in row)])


def write_run_predictions(output_dir: Path, module, datamodule) -> None:
    """The last test's test_predictions.csv in a run folder (AudioClassifier.test_items, the test split's items)."""
    if module.test_items is None:
        return
    index, scores, _ = module.test_items
    items = [datamodule.splits["test"][i] for i in index.tolist()]
    thresholds = module.thresholds.cpu().numpy() if module.multilabel else None
    write_predictions(
        Path(output_dir) / PREDICTIONS, items, module.class_names, scores.numpy(), module.multilabel, thresholds
    )


@dataclass
class Predictions:
    """One run's test predictions, by item key (path, start, end)."""

    run: Path
    class_names: list[str]
    multilabel: bool
    keys: list[tuple[str, str, str]]
    labels: np.ndarray  # (N,) class indices, or (N, C) 0/1 for multi-label
    predicted: np.ndarray  # likewise
    scores: np.ndarray  # (N, C)


def read_predictions(run: Path) -> Predictions:
    path = run / PREDICTIONS
    if not path.is_file():
        raise DataError(f"{run}: no {PREDICTIONS} (runs write it when they test; rerun eval on older runs)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    classes = [c[2:] for c in header[5:]]
    index = {name: i for i, name in enumerate(classes)}
    body = rows[1:]
    multilabel = header[3] == "labels"

    def encode(cell: str):
        if not multilabel:
            return index[cell]
        hot = np.zeros(len(classes))
        hot[[index[c] for c in cell.split(";") if c]] = 1
        return hot

    try:
        labels = np.array([encode(r[3]) for r in body])
        predicted = np.array([encode(r[4]) for r in body])
    except KeyError as err:
        raise DataError(f"{path}: label {err} is not among the probability columns") from None
    scores = np.array([[float(x) for x in r[5:]] for r in body])
    return Predictions(run, classes, multilabel, [tuple(r[:3]) for r in body], labels, predicted, scores)


def metric_value(metric: str, labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score, f1_score

    if metric == "acc":  # multi-label: the share of items whose whole label set is right
        return float((labels == predicted).reshape(len(labels), -1).all(1).mean())
    if metric == "f1":
        return float(f1_score(labels, predicted, average="macro", zero_division=0))
    present = labels.sum(0) > 0  # classes heard in the test set: AP is undefined for the others
    return float(average_precision_score(labels[:, present], scores[:, present], average="macro"))


def paired(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """`b` reordered to `a`'s items; a DataError unless both tested the same items with the same classes."""
    if a.class_names != b.class_names:
        raise DataError(f"{a.run} and {b.run} have different classes: not the same task")
    where = {key: i for i, key in enumerate(b.keys)}
    missing = [k for k in a.keys if k not in where]
    if missing or len(a.keys) != len(b.keys):
        raise DataError(
            f"{a.run} and {b.run} tested different items ({len(a.keys)} and {len(b.keys)}; e.g. {missing[:1]}): "
            "a paired comparison needs the same test split"
        )
    order = [where[k] for k in a.keys]
    return a, Predictions(
        b.run, b.class_names, b.multilabel, a.keys, b.labels[order], b.predicted[order], b.scores[order]
    )


def compare_runs(a: Predictions, b: Predictions, metric: str, confidence: float = 0.95, seed: int = 0) -> dict:
    """Two runs on the same items: the metric of each, the difference B - A with a paired bootstrap interval,
    and McNemar's exact test (items right in one run only; multi-label: exact-match of the label set)."""
    from scipy import stats

    a, b = paired(a, b)
    if not np.array_equal(a.labels, b.labels):
        raise DataError(f"{a.run} and {b.run} give the same items different labels")
    value_a, value_b = (metric_value(metric, r.labels, r.predicted, r.scores) for r in (a, b))

    def difference(index):
        index = np.asarray(index)
        return metric_value(metric, b.labels[index], b.predicted[index], b.scores[index]) - metric_value(
            metric, a.labels[index], a.predicted[index], a.scores[index]
        )

    n = len(a.keys)
    interval = stats.bootstrap(
        (np.arange(n),),
        difference,
        vectorized=False,
        n_resamples=2000,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval
    right_a = (a.labels == a.predicted).reshape(n, -1).all(1)
    right_b = (b.labels == b.predicted).reshape(n, -1).all(1)
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    mcnemar = stats.binomtest(only_b, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {
        "kind": "runs",
        "n": n,
        "a": value_a,
        "b": value_b,
        "diff": value_b - value_a,
        "low": float(interval.low),
        "high": float(interval.high),
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": float(mcnemar),
    }


def compare_groups(a: dict[str, Predictions], b: dict[str, Predictions], metric: str, confidence: float = 0.95) -> dict:
    """Runs paired by name (seeds of two sweeps, folds of two cross-validations): a paired t-test on the
    per-pair metric, its confidence interval, and Wilcoxon's signed-rank test."""
    from scipy import stats

    names = sorted(a.keys() & b.keys(), key=natural_order)
    if len(names) < 2:
        raise DataError(
            f"the two groups have {len(names)} run name(s) in common ({', '.join(sorted(a))} / "
            f"{', '.join(sorted(b))}): a paired test needs at least two pairs, e.g. the same seeds or folds"
        )
    values_a, values_b = [], []
    for name in names:
        pa, pb = paired(a[name], b[name])
        values_a.append(metric_value(metric, pa.labels, pa.predicted, pa.scores))
        values_b.append(metric_value(metric, pb.labels, pb.predicted, pb.scores))
    diffs = np.array(values_b) - np.array(values_a)
    mean, sem = float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    if sem > 0:
        half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sem
        t_p = float(stats.ttest_rel(values_b, values_a).pvalue)
    else:  # every pair differs by the same amount (often 0)
        half, t_p = 0.0, 1.0 if mean == 0 else 0.0
    wilcoxon_p = float(stats.wilcoxon(diffs).pvalue) if np.any(diffs != 0) else 1.0
    return {
        "kind": "groups",
        "pairs": names,
        "values_a": values_a,
        "values_b": values_b,
        "a": float(np.mean(values_a)),
        "b": float(np.mean(values_b)),
        "diff": mean,
        "low": mean - half,
        "high": mean + half,
        "t_p": t_p,
        "wilcoxon_p": wilcoxon_p,
    }


def verdict(result: dict, metric: str, names: tuple[str, str], confidence: float = 0.95) -> str:
    """A Markdown paragraph: which is better by how much, or no detectable difference."""
    label, (a, b) = METRICS[metric], names
    points = 100 * result["diff"]
    interval = f"{confidence:.0%} CI [{100 * result['low']:+.1f}, {100 * result['high']:+.1f}]"
    if result["low"] > 0 or result["high"] < 0:
        better, worse = (b, a) if points > 0 else (a, b)
        head = f"**{better} is better than {worse}** by {abs(points):.1f} points of {label}, {interval} (B - A)"
    else:
        head = f"**No detectable difference** in {label}: B - A = {points:+.1f} points, {interval}"
    lines = [head, ""]
    if result["kind"] == "runs":
        lines += [
            f"- A: {100 * result['a']:.2f}%, B: {100 * result['b']:.2f}% on the same {result['n']} test items",
            f"- paired bootstrap of the difference over items (2000 resamples); McNemar's exact test: "
            f"{result['only_a']} items right in A only, {result['only_b']} in B only, p = {result['mcnemar_p']:.3g}",
        ]
    else:
        pairs = ", ".join(
            f"{n}: {100 * x:.2f} / {100 * y:.2f}"
            for n, x, y in zip(result["pairs"], result["values_a"], result["values_b"])
        )
        lines += [
            f"- A: {100 * result['a']:.2f}%, B: {100 * result['b']:.2f}% (means of {len(result['pairs'])} paired runs)",
            f"- per pair (A / B): {pairs}",
            f"- paired t-test p = {result['t_p']:.3g} (its interval above); Wilcoxon signed-rank p = "
            f"{result['wilcoxon_p']:.3g}",
        ]
    return "\n".join([f"A = {a}, B = {b}", "", *lines, ""])


def load(path: Path) -> Predictions | dict[str, Predictions]:
    """A run (a folder with test_predictions.csv), or a group: the runs in its sub-folders (a sweep's job folders,
    cross-validation's fold_K folders), by sub-folder name."""
    if not path.is_dir():
        raise ConfigError(f"{path}: no such run folder")
    if (path / PREDICTIONS).is_file():
        return read_predictions(path)
    runs = {p.parent.relative_to(path).as_posix(): p.parent for p in path.glob(f"*/{PREDICTIONS}")}
    runs = runs or {p.parent.relative_to(path).as_posix(): p.parent for p in path.glob(f"*/*/{PREDICTIONS}")}
    if not runs:
        raise DataError(f"{path}: no {PREDICTIONS} in it or in its sub-folders (not a run, sweep or CV folder)")
    return {name: read_predictions(run) for name, run in runs.items()}


def compare(path_a: Path, path_b: Path, metric: str | None = None, confidence: float = 0.95) -> str:
    a, b = load(path_a), load(path_b)
    if isinstance(a, dict) != isinstance(b, dict):
        raise ConfigError("compare two runs, or two groups of runs (sweeps, cross-validations), not one of each")
    first = next(iter(a.values())) if isinstance(a, dict) else a
    metric = metric or ("map" if first.multilabel else "acc")
    if metric == "map" and not first.multilabel:
        raise ConfigError("--metric map is for multi-label runs: use acc or f1")
    if isinstance(a, dict):
        result = compare_groups(a, b, metric, confidence)
    else:
        result = compare_runs(a, b, metric, confidence)
    return verdict(result, metric, (str(path_a), str(path_b)), confidence)


def natural_order(name: str) -> tuple[list, str]:
    """Sort key of run and job folder names with their numbers read as numbers: 2 before 10, fold_2 before
    fold_10 (a multirun's job folders are plain numbers); names that read alike (run_1, run_01) by name."""
    parts = re.split(r"(\d+)", name)  # text, digits, text, ...: digit runs at the odd places
    return [int(t) if i % 2 else t for i, t in enumerate(parts)], name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m audio_cls.compare", description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path, help="a run folder, or a sweep / cross-validation folder")
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--metric", choices=sorted(METRICS), help="acc (default) or f1; map for multi-label runs")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--output", type=Path, help="also write the verdict (Markdown) to this file")
    args = parser.parse_args(argv)
    try:
        text = compare(args.run_a, args.run_b, args.metric, args.confidence)
    except (ConfigError, DataError) as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
