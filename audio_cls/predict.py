"""Label new audio: `python -m audio_cls.predict ckpt_path=CKPT input=PATH [output_dir=DIR] [window=...]`.

`input` is an audio file, a folder (searched recursively for .wav/.flac/.ogg) or a CSV manifest with a
`path` column (relative to the manifest; optional `start`/`end` seconds select a segment, an optional
`label` column adds the true label and the accuracy; other columns are ignored). Writes to output_dir:

    predictions.csv   one row per file: status, top-k labels and probabilities, duration, windows,
                      padded, notes (e.g. resampled), and the error for files that could not be read
    predictions.json  the same with every class's probability and the settings used
    windows.csv       with save_windows=true: every window's start, end and class probabilities
    events.csv        models with a frame head (sound event detection): file, onset, offset, label, score

A multi-label model adds a `detected` column: every label whose score reaches its decision threshold (tuned
on validation, saved in the checkpoint), with its score, best first.

and prints a short table. In a folder or manifest run an unreadable file is listed with its error and
the others are still predicted; the exit status is then 2 (0 when every file was predicted, 1 when the
run itself failed), and metrics.json counts them. The Python API is `audio_cls.inference.Classifier`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from audio_cls import CONF_DIR
from audio_cls.errors import DataError
from audio_cls.inference import Classifier, Prediction, Source, collect_sources
from audio_cls.runs import run_file_task, write_json

log = logging.getLogger(__name__)

__all__ = ["Classifier", "Prediction", "predict", "collect_sources"]

OUTPUTS = ("predictions.csv", "predictions.json", "windows.csv", "events.csv")
TABLE_ROWS = 20  # rows printed; the files hold all of them


def predict(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    classifier = Classifier.from_checkpoint(
        cfg.ckpt_path,
        device=cfg.device,
        window=cfg.window,
        hop=cfg.hop,
        aggregate=cfg.aggregate,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        # sound event detection (conf/predict.yaml); a config composed before these keys existed lacks them
        frame_threshold=cfg.get("frame_threshold"),
        median_frames=cfg.get("median_frames"),
        min_duration=cfg.get("min_duration", 0.0),
        min_gap=cfg.get("min_gap", 0.0),
        tta_views=(cfg.get("tta") or {}).get("views", 1),
        tta_shift=(cfg.get("tta") or {}).get("shift"),
    )
    sources = collect_sources(str(cfg.input))
    spec = Path(str(cfg.input)).expanduser()
    one_file = len(sources) == 1 and not spec.is_dir() and spec.suffix.lower() != ".csv"
    log.info("Predicting %d recording(s) with %s (%s)", len(sources), cfg.ckpt_path, describe(classifier))

    results: list[tuple[Source, Prediction | None, str | None]] = []
    for source in tqdm(sources, desc="predict", unit="file", disable=None if cfg.progress else True):
        try:
            results.append(
                (
                    source,
                    classifier.predict(source.path, start=source.start, end=source.end, windows=cfg.save_windows),
                    None,
                )
            )
        except DataError as err:
            if one_file:
                raise  # a single file that cannot be read is the run's error
            log.warning("%s", err)
            results.append((source, None, str(err)))

    written = write_outputs(output_dir, classifier, results, cfg)
    failed = sum(1 for _, pred, _ in results if pred is None)
    summary = {"files": len(results), "predicted_files": len(results) - failed, "failed_files": failed}
    labelled = [(s, p) for s, p, _ in results if p is not None and s.label is not None]
    if labelled and not classifier.multilabel:
        summary["accuracy"] = sum(s.label == p.label for s, p in labelled) / len(labelled)
    print(table(results, spec, summary, output_dir))
    return {**summary, **written, "ckpt_path": str(cfg.ckpt_path)}


def describe(classifier: Classifier) -> str:
    views = classifier.views
    each = f", each the mean of {views.views} shifted crops" if views is not None else ""
    if classifier.window is None:
        return f"whole recordings{each}"
    return (
        f"windows of {classifier.window_s:g} s every {classifier.hop_s:g} s{each}, "
        f"{classifier.aggregate} of their probabilities"
    )


def write_outputs(output_dir: Path, classifier: Classifier, results: list, cfg: DictConfig) -> dict:
    """predictions.csv, predictions.json and (save_windows) windows.csv; returns their paths."""
    k = classifier.top_k
    segments = any(s.start is not None or s.end is not None for s, _, _ in results)
    labelled = any(s.label is not None for s, _, _ in results)
    header = [
        "path",
        *(["start_s", "end_s"] if segments else []),
        *(["true_label"] if labelled else []),
        "status",
        *(["detected"] if classifier.multilabel else []),
        *[f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "probability")],
        "duration_s",
        "windows",
        "padded",
        "notes",
        "error",
    ]
    files = []
    with (output_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for source, pred, error in results:
            row = [
                str(source.path),
                *([_blank(source.start), _blank(source.end)] if segments else []),
                *([source.label or ""] if labelled else []),
                "ok" if pred else "error",
            ]
            if classifier.multilabel:
                row.append(";".join(f"{label}:{score:.4f}" for label, score in pred.detected) if pred else "")
            if pred:
                for label, prob in zip(pred.labels, pred.probabilities):
                    row += [label, f"{prob:.6f}"]
                row += [f"{pred.duration_s:.3f}", pred.num_windows, pred.padded, "; ".join(pred.notes), ""]
            else:
                row += [""] * (2 * k) + ["", "", "", "", error]
            writer.writerow(row)
            files.append(_json_entry(source, pred, error, classifier.class_names))

    write_json(
        output_dir / "predictions.json",
        {
            "checkpoint": str(cfg.ckpt_path),
            "input": str(cfg.input),
            "class_names": classifier.class_names,
            "sample_rate": classifier.sample_rate,
            "window_s": classifier.window_s,
            "hop_s": classifier.hop_s,
            "aggregate": classifier.aggregate,
            "top_k": k,
            "thresholds": dict(zip(classifier.class_names, classifier.thresholds)) if classifier.multilabel else None,
            # events.csv: frames at or above these, after the median filter
            "frame_thresholds": (
                dict(zip(classifier.class_names, classifier.frame_thresholds)) if classifier.detects_events else None
            ),
            "files": files,
        },
    )
    written = {
        "predictions_csv": str(output_dir / "predictions.csv"),
        "predictions_json": str(output_dir / "predictions.json"),
    }
    if cfg.save_windows:
        with (output_dir / "windows.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "window", "start_s", "end_s", "padded", *classifier.class_names])
            for source, pred, _ in results:
                for i, w in enumerate(pred.windows if pred else []):
                    writer.writerow(
                        [
                            str(source.path),
                            i,
                            f"{w.start_s:.3f}",
                            f"{w.end_s:.3f}",
                            w.padded,
                            *(f"{p:.6f}" for p in w.probabilities),
                        ]
                    )
        written["windows_csv"] = str(output_dir / "windows.csv")
    else:
        (output_dir / "windows.csv").unlink(missing_ok=True)  # an earlier run's (overwrite=true)
    if classifier.detects_events:
        with (output_dir / "events.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "onset", "offset", "label", "score"])
            for source, pred, _ in results:
                for onset, offset, label, score in pred.events if pred else []:
                    # times from the file's start (a manifest segment's from the segment's start)
                    writer.writerow([str(source.path), f"{onset:.3f}", f"{offset:.3f}", label, f"{score:.4f}"])
        written["events_csv"] = str(output_dir / "events.csv")
    else:
        (output_dir / "events.csv").unlink(missing_ok=True)
    return written


def _blank(value) -> str:
    return "" if value is None else f"{value:g}"


def _json_entry(source: Source, pred: Prediction | None, error: str | None, class_names: list[str]) -> dict:
    entry = {"path": str(source.path), "start_s": source.start, "end_s": source.end}
    if source.label is not None:
        entry["true_label"] = source.label
    if pred is None:
        return {**entry, "status": "error", "error": error}
    entry.update(
        status="ok",
        top=[{"label": label, "probability": p} for label, p in zip(pred.labels, pred.probabilities)],
        probabilities=dict(zip(class_names, pred.scores)),
        duration_s=pred.duration_s,
        windows=pred.num_windows,
        padded=pred.padded,
        notes=pred.notes,
    )
    if pred.detected is not None:
        entry["detected"] = [{"label": label, "score": score} for label, score in pred.detected]
    if pred.events is not None:
        entry["events"] = [dict(zip(("onset", "offset", "label", "score"), e)) for e in pred.events]
    if pred.windows is not None:
        entry["window_predictions"] = [asdict(w) for w in pred.windows]
    return entry


def table(results: list, input_path: Path, summary: dict, output_dir: Path) -> str:
    """A short plain-text table of the first rows and a summary line."""
    base = input_path if input_path.is_dir() else input_path.parent

    def name(path: Path) -> str:
        try:
            return str(path.relative_to(base))
        except ValueError:
            return str(path)

    rows = [
        (name(s.path), p.label, f"{p.probability:.3f}", str(p.num_windows), "yes" if p.padded else "")
        if p
        else (name(s.path), "error", "", "", e.removeprefix(f"{s.path}: "))
        for s, p, e in results[:TABLE_ROWS]
    ]
    head = ("file", "label", "prob", "windows", "padded / error")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in [head, *rows]]
    if len(results) > TABLE_ROWS:
        lines.append(f"... {len(results) - TABLE_ROWS} more in predictions.csv")
    tail = f"{summary['files']} files: {summary['predicted_files']} predicted, {summary['failed_files']} failed"
    if "accuracy" in summary:
        tail += f", accuracy {summary['accuracy']:.4f} against the manifest's labels"
    return "\n".join([*lines, f"{tail}. Outputs in {output_dir}"])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    run_file_task(predict, cfg, OUTPUTS, listed_in="predictions.csv")


if __name__ == "__main__":
    main()
