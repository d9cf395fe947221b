"""Free Spoken Digit Dataset: 3,000 recordings `{digit}_{speaker}_{index}.wav` at 8 kHz.

Two protocols:
  official  recording index 0-4 is the test set, 5-49 training (speakers shared between them);
            validation is carved from training per file (by hash, `data.val_fraction`).
  speaker   speaker-independent: `test_speakers` (and `val_speakers`, if any) are held out whole;
            without val_speakers, validation is carved from the training speakers as above.
Cross-validation (`python -m audio_cls.cv data=fsdd cv.scheme=logo`) leaves one speaker out per fold.
"""

from __future__ import annotations

import re

from audio_cls.data.base import AudioDataModule, Item, require_dir
from audio_cls.errors import ConfigError, DataError

FILE_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<index>\d+)\.wav$")


class FSDD(AudioDataModule):
    def __init__(
        self,
        root: str,
        protocol: str = "official",
        test_speakers: list[str] = ("theo",),
        val_speakers: list[str] = (),
        split_by: str = "file",
        **kwargs,
    ):
        # Validation is carved per file by default: it shares speakers with training, as the official test set does.
        super().__init__(root=root, split_by=split_by, **kwargs)
        if protocol not in ("official", "speaker"):
            raise ConfigError(f"data.protocol={protocol!r}: expected 'official' or 'speaker'")
        self.protocol = protocol
        self.test_speakers = set(test_speakers)
        self.val_speakers = set(val_speakers)

    def scan(self) -> list[Item]:
        root = require_dir(self.root)
        folder = root / "recordings" if (root / "recordings").is_dir() else root
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise DataError(f"data.root={self.root}: no .wav recordings in {folder}")
        parsed = []
        for f in files:
            m = FILE_NAME.match(f.name)
            if m is None:
                raise DataError(f"{f}: not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)")
            parsed.append((f, m["digit"], m["speaker"], int(m["index"])))

        if self.protocol == "official":
            return [
                Item(str(f), digit, speaker, split="test" if index < 5 else None) for f, digit, speaker, index in parsed
            ]
        speakers = {speaker for _, _, speaker, _ in parsed}
        for key, chosen in (("data.test_speakers", self.test_speakers), ("data.val_speakers", self.val_speakers)):
            if chosen - speakers:
                raise ConfigError(f"{key}: unknown speakers {sorted(chosen - speakers)}; FSDD has {sorted(speakers)}")
        split_of = {**{s: "test" for s in self.test_speakers}, **{s: "val" for s in self.val_speakers}}
        return [Item(str(f), digit, speaker, split=split_of.get(speaker)) for f, digit, speaker, _ in parsed]
