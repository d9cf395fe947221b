"""A folder per class: `root/<class>/<any/depth>/*.wav|flac|ogg|mp3`, the layout most recordings come in.

Class names are the folder names (any Unicode, normalized to NFC so names copied from macOS match).
Files of other types are ignored and counted in the log; entries named like audio that are not files
(broken links, folders) are listed in `skipped` (skipped_files.csv) with a warning. With `group_pattern`,
a regular expression with a `group` field matched against each file name (e.g. `^(?P<group>[^_]+)_` for
`alice_003.wav`), splits keep each speaker in one split; without it, splits are carved per file.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import Counter

from audio_cls.audio import AUDIO_EXTENSIONS, audio_files
from audio_cls.data.base import AudioDataModule, Item, require_dir
from audio_cls.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class Folder(AudioDataModule):
    def __init__(self, root: str, group_pattern: str | None = None, **kwargs):
        super().__init__(root=root, **kwargs)
        try:
            self.group_pattern = re.compile(group_pattern) if group_pattern else None
        except re.error as err:
            raise ConfigError(f"data.group_pattern={group_pattern!r}: not a regular expression ({err})") from None
        if self.group_pattern is not None and "group" not in self.group_pattern.groupindex:
            raise ConfigError(f"data.group_pattern={group_pattern!r}: needs a named field (?P<group>...)")

    def scan(self) -> list[Item]:
        root = require_dir(self.root)
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        if loose:
            log.warning(
                "Ignored %d files directly under data.root=%s: a recording belongs in a class folder (e.g. %s)",
                len(loose),
                self.root,
                loose[0].name,
            )
        items, ignored, empty, unmatched, unusable = [], Counter(), [], 0, []
        for class_dir in class_dirs:
            label = unicodedata.normalize("NFC", class_dir.name)
            files = audio_files(class_dir, ignored, unusable)
            for path in files:
                group = None
                if self.group_pattern is not None:
                    m = self.group_pattern.search(os.path.basename(path))
                    group = m["group"] if m else None
                    unmatched += m is None
                items.append(Item(path, label, group))
            if not files:
                empty.append(label)
        # Listed whatever data.on_bad_file says (setup() warns with the count); scan() runs again for
        # cross-validation plans, so each entry is listed once.
        self.skipped.extend(entry for entry in unusable if entry not in self.skipped)
        if ignored:
            log.warning(
                "Ignored %d files that are not audio (%s): %s",
                sum(ignored.values()),
                "/".join(AUDIO_EXTENSIONS),
                ", ".join(f"{n} {kind}" for kind, n in ignored.most_common(5)),
            )
        if not items:
            raise DataError(
                f"data.root={self.root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class "
                f"folders; expected root/<class>/<recordings> (found {len(class_dirs)} folders)"
            )
        if empty:
            raise DataError(
                f"data.root={self.root}: class folders with no audio files: {', '.join(empty)} "
                f"(remove them or add recordings)"
            )
        if unmatched:
            log.warning(
                "data.group_pattern matched %d of %d file names; the others have no group, so splits "
                "are carved per file",
                len(items) - unmatched,
                len(items),
            )
        return items
