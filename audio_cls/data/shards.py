"""Shards written by `python -m audio_cls.shard`, streamed with litdata: `data=shards data.root=DIR|URL`.

    root/shards.json   format (audio | features), sample rate, classes, per split its files and sha256
    root/items.jsonl   every item (path, label, group, ...) with its split, row and duration
    root/<split>/      litdata's index.json and chunk-*.bin: one sample per item (see audio_cls/shard.py)

root is a folder, file://PATH, s3://bucket/prefix or gs://bucket/prefix (litdata's downloaders; the chunks it
fetches are cached under data.cache_dir/streaming).

What stays as for every dataset: the splits, classes and checks come from the items (`scan()` reads items.jsonl,
each item's split being the one it was written into), and each streamed sample goes through the AudioDataset that
its placement needs (base.py), with `read()` returning the sample's audio instead of a file's: features,
normalization (global statistics are measured on the streamed training split), waveform augmentation, random crops,
SpecAugment and pad_collate are the same code, and the batches are the same dicts.

What streaming changes, and why it is overridden here:
    _check_splits   no file to read: durations, skipped and duplicate files are those the writer found
    dataset, _loader  litdata's StreamingDataset and StreamingDataLoader instead of indexable datasets and our
                    samplers. Training order: litdata shuffles the order of the chunks (shards) and the items within
                    each chunk (a buffer of one chunk: the writer shuffled the training split), from (seed, epoch);
                    under DDP each rank streams its own chunks (ranks see distinct samples; litdata drops a few so
                    all ranks have as many). The loader's state (items consumed per worker) is saved in checkpoints
                    by Lightning, so a run resumed mid-epoch continues with the very next batch. Each item's random
                    draws come from (seed, epoch, row), as EpochSampler's from (seed, epoch, position).
                    Validation and test stream in written order (by duration), whole on every rank, as base.py's.
    length buckets  `LengthBuckets` reorders litdata's shuffled order: each worker's share of a chunk is cut into
                    pools of `pool_batches` batches, each sorted by duration and cut into batches, whose order is
                    shuffled. batch_size items per batch: litdata resumes by counting them (no max_batch_seconds).
    choose_placement  worker or device (cache would hold every split in memory); shards of features: worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import urllib.parse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audio_cls.audio import _resampler
from audio_cls.data.base import (
    AudioDataModule,
    CachedFeatureDataset,
    FeatureDataset,
    Item,
    WaveformDataset,
    pad_collate,
)
from audio_cls.data.splits import SPLITS
from audio_cls.errors import ConfigError, DataError

try:
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.utilities.env import _DistributedEnv
except ImportError:  # pragma: no cover - the `shards` extra
    raise ConfigError("data=shards streams with litdata: pip install 'audio-cls[shards]'") from None

log = logging.getLogger(__name__)
logging.getLogger("litdata").setLevel(logging.WARNING)  # its INFO lines (e.g. its cache budget) repeat for every loader

MANIFEST, ITEMS = "shards.json", "items.jsonl"
REMOTE = ("s3://", "gs://")


class Shards(AudioDataModule):
    """A dataset of shards (see the module doc).

    Args (beyond AudioDataModule's):
        root: the shards' folder or URL (what `audio_cls.shard` was given as `output`).
        storage_options: for s3:// and gs://, passed to litdata's clients (e.g. {endpoint_url: ...}).
        pool_batches: length buckets: batches per sorted pool (as LengthBucketSampler's).
    """

    def __init__(
        self,
        root: str,
        storage_options: dict | None = None,
        pool_batches: int = 50,
        **kwargs,
    ):
        self.location = shard_location(str(root))
        self.storage_options = dict(storage_options) if storage_options else None
        cache_dir = Path(kwargs.get("cache_dir", "cache")) / "streaming"
        self.stream_cache = cache_dir / hashlib.sha256(self.location.encode()).hexdigest()[:16]
        self.manifest = json.loads(self._fetch(MANIFEST))
        if kwargs.get("cv_fold") is not None:
            raise ConfigError("data=shards holds the splits it was written with: cross-validate on the original data")
        super().__init__(root=root, **kwargs)
        self.format = self.manifest["format"]
        written = self.manifest["sample_rate"]  # feature shards: what they were computed at; audio is as found
        if self.format == "features" and written != self.sample_rate:
            raise ConfigError(
                f"data.sample_rate={self.sample_rate}: these feature shards were computed at {written} Hz"
            )
        self.pool_batches = pool_batches
        source = self.manifest["source"]  # the data config the shards were written from
        differ = [
            f"data.{key}={mine} (written from {source.get(key)})"
            for key, mine in (("sample_rate", self.sample_rate), ("duration", kwargs.get("duration")))
            if source.get(key) != mine
        ]
        if differ:
            log.warning("Reading shards with other settings than their data's, on purpose? %s", ", ".join(differ))
        if self.balanced_sampling:
            raise ConfigError("data.balanced_sampling draws with replacement; streamed shards are read once an epoch")
        if self.max_batch_seconds is not None:
            raise ConfigError(
                "data.max_batch_seconds: shards stream batches of data.batch_size items (the loader's resumable "
                "state counts them); set it to null"
            )
        if self.placement == "cache":
            raise ConfigError("data.placement=cache holds every split in memory; shards stream: auto, worker or device")
        if self.format == "features":
            self._check_feature_shards()

    def _check_feature_shards(self) -> None:
        written = self.manifest["features"]
        if self.features.fingerprint(self.sample_rate) != written["fingerprint"]:
            raise ConfigError(
                f"features: the shards in {self.root} hold features computed with other settings "
                f"({written['num_features']} per frame); read them with the features they were written with"
            )
        if self.num_samples != self.manifest["num_samples"]:
            raise ConfigError(
                f"data.duration: the feature shards in {self.root} were cut to {self.manifest['num_samples']} "
                f"samples; set data.duration as when they were written"
            )
        if self.waveform_augment is not None or self.placement == "device":
            raise ConfigError(
                "shards of features hold no waveforms: augment.waveform and data.placement=device need audio shards"
            )

    # --- reading the shards' own files -------------------------------------------------------
    def _fetch(self, name: str) -> str:
        """The text of one of the shards' top-level files (shards.json, items.jsonl), from wherever they are."""
        if not self.location.startswith(REMOTE):
            path = Path(self.location) / name
            if not path.is_file():
                raise DataError(f"data.root={self.location}: no {name} (write shards with python -m audio_cls.shard)")
            return path.read_text(encoding="utf-8")
        from audio_cls.shard import provider

        local = self.stream_cache / name
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            provider(self.location, self.storage_options).download_file(f"{self.location}/{name}", str(local))
        except Exception as err:  # boto3/google clients raise their own kinds
            raise DataError(f"data.root={self.location}: cannot read {name} ({type(err).__name__}: {err})") from None
        return local.read_text(encoding="utf-8")

    def scan(self) -> list[Item]:
        """Every item as written, its `split` the split it was written into (rows in order, as the shards hold them)."""
        items = []
        for line in self._fetch(ITEMS).splitlines():
            record = json.loads(line)
            labels, events = record["labels"], record["events"]
            item = Item(
                **{k: record[k] for k in ("path", "label", "group", "start", "end", "fold")},
                split=record["in"],
                labels=tuple(labels) if labels is not None else None,
                events=tuple(tuple(e) for e in events) if events is not None else None,
            )
            items.append(item)
            self.seconds[item] = record["seconds"]
        return items

    def _check_splits(self) -> None:
        # The writer read every file and checked for duplicates; what it found comes with the shards.
        for split in SPLITS:
            if len(self.splits[split]) != self.manifest["splits"][split]["items"]:
                raise DataError(f"data.root={self.root}: {ITEMS} and {MANIFEST} disagree on the {split} split")
        self.skipped = [tuple(s) for s in self.manifest["skipped"]]
        self.duplicates = [tuple(d) for d in self.manifest["duplicates"]]
        shortest = min(self.splits["train"] + self.splits["val"] + self.splits["test"], key=self.seconds.__getitem__)
        self.shortest_samples, self.shortest_path = round(self.seconds[shortest] * self.sample_rate), shortest.path
        self._check_classes()
        if self.class_names != self.manifest["class_names"]:
            raise DataError(f"data.root={self.root}: the training items' classes differ from {MANIFEST}'s")
        self._report_shared_groups()
        self._log_summary()

    def _cache_path(self, kind: str, items: list[Item], random_crop: bool) -> Path:
        """Where statistics measured on the shards are kept: named by the shards' checksums, the items and the
        extractor (base.py names them by the files' sizes and times, and streamed items have no file here)."""
        listed = [self.manifest["items"], *(f for split in self.manifest["splits"].values() for f in split["files"])]
        key = hashlib.sha256(
            json.dumps(
                {
                    "shards": [f["sha256"] for f in listed],
                    "items": [(it.path, it.start, it.end) for it in items],  # segments of one file differ
                    "features": self.features.fingerprint(self.sample_rate),
                    "sample_rate": self.sample_rate,
                    "num_samples": self.num_samples,
                    "random_crop": random_crop,
                }
            ).encode()
        ).hexdigest()
        return self.cache_dir / f"{type(self).__name__}-{kind}-{key[:24]}.pt"

    def use_test_views(self, views) -> None:
        if views is not None and self.format == "features":
            raise ConfigError(
                f"tta.views: the shards in {self.root} hold features, and test-time views crop waveforms; "
                "write the shards with format=audio"
            )
        super().use_test_views(views)

    def choose_placement(self) -> str:
        if self.format == "features":
            return "worker"
        choice = "device" if torch.cuda.is_available() else "worker"
        log.info("data.placement=auto: %s (streamed audio is not cached)", choice)
        return choice

    # --- streaming ---------------------------------------------------------------------------
    def dataset(self, split: str, placement: str | None = None, augment: bool = True) -> ShardStream:
        """The split as a ShardStream: each sample through the AudioDataset `placement` needs (as base.py's)."""
        placement, train, common = self.dataset_arguments(split, placement, augment)
        spec_augment = self.spec_augment if train else None
        waveform_augment = self.waveform_augment if train else None
        if self.format == "features":
            convert = StoredFeatures(**common, spec_augment=spec_augment)
        elif placement == "device":  # SpecAugment follows extraction, in on_after_batch_transfer
            convert = ShardWaveforms(**common, waveform_augment=waveform_augment)
        else:
            convert = ShardFeatures(**common, waveform_augment=waveform_augment, spec_augment=spec_augment)
        buckets = None
        if train and self.shuffle and self.length_buckets and self.num_samples is None:
            buckets = [self.seconds[it] for it in self.splits[split]]
        return ShardStream(
            f"{self.location}/{split}",
            convert,
            seeded=train,
            shuffle=train and self.shuffle,
            seed=torch.initial_seed() % 2**32,
            cache_dir=str(self.stream_cache / split) if self.location.startswith(REMOTE) else None,
            storage_options=self.storage_options,
            buckets=buckets,
            batch_size=self.batch_size,
            pool_batches=self.pool_batches,
            whole=not train,
        )

    def _loader(self, split: str, shuffle: bool, persistent: bool = False, augment: bool = True, by_length=True):
        # `shuffle` is data.shuffle, which dataset() reads; `by_length`: the shards are in one order either way
        # (validation and test by duration). Workers are not persistent: litdata hands each epoch's state (its
        # number, a resume point) to the workers as they start.
        stream = self.dataset(split, augment=augment)
        loader = ShardLoader(
            stream,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=pad_collate,
            pin_memory=self.pin_memory,
            # Worker seeds from a generator of the loader's own, not from the global RNG (see base.py).
            generator=torch.Generator().manual_seed(torch.initial_seed()),
        )
        if split == "train" and self.trainer is not None:
            # litdata counts epochs itself (from 1) and Lightning restores that count only mid-epoch: a run resumed
            # at an epoch boundary must not replay epoch 1's order.
            loader.current_epoch = self.trainer.fit_loop.epoch_progress.current.processed
        return loader


def shard_location(root: str) -> str:
    """data.root as litdata reads it: a URL it knows (s3://, gs://), or an absolute local path (file:// too)."""
    root = root.rstrip("/")
    if root.startswith(REMOTE):
        return root
    if root.startswith("file://"):
        return str(Path(urllib.parse.unquote(root.removeprefix("file://"))).resolve())
    if "://" in root:
        raise ConfigError(f"data.root={root}: expected a folder, file://, s3:// or gs:// (what litdata streams from)")
    return str(Path(root).expanduser().resolve())


class ShardLoader(StreamingDataLoader):
    """litdata's StreamingDataLoader, resuming once per `load_state_dict`: litdata forgets the loaded state only when
    an epoch's iterator runs to its end, but Lightning stops at len(loader) batches, so the next epoch would resume
    from that state again (litData issues #760 and #770 are this bug in its ParallelStreamingDataset)."""

    def __iter__(self):
        batches = super().__iter__()
        try:
            first = next(batches)  # litdata's generator reads `restore` when it starts
        finally:
            self.restore = False
        yield first
        yield from batches


# --- base.py's datasets, fed from a shard sample instead of a file ------------------------------
class FromShard:
    """For base.py's datasets: `read()` gives `current`, the waveform decoded from the sample being converted."""

    current: torch.Tensor | None = None

    def read(self, index: int) -> torch.Tensor:
        return self.current


class ShardWaveforms(FromShard, WaveformDataset):
    """(samples,) waveforms (placement=device)."""


class ShardFeatures(FromShard, FeatureDataset):
    """(frames, feat) features computed in the DataLoader worker (placement=worker)."""


class StoredFeatures(CachedFeatureDataset):
    """CachedFeatureDataset for one stored (un-normalized) features sample at a time: `current`, (frames, feat)."""

    current: torch.Tensor | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, cached=[], **kwargs)

    def load(self, index: int) -> tuple[torch.Tensor, float]:
        x = self._normalize(self.current, self.random_crop)
        return (self.spec_augment(x) if self.spec_augment is not None else x)[0], 1.0


class ShardStream(StreamingDataset):
    """One split of the shards, streamed, as AudioDataset items ({"inputs", "target", "index"}, see base.py).

    Each stored sample is decoded (FLAC -> (samples,) waveform, or (frames, feat) features) and handed to `convert`
    (the split's AudioDataset). `seeded` (training): the item's random draws come from (seed, epoch, row).
    `whole`: every rank streams the whole split (validation and test, as base.py's loaders do).
    `buckets`: each row's seconds, for length-bucketed batches of `batch_size` (see LengthBuckets).
    """

    def __init__(
        self,
        input_dir: str,
        convert,
        seeded: bool,
        seed: int,
        buckets: list[float] | None = None,
        batch_size: int = 1,
        pool_batches: int = 50,
        whole: bool = False,
        **kwargs,
    ):
        # item_shuffle_window=0: the items of a chunk in a full permutation, not in blocks of 256; batch_decode=0:
        # each item deserialized alone (litdata's default for our samples decodes a window of 256 around each item).
        super().__init__(input_dir, seed=seed, item_shuffle_window=0, batch_decode=0, **kwargs)
        endpoint = str((kwargs.get("storage_options") or {}).get("endpoint_url", ""))
        if endpoint.startswith("http://"):
            # litdata fetches S3 chunks with obstore, which refuses plain HTTP unless told (a local S3-compatible
            # server: MinIO, moto); its client options are a module-level dict, inherited by the forked workers.
            from litdata.streaming import downloader

            downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
        self.convert = convert
        self.seeded = seeded
        self.buckets = buckets
        self.bucket_batch = batch_size
        self.pool_batches = pool_batches
        if whole:  # litdata would give each rank its part, and drop items under DDP so that all have as many
            self.distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
            self.drop_last = False

    @property
    def items(self) -> list[Item]:  # the split's items by row (sed.detection_scores reads paths from them)
        return self.convert.items

    def __getitem__(self, index) -> dict:
        sample = super().__getitem__(index)
        row = sample["index"]
        expected = index if isinstance(index, int) else index.index
        if row != expected:
            raise DataError(f"{self.input_dir.url or self.input_dir.path}: sample {expected} holds row {row}")
        if "audio" in sample:
            data, rate = sf.read(io.BytesIO(bytes(sample["audio"])), dtype="float32", always_2d=True)
            waveform = torch.from_numpy(data).mean(dim=1)  # mono, at the data's rate: as load_audio does it
            if rate != self.convert.sample_rate:
                waveform = _resampler(rate, self.convert.sample_rate)(waveform)
            self.convert.current = waveform
        else:
            self.convert.current = sample["features"]
        if not self.seeded:
            return self.convert[row]
        return self.convert[(row, hash((self.seed, self.current_epoch, row)) % 2**63)]

    def _create_shuffler(self, cache):
        shuffler = super()._create_shuffler(cache)
        if self.buckets is None or not self.shuffle:
            return shuffler
        return LengthBuckets(shuffler, self, self.buckets, self.bucket_batch, self.pool_batches)


class LengthBuckets:
    """litdata's shuffler, with its order of each worker's share of a chunk made into length buckets: cut into pools
    of `pool_batches` batches, each pool sorted by duration and cut into batches of `batch_size`, the batches of the
    share in shuffled order (LengthBucketSampler's recipe within one share). Like the order it reorders, it is a
    function of (seed, epoch, chunk) alone: litdata resumes a worker by calling its shuffler again and skipping the
    items already yielded, so a resumed run gets the same batches.

    The DataLoader cuts each worker's stream into batches: a share that does not start a batch first completes the
    one begun before it (`head` items, the longest of its first pool), so the buckets' batch boundaries are the
    loader's.
    """

    def __init__(self, inner, stream: ShardStream, seconds: list[float], batch_size: int, pool_batches: int):
        self.inner, self.stream, self.seconds = inner, stream, seconds
        self.batch_size, self.pool = batch_size, batch_size * pool_batches

    def __getattr__(self, name):  # get_len, get_chunks_and_intervals_per_workers, ...: litdata's own
        return getattr(self.inner, name)

    def __call__(self, array: np.ndarray, num_chunks: int, current_epoch: int, chunk_index: int) -> list[int]:
        order = self.inner(array, num_chunks, current_epoch, chunk_index)
        size = self.batch_size
        head = (-self._offset(int(array[0]))) % size
        # The first pool also gives the `head` items that complete the loader's batch begun by the previous share
        # (which ends with the longest items of its last pool): the longest ones.
        first = sorted(order[: head + self.pool], key=self.seconds.__getitem__)
        cut = max(len(first) - head, 0)
        pools = [first[:cut]] + [
            sorted(order[start : start + self.pool], key=self.seconds.__getitem__)
            for start in range(head + self.pool, len(order), self.pool)
        ]
        batches = [pool[i : i + size] for pool in pools for i in range(0, len(pool), size)]
        # Only the last pool can leave a short batch: it stays last, so that the loader's batches are these ones.
        last = batches.pop() if batches and len(batches[-1]) < size else []
        rng = np.random.RandomState([self.inner.seed, current_epoch, chunk_index, 7])
        return first[cut:] + [i for b in rng.permutation(len(batches)) for i in batches[b]] + last

    def _offset(self, first: int) -> int:
        """Items this worker streams before its share that starts at index `first` (its intervals are
        [chunk start, share start, share end, chunk end])."""
        offset = 0
        for interval in self.stream.worker_intervals:
            if interval[1] == first:
                return offset
            offset += interval[2] - interval[1]
        return 0  # not this worker's share (len(), elastic plans): any alignment is as good
