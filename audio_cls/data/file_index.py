"""What start-up learns about each recording, kept between runs so that the next start reads no file.

Before training, every header is read (so that a broken file fails now, not in epoch 7), the duplicate check
compares the first 64 KiB of files of equal size (hashed here for every file, as its header is read), and
`data.on_bad_file=skip` decodes every file once. At 100k files that is most of start-up. `FileIndex` keeps the
results in one JSON file per dataset under `paths.cache_dir/index/`; an entry is used only while its file's size
and modification time are unchanged (the same test the feature cache makes), so an edited, replaced or added file
is read again and nothing else, and a file that failed is read again at every start.

    index = FileIndex.for_dataset(cache_dir, "Folder", root)   # None as cache_dir: nothing kept
    entries = index.lookup(paths)                               # {path: FileEntry}; reads only what changed
    index.check_decoding(paths)                                 # on_bad_file=skip: decode what is unchecked
    index.save()                                                # atomically, only if something changed
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from audio_cls.audio import audio_info, load_audio
from audio_cls.errors import DataError

log = logging.getLogger(__name__)

HEAD_BYTES = 1 << 16  # what the duplicate check hashes before it hashes a whole file
_VERSION = 1
_FIELDS = ("size", "mtime_ns", "samplerate", "frames", "head_hash", "error", "decodes")


@dataclass(frozen=True)
class FileEntry:
    """One file as last seen: `error` (a one-line reason) when it cannot be used, else its
    `samplerate` and `frames`; `head_hash` of its first 64 KiB; `decodes` True once every sample was read
    and found finite (on_bad_file=skip), False when that failed (then `error` says why), None if never tried."""

    size: int
    mtime_ns: int
    samplerate: int | None = None
    frames: int | None = None
    head_hash: str | None = None
    error: str | None = None
    decodes: bool | None = None

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate


def read_entry(path: str, size: int, mtime_ns: int) -> FileEntry:
    """A fresh entry for `path`: its header and the hash of its first 64 KiB."""
    try:
        info = audio_info(path)
    except DataError as err:
        return FileEntry(size, mtime_ns, error=str(err))
    with open(path, "rb") as f:
        head_hash = hashlib.sha1(f.read(HEAD_BYTES)).hexdigest()
    return FileEntry(size, mtime_ns, int(info.samplerate), int(info.frames), head_hash)


class FileIndex:
    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, FileEntry] = {}
        self.read = 0  # files whose header was read in this run (not taken from the index)
        self.decoded = 0  # files decoded whole in this run (check_decoding)
        self._changed = False
        if path is not None and path.is_file():
            self.entries = self._load(path)

    @classmethod
    def for_dataset(cls, cache_dir: str | Path | None, dataset: str, root: str | Path) -> FileIndex:
        """The index of the dataset `dataset` (its class name) at `root`, or one kept in memory only."""
        if cache_dir is None:
            return cls(None)
        key = hashlib.sha256(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:16]
        return cls(Path(cache_dir) / "index" / f"{dataset}-{key}.json")

    def lookup(self, paths) -> dict[str, FileEntry]:
        """{path: entry} for each of `paths`, from the index where the file is unchanged, else read now.
        A file that cannot be stat-ed (gone, no permission) gets an entry with its `error`."""
        found = {}
        for path in dict.fromkeys(paths):
            try:
                stat = os.stat(path)
            except OSError as err:
                found[path] = FileEntry(-1, -1, error=f"{path}: cannot be read ({err.strerror})")
                continue
            entry = self.entries.get(path)
            # A file that failed is read again at every start: the cause may be the machine's (a libsndfile
            # without MP3, a permission: chmod keeps the mtime), and bad files are few.
            if entry is None or entry.error or entry.size != stat.st_size or entry.mtime_ns != stat.st_mtime_ns:
                entry = read_entry(path, stat.st_size, stat.st_mtime_ns)
                self.entries[path] = entry
                self.read += 1
                self._changed = True
            found[path] = entry
        return found

    def check_decoding(self, paths) -> None:
        """Decode each of `paths` (already looked up) whose entry has not been decoded yet, recording whether
        every sample is finite (in `entries`)."""
        for path in paths:
            entry = self.entries[path]
            if entry.decodes is None and entry.error is None:
                try:
                    load_audio(path, entry.samplerate)
                    entry = replace(entry, decodes=True)
                except DataError as err:
                    entry = replace(entry, decodes=False, error=str(err))
                self.entries[path] = entry
                self.decoded += 1
                self._changed = True

    def save(self, keep) -> None:
        """Write the entries of the paths in `keep` (those of this run: files gone since are dropped), if
        anything changed. Atomic (a temporary file, then a rename), so that concurrent runs (sweep jobs,
        DDP ranks) each leave a whole index; a cache folder that cannot be written costs a warning only."""
        keep = set(keep)
        stale = len(self.entries) - len(keep & self.entries.keys())
        if self.path is None or not (self._changed or stale):
            return
        paths = [p for p in self.entries if p in keep]
        columns = {"version": _VERSION, "path": paths}
        for name in _FIELDS:
            columns[name] = [getattr(self.entries[p], name) for p in paths]
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_text(json.dumps(columns, separators=(",", ":")), encoding="utf-8")
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            log.warning(
                "Could not write the file index %s (%s): the next start reads every header again", self.path, err
            )
        self._changed = False

    @staticmethod
    def _load(path: Path) -> dict[str, FileEntry]:
        try:
            columns = json.loads(path.read_text(encoding="utf-8"))
            if columns.get("version") != _VERSION:
                return {}
            rows = zip(*(columns[name] for name in _FIELDS))
            return {p: FileEntry(*row) for p, row in zip(columns["path"], rows)}
        except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable or from another version: rebuild
            log.warning("Ignoring the file index %s (%s): every header is read again", path, err)
            return {}
