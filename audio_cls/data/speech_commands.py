"""Speech Commands (Warden, 2018; CC BY 4.0): one-second words at 16 kHz, a folder per word.

Layout: `<word>/<speaker>_nohash_<n>.wav`, `validation_list.txt` and `testing_list.txt` (paths
relative to the root) and `_background_noise_/` (long noise recordings). Splits are the official
lists when present, else the dataset's own rule: a SHA-1 hash of the speaker part of the file name,
so a speaker never straddles two splits (`which_set` in the dataset's README).

Classes: every word folder (35 in v0.02), or the 12-class setup of the benchmark papers with
`words=[yes,no,up,down,left,right,on,off,stop,go]`: other words become `_unknown_` (keep a share
with `unknown_fraction`) and `_silence_` clips are one-second cuts of the background noise, dealt
to the splits by hash (as in the original benchmark, the noise recordings are shared by the splits).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import soundfile as sf

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
        unknown_fraction: share of `_unknown_` recordings kept (by hash, per split), e.g. 0.1.
        silence: add `_silence_` clips cut from `_background_noise_` (`silence_seconds` long).
        download: fetch v0.02 (2.3 GB, checked against its SHA-256) into `root` when it is not there.
    """

    def __init__(self, root: str, words: list[str] | None = None, unknown: bool = True,
                 unknown_fraction: float = 1.0, silence: bool = False, silence_seconds: float = 1.0,
                 download: bool = True, **kwargs):
        super().__init__(root=root, **kwargs)
        if not 0 < unknown_fraction <= 1:
            raise ConfigError(f"data.unknown_fraction={unknown_fraction}: must be in (0, 1]")
        self.words = list(words) if words is not None else None
        self.unknown = unknown
        self.unknown_fraction = unknown_fraction
        self.silence = silence
        self.silence_seconds = silence_seconds
        self.download = download

    def word_dirs(self) -> list[Path]:
        root = require_dir(self.root)
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    def prepare_data(self) -> None:
        root = Path(self.root).expanduser()
        if root.is_dir() and any(p.is_dir() and not p.name.startswith(("_", ".")) for p in root.iterdir()):
            return
        if not self.download:
            raise DataError(f"data.root={self.root}: no word folders; set data.download=true, or download "
                            f"{URL} and unpack it there")
        download_and_extract(URL, root, "Speech Commands v0.02", sha256=SHA256)

    def scan(self) -> list[Item]:
        root = require_dir(self.root)
        word_dirs = self.word_dirs()
        if not word_dirs:
            raise DataError(f"data.root={self.root}: no word folders (is this Speech Commands? "
                            f"data.download=true fetches it)")
        if self.words is not None:
            absent = sorted(set(self.words) - {d.name for d in word_dirs})
            if absent:
                raise ConfigError(f"data.words: {absent} have no folder under {self.root}")
        official = self._official_lists(root)
        items = []
        for word_dir in word_dirs:
            label = word_dir.name
            if self.words is not None and label not in self.words:
                if not self.unknown:
                    continue
                label = UNKNOWN
            for path in sorted(word_dir.glob("*.wav")):
                relative = f"{word_dir.name}/{path.name}"
                if label == UNKNOWN and unit_hash(self.split_seed, relative) >= self.unknown_fraction:
                    continue
                split = official.get(relative, "train") if official is not None else which_set(path.name)
                speaker = path.name.split("_nohash_")[0]
                items.append(Item(str(path), label, group=speaker, split=split))
        if self.silence:
            items += self._silence_items(root)
        if not items:
            raise DataError(f"data.root={self.root}: no .wav recordings in the word folders")
        return items

    @staticmethod
    def _official_lists(root: Path) -> dict[str, str] | None:
        lists = {"val": root / "validation_list.txt", "test": root / "testing_list.txt"}
        if not all(p.is_file() for p in lists.values()):
            return None  # the hash rule gives the same splits for the files the lists were made from
        return {line.strip(): split for split, p in lists.items()
                for line in p.read_text().splitlines() if line.strip()}

    def _silence_items(self, root: Path) -> list[Item]:
        folder = root / NOISE
        files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
        if not files:
            raise DataError(f"data.silence=true: no noise recordings in {folder}")
        items = []
        for path in files:
            info = sf.info(str(path))
            for k in range(int(info.frames / info.samplerate // self.silence_seconds)):
                start = k * self.silence_seconds
                h = unit_hash(self.split_seed, f"{path.name}/{k}")
                split = "val" if h < 0.1 else "test" if h < 0.2 else "train"
                items.append(Item(str(path), SILENCE, group=f"noise:{path.name}", start=start,
                                  end=start + self.silence_seconds, split=split))
        return items
