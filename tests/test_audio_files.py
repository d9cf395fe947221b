"""Which files count as audio: MP3 (libsndfile >= 1.1), and entries named like audio that are not files
(a broken link, a folder called x.wav), which are listed as skipped instead of vanishing."""

import csv
import logging
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from audio_cls import audio
from audio_cls.audio import audio_files, audio_info, load_audio
from audio_cls.data.folder import Folder
from audio_cls.errors import DataError
from audio_cls.features import LogMel
from helpers import write_tone_dataset

MP3 = "MP3" in sf.available_formats()


def write_mp3(path, seconds=0.5, sample_rate=16000, freq=700.0):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(str(path), 0.4 * np.sin(2 * np.pi * freq * t), sample_rate, format="MP3")
    return path


def build_folder(root, **kwargs):
    dm = Folder(
        root=str(root), features=LogMel(16000, hop_length=160), sample_rate=16000, batch_size=4, num_workers=0, **kwargs
    )
    dm.setup("fit")
    return dm


@pytest.mark.skipif(not MP3, reason="this libsndfile cannot read MP3 (needs >= 1.1)")
def test_mp3_files_are_found_and_read(tmp_path):
    root = tmp_path / "tones"
    write_tone_dataset(root)
    mp3 = write_mp3(root / "mid" / "eve_mp3.mp3")
    write_mp3(root / "low" / "UPPER.MP3", freq=300.0)
    others = Counter()
    found = audio_files(root, others)
    assert str(mp3) in found and str(root / "low" / "UPPER.MP3") in found and not others
    wave = load_audio(mp3, 8000)  # decoded and resampled like any other format
    assert wave.dim() == 1 and abs(wave.numel() - 4000) < 1200 and float(wave.abs().max()) > 0.2
    dm = build_folder(root)
    assert str(mp3) in {it.path for split in dm.splits.values() for it in split}


def test_mp3_without_libsndfile_support_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "x.mp3"
    if MP3:
        write_mp3(path)
    else:
        path.write_bytes(b"ID3")
    formats = {k: v for k, v in sf.available_formats().items() if k != "MP3"}
    monkeypatch.setattr(audio.sf, "available_formats", lambda: formats)
    audio.mp3_supported.cache_clear()
    try:
        for read in (audio_info, lambda p: load_audio(p, 16000)):
            with pytest.raises(DataError, match=r"x\.mp3: this libsndfile \(.*\) cannot read MP3"):
                read(path)
    finally:
        audio.mp3_supported.cache_clear()


def test_broken_links_and_folders_named_like_audio_are_skipped_with_reasons(tmp_path, caplog):
    root = tmp_path / "tones"
    write_tone_dataset(root)
    broken = root / "low" / "gone.wav"
    broken.symlink_to(root / "low" / "no_such_file.wav")
    folder = root / "mid" / "x.wav"
    folder.mkdir()
    skipped = []
    found = audio_files(root, skipped=skipped)
    assert str(broken) not in found and str(folder) not in found
    assert dict(skipped) == {
        str(broken): f"{broken}: a broken symbolic link (to {root / 'low' / 'no_such_file.wav'})",
        str(folder): f"{folder}: a folder, not an audio file",
    }

    with caplog.at_level(logging.WARNING):
        dm = build_folder(root)
    assert dict(dm.skipped) == dict(skipped)
    warning = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert len(warning) == 1 and warning[0].startswith("Skipped 2 files that cannot be used")
    dm.write_split_files(tmp_path)
    with (tmp_path / "skipped_files.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"] and {r[0] for r in rows[1:]} == {str(broken), str(folder)}


def test_callers_without_a_skipped_list_get_a_warning(tmp_path, caplog):
    (tmp_path / "a.flac").symlink_to(tmp_path / "missing.flac")
    with caplog.at_level(logging.WARNING):
        assert audio_files(tmp_path) == []
    assert "a.flac: a broken symbolic link" in caplog.text


def test_a_folder_that_cannot_be_listed_is_skipped_with_its_reason(tmp_path, monkeypatch):
    """rglob passed over unreadable folders (lost+found at a mount point) without a word; the scan lists them."""
    root = tmp_path / "tones"
    write_tone_dataset(root)
    locked = root / "low" / "lost+found"
    locked.mkdir()
    scandir = audio.os.scandir

    def refusing(path):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(audio.os, "scandir", refusing)  # root may list anything: refuse as the file system would
    skipped = []
    found = audio_files(root, skipped=skipped)
    reason = f"{locked}: a folder that cannot be listed (Permission denied)"
    assert len(found) == 27 and skipped == [(str(locked), reason)]
