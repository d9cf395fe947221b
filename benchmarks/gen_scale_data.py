"""Generated datasets for the scale benchmark (`bench_scale.py`, `make bench-scale`): N short recordings in a
folder per class, the same files as a CSV manifest, and optionally a long manifest of segments of them.

    python gen_scale_data.py [--out DIR] [--sizes 10000 100000] [--manifest-rows 1000000] [--workers 2]

For each size N, in DIR (default: logs/scale_data, git-ignored):

    folder_N/<class>/<speaker>_<k>.wav   10 classes (class0..class9), 50 speakers (s00..s49), so that
                                         data.group_pattern='^(?P<group>[^_]+)_' gives speaker-disjoint splits
    manifest_N.csv                       path,label,group for the same files (paths relative to DIR)

and with --manifest-rows R, `manifest_segments_R.csv` (path,label,group,start,end): R rows over the files of
the largest size, each file cut into ceil(R / N) consecutive, non-overlapping segments of equal length (a
long-recording layout; every row is a distinct (path, start, end), as manifest.py requires).

Recordings: 8 kHz, 16-bit mono WAV; lengths drawn from the bundled FSDD's own lengths (0.14-2.3 s, median
0.42 s) times a random factor 0.9-1.1, so that length buckets and clips/s compare with FSDD. Content: a
harmonic tone whose pitch and timbre depend on the class (pitch shifted per speaker) under a random
envelope, plus seeded white noise, so every file is different (the duplicate check finds no copies) and the
classes can be learnt. Every file comes from its own seed (seed, N, index): the output is the same on every
run. A size whose done-marker (DIR/.done_folder_N.json) matches the parameters is skipped; an incomplete
one (no marker) is deleted and written again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
VERSION = 1  # bump when the content or layout changes: markers of another version are regenerated
SAMPLE_RATE = 8000
CLASSES = 10
SPEAKERS = 50
GROUP_PATTERN = "^(?P<group>[^_]+)_"  # for data=folder: the speaker before the first underscore


def fsdd_lengths() -> tuple[np.ndarray, str]:
    """Lengths (samples at 8 kHz) of the bundled FSDD recordings, the distribution the generated ones follow."""
    folder = REPO / "data" / "fsdd" / "recordings"
    files = sorted(folder.glob("*.wav"))
    if files:
        return np.array([sf.info(str(f)).frames for f in files], dtype=np.int64), "fsdd"
    # Without the bundled copy: uniform 0.3-1.0 s (recorded in the marker, so outputs are not mixed up)
    return np.arange(int(0.3 * SAMPLE_RATE), int(1.0 * SAMPLE_RATE)), "uniform-0.3-1.0s"


def relative_path(n: int, index: int) -> str:
    """folder_N/<class>/<speaker>_<k>.wav of file `index`: classes and speakers cycle, k counts per (class, speaker)."""
    label, speaker, k = index % CLASSES, (index // CLASSES) % SPEAKERS, index // (CLASSES * SPEAKERS)
    return f"folder_{n}/class{label}/s{speaker:02d}_{k:05d}.wav"


def manifest_row(n: int, index: int) -> tuple[str, str, str]:
    """(path, label, group) of file `index` of size n."""
    return relative_path(n, index), f"class{index % CLASSES}", f"s{(index // CLASSES) % SPEAKERS:02d}"


def synthesize(seed: int, n: int, index: int, lengths: np.ndarray) -> np.ndarray:
    """One recording (float32 in [-1, 1]): its class's harmonic tone at its speaker's pitch, enveloped, plus noise."""
    rng = np.random.default_rng([seed, n, index])
    label, speaker = index % CLASSES, (index // CLASSES) % SPEAKERS
    length = max(int(SAMPLE_RATE * 0.1), int(lengths[rng.integers(len(lengths))] * rng.uniform(0.9, 1.1)))
    t = np.arange(length) / SAMPLE_RATE
    pitch = (180.0 + 55.0 * label) * (0.8 + 0.4 * speaker / (SPEAKERS - 1)) * rng.uniform(0.97, 1.03)
    glide = 1.0 + rng.uniform(-0.15, 0.15) * t / t[-1]  # a rising or falling pitch over the recording
    phase = 2 * np.pi * np.cumsum(pitch * glide) / SAMPLE_RATE
    # timbre: the class fixes which of 4 harmonics are strong (each class its own mix)
    weights = np.array([1.0, (label % 3) / 2, (label % 4) / 3, (label % 5) / 4]) + rng.uniform(0, 0.1, 4)
    tone = sum(w * np.sin((h + 1) * phase + rng.uniform(0, 2 * np.pi)) for h, w in enumerate(weights))
    attack, release = rng.uniform(0.02, 0.08), rng.uniform(0.05, 0.2)
    envelope = np.minimum(1.0, np.minimum(t / attack, (t[-1] - t) / release + 0.05))
    x = tone * envelope / weights.sum() + rng.normal(0, rng.uniform(0.01, 0.05), length)
    return (x * rng.uniform(0.3, 0.8) / max(1e-6, np.abs(x).max())).astype(np.float32)


def _write_range(job: tuple) -> np.ndarray:
    """Write files [start, stop) of size n; returns their lengths in samples."""
    out, seed, n, start, stop, lengths = job
    written = np.empty(stop - start, dtype=np.int32)
    for index in range(start, stop):
        x = synthesize(seed, n, index, lengths)
        sf.write(str(out / relative_path(n, index)), x, SAMPLE_RATE, subtype="PCM_16")
        written[index - start] = len(x)
    return written


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_marker(path: Path, content: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(tmp, path)


def generate_size(out: Path, n: int, seed: int, workers: int) -> None:
    marker = out / f".done_folder_{n}.json"
    lengths, source = fsdd_lengths()
    wanted = {"version": VERSION, "n": n, "seed": seed, "lengths_from": source}
    done = read_marker(marker)
    if done is not None and {k: done.get(k) for k in wanted} == wanted and (out / f"folder_{n}").is_dir():
        print(f"folder_{n}: complete ({marker.name}), skipped", flush=True)
        return
    started = time.perf_counter()
    marker.unlink(missing_ok=True)
    shutil.rmtree(out / f"folder_{n}", ignore_errors=True)
    for label in range(CLASSES):
        (out / f"folder_{n}" / f"class{label}").mkdir(parents=True)
    chunk = max(1, min(2000, math.ceil(n / (4 * workers))))
    jobs = [(out, seed, n, s, min(n, s + chunk), lengths) for s in range(0, n, chunk)]
    with Pool(workers) as pool:
        written = np.concatenate(pool.map(_write_range, jobs, chunksize=1))
    np.save(out / f"lengths_{n}.npy", written)
    with (out / f"manifest_{n}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "group"))
        for index in range(n):
            writer.writerow(manifest_row(n, index))
    seconds = written.sum() / SAMPLE_RATE
    write_marker(marker, {**wanted, "files": n, "audio_hours": round(seconds / 3600, 3)})
    elapsed = time.perf_counter() - started
    print(
        f"folder_{n}: {n} files, {seconds / 3600:.2f} h of audio (lengths {written.min() / SAMPLE_RATE:.2f}-"
        f"{written.max() / SAMPLE_RATE:.2f} s, mean {written.mean() / SAMPLE_RATE:.3f} s), and manifest_{n}.csv "
        f"in {elapsed:.1f} s",
        flush=True,
    )


def generate_segments(out: Path, rows: int, n: int, seed: int) -> None:
    """manifest_segments_ROWS.csv: the files of size n, each cut into ceil(rows / n) equal consecutive segments."""
    marker = out / f".done_segments_{rows}.json"
    wanted = {"version": VERSION, "rows": rows, "source_size": n, "seed": seed}
    done = read_marker(marker)
    name = f"manifest_segments_{rows}.csv"
    if done is not None and {k: done.get(k) for k in wanted} == wanted and (out / name).is_file():
        print(f"{name}: complete ({marker.name}), skipped", flush=True)
        return
    started = time.perf_counter()
    marker.unlink(missing_ok=True)
    lengths = np.load(out / f"lengths_{n}.npy")
    per_file = math.ceil(rows / n)
    tmp = out / f"{name}.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "group", "start", "end"))
        count = 0
        for index in range(n):
            row = manifest_row(n, index)
            duration = lengths[index] / SAMPLE_RATE
            # Bounds rounded down to 0.1 ms: every segment ends inside the file and none overlap.
            bounds = [math.floor(duration * k / per_file * 1e4) / 1e4 for k in range(per_file + 1)]
            for start, end in zip(bounds, bounds[1:]):
                if count == rows:
                    break
                writer.writerow((*row, f"{start:.4f}", f"{end:.4f}"))
                count += 1
    os.replace(tmp, out / name)
    write_marker(marker, {**wanted, "segments_per_file": per_file})
    print(
        f"{name}: {rows} rows, {per_file} segments per file of folder_{n} "
        f"(mean segment {lengths.mean() / SAMPLE_RATE / per_file * 1000:.0f} ms), "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )


def main(out: Path, sizes: list[int], manifest_rows: int, seed: int, workers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for n in sorted(sizes):
        generate_size(out, n, seed, workers)
    if manifest_rows:
        generate_segments(out, manifest_rows, max(sizes), seed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "scale_data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--manifest-rows", type=int, default=0, help="rows of the segment manifest (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    main(args.out, args.sizes, args.manifest_rows, args.seed, args.workers)
