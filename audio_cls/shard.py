"""Write a dataset into shards: `python -m audio_cls.shard data=NAME [data.KEY=VALUE ...] output=DIR|s3://...|gs://...`.

The data module is built and set up as training builds it (scan, splits, checks), so the shards hold exactly the
items, labels, groups and split membership a run on the original files would use. Each split is written with
litdata's `optimize` into OUTPUT/<split>/ (its index.json and chunk-*.bin files, `chunk_bytes` each), one sample
per item:

    index     the item's row in its split (the order of items.jsonl)
    audio     format=audio: the recording (or segment) as FLAC at its own rate and channels: a 16- or 24-bit PCM
              source's samples exactly, so that training mixes and resamples them as it would the file's
    features  format=features: the un-normalized features the feature cache would hold (frames, feat) float32
    meta      JSON: path, label, labels, group, split, fold, start, end, events, seconds

The training split is written in an order shuffled by `shuffle_seed` (litdata shuffles whole chunks and the items
within each, so an order such as class by class would otherwise give batches of one class); validation and test
in order of duration, so that streamed in order their batches are little padding. Beside the splits:

    items.jsonl   every item with its split membership and duration, one JSON object a line, in row order
    shards.json   format, sample rate, features, classes, the source data config, skipped and duplicate files,
                  per split the item count and every file with its size and sha256

A URL output is written to a local staging folder first (the checksums are of those bytes), then uploaded with
litdata's own S3/GCS clients (`storage_options`, e.g. an `endpoint_url`). Train from the shards with
`data=shards data.root=OUTPUT` (audio_cls/data/shards.py; docs/shards.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import random
import re
import shutil
import tempfile
from pathlib import Path

import hydra
import numpy as np
import soundfile as sf
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audio_cls import CONF_DIR
from audio_cls.data.splits import SPLITS
from audio_cls.errors import ConfigError, DataError
from audio_cls.runs import run_task, write_json

log = logging.getLogger(__name__)
logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines (e.g. its cache budget) repeat for every split

FORMATS = ("audio", "features")
SIXTEEN_BITS = ("PCM_16", "PCM_S8", "PCM_U8")
MANIFEST = "shards.json"
ITEMS = "items.jsonl"
VERSION = 1


class SampleWriter:
    """item row -> the sample litdata stores (run in `optimize`'s worker processes, so it holds plain data)."""

    def __init__(self, items: list, seconds: list[float], split: str, raw=None):
        self.items, self.seconds, self.split = items, seconds, split
        self.raw = raw  # format=features: the split as RawFeatureDataset (what the feature cache holds)

    def __call__(self, row: int) -> dict:
        # optimize() forks its workers: torch's OpenMP pool, started in the parent, hangs a forked child's first
        # parallel region (GNU OpenMP is not fork-safe), so each worker computes on one thread, as DataLoader
        # workers do.
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        item = self.items[row]
        sample = {"index": row, "meta": json.dumps(item_record(item, self.split, row, self.seconds[row]))}
        if self.raw is not None:
            sample["features"] = self.raw.inputs(row).float().contiguous()
            return sample
        data, rate, subtype = read_frames(item)
        encoded = io.BytesIO()
        # PCM at the source's depth (16 bits, else 24) holds a PCM source's samples exactly.
        sf.write(encoded, data, rate, format="FLAC", subtype="PCM_16" if subtype in SIXTEEN_BITS else "PCM_24")
        sample["audio"] = encoded.getvalue()
        return sample


def read_frames(item) -> tuple[np.ndarray, int, str]:
    """The item's samples as audio_cls.audio.load_audio reads them before it mixes and resamples: (samples,
    channels) float32, with the file's rate and subtype."""
    try:
        with sf.SoundFile(item.path) as f:
            rate, subtype = f.samplerate, f.subtype
            first = round(item.start * rate) if item.start else 0
            if first:
                f.seek(first)
            data = f.read(
                round(item.end * rate) - first if item.end is not None else -1, dtype="float32", always_2d=True
            )
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError/TypeError by backend
        raise DataError(f"{item.path}: soundfile cannot read it ({err})") from None
    if not len(data) or not np.isfinite(data).all():
        raise DataError(f"{item.path}: empty, or NaN or infinite samples")
    return data, rate, subtype


def item_record(item, split: str, row: int, seconds: float) -> dict:
    """An Item as JSON, with where it is: its split and row, and its duration in seconds."""
    return {"in": split, "row": row, "seconds": seconds, **dataclasses.asdict(item)}


def write_shards(cfg: DictConfig) -> dict:
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}: expected one of {', '.join(FORMATS)}")
    if cfg.data._target_.endswith(".shards.Shards"):
        raise ConfigError("data=shards: these are shards already; write shards from the original data (data=NAME)")
    if isinstance(cfg.chunk_bytes, str) and not re.fullmatch(r"\d+(\.\d+)?\s*([kmgt]b?|b)", cfg.chunk_bytes.lower()):
        raise ConfigError(f"chunk_bytes={cfg.chunk_bytes!r}: expected a size such as 64MB, 500KB or a number of bytes")
    output = str(cfg.output).rstrip("/")
    remote = output.startswith(("s3://", "gs://"))
    if "://" in output and not remote and not output.startswith("file://"):
        raise ConfigError(f"output={output}: expected a folder, file://, s3:// or gs:// (litdata uploads to those)")
    storage_options = OmegaConf.to_container(cfg.storage_options, resolve=True) or None
    if remote:
        if provider(output, storage_options).exists(f"{output}/{MANIFEST}") and not cfg.overwrite:
            raise ConfigError(f"output={output} already holds shards ({MANIFEST}); pass overwrite=true")
    else:
        local = Path(output.removeprefix("file://")).expanduser()
        earlier = [p.name for p in (local / MANIFEST, *(local / s for s in SPLITS)) if p.exists()]
        if earlier and not cfg.overwrite:
            raise ConfigError(f"output={output} already holds shards ({', '.join(earlier)}); pass overwrite=true")
        for name in earlier:
            shutil.rmtree(local / name) if (local / name).is_dir() else (local / name).unlink()

    # Building the data as training does: its checks (unreadable files, labels missing from training, ...) apply.
    # The workers that read audio are optimize's: the data module's own placement is only for its checks.
    dm = instantiate(cfg.data, features=instantiate(cfg.features), task=None, placement="worker")
    dm.prepare_data()
    dm.setup("test")  # splits and checks; no statistics to fit (normalization is applied when reading)
    if cfg.format == "features" and dm.has_events:
        raise ConfigError("format=features: sound event data keeps its audio (events are times in it): format=audio")
    if remote:
        local = Path(tempfile.mkdtemp(prefix="shards-"))
    try:
        splits = {split: written_order(dm, split, cfg.shuffle_seed) for split in SPLITS}
        manifest_splits = {}
        for split, items in splits.items():
            manifest_splits[split] = write_split(cfg, dm, split, items, local / split)
            log.info("Wrote the %s split: %d items in %s", split, len(items), local / split)
        records = [
            json.dumps(item_record(item, split, row, dm.seconds[item]), ensure_ascii=False)
            for split, items in splits.items()
            for row, item in enumerate(items)
        ]
        (local / ITEMS).write_text("\n".join(records) + "\n", encoding="utf-8")
        manifest = {
            "version": VERSION,
            "format": cfg.format,
            "sample_rate": dm.sample_rate if cfg.format == "features" else None,  # audio: each file's own
            "num_samples": dm.num_samples if cfg.format == "features" else None,
            "features": features_record(dm) if cfg.format == "features" else None,
            "class_names": dm.class_names,
            "multilabel": dm.multilabel,
            "source": OmegaConf.to_container(cfg.data, resolve=True),
            "skipped": dm.skipped,
            "duplicates": dm.duplicates,
            "items": {"file": ITEMS, **checksum(local / ITEMS)},
            "splits": manifest_splits,
        }
        write_json(local / MANIFEST, manifest)
        if remote:
            upload(local, output, storage_options)
    finally:
        if remote:
            shutil.rmtree(local, ignore_errors=True)
    counts = {f"{split}_items": len(items) for split, items in splits.items()}
    total = sum(f["bytes"] for s in manifest_splits.values() for f in s["files"])
    log.info("Shards in %s: %s, %.1f MB; train with data=shards data.root=%s", output, counts, total / 1e6, output)
    return {"output": output, "format": cfg.format, **counts, "bytes": total}


