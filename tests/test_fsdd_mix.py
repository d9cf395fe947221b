"""audio_cls.data.fsdd_mix: layout, determinism, speaker split and exact labels of the synthetic soundscapes."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_cls.data.fsdd_mix import DIGITS, SPEAKERS, synthesize
from audio_cls.errors import DataError

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"
CLIPS = {"train": 12, "val": 4, "test": 4}

pytestmark = pytest.mark.skipif(not RECORDINGS.is_dir(), reason="the bundled FSDD recordings are not there")


def read(out: Path) -> tuple[list[dict], list[dict]]:
    with open(out / "meta.csv", newline="") as f:
        meta = list(csv.DictReader(f))
    with open(out / "events.tsv", newline="") as f:
        events = list(csv.DictReader(f, delimiter="\t"))
    return meta, events


def hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return synthesize(RECORDINGS, tmp_path_factory.mktemp("mix") / "out", clips=CLIPS)


def test_layout_and_formats(mixed):
    meta, events = read(mixed)
    assert list(meta[0]) == ["filename", "split", "labels", "sources"]
    assert list(events[0]) == ["filename", "onset", "offset", "event_label"]
    assert [r["filename"] for r in meta] == sorted(f"{s}_{i:05d}.wav" for s, n in CLIPS.items() for i in range(n))
    assert sorted(p.name for p in (mixed / "audio").iterdir()) == [r["filename"] for r in meta]
    assert (mixed / "done.json").is_file()
    assert [(e["filename"], float(e["onset"])) for e in events] == sorted(
        (e["filename"], float(e["onset"])) for e in events
    )
    for row in meta:
        info = sf.info(mixed / "audio" / row["filename"])
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (8000, 1, 32000, "PCM_16")
        mine = [e for e in events if e["filename"] == row["filename"]]
        labels = row["labels"].split(";") if row["labels"] else []
        assert labels == sorted({e["event_label"] for e in mine})
        # One source per event, and the source's digit is the event's label.
        sources = row["sources"].split(";") if row["sources"] else []
        assert sorted(DIGITS[int(s[0])] for s in sources) == sorted(e["event_label"] for e in mine)
        for e in mine:
            assert 0 <= float(e["onset"]) < float(e["offset"]) <= 4.0
            assert e["event_label"] in DIGITS
    assert events, "12+4+4 clips with up to 3 events each should hold some"


def test_deterministic_and_idempotent(mixed, tmp_path):
    again = synthesize(RECORDINGS, tmp_path / "again", clips=CLIPS)
    assert hashes(again) == hashes(mixed)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "the temporary folder was left behind"

    mtimes = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    assert synthesize(RECORDINGS, again, clips=CLIPS) == again
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == mtimes

    with pytest.raises(DataError, match="again.*delete it or choose another data.root"):
        synthesize(RECORDINGS, again, clips=CLIPS, seed=1)
    with pytest.raises(DataError, match="again"):
        synthesize(RECORDINGS, again, clips={"train": 2})


def test_speakers_disjoint(mixed):
    meta, _ = read(mixed)
    used = {split: set() for split in SPEAKERS}
    for row in meta:
        for source in filter(None, row["sources"].split(";")):
            used[row["split"]].add(source.split("_")[1])
    for split, speakers in used.items():
        assert speakers <= set(SPEAKERS[split])
    assert not (used["val"] | used["test"]) & used["train"]
    assert all(used.values()), "every split should use its speakers at least once"


def test_labels_are_exact(tmp_path):
    out = synthesize(RECORDINGS, tmp_path / "loud", clips=CLIPS, snr_db=(60.0, 60.0))
    meta, events = read(out)
    checked = 0
    for row in meta:
        mine = [e for e in events if e["filename"] == row["filename"]]
        if not mine:
            continue
        x, sr = sf.read(out / "audio" / row["filename"])
        frames = np.sqrt(np.mean(x.reshape(-1, sr // 100) ** 2, axis=1))  # 10 ms frame RMS
        spans = [(round(float(e["onset"]) * sr), round(float(e["offset"]) * sr)) for e in mine]
        for a, b in spans:
            # Not padded: an event's first and last 10 ms are speech (> -45 dB re the clip's loudest frame,
            # where the file's leftover silence would sit near the -60 dB noise).
            edge = min(np.sqrt(np.mean(x[a : a + sr // 100] ** 2)), np.sqrt(np.mean(x[b - sr // 100 : b] ** 2)))
            assert edge > frames.max() * 10 ** (-45 / 20), (row["filename"], a / sr, b / sr)
        quiet = np.ones(len(x), bool)
        for a, b in spans:
            quiet[a:b] = False
        if quiet.sum() < sr // 10:  # no event-free region worth measuring
            continue
        floor = np.sqrt(np.mean(x[quiet] ** 2))
        for a, b in spans:
            # 30 dB above what lies outside the events: the noise is 60 dB down, what remains is the digits'
            # sub-threshold tails, which the labels rightly leave out.
            assert np.sqrt(np.mean(x[a:b] ** 2)) > 10**1.5 * floor, (row["filename"], a / sr, b / sr)
        # No speech outside the events: every 10 ms frame there is > 25 dB below the clip's loudest frame
        # (the active threshold is 35 dB below each recording's loudest; tails of overlapping ones can add up).
        outside = quiet.reshape(-1, sr // 100).all(axis=1)
        assert frames[outside].max() < frames.max() * 10 ** (-25 / 20), row["filename"]
        checked += 1
    assert checked >= 5


def test_missing_recordings(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        synthesize(missing, tmp_path / "out", clips=CLIPS)
    missing.mkdir()
    with pytest.raises(DataError, match=str(missing)):
        synthesize(missing, tmp_path / "out", clips=CLIPS)
    assert not (tmp_path / "out").exists()


def test_syntheses_under_data_are_git_ignored_also_while_in_progress(tmp_path):
    """synthesize builds beside its root (`.NAME.xxxx`, renamed when done): neither may show up in `git status`,
    or a half-written synthesis of hundreds of MB is one `git add -A` away from the repository."""
    import shutil
    import subprocess

    from helpers import REPO

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["data/fsdd_mix/audio/train_00000.wav", "data/fsdd_mix_6k/meta.csv", "data/.fsdd_mix_6k.x1y2z3/a.wav"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert ignored == paths
