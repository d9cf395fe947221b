"""Fetch a public dataset archive, check it, and unpack it; or say exactly what to do by hand."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from audio_cls.errors import DataError

log = logging.getLogger(__name__)


def download_and_extract(url: str, dest: Path, name: str, sha256: str | None = None, strip: str | None = None) -> None:
    """Download `url` (a .zip or .tar.gz), check its SHA-256 when known, and unpack it into `dest`.
    `strip`: a top-level folder inside the archive whose contents go to `dest` (e.g. "ESC-50-master").
    The archive is unpacked beside `dest` first and moved into place at the end, so an interrupted
    download never leaves a half-filled dataset folder behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-download-") as tmp:
        archive = Path(tmp) / url.rsplit("/", 1)[-1]
        log.info("Downloading %s from %s", name, url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as f:
                shutil.copyfileobj(response, f, length=1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise DataError(
                f"data.root={dest}: {name} is not there and downloading it failed ({reason}). On a machine "
                f"with internet, download {url} and unpack it so that data.root points at the folder "
                f"holding its files, then copy that folder here (or set data.root to it)."
            ) from None
        if sha256 is not None:
            digest = _sha256(archive)
            if digest != sha256:
                raise DataError(
                    f"{url}: the download is corrupt or changed (SHA-256 {digest}, expected {sha256}); "
                    f"delete {dest} and try again"
                )
        unpacked = Path(tmp) / "unpacked"
        log.info("Unpacking %s into %s", archive.name, dest)
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)
        else:
            with tarfile.open(archive) as t:
                t.extractall(unpacked, filter="data")  # "data": no absolute paths, links or devices
        source = unpacked / strip if strip else unpacked
        if not source.is_dir():
            raise DataError(f"{url}: the archive has no folder {strip!r}")
        if dest.exists():
            if any(dest.iterdir()):
                raise DataError(f"data.root={dest}: exists but does not hold {name}; empty it or choose another folder")
            dest.rmdir()
        source.rename(dest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
