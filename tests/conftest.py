"""The tests' fixtures; plain helpers (REPO, FSDD, write_tone, run_entry, ...) are in helpers.py."""

import shutil
from pathlib import Path

import pytest

from helpers import FSDD, run_entry


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


@pytest.fixture(scope="session")
def trained_checkpoint(fsdd_slice, tmp_path_factory) -> Path:
    """A small CNN1d on log-mel, trained briefly by audio_cls.train on fixed 0.5 s clips (so prediction
    cuts recordings into windows); shared by the prediction and export tests."""
    run_dir = tmp_path_factory.mktemp("predict_run")
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={run_dir}",
        "data.duration=0.5",
        "model.channels=[32,32,32]",
        "data.batch_size=16",
        "logger=none",
        "test=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"
