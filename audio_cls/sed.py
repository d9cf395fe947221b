"""Sound event detection (SED): from frame scores to events, and the field's metrics.

    frame scores (frames, classes) per file -> median filter along time per class (`smooth`)
        -> score >= threshold per class -> runs of active frames -> events (`events_from_scores`):
           merge gaps shorter than `min_gap`, drop events shorter than `min_duration`
    frame scores + reference events per file -> segment-based F1, collar-based (event) F1, PSDS1
        (`sed_metrics`, computed by sed_scores_eval, the package the DCASE challenge evaluates with)

Scores are per-class probabilities (sigmoid outputs: events of different classes may overlap). Frame t
covers [t * hop, (t + 1) * hop) seconds, so frames a..b-1 make the event (a * hop, b * hop). Times are in
seconds, rounded to 1 us (sed_scores_eval rounds to the same 6 decimals), so that 3 * 0.1 reads 0.3.

sed_metrics needs the optional `sed` extra: pip install -e '.[sed]'.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.ndimage import median_filter

from audio_cls.errors import ConfigError

log = logging.getLogger(__name__)

# An event: (onset s, offset s, label, score); a reference event: (onset s, offset s, label).
Event = tuple[float, float, str, float]
Reference = tuple[float, float, str]

TIME_DECIMALS = 6
SEGMENT_SECONDS = 1.0  # segment-based metrics: 1 s segments (DCASE)
ONSET_COLLAR = 0.2  # collar-based: onset within 200 ms of the reference's,
OFFSET_COLLAR = 0.2  # offset within max(200 ms, 20% of the reference event's length) (DCASE)
OFFSET_COLLAR_RATE = 0.2
# PSDS scenario 1 (DCASE 2021 onwards): localisation counts (70% intersection), no cross-trigger cost,
# variation across classes penalised, false positives up to 100 per hour.
PSDS1 = dict(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0, max_efpr=100.0)


def smooth(scores: np.ndarray, median_frames: int) -> np.ndarray:
    """Median-filter each class's scores along time: (frames, classes) -> (frames, classes).

    Removes isolated spikes and fills holes shorter than half the window. `median_frames` <= 1 returns the
    scores unchanged; otherwise it must be odd, so that the window is centred on its frame and events do
    not shift in time. At the file's edges the first and last frames are repeated (mode "nearest").
    """
    scores = np.asarray(scores)
    if median_frames <= 1:
        return scores
    if median_frames % 2 == 0:
        raise ConfigError(f"median_frames={median_frames}: must be odd (a centred window), or <= 1 for none")
    return median_filter(scores, size=(median_frames, 1), mode="nearest")


def events_from_scores(
    scores: np.ndarray,
    hop_seconds: float,
    class_names: list[str],
    thresholds: float | Sequence[float],
    median_frames: int = 1,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
) -> list[Event]:
    """Detected events of one file from its frame scores.

    Args:
        scores: (frames, classes) scores in [0, 1], frame t covering [t * hop_seconds, (t + 1) * hop_seconds).
        hop_seconds: seconds between frames.
        class_names: a label per column of `scores`.
        thresholds: one threshold for all classes, or one per class; a frame is active when its smoothed
            score is >= the threshold.
        median_frames: median filter length in frames (odd; <= 1: none), applied before thresholding.
        min_duration: events shorter than this (seconds) are dropped, after merging.
        min_gap: events of one class less than this (seconds) apart are merged into one.

    Returns:
        (onset s, offset s, label, score) per event, sorted by onset then label; the score is the largest
        smoothed score inside the event.
    """
    scores = _check_scores(scores, class_names)
    smoothed = smooth(scores, median_frames)
    active = smoothed >= _class_thresholds(thresholds, class_names)

    def seconds(frames: int) -> float:
        return round(float(frames * hop_seconds), TIME_DECIMALS)

    events: list[Event] = []
    for k, label in enumerate(class_names):
        # Runs of active frames: +1 where a run starts, -1 one past where it ends.
        edges = np.diff(np.concatenate(([0], active[:, k].astype(np.int8), [0])))
        runs: list[list[int]] = []
        for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            if runs and seconds(start - runs[-1][1]) < min_gap:
                runs[-1][1] = stop
            else:
                runs.append([start, stop])
        for start, stop in runs:
            if seconds(stop - start) >= min_duration:
                events.append((seconds(start), seconds(stop), label, float(smoothed[start:stop, k].max())))
    events.sort(key=lambda event: (event[0], event[2]))
    return events


def sed_metrics(
    scores: dict[str, np.ndarray],
    hop_seconds: float,
    class_names: list[str],
    ground_truth: dict[str, list[Reference]],
    durations: dict[str, float],
    thresholds: float | Sequence[float] = 0.5,
    median_frames: int = 1,
    psds: bool = True,
) -> dict[str, float | dict]:
    """The field's SED metrics of a set of files, computed by sed_scores_eval from the (smoothed) frame scores.

    Args:
        scores: audio id -> (frames, classes) scores, as for `events_from_scores`.
        hop_seconds: seconds between frames.
        class_names: a label per column of the score arrays.
        ground_truth: audio id -> reference events (onset s, offset s, label); [] for a file without events.
        durations: audio id -> the file's length in seconds (segment-based metrics and PSDS count the
            segments and time without events too).
        thresholds: one decision threshold for all classes, or one per class (score >= threshold is active).
        median_frames: median filter length in frames (odd; <= 1: none), applied before evaluation.
        psds: also compute PSDS1, which sweeps all thresholds (the slowest of the three).

    Returns:
        {"segment_f1": micro-average, "segment_f1_macro": mean over classes, "event_f1": micro,
        "event_f1_macro": ..., "psds1": ... (if psds), "per_class": {label: {"segment_f1": ..., "event_f1": ...}}}.
        Segment-based: 1 s segments. Event-based: collar-based, 200 ms onset collar, offset collar
        max(200 ms, 20% of the reference's length). The events are those of `events_from_scores` with the
        same thresholds and median filter, without min_gap / min_duration (sed_scores_eval evaluates the
        frame scores, not an event list).
    """
    try:
        with warnings.catch_warnings():
            # sed_scores_eval imports sed_eval, which imports dcase_util, which imports pkg_resources (deprecated).
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import sed_scores_eval
            from sed_scores_eval.base_modules.scores import create_score_dataframe
    except ImportError as err:
        raise ImportError("sound event detection metrics need sed_scores_eval: pip install -e '.[sed]'") from err

    _check_ids(scores, ground_truth, durations)
    class_names = list(class_names)
    references = {
        audio_id: [(float(onset), float(offset), label) for onset, offset, label in events]
        for audio_id, events in ground_truth.items()
    }
    present = {label for events in references.values() for *_, label in events}
    if unknown := sorted(present - set(class_names)):
        raise ValueError(f"ground truth has label {unknown[0]!r}, not one of class_names")
    # sed_scores_eval counts a class's reference events as separate activities (and asserts so).
    for audio_id, events in references.items():
        for label in {label for *_, label in events}:
            spans = sorted((onset, offset) for onset, offset, other in events if other == label)
            for (_, offset), (onset, _) in zip(spans, spans[1:]):
                if onset <= offset:
                    raise ValueError(
                        f"ground truth of {audio_id!r}: {label!r} events overlap or touch at {onset} s; merge them"
                    )
    # Recall is undefined for a class that never occurs: sed_scores_eval refuses (with an assert).
    if absent := [label for label in class_names if label not in present]:
        raise ValueError(
            f"no reference events of class {absent[0]!r} ({len(absent)} classes have none): "
            "sed_scores_eval needs at least one per class"
        )

    frames = {}
    for audio_id, file_scores in scores.items():
        smoothed = smooth(_check_scores(file_scores, class_names), median_frames)
        timestamps = np.arange(len(smoothed) + 1) * hop_seconds
        frame = create_score_dataframe(smoothed, timestamps=timestamps, event_classes=class_names)
        # Under pandas 3 its Cython code gets read-only views and fails; fixed upstream in fgnt/sed_scores_eval#17.
        # (float64 keeps the scores as compared in events_from_scores.)
        frame[class_names] = frame[class_names].astype(np.float64)
        frames[audio_id] = frame
    # sed_scores_eval detects score > threshold; the next float below each threshold makes that score >= threshold,
    # as in events_from_scores.
    threshold = {
        label: float(np.nextafter(value, -np.inf))
        for label, value in zip(class_names, _class_thresholds(thresholds, class_names))
    }
    seconds = {audio_id: float(duration) for audio_id, duration in durations.items()}

    segment_f1, *_ = sed_scores_eval.segment_based.fscore(
        frames, references, seconds, threshold=threshold, segment_length=SEGMENT_SECONDS
    )
    event_f1, *_ = sed_scores_eval.collar_based.fscore(
        frames,
        references,
        threshold=threshold,
        onset_collar=ONSET_COLLAR,
        offset_collar=OFFSET_COLLAR,
        offset_collar_rate=OFFSET_COLLAR_RATE,
    )
    metrics: dict[str, float | dict] = {
        "segment_f1": float(segment_f1["micro_average"]),
        "segment_f1_macro": float(segment_f1["macro_average"]),
        "event_f1": float(event_f1["micro_average"]),
        "event_f1_macro": float(event_f1["macro_average"]),
    }
    if psds:
        value, *_ = sed_scores_eval.intersection_based.psds(frames, references, seconds, unit_of_time="hour", **PSDS1)
        metrics["psds1"] = float(value)
    metrics["per_class"] = {
        label: {"segment_f1": float(segment_f1[label]), "event_f1": float(event_f1[label])} for label in class_names
    }
    return metrics


def _check_scores(scores: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ValueError(f"scores of shape {scores.shape}: expected (frames, {len(class_names)} classes)")
    return scores


def _class_thresholds(thresholds: float | Sequence[float], class_names: Sequence[str]) -> np.ndarray:
    """One threshold per class, shape (classes,)."""
    values = np.asarray(thresholds, dtype=np.float64)
    if values.ndim == 0:
        return np.full(len(class_names), float(values))
    if values.shape != (len(class_names),):
        raise ConfigError(f"thresholds={values.tolist()}: has {values.size} entries for {len(class_names)} classes")
    return values


def _check_ids(scores: dict, ground_truth: dict, durations: dict) -> None:
    """Every file needs scores, ground truth (possibly []) and a duration."""
    if not scores:
        raise ValueError("no scores to evaluate")
    for name, other in (("ground_truth", ground_truth), ("durations", durations)):
        if missing := sorted(scores.keys() - other.keys()):
            raise ValueError(f"audio id {missing[0]!r} has scores but is missing from {name} ({len(missing)} in all)")
        if extra := sorted(other.keys() - scores.keys()):
            raise ValueError(f"audio id {extra[0]!r} is in {name} but has no scores ({len(extra)} in all)")


def merge_references(events: Sequence[Reference]) -> list[Reference]:
    """Reference events with the overlapping or touching events of each class merged into one (two overlapping
    utterances of one word are one stretch in which the class is active; sed_scores_eval expects that)."""
    merged: list[list] = []
    for onset, offset, label in sorted(events, key=lambda e: (e[2], e[0], e[1])):
        if merged and merged[-1][2] == label and onset <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], offset)
        else:
            merged.append([onset, offset, label])
    return sorted((float(a), float(b), label) for a, b, label in merged)


def detection_scores(module, datamodule, split: str) -> tuple[dict[str, np.ndarray], float]:
    """Frame probabilities (frames, classes) of every recording of a split, by path, and the seconds per frame:
    `module` (an AudioClassifier whose network has a frame head) run in eval mode, in batches of items taken
    in order (a recording found unreadable, with data.on_bad_file=skip, is left out by path, not by position)."""
    import torch

    from audio_cls.data.base import pad_collate
    from audio_cls.module import frame_hop

    dataset = datamodule.dataset(split, augment=False)
    hop = frame_hop(datamodule.features.hop_samples / datamodule.sample_rate, module.net)
    was_training = module.training
    module.eval()
    scores = {}
    with torch.no_grad():
        for start in range(0, len(dataset), datamodule.batch_size):
            indices = range(start, min(start + datamodule.batch_size, len(dataset)))
            loaded = [(dataset.items[i].path, item) for i in indices if (item := dataset[i]) is not None]
            if not loaded:
                continue
            batch = pad_collate([item for _, item in loaded])
            batch = datamodule.features_of({k: v.to(module.device) for k, v in batch.items()})
            _, frame_logits, frame_lengths = module.net.forward_frames(batch["inputs"], batch["lengths"])
            probs = torch.sigmoid(frame_logits.float()).cpu().numpy()
            for (path, _), row, n in zip(loaded, probs, frame_lengths.tolist()):
                scores[path] = row[:n]
    module.train(was_training)
    return scores, hop


def test_detection(module, datamodule) -> dict:
    """After testing: `evaluate_detection` on the test split with the training run's task settings, as
    metrics ({"test/segment_f1": ..., "test/events_per_class": {...}}); {} unless the model detects events
    (multi-label, a frame head) and the data has event times."""
    if not (module.detects_events and datamodule.has_events):
        return {}
    task = module.hparams.config.get("task") or {}
    found = evaluate_detection(
        module, datamodule, "test", module.frame_thresholds.tolist(), task.get("median_frames", 1)
    )
    log.info(
        "Sound event detection (test): segment F1 %.4f (1 s segments), event F1 %.4f (200 ms collar), PSDS1 %.4f",
        found["segment_f1"],
        found["event_f1"],
        found["psds1"],
    )
    per_class = found.pop("per_class")
    return {**{f"test/{k}": v for k, v in found.items()}, "test/events_per_class": per_class}


class Detections(NamedTuple):
    """A split's frame scores and what `sed_metrics` compares them with, for the classes that have a reference
    event in the split (recall is undefined for the others): its arguments, in its order."""

    scores: dict[str, np.ndarray]  # path -> (frames, classes) probabilities, the columns of `class_names`
    hop_seconds: float
    class_names: list[str]
    ground_truth: dict[str, list[Reference]]  # path -> merged reference events
    durations: dict[str, float]
    thresholds: np.ndarray  # (classes,)


def split_detections(module, datamodule, split: str, thresholds: float | Sequence[float] = 0.5) -> Detections:
    """`detection_scores` of a split with its strong labels, durations and the frame thresholds (one, or one
    per class of the module), restricted to the classes present in the split's reference events."""
    scores, hop = detection_scores(module, datamodule, split)
    items = [it for it in datamodule.splits[split] if it.path in scores]
    truth = {it.path: merge_references(it.events or ()) for it in items}
    present = sorted({label for events in truth.values() for *_, label in events})
    columns = [module.class_names.index(label) for label in present]
    return Detections(
        {path: s[:, columns] for path, s in scores.items()},
        hop,
        present,
        truth,
        {it.path: datamodule.seconds[it] for it in items},
        _class_thresholds(thresholds, module.class_names)[columns],
    )


def evaluate_detection(
    module, datamodule, split: str = "test", thresholds: float | Sequence[float] = 0.5, median_frames: int = 1
) -> dict[str, float | dict]:
    """`sed_metrics` of a split, frames active at or above `thresholds` (one, or one per class of the module),
    against the split's strong labels (`split_detections`: classes without a reference event there left out)."""
    return sed_metrics(*split_detections(module, datamodule, split, thresholds), median_frames=median_frames)
