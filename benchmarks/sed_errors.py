"""Where a sound event detection model loses segment F1: overlapping events, wrong classes, or boundaries.

    python sed_errors.py RUN [RUN ...]

A RUN is a training run folder of a model with a frame head (its best checkpoint, from metrics.json) or a
checkpoint file. Each is tested again on its test split, with the run's own frame thresholds and median filter,
and the table gives:

- segment F1 and event F1 as the run's test reports them (sed_scores_eval: 1 s segments; 200 ms collar);
- segment F1 of the 1 s segments where two reference events overlap, and of the others (counted here, segment by
  segment: a class is detected in a segment when one of its frames there is active, as sed_scores_eval counts);
- segment and event F1 with the clip labels given (the scores of classes absent from a recording set to zero):
  what the frame decisions reach once every clip is tagged right, the part of the errors that is timing and
  overlap rather than which digit was said;
- the most frequent confusions: a reference class missed in a segment where another class was wrongly detected.
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from audio_cls import sed
from audio_cls.checkpoints import load_model
from common import best_checkpoint, print_table


def checkpoint_of(run: Path) -> Path:
    if run.is_file():
        return run
    best = best_checkpoint(run)
    if not best:
        raise SystemExit(f"{run}: metrics.json names no best checkpoint (a finished training run?)")
    return Path(best)


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def overlaps_in(events: list, start: float, stop: float) -> bool:
    """Whether two of `events` [(onset, offset, label)] are both active at some time within [start, stop)."""
    spans = [(max(a, start), min(b, stop)) for a, b, _ in events if a < stop and b > start]
    return any(max(a1, a2) < min(b1, b2) for i, (a1, b1) in enumerate(spans) for a2, b2 in spans[i + 1 :])


def breakdown(scores: dict, hop: float, names: list, truth: dict, seconds: dict, thresholds, median_frames: int):
    """(counts {"overlap"|"single": [tp, fp, fn]}, confusions Counter[(missed, spurious)]) over 1 s segments."""
    counts = {"overlap": [0, 0, 0], "single": [0, 0, 0]}
    confusions: Counter = Counter()
    for path, file_scores in scores.items():
        active = sed.smooth(file_scores, median_frames) >= np.asarray(thresholds)
        for k in range(int(np.ceil(seconds[path] - 1e-9))):
            frames = active[int(round(k / hop)) : int(round((k + 1) / hop))]
            predicted = set(np.flatnonzero(frames.any(axis=0)).tolist())
            reference = {names.index(label) for onset, offset, label in truth[path] if onset < k + 1 and offset > k}
            row = counts["overlap" if overlaps_in(truth[path], k, k + 1) else "single"]
            row[0] += len(predicted & reference)
            row[1] += len(predicted - reference)
            row[2] += len(reference - predicted)
            confusions.update((names[r], names[p]) for r in reference - predicted for p in predicted - reference)
    return counts, confusions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--confusions", type=int, default=3, help="how many of the most frequent to list")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        module = load_model(checkpoint_of(run))
        if not module.detects_events:
            raise SystemExit(f"{run}: not a sound event detection model (no frame head)")
        datamodule = instantiate(module.hparams.config["data"], features=module.features, task="multilabel")
        datamodule.setup("test")
        found = sed.split_detections(module, datamodule, "test", module.frame_thresholds.tolist())
        scores, hop, names, truth, seconds, thresholds = found
        median = (module.hparams.config.get("task") or {}).get("median_frames", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = sed.sed_metrics(scores, hop, names, truth, seconds, thresholds, median, psds=False)
            tagged = {path: s * np.isin(names, [label for *_, label in truth[path]]) for path, s in scores.items()}
            oracle = sed.sed_metrics(tagged, hop, names, truth, seconds, thresholds, median, psds=False)
        counts, confusions = breakdown(scores, hop, names, truth, seconds, thresholds, median)
        rows.append(
            [
                str(run),
                f"{plain['segment_f1']:.3f}",
                f"{plain['event_f1']:.3f}",
                f"{f1(*counts['overlap']):.3f} ({sum(counts['overlap'][::2])})",
                f"{f1(*counts['single']):.3f} ({sum(counts['single'][::2])})",
                f"{oracle['segment_f1']:.3f}",
                f"{oracle['event_f1']:.3f}",
                ", ".join(f"{r} -> {p} ({n})" for (r, p), n in confusions.most_common(args.confusions)),
            ]
        )
    print_table(
        "Sound event detection errors on the test split (segments: 1 s)",
        [
            "run",
            "segment F1",
            "event F1",
            "segment F1, overlapping events (references)",
            "segment F1, the other segments (references)",
            "segment F1, clip labels given",
            "event F1, clip labels given",
            "most frequent confusions (missed -> detected instead)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