def written_order(dm, split: str, seed: int) -> list:
    """The split's items in the order they are written: training shuffled by `seed`, val/test by duration."""
    items = list(dm.splits[split])
    if split == "train":
        random.Random(seed).shuffle(items)
    else:
        items.sort(key=lambda it: dm.seconds[it])  # stable: equal durations keep their order
    return items


def write_split(cfg: DictConfig, dm, split: str, items: list, folder: Path) -> dict:
    """One split with litdata's optimize, in order (`keep_data_ordered`: litdata index i is row i, which the
    reader checks and length bucketing relies on); its files with their sizes and checksums."""
    from litdata import optimize

    raw = None
    if cfg.format == "features":
        raw = dm.dataset(split, placement="raw")  # train: padded to data.duration only, cropped when read
        raw.items = items
    writer = SampleWriter(items, [dm.seconds[it] for it in items], split, raw)
    optimize(
        fn=writer,
        inputs=list(range(len(items))),
        output_dir=str(folder),
        chunk_bytes=cfg.chunk_bytes,
        num_workers=max(1, min(cfg.num_workers, len(items))),
        keep_data_ordered=True,
        reorder_files=False,
        start_method="fork",  # spawn would import torch again in every worker
        verbose=False,
    )
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return {
        "items": len(items),
        "seconds": sum(dm.seconds[it] for it in items),
        "files": [{"file": f"{split}/{p.name}", **checksum(p)} for p in files],
    }


