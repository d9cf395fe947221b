"""FSD50K: 51,197 Freesound clips (0.3-30 s, 44.1 kHz) with weak labels from 200 AudioSet classes; multi-label
(task=multilabel). Fonseca et al., 2022; CC BY 4.0 (and CC0 / CC BY-NC for some clips: see its LICENSE).

Layout as distributed on Zenodo (record 4060432), unpacked into one folder:

    FSD50K.ground_truth/dev.csv     fname,labels,mids,split    split: train | val (the official validation)
    FSD50K.ground_truth/eval.csv    fname,labels,mids          the official evaluation set: our test split
    FSD50K.ground_truth/vocabulary.csv   index,label,mid (no header)
    FSD50K.dev_audio/{fname}.wav, FSD50K.eval_audio/{fname}.wav

`labels` are comma-separated vocabulary names (the leaf classes and their AudioSet ancestors, as given).
Every recording keeps its uploader's clips together only as the dataset's own split does (no groups here).
"""

from __future__ import annotations

import csv
from pathlib import Path

from audio_cls.data.base import AudioDataModule, Item, multilabel_item
from audio_cls.errors import DataError

GROUND_TRUTH = "FSD50K.ground_truth"
AUDIO = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}


class FSD50K(AudioDataModule):
    """Args:
    root: the folder holding FSD50K.ground_truth/, FSD50K.dev_audio/ and FSD50K.eval_audio/.
    """

    def scan(self) -> list[Item]:
        truth = self.root_path / GROUND_TRUTH
        vocabulary = self._vocabulary(truth / "vocabulary.csv")
        items, missing = [], []
        for part, default_split in (("dev", None), ("eval", "test")):
            table = truth / f"{part}.csv"
            if not table.is_file():
                raise DataError(f"data.root={self.root}: no {GROUND_TRUTH}/{part}.csv (is this the FSD50K folder?)")
            with table.open(newline="", encoding="utf-8") as f:
                for line, row in enumerate(csv.DictReader(f), start=2):
                    split = default_split or row.get("split")
                    if split not in ("train", "val", "test"):
                        raise DataError(f"{table} line {line}: split {split!r} is not train or val")
                    labels = [x for x in (row.get("labels") or "").split(",") if x]
                    if unknown := [x for x in labels if x not in vocabulary]:
                        raise DataError(f"{table} line {line}: label {unknown[0]!r} is not in vocabulary.csv")
                    path = self.root_path / AUDIO[part] / f"{row['fname']}.wav"
                    if not path.is_file():
                        missing.append(path)
                        continue
                    items.append(multilabel_item(str(path), labels, split=split))
        if missing:
            raise DataError(f"{len(missing)} recordings listed in {GROUND_TRUTH} are missing (e.g. {missing[0]})")
        return items

    @staticmethod
    def _vocabulary(path: Path) -> set[str]:
        if not path.is_file():
            raise DataError(f"{path}: missing (FSD50K's class list: index,label,mid)")
        with path.open(newline="", encoding="utf-8") as f:
            return {row[1] for row in csv.reader(f) if len(row) >= 2}
