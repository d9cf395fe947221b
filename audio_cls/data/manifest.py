"""A CSV manifest: one row per recording (or segment of one), for data in any layout.

    path,label[,split][,group][,start][,end][,fold]

`path` is relative to the manifest's folder (or absolute); `split` is train/val/test (splits left
empty are carved by hash, see splits.py); `group` the speaker or source; `start`/`end` seconds of a
segment of a longer file; `fold` a cross-validation fold. Any other column is an error, so a typo in
a header never silently drops information.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from audio_cls.data.base import AudioDataModule, Item
from audio_cls.errors import DataError

log = logging.getLogger(__name__)

REQUIRED = ("path", "label")
OPTIONAL = ("split", "group", "start", "end", "fold")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class Manifest(AudioDataModule):
    """Args:
    root: the manifest CSV, or a folder holding `manifest.csv`.
    """

    def __init__(self, root: str, **kwargs):
        super().__init__(root=root, **kwargs)

    @property
    def manifest_path(self) -> Path:
        path = Path(self.root).expanduser()
        return path / "manifest.csv" if path.is_dir() else path

    @property
    def root_path(self) -> Path:
        return self.manifest_path.parent  # paths (and split hashes) are relative to the manifest

    def scan(self) -> list[Item]:
        manifest = self.manifest_path
        if not manifest.is_file():
            raise DataError(f"data.root={self.root}: no such manifest file ({manifest})")
        with manifest.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise DataError(f"{manifest}: no {' or '.join(missing)} column (header: {','.join(columns)})")
            unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
            if unknown:
                raise DataError(
                    f"{manifest}: unknown columns {unknown}; a manifest has path,label and "
                    f"optionally {','.join(OPTIONAL)}"
                )
            reader.fieldnames = columns
            items, seen = [], {}
            for line, row in enumerate(reader, start=2):
                item = self._item(row, f"{manifest} line {line}")
                if item is None:
                    continue
                key = (item.path, item.start, item.end)
                if key in seen:
                    raise DataError(f"{manifest} line {line}: {row['path']} is listed twice (also line {seen[key]})")
                seen[key] = line
                items.append(item)
        if not items:
            raise DataError(f"{manifest}: no recordings listed")
        return items

    def _item(self, row: dict, where: str) -> Item | None:
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if None in row:
            raise DataError(f"{where}: more fields than the header has columns")
        if not values["path"] or not values["label"]:
            raise DataError(f"{where}: empty {'path' if not values['path'] else 'label'}")
        path = Path(values["path"]).expanduser()
        path = path if path.is_absolute() else self.root_path / path
        if not path.is_file():
            if self.on_bad_file == "skip":
                self.skipped.append((str(path), f"{where}: no such file"))
                return None
            raise DataError(f"{where}: {values['path']} does not exist ({path})")
        split = values.get("split") or None
        if split is not None and split.lower() not in SPLIT_NAMES:
            raise DataError(f"{where}: split {split!r} is not one of train, val, test")
        start, end = parse_segment(values, where)
        fold = values.get("fold") or None
        if fold is not None:
            try:
                fold = int(fold)
            except ValueError:
                raise DataError(f"{where}: fold {fold!r} is not an integer") from None
        return Item(
            str(path),
            values["label"],
            values.get("group") or None,
            start,
            end,
            SPLIT_NAMES[split.lower()] if split else None,
            fold,
        )


def parse_segment(values: dict[str, str], where: str) -> tuple[float | None, float | None]:
    """A manifest row's `start`/`end` cells -> seconds (None where empty); a DataError naming `where` for
    text, negative numbers or an end not after the start. Shared with `audio_cls.predict`."""
    start, end = (_seconds(values.get(column), column, where) for column in ("start", "end"))
    if start is not None and end is not None and end <= start:
        raise DataError(f"{where}: end ({end}) must be after start ({start})")
    return start, end


def _seconds(text: str | None, column: str, where: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {column} {text!r} is not a number of seconds") from None
    if value < 0:
        raise DataError(f"{where}: {column} {value} is negative")
    return value
