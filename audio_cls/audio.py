"""Reading audio: a file on disk -> a mono float32 waveform at the configured sample rate.

soundfile decodes (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1, ...); torchaudio only resamples. torchaudio's own
`load()` needs TorchCodec and FFmpeg since 2.9, which a research machine may lack.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio

from audio_cls.errors import DataError

log = logging.getLogger(__name__)

# MP3 is listed even where libsndfile cannot decode it, so such files fail with a clear error instead of
# being ignored (see require_decoder).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def audio_files(
    folder: str | Path, others: Counter | None = None, skipped: list[tuple[str, str]] | None = None
) -> list[str]:
    """The paths of the audio files (by extension) in `folder` and below, sorted as Paths sort (strings: a
    Path each costs 20 us, 2 s at 100k files); `others` counts the other files
    found, by extension (by name when there is none). Entries named like audio that are not files (a
    broken symbolic link, a folder called x.wav) go to `skipped` as (path, reason); without that list
    they are logged here, so they never vanish without a word."""
    found, unusable = [], []
    for path, is_file in _walk(str(folder), unusable):
        suffix = os.path.splitext(path)[1].lower()
        if is_file:
            if suffix in AUDIO_EXTENSIONS:
                found.append(path)
            elif others is not None:
                others[suffix or os.path.basename(path)] += 1
        elif suffix in AUDIO_EXTENSIONS:
            unusable.append((path, f"{path}: {_not_a_file(Path(path))}"))
    found.sort(key=lambda p: p.split(os.sep))
    unusable.sort(key=lambda entry: entry[0].split(os.sep))
    if skipped is not None:
        skipped.extend(unusable)
    elif unusable:
        log.warning(
            "Skipped %d entries named like audio that are not files: %s",
            len(unusable),
            "; ".join(reason for _, reason in unusable[:5]),
        )
    return found


def _walk(folder: str, unreadable: list[tuple[str, str]]):
    """(path, is a file) of every entry below `folder`, like rglob("*") (symbolic links to folders are listed,
    not followed), from os.scandir: one system call per folder, not two per file. Folders that cannot be
    listed (no permission, e.g. lost+found) go to `unreadable` as (path, reason)."""
    try:
        entries = os.scandir(folder)
    except OSError as err:
        unreadable.append((folder, f"{folder}: a folder that cannot be listed ({err.strerror})"))
        return
    with entries:
        for entry in entries:
            yield entry.path, entry.is_file()
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, unreadable)


def _not_a_file(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return f"a broken symbolic link (to {path.readlink()})"
    return "a folder, not an audio file" if path.is_dir() else "not a regular file"


@lru_cache(maxsize=1)
def mp3_supported() -> bool:
    return "MP3" in sf.available_formats()  # libsndfile >= 1.1 built with mpg123


def require_decoder(path: str | Path) -> None:
    """A clear DataError for an MP3 that this libsndfile cannot decode (its own error is 'Format not
    recognised', which reads like a broken file)."""
    if Path(path).suffix.lower() == ".mp3" and not mp3_supported():
        raise DataError(
            f"{path}: this libsndfile ({sf.__libsndfile_version__}) cannot read MP3; it needs "
            f"libsndfile >= 1.1 (pip install -U soundfile), or convert the file to WAV/FLAC"
        )


class AudioInfo(NamedTuple):
    samplerate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate


def audio_info(path: str | Path) -> AudioInfo:
    """Header of `path` (frames, samplerate, channels); a clear DataError if it cannot be read."""
    require_decoder(path)
    try:
        # SoundFile rather than sf.info, which also formats libsndfile's log: 40 us a file instead of 100,
        # what start-up pays for every file of a dataset
        with sf.SoundFile(str(path)) as f:
            info = AudioInfo(f.samplerate, f.frames, f.channels)
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError/TypeError by backend
        raise DataError(f"{path}: soundfile cannot read it ({_short(err)})") from None
    if info.frames <= 0:
        raise DataError(f"{path}: the recording is empty (0 samples)")
    return info


@lru_cache(maxsize=16)
def _resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    # The windowed-sinc kernel depends only on the pair of rates: build it once per pair.
    return torchaudio.transforms.Resample(orig_freq, new_freq)


def load_audio(
    path: str | Path, sample_rate: int, start: float | None = None, end: float | None = None
) -> torch.Tensor:
    """Read `path` (or its segment from `start` to `end` seconds) as a mono waveform at `sample_rate`.

    Returns:
        Tensor of shape (samples,), float32 in [-1, 1]. Channels are averaged;
        another sample rate is converted with torchaudio's Resample.
    """
    require_decoder(path)
    try:
        with sf.SoundFile(str(path)) as f:
            file_rate = f.samplerate
            first = round(start * file_rate) if start else 0
            if first:
                f.seek(first)
            count = round(end * file_rate) - first if end is not None else -1
            data = f.read(count, dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as err:
        raise DataError(f"{path}: soundfile cannot read it ({_short(err)})") from None
    if data.shape[0] == 0:
        what = "the recording is empty" if start is None and end is None else f"the segment {start}-{end} s is empty"
        raise DataError(f"{path}: {what} (0 samples)")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: contains {int((~np.isfinite(data)).sum())} NaN or infinite samples")
    waveform = torch.from_numpy(data).mean(dim=1)
    if file_rate != sample_rate:
        waveform = _resampler(int(file_rate), int(sample_rate))(waveform)
    return waveform


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
