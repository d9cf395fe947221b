"""A CSV manifest: one row per recording (or segment of one), for data in any layout.

    path,label[,split][,group][,start][,end][,fold]      one class per recording
    path,labels[,split][,group][,start][,end][,fold]     multi-label: `;`-separated classes, may be empty

`path` is relative to the manifest's folder (or absolute); `split` is train/val/test (splits left
empty are carved by hash, or by stratification for multi-label data: see splits.py); `group` the
speaker or source; `start`/`end` seconds of a segment of a longer file; `fold` a cross-validation fold.
Any other column is an error, so a typo in a header never silently drops information.

Strong labels for sound event detection come beside it (`data.events=PATH`): a DCASE tab-separated file
with the header `filename onset offset event_label`, one row per event, `filename` as the manifest's
`path`. A recording's label set is then that of its events, unless a `labels` column gives it.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from audio_cls.data.base import AudioDataModule, Item, multilabel_item
from audio_cls.errors import DataError

log = logging.getLogger(__name__)

LABELS = ("label", "labels")  # exactly one of them
OPTIONAL = ("split", "group", "start", "end", "fold")
EVENT_COLUMNS = ("filename", "onset", "offset", "event_label")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class Manifest(AudioDataModule):
    """Args:
    root: the manifest CSV, or a folder holding `manifest.csv`.
    events: a DCASE strong-label TSV (filename, onset, offset, event_label), relative to the manifest's
        folder or absolute; null for none.
    """

    def __init__(self, root: str, events: str | None = None, **kwargs):
        super().__init__(root=root, **kwargs)
        self.events = events

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
            # csv.reader, not DictReader, and each path resolved once: a million rows in seconds, not a minute
            reader = csv.reader(f)
            columns = [c.strip() for c in next(reader, [])]
            if "path" not in columns:
                raise DataError(f"{manifest}: no path column (header: {','.join(columns)})")
            if sum(c in columns for c in LABELS) != 1:
                raise DataError(f"{manifest}: expected either a label or a labels column (header: {','.join(columns)})")
            unknown = [c for c in columns if c not in ("path", *LABELS, *OPTIONAL)]
            if unknown:
                raise DataError(
                    f"{manifest}: unknown columns {unknown}; a manifest has path, label (or labels) and "
                    f"optionally {','.join(OPTIONAL)}"
                )
            events = self._read_events() if self.events else None
            items, seen, files = [], {}, {}  # files: path cell -> (path, is a file)
            self._root = str(self.root_path)
            prefix = f"{manifest} line "
            for row in reader:
                if not row:  # a blank line
                    continue
                line = reader.line_num
                if len(row) > len(columns):
                    raise DataError(f"{prefix}{line}: more fields than the header has columns")
                values = dict(zip(columns, [v.strip() for v in row]))
                values.update((c, "") for c in columns[len(row) :])
                item = self._item(values, f"{prefix}{line}", files, events)
                if item is None:
                    continue
                key = (item.path, item.start, item.end)
                if key in seen:
                    raise DataError(f"{prefix}{line}: {values['path']} is listed twice (also line {seen[key]})")
                seen[key] = line
                items.append(item)
        if not items:
            raise DataError(f"{manifest}: no recordings listed")
        if events:
            unused = sorted(set(events) - files.keys())
            if unused:
                raise DataError(
                    f"{self.events}: events of {len(unused)} files the manifest does not list (e.g. {unused[0]})"
                )
        return items

    def _read_events(self) -> dict[str, list[tuple[float, float, str]]]:
        path = Path(self.events).expanduser()
        path = path if path.is_absolute() else self.root_path / path
        if not path.is_file():
            raise DataError(f"data.events={self.events}: no such file ({path})")
        return read_events(path)

    def _resolve(self, cell: str) -> tuple[str, bool]:
        """(the path a manifest's path cell names, spelled as str(Path) spells it; whether it is a file)."""
        path = os.path.join(self._root, os.path.expanduser(cell))
        if "//" in path or "/." in path or path.startswith("./") or path.endswith("/"):  # rare: let Path spell it
            path = str(Path(path))
        return path, os.path.isfile(path)

    def _item(self, values: dict[str, str], where: str, files: dict, events: dict | None = None) -> Item | None:
        """The Item of a row's stripped `values`; `files` remembers each path cell's file and whether it exists."""
        if not values["path"] or ("label" in values and not values["label"]):
            raise DataError(f"{where}: empty {'path' if not values['path'] else 'label'}")
        found = files.get(values["path"])
        if found is None:
            found = files[values["path"]] = self._resolve(values["path"])
        path, exists = found
        if not exists:
            if self.on_bad_file == "skip":
                self.skipped.append((path, f"{where}: no such file"))
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
        fields = dict(
            group=values.get("group") or None,
            start=start,
            end=end,
            split=SPLIT_NAMES[split.lower()] if split else None,
            fold=fold,
        )
        labels = [x.strip() for x in values["labels"].split(";") if x.strip()] if "labels" in values else None
        if events is None:
            return Item(path, values["label"], **fields) if labels is None else multilabel_item(path, labels, **fields)
        if start is not None or end is not None:
            raise DataError(f"{where}: a segment (start/end) with data.events: event times count from the file's start")
        own = events.get(values["path"], [])
        if labels is not None and (extra := sorted({lab for *_, lab in own} - set(labels))):
            raise DataError(f"{where}: {values['path']} has events of {extra[0]!r}, which its labels do not list")
        return multilabel_item(path, labels, own, **fields)


def read_events(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """{filename: [(onset s, offset s, label), ...]} from a DCASE strong-label file: tab-separated, with the
    header `filename onset offset event_label`. Shared with `audio_cls.data.fsdd_mix`."""
    events: dict[str, list[tuple[float, float, str]]] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if [c.strip() for c in reader.fieldnames or []] != list(EVENT_COLUMNS):
            raise DataError(f"{path}: expected the tab-separated header {' '.join(EVENT_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            where = f"{path} line {line}"
            onset, offset = parse_segment({"start": row["onset"], "end": row["offset"]}, where)
            if onset is None or offset is None or not (row["event_label"] or "").strip():
                raise DataError(f"{where}: every event needs an onset, an offset and a label")
            events.setdefault(row["filename"].strip(), []).append((onset, offset, row["event_label"].strip()))
    return events


def parse_segment(values: dict[str, str], where: str) -> tuple[float | None, float | None]:
    """A manifest row's `start`/`end` cells -> seconds (None where empty); a DataError naming `where` for
    text, negative numbers or an end not after the start. Shared with `audio_cls.predict`."""
    start, end = _seconds(values.get("start"), "start", where), _seconds(values.get("end"), "end", where)
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
