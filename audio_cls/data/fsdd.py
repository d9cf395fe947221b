"""Free Spoken Digit Dataset: 3,000 recordings `{digit}_{speaker}_{index}.wav` at 8 kHz.

Two protocols:
  official  recording index 0-4 is the test set, 5-49 training (speakers shared between them);
            validation is carved from training, stratified by digit.
  speaker   speaker-independent: `test_speakers` (and `val_speakers`, if any) are held out whole;
            without val_speakers, validation is carved from the training speakers as above.
"""

from __future__ import annotations

import re

from audio_cls.data.base import AudioDataModule, Item, require_dir, stratified_split
from audio_cls.errors import ConfigError, DataError

FILE_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<index>\d+)\.wav$")


class FSDD(AudioDataModule):
    def __init__(self, root: str, protocol: str = "official", test_speakers: list[str] = ("theo",),
                 val_speakers: list[str] = (), val_fraction: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if protocol not in ("official", "speaker"):
            raise ConfigError(f"data.protocol={protocol!r}: expected 'official' or 'speaker'")
        self.root = root
        self.protocol = protocol
        self.test_speakers = set(test_speakers)
        self.val_speakers = set(val_speakers)
        self.val_fraction = val_fraction

    def build_splits(self) -> dict[str, list[Item]]:
        root = require_dir(self.root)
        folder = root / "recordings" if (root / "recordings").is_dir() else root
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise DataError(f"data.root={self.root}: no .wav recordings in {folder}")
        items, indices = [], {}
        for f in files:
            m = FILE_NAME.match(f.name)
            if m is None:
                raise DataError(f"{f}: not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)")
            item = Item(str(f), m["digit"], m["speaker"])
            items.append(item)
            indices[item] = int(m["index"])

        if self.protocol == "official":
            test = [it for it in items if indices[it] < 5]
            train = [it for it in items if indices[it] >= 5]
            train, val = stratified_split(train, self.val_fraction, self.split_seed)
            return {"train": train, "val": val, "test": test}

        speakers = {it.group for it in items}
        for key, chosen in (("data.test_speakers", self.test_speakers), ("data.val_speakers", self.val_speakers)):
            if chosen - speakers:
                raise ConfigError(f"{key}: unknown speakers {sorted(chosen - speakers)}; "
                                  f"FSDD has {sorted(speakers)}")
        test = [it for it in items if it.group in self.test_speakers]
        val = [it for it in items if it.group in self.val_speakers]
        train = [it for it in items if it.group not in self.test_speakers | self.val_speakers]
        if not self.val_speakers:
            train, val = stratified_split(train, self.val_fraction, self.split_seed)
        return {"train": train, "val": val, "test": test}
