"""ESC-50: 2,000 five-second environmental recordings, 50 classes, 5 folds (Piczak, 2015; CC BY-NC 3.0).

Layout (the dataset's GitHub repository): `meta/esc50.csv` with columns
filename,fold,target,category,esc10,src_file,take, and the recordings in `audio/`.

Splits follow the folds: `test_fold` is the test set and `val_fold` the validation set (null: carve
validation from the training folds, keeping clips of one source recording together). Clips cut from
the same source (`src_file`) share a fold and a group, so no source straddles two splits.
`python -m audio_cls.cv data=esc50` runs the standard 5-fold cross-validation.
"""

from __future__ import annotations

import csv
from pathlib import Path

from audio_cls.data.base import AudioDataModule, Item
from audio_cls.data.download import download_and_extract
from audio_cls.errors import ConfigError, DataError

# GitHub's archive of a branch: no published checksum, so the download is checked by its layout (scan()
# needs meta/esc50.csv and every recording it lists).
URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


class ESC50(AudioDataModule):
    """Args:
    root: the folder holding meta/ and audio/.
    test_fold, val_fold: folds 1-5 (val_fold null: carve validation from the training folds).
    esc10: only the 10-class ESC-10 subset.
    download: fetch the dataset from GitHub into `root` when it is not there.
    """

    def __init__(
        self,
        root: str,
        test_fold: int = 5,
        val_fold: int | None = 4,
        esc10: bool = False,
        download: bool = True,
        **kwargs,
    ):
        super().__init__(root=root, **kwargs)
        for key, fold in (("test_fold", test_fold), ("val_fold", val_fold)):
            if fold is not None and fold not in range(1, 6):
                raise ConfigError(f"data.{key}={fold}: ESC-50 has folds 1-5")
        if test_fold == val_fold:
            raise ConfigError(f"data.val_fold={val_fold}: must differ from data.test_fold")
        self.test_fold, self.val_fold = test_fold, val_fold
        self.esc10 = esc10
        self.download = download

    @property
    def meta(self) -> Path:
        return self.root_path / "meta" / "esc50.csv"

    def prepare_data(self) -> None:
        if self.meta.is_file():
            return
        if not self.download:
            raise DataError(
                f"data.root={self.root}: no meta/esc50.csv; set data.download=true, or download "
                f"{URL} and unpack it there"
            )
        download_and_extract(URL, self.root_path, "ESC-50", strip="ESC-50-master")
        self.scan()  # verify what arrived

    def scan(self) -> list[Item]:
        if not self.meta.is_file():
            raise DataError(
                f"data.root={self.root}: no meta/esc50.csv (is this the ESC-50 folder? data.download=true fetches it)"
            )
        with self.meta.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or any(c not in rows[0] for c in COLUMNS):
            raise DataError(f"{self.meta}: expected the columns {','.join(COLUMNS)}")
        items, missing = [], []
        for row in rows:
            if self.esc10 and row["esc10"] != "True":
                continue
            path = self.root_path / "audio" / row["filename"]
            if not path.is_file():
                missing.append(row["filename"])
                continue
            fold = int(row["fold"])
            split = "test" if fold == self.test_fold else "val" if fold == self.val_fold else "train"
            items.append(Item(str(path), row["category"], group=row["src_file"], split=split, fold=fold))
        if missing:
            raise DataError(
                f"{self.root_path / 'audio'}: {len(missing)} recordings listed in meta/esc50.csv are "
                f"missing (e.g. {missing[0]}); the copy is incomplete"
            )
        return items  # with val_fold null, splits.py carves validation from the training folds, by source