def features_record(dm) -> dict:
    """What format=features shards were computed with: the reader's features must give the same."""
    return {"fingerprint": dm.features.fingerprint(dm.sample_rate), "num_features": dm.features.num_features}


def checksum(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def provider(url: str, storage_options: dict | None):
    """litdata's client for an s3:// or gs:// URL."""
    from litdata.streaming.fs_provider import GCPFsProvider, S3FsProvider

    return (S3FsProvider if url.startswith("s3://") else GCPFsProvider)(storage_options=storage_options)


def upload(local: Path, url: str, storage_options: dict | None) -> None:
    """Every file under `local` to the same place under `url`; shards.json last, so that a reader finds it only when
    everything it lists is there."""
    client = provider(url, storage_options)
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == MANIFEST)
    for path in files:
        client.upload_file(str(path), f"{url}/{path.relative_to(local).as_posix()}")


def verify(root: str | Path) -> list[str]:
    """The files of local shards whose size or sha256 differs from shards.json (empty: all intact)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise DataError(f"verify={root}: no {MANIFEST} (local shards written by python -m audio_cls.shard)")
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    listed = [manifest["items"], *(f for split in manifest["splits"].values() for f in split["files"])]
    bad = []
    for entry in listed:
        path = root / entry["file"]
        if not path.is_file():
            bad.append(f"{entry['file']}: missing")
        elif checksum(path) != {"bytes": entry["bytes"], "sha256": entry["sha256"]}:
            bad.append(f"{entry['file']}: size or sha256 differs from {MANIFEST}")
    return bad


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="shard")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)  # inherited by optimize's worker processes, which do the work side by side
    if cfg.verify is not None:  # python -m audio_cls.shard verify=DIR
        try:
            bad = verify(cfg.verify)
        except DataError as err:
            raise SystemExit(f"error: {err}") from None
        if bad:
            raise SystemExit("error: " + "; ".join(bad))
        print(f"{cfg.verify}: every file matches {MANIFEST}")
        return
    run_task(write_shards, cfg)


if __name__ == "__main__":
    main()
