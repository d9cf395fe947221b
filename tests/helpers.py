"""Plain helpers shared by the tests (the fixtures are in conftest.py): `from helpers import ...`."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from torch import nn

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO / "data" / "fsdd"


def write_tone(
    path: Path,
    seconds: float = 0.5,
    sample_rate: int = 8000,
    freq: float = 440.0,
    channels: int = 1,
    subtype: str = "PCM_16",
) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return path


def run_entry(module: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, from the repo root."""
    return subprocess.run(
        [sys.executable, "-m", module, *overrides], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# Three classes told apart by pitch; one name is not ASCII.
TONE_CLASSES = {"low": 300.0, "mid": 900.0, "höch_音": 2400.0}


def write_tone_dataset(
    root: Path, per_class: int = 8, speakers: tuple[str, ...] = ("ann", "bob", "cem", "dia"), sample_rate: int = 16000
) -> list[tuple[Path, str, str]]:
    """root/<class>/<speaker>_<n>.wav tones (0.3-0.5 s, a little noise), plus one stereo 44.1 kHz FLAC
    per class. Returns (path, label, speaker) of every file."""
    rng = np.random.default_rng(0)
    files = []
    for label, freq in TONE_CLASSES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            speaker = speakers[n % len(speakers)]
            path = root / label / f"{speaker}_{n}.wav"
            seconds = 0.3 + 0.2 * rng.random()
            t = np.arange(int(seconds * sample_rate)) / sample_rate
            wave = 0.4 * np.sin(2 * np.pi * freq * (1 + 0.02 * rng.standard_normal()) * t)
            sf.write(str(path), wave + 0.01 * rng.standard_normal(t.shape), sample_rate)
            files.append((path, label, speaker))
        path = write_tone(
            root / label / f"{speakers[0]}_stereo.flac", seconds=0.4, sample_rate=44100, freq=freq, channels=2
        )
        files.append((path, label, speakers[0]))
    return files


def write_fsd50k(root: Path, per_split: int = 6) -> Path:
    """An FSD50K layout (ground truth, vocabulary, dev and eval audio) of tones labelled with 1-2 of three
    classes; every class occurs in every split."""
    truth = root / "FSD50K.ground_truth"
    truth.mkdir(parents=True)
    classes = ["Bark", "Meow", "Speech"]
    (truth / "vocabulary.csv").write_text("".join(f"{i},{c},/m/0{i}\n" for i, c in enumerate(classes)))
    rows = {"dev": [], "eval": []}
    n = 0
    for part, splits in (("dev", ("train", "val")), ("eval", (None,))):
        (root / f"FSD50K.{part}_audio").mkdir()
        for split in splits:
            for i in range(per_split):
                labels = [classes[i % 3]] + ([classes[(i + 1) % 3]] if i % 2 else [])
                write_tone(root / f"FSD50K.{part}_audio" / f"{n}.wav", 0.5, 16000, 300.0 + 200 * (i % 3))
                rows[part].append([str(n), ",".join(labels), "/m/x", *([split] if split else [])])
                n += 1
    for part, header in (("dev", "fname,labels,mids,split"), ("eval", "fname,labels,mids")):
        with (truth / f"{part}.csv").open("w", newline="") as f:
            f.write(header + "\n")
            csv.writer(f).writerows(rows[part])
    return root


def randomize_batch_norm(net: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters in every batch norm, so that none is the identity (the
    initial ones keep zeros at zero, and a padding bug cannot show)."""
    for layer in net.modules():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):  # MaskedBatchNorm too
            nn.init.uniform_(layer.running_mean, -0.5, 0.5)
            nn.init.uniform_(layer.running_var, 0.5, 2.0)
            nn.init.uniform_(layer.weight, 0.5, 1.5)
            nn.init.uniform_(layer.bias, -0.2, 0.2)
    return net
