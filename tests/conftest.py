import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO / "data" / "fsdd"


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    assert (FSDD / "recordings").is_dir(), "the bundled FSDD copy is missing"
    return FSDD


@pytest.fixture(scope="session")
def fsdd_slice(tmp_path_factory) -> Path:
    """A small real slice of FSDD: 2 speakers x 10 digits x recordings 0-9 (100 test, 100 train+val)."""
    root = tmp_path_factory.mktemp("fsdd_slice")
    (root / "recordings").mkdir()
    for speaker in ("jackson", "nicolas"):
        for digit in range(10):
            for index in range(10):
                name = f"{digit}_{speaker}_{index}.wav"
                shutil.copy(FSDD / "recordings" / name, root / "recordings" / name)
    return root


def write_tone(path: Path, seconds: float = 0.5, sample_rate: int = 8000, freq: float = 440.0,
               channels: int = 1, subtype: str = "PCM_16") -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return path


def run_entry(module: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, from the repo root."""
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
