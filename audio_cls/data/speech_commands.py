"""Speech Commands (Warden, 2018; CC BY 4.0): one-second words at 16 kHz, a folder per word.

Layout: `<word>/<speaker>_nohash_<n>.wav`, `validation_list.txt` and `testing_list.txt` (paths
relative to the root) and `_background_noise_/` (long noise recordings). Splits are the official
lists when present, else the dataset's own rule: a SHA-1 hash of the speaker part of the file name,
so a speaker never straddles two splits (`which_set` in the dataset's README).

Classes: every word folder (35 in v0.02), or the 12-class setup of the benchmark papers with
`words=[yes,no,up,down,left,right,on,off,stop,go]`, sized as TensorFlow's reference `input_data.py`
sizes it: in every split, `_unknown_` (other words, chosen by hash) and `_silence_` each add
`unknown_share` / `silence_share` (10%) of that split's count of target-word recordings.
`_silence_` clips are one-second windows of the `_background_noise_` recordings, evenly spaced;
each noise recording is divided in time (`noise_shares`), its first 80% for training, the next 10%
for validation and the last 10% for test, so no second of noise is in two splits. (The reference
mixes the noise in at a random volume and draws windows at random; here the clips are the recordings
as they are.) Background-noise augmentation from the same recordings must keep to the training part
(`augment.waveform.noise_range`, which experiment=speech_commands_cnn takes from
`data.noise_shares.train`); another range is refused while there are `_silence_` clips.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import soundfile as sf

from audio_cls.augment import BackgroundNoise
from audio_cls.data.base import AudioDataModule, Item, require_dir
from audio_cls.data.download import download_and_extract
from audio_cls.data.splits import unit_hash
from audio_cls.errors import ConfigError, DataError

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"  # torchaudio's checksum of v0.02
NOISE = "_background_noise_"
UNKNOWN, SILENCE = "_unknown_", "_silence_"
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # ~134M, from the dataset's README


def which_set(file_name: str, validation_percentage: float = 10, testing_percentage: float = 10) -> str:
    """The dataset's own split rule (its README): a hash of the speaker part of the file name."""
    speaker = re.sub(r"_nohash_.*$", "", Path(file_name).name)
    digest = hashlib.sha1(speaker.encode()).hexdigest()
    percentage = (int(digest, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "val"
    if percentage < validation_percentage + testing_percentage:
        return "test"
    return "train"


class SpeechCommands(AudioDataModule):
    """Args:
    root: the folder holding the word folders.
    words: the words to classify, or null for every word folder.
    unknown: with `words`, label the other words `_unknown_` (else leave them out).
    unknown_share: `_unknown_` recordings per split as a share of its target-word recordings
        (0.1 in the benchmark), chosen by hash; null keeps every one.
    silence_share: `_silence_` clips per split as a share of its target-word recordings (0: none).
    silence_seconds: length of a `_silence_` clip.
    noise_shares: {split: [start, end]}, the part of each noise recording (as shares of its length)
        that the split's `_silence_` clips are cut from; the parts must not overlap.
    download: fetch v0.02 (2.3 GB, checked against its SHA-256) into `root` when it is not there.
    """

    NOISE_SHARES = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}  # of each noise recording

    def __init__(
        self,
        root: str,
        words: list[str] | None = None,
        unknown: bool = True,
        unknown_share: float | None = None,
        silence_share: float = 0.0,
        silence_seconds: float = 1.0,
        noise_shares: dict[str, tuple[float, float]] | None = None,
        download: bool = True,
        **kwargs,
    ):
        super().__init__(root=root, **kwargs)
        if unknown_share is not None and not unknown_share > 0:
            raise ConfigError(f"data.unknown_share={unknown_share}: must be positive (or null: keep every one)")
        if not silence_share >= 0:
            raise ConfigError(f"data.silence_share={silence_share}: must be 0 (no _silence_) or positive")
        if not silence_seconds > 0:
            raise ConfigError(f"data.silence_seconds={silence_seconds}: must be positive")
        self.words = list(words) if words is not None else None
        self.unknown = unknown
        self.unknown_share = unknown_share
        self.silence_share = silence_share
        self.silence_seconds = silence_seconds
        self.noise_shares = self.NOISE_SHARES if noise_shares is None else _check_noise_shares(noise_shares)
        self.download = download
        if silence_share > 0:
            self._check_noise_augmentation()

    def _check_noise_augmentation(self) -> None:
        """Refuse background-noise augmentation that draws from the validation/test `_silence_` parts of
        the noise recordings: test audio would be heard in training."""
        steps = self.waveform_augment.steps if self.waveform_augment is not None else []
        folder = Path(self.root).expanduser() / NOISE
        silence_files = {p.resolve() for p in folder.glob("*.wav")} if folder.is_dir() else set()
        held_out = {split: self.noise_shares[split] for split in ("val", "test")}
        for step in steps:
            if not isinstance(step, BackgroundNoise) or not silence_files & {Path(f).resolve() for f in step.files}:
                continue
            start, end = step.noise_range
            overlapping = [
                f"{split} {low:g}-{high:g}" for split, (low, high) in held_out.items() if start < high and low < end
            ]
            if overlapping:
                raise ConfigError(
                    f"augment.waveform.noise_range=[{start:g}, {end:g}]: background noise would come "
                    f"from the parts of {folder} cut into _silence_ clips ({', '.join(overlapping)} of "
                    f"each recording, data.noise_shares); keep it to the training part, e.g. "
                    f"augment.waveform.noise_range=${{data.noise_shares.train}}"
                )

    def word_dirs(self) -> list[Path]:
        root = require_dir(self.root)
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    def prepare_data(self) -> None:
        root = Path(self.root).expanduser()
        if root.is_dir() and any(p.is_dir() and not p.name.startswith(("_", ".")) for p in root.iterdir()):
            return
        if not self.download:
            raise DataError(
                f"data.root={self.root}: no word folders; set data.download=true, or download {URL} and unpack it there"
            )
        download_and_extract(URL, root, "Speech Commands v0.02", sha256=SHA256)

    def scan(self) -> list[Item]:
        root = require_dir(self.root)
        word_dirs = self.word_dirs()
        if not word_dirs:
            raise DataError(
                f"data.root={self.root}: no word folders (is this Speech Commands? data.download=true fetches it)"
            )
        if self.words is not None:
            absent = sorted(set(self.words) - {d.name for d in word_dirs})
            if absent:
                raise ConfigError(f"data.words: {absent} have no folder under {self.root}")
        official = self._official_lists(root)
        items, unknown = [], []
        for word_dir in word_dirs:
            other = self.words is not None and word_dir.name not in self.words
            if other and not self.unknown:
                continue
            for path in sorted(word_dir.glob("*.wav")):
                relative = f"{word_dir.name}/{path.name}"
                split = official.get(relative, "train") if official is not None else which_set(path.name)
                speaker = path.name.split("_nohash_")[0]
                item = Item(str(path), UNKNOWN if other else word_dir.name, group=speaker, split=split)
                (unknown if other else items).append(item)
        if not items:
            raise DataError(f"data.root={self.root}: no .wav recordings in the word folders")
        per_split = {split: sum(it.split == split for it in items) for split in self.noise_shares}
        for split, words in per_split.items():
            candidates = [it for it in unknown if it.split == split]
            if self.unknown_share is not None:  # the same files for a given seed, whatever else is there
                candidates.sort(key=lambda it: unit_hash(self.split_seed, os.path.relpath(it.path, root)))
                candidates = candidates[: math.ceil(self.unknown_share * words)]
            items += candidates
            if self.silence_share > 0:
                items += self._silence_items(root, split, math.ceil(self.silence_share * words))
        return items

    @staticmethod
    def _official_lists(root: Path) -> dict[str, str] | None:
        lists = {"val": root / "validation_list.txt", "test": root / "testing_list.txt"}
        if not all(p.is_file() for p in lists.values()):
            return None  # the hash rule gives the same splits for the files the lists were made from
        return {
            line.strip(): split
            for split, p in lists.items()
            for line in p.read_text(encoding="utf-8").splitlines()
            if line.strip()
        }

    def _silence_items(self, root: Path, split: str, count: int) -> list[Item]:
        """`count` clips evenly spaced over this split's part of every noise recording."""
        folder = root / NOISE
        files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
        if not files:
            raise DataError(f"data.silence_share={self.silence_share}: no noise recordings in {folder}")
        low, high = self.noise_shares[split]
        spans = []  # (path, first start, last start) in seconds
        for path in files:
            seconds = sf.info(str(path)).duration
            first, last = low * seconds, high * seconds - self.silence_seconds
            if last >= first:
                spans.append((path, first, last))
        room = sum(last - first for _, first, last in spans)
        if not spans or count == 0:
            if count:
                raise DataError(
                    f"data.silence_share: the noise recordings in {folder} have no "
                    f"{self.silence_seconds} s stretch in the {split} split's part of them "
                    f"({low:.0%}-{high:.0%} of each recording)"
                )
            return []
        items = []
        for k in range(count):  # position k along the concatenated start ranges
            offset = room * (k + 0.5) / count
            for path, first, last in spans:
                if offset <= last - first or path == spans[-1][0]:
                    start = round(first + min(offset, last - first), 4)
                    items.append(
                        Item(
                            str(path),
                            SILENCE,
                            group=f"noise:{path.name}",
                            start=start,
                            end=start + self.silence_seconds,
                            split=split,
                        )
                    )
                    break
                offset -= last - first
        return items


def _check_noise_shares(shares) -> dict[str, tuple[float, float]]:
    """`data.noise_shares` as {split: (start, end)}: every split, each within [0, 1], none overlapping."""
    if set(shares) != {"train", "val", "test"}:
        raise ConfigError(f"data.noise_shares: expected the keys train, val and test, got {sorted(shares)}")
    spans = {}
    for split in ("train", "val", "test"):
        span = shares[split]
        if len(span) != 2 or not 0 <= span[0] < span[1] <= 1:
            raise ConfigError(
                f"data.noise_shares.{split}={list(span)}: expected [start, end] with 0 <= start < end <= 1"
            )
        spans[split] = (float(span[0]), float(span[1]))
    ordered = sorted(spans.items(), key=lambda kv: kv[1])
    for (a, (_, a_end)), (b, (b_start, _)) in zip(ordered, ordered[1:]):
        if b_start < a_end:
            raise ConfigError(
                f"data.noise_shares: the {a} and {b} parts overlap; no second of noise may be in two splits"
            )
    return spans
