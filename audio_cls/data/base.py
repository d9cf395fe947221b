"""From a list of labelled files to padded batches: the part every dataset shares.

    wav file --load_audio--> waveform (samples,) --features--> (frames, feat)
            --pad_collate--> {"inputs": (batch, max_frames, feat), "lengths": (batch,), "targets": (batch,)}

A dataset is a subclass of `AudioDataModule` that implements `scan()`, returning its labelled
recordings (`Item`s, with whatever it knows of speakers, segments, splits and folds); splitting
(`splits.py`), checks, features, augmentation and batching live here.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from audio_cls.audio import load_audio
from audio_cls.augment import SpecAugment, WaveformAugment
from audio_cls.data.file_index import FileEntry, FileIndex
from audio_cls.data.splits import (
    SPLITS,
    assign_splits,
    check_stratify,
    cv_folds,
    cv_scheme,
    cv_split,
    duplicates_across_splits,
    labels_of,
    shared_groups,
)
from audio_cls.errors import ConfigError, DataError
from audio_cls.features import FeatureExtractor, GlobalNorm
from audio_cls.tta import ShiftedCrops

PLACEMENTS = ("auto", "worker", "device", "cache")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One labelled recording, or a segment of one (`start`/`end` in seconds).

    What a dataset knows beyond path and label: `group` is the speaker or source (kept within one
    split); `split` a split the data defines (train/val/test); `fold` a cross-validation fold it defines.
    Multi-label data (task=multilabel) gives `labels`, the set of classes heard (possibly empty), with
    `label` their `;`-joined names (what splits and splits.csv go by); sound event detection data also
    gives `events`, (onset s, offset s, label) of each sound event (strong labels).
    """

    path: str
    label: str
    group: str | None = None
    start: float | None = None
    end: float | None = None
    split: str | None = None
    fold: int | None = None
    labels: tuple[str, ...] | None = None
    events: tuple[tuple[float, float, str], ...] | None = None


def multilabel_item(path: str, labels, events=None, **fields) -> Item:
    """An Item of multi-label data: `labels` (any iterable of names, or None to take them from `events`)."""
    events = tuple(sorted((float(on), float(off), str(lab)) for on, off, lab in events)) if events is not None else None
    names = tuple(sorted(set(labels if labels is not None else (lab for _, _, lab in events or ()))))
    return Item(path, ";".join(names), labels=names, events=events, **fields)


class AudioDataset(Dataset):
    """Items -> {"inputs": ..., "target": class index}: the base of the four datasets below, one per
    thing a batch can hold (AudioDataModule.dataset picks the one its placement needs):

        WaveformDataset      (samples,) waveforms, for batched extraction on the device   (placement=device)
        FeatureDataset       (frames, feat) features computed in the DataLoader worker    (placement=worker)
        CachedFeatureDataset (frames, feat) read from computed features, normalized      (placement=cache)
        RawFeatureDataset    (frames, feat) before normalization, to fill the cache

    `key` is an index, or (index, seed) from EpochSampler: then every random draw for the item (crop,
    waveform and feature augmentation) comes from `seed`, whichever worker process loads it and whatever
    that worker loaded before, so a resumed run replays exactly the uninterrupted one. With `num_samples`
    set, recordings are cropped or zero-padded to that length (a random crop when `random_crop`, else the
    centre) before extraction; every dataset gives the same features for the same crop.
    """

    def __init__(
        self,
        items: list[Item],
        class_to_index: dict[str, int],
        sample_rate: int,
        features: FeatureExtractor,
        num_samples: int | None = None,
        random_crop: bool = False,
        multilabel: bool = False,
    ):
        self.items = items
        self.class_to_index = class_to_index
        self.multilabel = multilabel
        self.sample_rate = sample_rate
        self.features = features
        self.num_samples = num_samples
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):  # leaves the process's own stream untouched
                # The CPU generator alone: torch.manual_seed would also queue a CUDA seeding call (with
                # its stack trace) for every item in a process without CUDA initialized.
                torch.default_generator.manual_seed(seed)
                return self._item(index)
        return self._item(key)

    def _item(self, index: int) -> dict | None:
        loaded = self.load(index)
        if loaded is None:
            return None
        inputs, stretch = loaded
        item = self.items[index]
        if not self.multilabel:  # index: the item's place in its split (distillation looks up its teacher's outputs)
            return {"inputs": inputs, "target": self.class_to_index.get(item.label, -1), "index": index}
        target = torch.zeros(len(self.class_to_index))  # multi-hot
        target[[self.class_to_index[name] for name in labels_of(item)]] = 1.0
        out = {"inputs": inputs, "target": target, "index": index}
        if item.events is not None:  # (events, 3): onset s, offset s, class index, on the stretched time axis
            out["events"] = torch.tensor(
                [(on * stretch, off * stretch, self.class_to_index[lab]) for on, off, lab in item.events],
                dtype=torch.float32,
            ).reshape(-1, 3)
        return out

    def load(self, index: int) -> tuple[torch.Tensor, float] | None:
        """What the batch holds for item `index`, and the factor by which augmentation stretched it in time
        (1.0: not at all; speed perturbation); None for a file found unreadable (pad_collate drops it)."""
        raise NotImplementedError

    def inputs(self, index: int) -> torch.Tensor | None:
        """What the batch holds for item `index` (`load` without the stretch)."""
        loaded = self.load(index)
        return None if loaded is None else loaded[0]


class WaveformDataset(AudioDataset):
    """(samples,) waveforms, cropped or padded to `num_samples` when set, then `waveform_augment`-ed.

    skip_bad_files: a file found unusable only on reading (e.g. NaN samples) gives None instead of an error.
    """

    def __init__(self, *args, waveform_augment: WaveformAugment | None = None, skip_bad_files: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.waveform_augment = waveform_augment
        self.skip_bad_files = skip_bad_files

    def load(self, index: int) -> tuple[torch.Tensor, float] | None:
        waveform = self.read(index)
        if waveform is None:
            return None
        stretch = 1.0
        if self.waveform_augment is not None and self.waveform_augment.speed is not None:
            recorded = waveform.shape[0]
            waveform = self.waveform_augment.speed(waveform)
            stretch = waveform.shape[0] / recorded
        if self.num_samples is not None:
            waveform = crop_or_pad(waveform, self.num_samples, self.random_crop)
        return (self.waveform_augment(waveform) if self.waveform_augment is not None else waveform), stretch

    def read(self, index: int) -> torch.Tensor | None:
        item = self.items[index]
        try:
            return load_audio(item.path, self.sample_rate, item.start, item.end)
        except DataError as err:
            if not self.skip_bad_files:
                raise
            log.warning("Skipping %s", err)
            return None


class FeatureDataset(WaveformDataset):
    """(frames, feat) features of the waveforms, normalized, then `spec_augment`-ed."""

    def __init__(self, *args, spec_augment: SpecAugment | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec_augment = spec_augment

    def load(self, index: int) -> tuple[torch.Tensor, float] | None:
        loaded = super().load(index)
        if loaded is None:
            return None
        waveform, stretch = loaded
        with torch.no_grad():
            x = self.features(waveform[None])
            return (self.spec_augment(x) if self.spec_augment is not None else x)[0], stretch


class RawFeatureDataset(WaveformDataset):
    """(frames, feat) features before normalization, what the cache stores. For training (`random_crop`)
    recordings are only padded up to `num_samples`: CachedFeatureDataset cuts a random span of frames
    from them when read (for longer recordings a crop of frames rather than of samples: the same
    distribution of crops, with the edge frames reading their real neighbours instead of silence)."""

    def load(self, index: int) -> tuple[torch.Tensor, float] | None:
        waveform = self.read(index)
        if waveform is None:
            return None
        if self.num_samples is not None:
            length = max(self.num_samples, waveform.shape[0]) if self.random_crop else self.num_samples
            waveform = crop_or_pad(waveform, length, False)
        with torch.no_grad():
            return self.features.compute(waveform[None])[0], 1.0


class CachedFeatureDataset(AudioDataset):
    """(frames, feat) from `cached` (RawFeatureDataset's output): cropped to `num_samples` worth of frames
    (a random span when `random_crop`), normalized, then `spec_augment`-ed."""

    def __init__(self, *args, cached: list[torch.Tensor], spec_augment: SpecAugment | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cached = cached
        self.spec_augment = spec_augment
        self.frames = None if self.num_samples is None else int(self.features.num_frames(self.num_samples))
        # Normalized once when nothing random comes before normalization (global statistics are fitted
        # before a dataset of this kind is made).
        self.normalized = None
        if not (self.frames is not None and self.random_crop):
            if isinstance(self.features.norm, (GlobalNorm, type(None))) and cached:
                # per feature, whatever the neighbours: all recordings at once (100k one by one took 11 s)
                crops = cached if self.frames is None else [crop_or_pad(x, self.frames, False) for x in cached]
                flat = self.features.apply_norm(torch.cat(crops)[None])[0]
                self.normalized = [x[None] for x in flat.split([len(x) for x in crops])]
            else:
                self.normalized = [self._normalize(x, False) for x in cached]

    def _normalize(self, x: torch.Tensor, random_crop: bool) -> torch.Tensor:
        if self.frames is not None:
            x = crop_or_pad(x, self.frames, random_crop)
        return self.features.apply_norm(x[None])

    def load(self, index: int) -> tuple[torch.Tensor, float]:
        x = self.normalized[index] if self.normalized is not None else self._normalize(self.cached[index], True)
        return (self.spec_augment(x) if self.spec_augment is not None else x)[0], 1.0


def _own_generator() -> torch.Generator:
    """For loaders that run in some starts only (measuring statistics, filling the cache): a DataLoader draws its
    workers' base seed from its generator, and from torch's global one without it, which would make the first
    run after a change start from other weights than every later run with the same seed."""
    return torch.Generator().manual_seed(0)


def _concatenate(items: list[dict | None]) -> tuple[torch.Tensor, list[int | None]]:
    """A batch of RawFeatureDataset items as one (frames, feat) tensor and each item's frames (None: a file
    left out): a worker hands each tensor over through a file descriptor and a socket of its own, 1.3 ms a
    recording, so one tensor per batch instead of one per recording."""
    inputs = [it["inputs"] for it in items if it is not None]
    flat = torch.cat(inputs) if inputs else torch.empty(0)
    return flat, [None if it is None else len(it["inputs"]) for it in items]


def crop_or_pad(x: torch.Tensor, length: int, random_crop: bool) -> torch.Tensor:
    """Crop or zero-pad the first axis of `x` ((samples,) or (frames, feat)) to `length`."""
    excess = x.shape[0] - length
    if excess <= 0:
        return torch.cat([x, x.new_zeros((-excess, *x.shape[1:]))])
    start = int(torch.randint(0, excess + 1, ())) if random_crop else excess // 2
    return x[start : start + length]


def pad_collate(items: list[dict | None]) -> dict:
    """Pad `inputs` ((frames, feat) features or (samples,) waveforms) to the longest item in the batch;
    `lengths` counts each item's valid frames or samples. Items that could not be read (None, with
    data.on_bad_file=skip) are left out."""
    items = [it for it in items if it is not None]
    if not items:
        raise DataError("every recording of a batch was unreadable (data.on_bad_file=skip)")
    inputs = [it["inputs"] for it in items]
    targets = [it["target"] for it in items]
    batch = {
        "inputs": torch.nn.utils.rnn.pad_sequence(inputs, batch_first=True),
        "lengths": torch.tensor([x.shape[0] for x in inputs]),
        # class indices (batch,), or multi-hot (batch, classes) for multi-label data
        "targets": torch.stack(targets) if isinstance(targets[0], torch.Tensor) else torch.tensor(targets),
    }
    if "index" in items[0]:  # each item's place in its split
        batch["index"] = torch.tensor([it["index"] for it in items])
    if "events" in items[0]:  # (batch, most events, 3): onset s, offset s, class index; padded with class -1
        events = [it["events"] for it in items]
        padded = torch.full((len(items), max(1, max(len(e) for e in events)), 3), -1.0)
        for row, e in zip(padded, events):
            row[: len(e)] = e
        batch["events"] = padded
    return batch


def this_rank_share(items: list) -> list:
    """This process's every world_size-th entry of `items`, padded with its start to divide evenly (DDP)."""
    rank, world = _rank_and_world()
    return (items + items[: (-len(items)) % world])[rank::world]


def _rank_and_world() -> tuple[int, int]:
    """This process's place among the training processes (read when an epoch starts, after DDP set up)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler):
    """The training order, a function of (seed, epoch) alone, yielding (index, seed) pairs for AudioDataset.

    Lightning calls `set_epoch` before every epoch, so a resumed run draws the same order as an
    uninterrupted one, and shuffling takes nothing from the global RNG, which keeps dropout masks aligned
    after a resume too. Each item's seed is drawn from (seed, epoch, position), so its crop and
    augmentation do not depend on which DataLoader worker loads it or on what that worker did before
    (persistent workers of a resumed run start afresh). `seed` defaults to torch's initial seed (set by
    `seed`). With `weights` (one per item), each epoch draws `size` items with replacement in proportion to
    them instead: with inverse class frequencies, every class is drawn about equally often. Under DDP each
    process takes every world_size-th position (the order is padded with its start to divide evenly).
    """

    def __init__(
        self,
        size: int,
        seed: int | None = None,
        weights: list[float] | None = None,
        shuffle: bool = True,
        epoch: int = 0,
    ):
        self.size = size
        self.seed = torch.initial_seed() if seed is None else seed
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.double)
        self.shuffle = shuffle
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, self.epoch)) % 2**63)

    def order(self) -> list[int]:
        """This epoch's indices, for all processes."""
        if self.weights is not None:
            return torch.multinomial(self.weights, self.size, replacement=True, generator=self.generator()).tolist()
        if not self.shuffle:
            return list(range(self.size))
        return torch.randperm(self.size, generator=self.generator()).tolist()

    def item_seed(self, position: int) -> int:
        return hash((self.seed, self.epoch, position)) % 2**63

    def __iter__(self):
        order = self.order()
        return iter([(order[p], self.item_seed(p)) for p in this_rank_share(list(range(len(order))))])

    def __len__(self) -> int:
        return -(-self.size // _rank_and_world()[1])


class LengthBucketSampler(Sampler):
    """Batches of recordings of similar length, so that little of a padded batch is padding.

    Every epoch (from (seed, epoch), like EpochSampler, whose order and item seeds it uses): the shuffled
    order is cut into pools of `pool_batches` batches' worth of items, each pool is sorted by length and cut
    into batches, and the batches of the epoch are shuffled. Randomness stays (which items share a pool,
    the batch order), while padding falls to a few percent (SpeechBrain's dynamic batching and NeMo's
    bucketing work alike). A batch holds `batch_size` items, or, with `max_batch_seconds`, as many as fit
    in that many seconds of padded audio (longest item x count). Under DDP every process gets the same
    number of batches: each takes every world_size-th batch (the list is padded with its start).
    """

    def __init__(
        self,
        sampler: EpochSampler,
        seconds: list[float],
        batch_size: int,
        max_batch_seconds: float | None = None,
        pool_batches: int = 50,
    ):
        self.sampler = sampler  # the name Lightning looks for to call set_epoch
        self.seconds = seconds
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.pool_batches = pool_batches
        self._num_batches = None
        self._epoch_batches: tuple[int, list] | None = None

    def all_batches(self) -> list[list[tuple[int, int]]]:
        """This epoch's batches, for all processes (made once per epoch: Lightning also asks for len())."""
        if self._epoch_batches is None or self._epoch_batches[0] != self.sampler.epoch:
            self._epoch_batches = (self.sampler.epoch, self._make_batches())
        return self._epoch_batches[1]

    def _make_batches(self) -> list[list[tuple[int, int]]]:
        keyed = [(index, self.sampler.item_seed(p)) for p, index in enumerate(self.sampler.order())]
        pool_size = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(keyed), pool_size):
            pool = sorted(keyed[start : start + pool_size], key=lambda key: self.seconds[key[0]])
            batches += self._cut(pool)
        if not self.sampler.shuffle and self.sampler.weights is None:  # data.shuffle=false: a fixed order
            return batches
        permutation = torch.randperm(len(batches), generator=self.sampler.generator()).tolist()
        batches = [batches[i] for i in permutation]
        if self.max_batch_seconds is None:
            return batches
        # Filling by seconds makes the count vary a little between epochs, but Lightning reads it once (its
        # validation and epoch end rely on it): every epoch gets the first epoch's count, cut or repeated.
        if self._num_batches is None:
            self._num_batches = len(batches)
        return (batches * 2)[: self._num_batches]

    def _cut(self, pool: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        if self.max_batch_seconds is None:
            return [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        batches, batch = [], []
        for key in pool:  # ascending length: the newest item is the longest of its batch
            if batch and self.seconds[key[0]] * (len(batch) + 1) > self.max_batch_seconds:
                batches.append(batch)
                batch = []
            batch.append(key)
        return batches + [batch] if batch else batches

    def __iter__(self):
        return iter(this_rank_share(self.all_batches()))

    def __len__(self) -> int:
        return -(-len(self.all_batches()) // _rank_and_world()[1])


class AudioDataModule(L.LightningDataModule):
    """Splits, checks, feature extraction and batching for any labelled audio collection.

    Args:
        root: the dataset's folder.
        features: the feature extractor applied to every waveform; the datamodule keeps a copy
            (`self.features`, where `normalize=global` statistics are fitted) that stays on the CPU.
        sample_rate: every file is resampled to this rate.
        duration: if set, crop/pad every waveform to this many seconds (random crop in training).
        batch_size, num_workers, pin_memory, shuffle: DataLoader settings (batch_size is per device).
        placement: where features are computed, with the same results in each:
            worker  per recording in the DataLoader workers, on the CPU
            device  workers read audio; padded waveforms are extracted batched on the accelerator,
                    in `on_after_batch_transfer`
            cache   once per split, stored under `cache_dir` and reused until the extractor or a file changes
            auto    `choose_placement` picks one of the three at start-up and logs its choice
        val_fraction, test_fraction, split_by, split_seed: how splits the data does not define are
            carved (see `audio_cls/data/splits.py`): by hash of the group (`split_by=group`, the default
            `auto` when every recording has one) or of the file. `split_seed` is fixed apart from the
            training seed so that `seed=1,2,3` repeats the same experiment on the same split.
        stratify: how those splits (and cross-validation folds of files) are carved: `hash`, `iterative`
            (iterative stratification by class) or `auto` (iterative for multi-label data, else hash). The
            configs say `auto`; the default here is `hash`, which is what runs trained before the setting
            existed used, so that their configs (re-read by `eval`) rebuild the same test split.
        cv_fold, cv_folds, cv_scheme: set by `audio_cls.cv`: fold `cv_fold` of `cv_folds` is the test set.
        balanced_sampling: draw training batches with probabilities inverse to class frequency.
        length_buckets: batch recordings of similar length together (LengthBucketSampler: training batches
            from randomized pools, validation/test in length order), so that batches are little padding;
            off, batches take recordings in shuffled (training) or file order. No effect with `duration`.
        max_batch_seconds: with length_buckets, fill each training batch up to this many seconds of padded
            audio (longest x count) instead of `batch_size` recordings: short clips in large batches.
        waveform_augment: training-only waveform augmentation (gain, shift, noise), or None.
        spec_augment: training-only masking of the features (SpecAugment), or None; applied after
            extraction and normalization in every placement.
        check_duplicates: warn about recordings with identical content in two splits (reads every file
            whose size matches one in another split).
        cache_max_gb: the most memory that placement=auto lets the cache take (all splits).
        file_index: keep what start-up reads of each file (header, a hash of its first 64 KiB, whether it
            decodes) in `cache_dir/index/`, so that the next start reads only files changed since
            (`audio_cls/data/file_index.py`); off, every start reads every header.
        norm_max_files: `features.normalize=global` measures its statistics on at most this many training
            recordings (a fixed random sample; null: all), and keeps them in `cache_dir`.
        cache_dir: where `placement=cache` keeps computed features, one file per split, named by
            a hash of the extractor and of the split's files (path, size, modification time).
        task: "multiclass" or "multilabel" (multi-hot targets, also for data with one label per recording);
            None: multilabel exactly when the items carry label sets. Multi-label data with "multiclass" is an error.
        on_bad_file: "error" stops at the first file that cannot be used, naming it (headers are read at
            start-up, samples when first used); "skip" reads every file once at start-up, leaves out those
            that cannot be used, warns with their count and lists them in `skipped` (train.py writes
            skipped_files.csv into the run directory).
    """

    def __init__(
        self,
        root: str,
        features: FeatureExtractor,
        sample_rate: int,
        duration: float | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        placement: str = "auto",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_by: str = "auto",
        split_seed: int = 0,
        stratify: str = "hash",
        cv_fold: int | None = None,
        cv_folds: int = 5,
        cv_scheme: str = "auto",
        balanced_sampling: bool = False,
        waveform_augment: WaveformAugment | None = None,
        spec_augment: SpecAugment | None = None,
        check_duplicates: bool = True,
        on_bad_file: str = "error",
        cache_dir: str = "cache",
        length_buckets: bool = True,
        max_batch_seconds: float | None = None,
        cache_max_gb: float = 4.0,
        task: str | None = None,
        file_index: bool = True,
        norm_max_files: int | None = 5000,
    ):
        super().__init__()
        if task not in (None, "multiclass", "multilabel"):
            raise ConfigError(f"task.name={task!r}: expected multiclass or multilabel")
        if on_bad_file not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_file={on_bad_file!r}: expected 'error' or 'skip'")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: must be a positive integer")
        if norm_max_files is not None and not (isinstance(norm_max_files, int) and norm_max_files >= 1):
            raise ConfigError(f"data.norm_max_files={norm_max_files}: must be a positive integer (null: all files)")
        if max_batch_seconds is not None and not max_batch_seconds > 0:
            raise ConfigError(f"data.max_batch_seconds={max_batch_seconds}: must be positive (null: batch_size items)")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ConfigError(f"data.{key}={value}: must be in [0, 1)")
        check_stratify(stratify)
        if placement not in PLACEMENTS:
            raise ConfigError(f"data.placement={placement!r}: expected one of {', '.join(PLACEMENTS)}")
        if waveform_augment is not None and waveform_augment.active and placement == "cache":
            raise ConfigError(
                "augment.waveform is on but data.placement=cache stores features, not "
                "waveforms: use placement=worker or device, or switch the waveform augmentation off"
            )
        self.root = root
        # A copy of its own that stays on the CPU for the DataLoader workers, whatever device
        # the LightningModule later moves its extractor to.
        self.features = copy.deepcopy(features)
        self.sample_rate = sample_rate
        self.num_samples = round(duration * sample_rate) if duration else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self.placement = placement
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_by = split_by
        self.split_seed = split_seed
        self.stratify = stratify
        self.cv_fold = cv_fold
        self.cv_folds = cv_folds
        self.cv_scheme = cv_scheme
        self.balanced_sampling = balanced_sampling
        self.length_buckets = length_buckets
        self.cache_max_gb = cache_max_gb
        self.max_batch_seconds = max_batch_seconds
        self.seconds: dict[Item, float] = {}  # each usable item's duration, read from its header at start-up
        self.waveform_augment = waveform_augment if waveform_augment is not None and waveform_augment.active else None
        self.spec_augment = spec_augment if spec_augment is not None and spec_augment.active else None
        self._device_features: tuple[torch.device, FeatureExtractor] | None = None  # placement=device
        # Test-time augmentation (audio_cls/tta.py), set by train/eval: the test split is then read as whole
        # waveforms, and each test batch becomes its views' features on the device.
        self.test_views: ShiftedCrops | None = None
        self.check_duplicates = check_duplicates
        self.on_bad_file = on_bad_file
        self.cache_dir = Path(cache_dir)
        self.cached: dict[str, list[torch.Tensor]] = {}
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of files left out
        self.duplicates: list[tuple[str, str, str, str]] = []  # (split, path, other split, other path)
        self.splits: dict[str, list[Item]] | None = None
        self.class_names: list[str] = []
        self.task = task
        self.use_file_index = file_index
        self.norm_max_files = norm_max_files
        self.file_entries: dict[str, FileEntry] = {}  # what _read_headers learnt of each file (size, mtime, ...)

    # --- what a dataset defines --------------------------------------------------------------
    def scan(self) -> list[Item]:
        """Every labelled recording of the dataset under `self.root`, as `Item`s."""
        raise NotImplementedError

    def build_splits(self) -> dict[str, list[Item]]:
        """{"train": [...], "val": [...], "test": [...]}: the cross-validation fold when `cv_fold` is set,
        else the data's own splits, completed by hash or stratification (see `audio_cls/data/splits.py`)."""
        items = self.scan()
        if self.cv_fold is not None:
            return cv_split(
                items,
                self.cv_scheme,
                self.cv_folds,
                self.cv_fold,
                self.val_fraction,
                self.split_seed,
                self.split_by,
                self.root_path,
                stratify=self.stratify,
            )
        return assign_splits(
            items,
            self.val_fraction,
            self.test_fraction,
            self.split_seed,
            self.split_by,
            self.root_path,
            stratify=self.stratify,
        )

    def cv_plan(self, num_folds: int, scheme: str) -> tuple[str, list[tuple[str, int]]]:
        """The resolved scheme (`auto` made concrete) and [(fold name, number of test recordings)] of a
        cross-validation (see `audio_cls.cv`)."""
        items = self.scan()
        scheme = cv_scheme(items, scheme)
        folds = cv_folds(items, scheme, num_folds, self.split_seed, self.root_path, stratify=self.stratify)
        return scheme, [(name, len(test)) for name, test in folds]

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()

    # --- what the rest of the template reads -------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def multilabel(self) -> bool:
        """Whether targets are multi-hot: task=multilabel, or (task unset) the items carry label sets."""
        if self.task is not None:
            return self.task == "multilabel"
        return self.splits is not None and any(it.labels is not None for it in self.splits["train"])

    @property
    def has_events(self) -> bool:
        """Whether the data has strong labels (onset, offset, label), for sound event detection."""
        return self.splits is not None and any(it.events is not None for it in self.splits["train"])

    def class_counts(self) -> list[int]:
        """Training recordings per class (for multi-label data: recordings in which the class is heard)."""
        counts = Counter(name for item in self.splits["train"] for name in labels_of(item))
        return [counts[name] for name in self.class_names]

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.build_splits()
            self._check_splits()
            self._check_events()
            self._check_multilabel_settings()
            if self.placement == "auto":
                self.placement = self.choose_placement()
            if self.placement == "cache":
                for split in SPLITS:
                    self.cached[split] = self._cached_features(split)
        norm = self.features.norm
        if stage in (None, "fit") and isinstance(norm, GlobalNorm) and not bool(norm.fitted):
            self._fit_norm(norm)

    def choose_placement(self) -> str:
        """placement=auto: `cache` when nothing random happens to the waveform (features can then be
        computed once) and all splits' features fit in data.cache_max_gb of memory; else `device` on a GPU
        (batched extraction there) or `worker` on the CPU (extraction in parallel DataLoader workers)."""
        duration = (self.num_samples or 0) / self.sample_rate
        train = set(self.splits["train"])
        # Training features are stored whole (padded to at least `duration`), val/test ones cut to it; loaded,
        # each split is held twice (as stored, and normalized).
        seconds = sum(
            max(s, duration) if item in train or not duration else duration for item, s in self.seconds.items()
        )
        frames = self.features.num_frames(round(seconds * self.sample_rate)) + len(self.seconds)
        gigabytes = 2 * frames * self.features.num_features * 4 / 2**30
        if self.waveform_augment is None and gigabytes <= self.cache_max_gb:
            choice, why = "cache", f"no waveform augmentation; features take {gigabytes:.2f} GB <= data.cache_max_gb"
        else:
            choice = "device" if torch.cuda.is_available() else "worker"
            why = (
                "waveform augmentation is on"
                if self.waveform_augment is not None
                else f"features would take {gigabytes:.1f} GB > data.cache_max_gb={self.cache_max_gb}"
            )
        log.info("data.placement=auto: %s (%s)", choice, why)
        return choice

    def _fit_norm(self, norm: GlobalNorm) -> None:
        """Global statistics of the training features, measured on at most `norm_max_files` training recordings
        (a fixed random sample: per-band means and deviations of thousands of recordings are those of all of
        them to a few decimals) and kept in cache_dir, keyed like the feature cache, so that the next start
        with the same files and extractor measures nothing."""
        train = self.splits["train"]
        chosen = list(range(len(train)))
        if self.norm_max_files is not None and len(train) > self.norm_max_files:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))
            chosen = sorted(order[: self.norm_max_files].tolist())
        path = self._cache_path("norm", [train[i] for i in chosen], random_crop=False)
        if path.is_file():
            stats = torch.load(path, weights_only=True)
            norm.mean.copy_(stats["mean"])
            norm.std.copy_(stats["std"])
            norm.fitted.fill_(True)
            log.info("Global feature statistics of %d training files from %s", len(chosen), path)
            return
        log.info("Measuring global feature statistics on %d of %d training files", len(chosen), len(train))
        norm.fit(self._feature_batches("train", chosen))
        try:
            _save_atomically({"mean": norm.mean.clone(), "std": norm.std.clone()}, path)
        except OSError as err:  # a read-only cache folder costs the next run the measurement, nothing more
            log.warning("Could not keep the feature statistics in %s (%s)", path, err)

    def _cache_path(self, kind: str, items: list[Item], random_crop: bool) -> Path:
        """Where features (or statistics) computed from `items` are kept: named by a hash of what the extractor
        computes and of each file's path, size, modification time and segment."""
        files = [(it.path, *self._size_and_mtime(it.path), it.start, it.end) for it in items]
        key = hashlib.sha256(
            json.dumps(
                {
                    "features": self.features.fingerprint(self.sample_rate),
                    "sample_rate": self.sample_rate,
                    "num_samples": self.num_samples,
                    "random_crop": random_crop,
                    "format": 2,  # features stored as one tensor (1: a list of tensors)
                    "files": files,
                }
            ).encode()
        ).hexdigest()
        return self.cache_dir / f"{type(self).__name__}-{kind}-{key[:24]}.pt"

    def _feature_batches(self, split: str, chosen: list[int] | None = None):
        """(features, frame lengths) batches of a split (of its items at positions `chosen`, default all),
        centre-cropped and not augmented, extracted from the audio in every placement (the cache crops
        frames, not samples), so that the statistics measured on them are the same whatever the placement."""
        chosen = list(range(len(self.splits[split]))) if chosen is None else chosen
        if self.placement == "cache" and self.num_samples is None:
            # The cache holds these very features (checked in tests/test_data.py), before normalization.
            raw = [self.cached[split][i] for i in chosen]
            for start in range(0, len(raw), self.batch_size):
                chunk = raw[start : start + self.batch_size]
                yield torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True), torch.tensor([len(x) for x in chunk])
            return
        placement = "device" if self.placement == "device" else "worker"
        dataset = torch.utils.data.Subset(self.dataset(split, placement=placement, augment=False), chosen)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            collate_fn=pad_collate,
            num_workers=self.num_workers,
            generator=_own_generator(),
        )
        for batch in loader:
            if placement == "device":
                yield self.features(batch["inputs"], batch["lengths"]), self.features.num_frames(batch["lengths"])
            else:
                yield batch["inputs"], batch["lengths"]

    def _cached_features(self, split: str) -> list[torch.Tensor]:
        """The split's un-normalized features, from the cache file if it matches, else computed (in the
        DataLoader workers) and stored atomically."""
        items = self.splits[split]
        path = self._cache_path(split, items, random_crop=split == "train")
        if path.is_file():
            log.info("Features of the %s split (%d files) from %s", split, len(items), path)
            stored = torch.load(path, weights_only=True)
            return list(stored["features"].split(stored["frames"].tolist()))
        log.info("Computing features of the %s split (%d files) for %s", split, len(items), path)
        dataset = self.dataset(split, placement="raw")
        loader = DataLoader(
            dataset, batch_size=32, num_workers=self.num_workers, collate_fn=_concatenate, generator=_own_generator()
        )
        computed = []
        for flat, lengths in loader:
            pieces = iter(flat.split([n for n in lengths if n is not None]))
            # clone(): a piece of a worker's tensor keeps its shared-memory file descriptor open while it lives,
            # and a cache of thousands of recordings would otherwise hold thousands of them (past `ulimit -n`).
            computed.extend(next(pieces).clone() if n is not None else None for n in lengths)
        if any(x is None for x in computed):  # files found bad on reading (skip mode): leave them out
            self.splits[split] = [it for it, x in zip(items, computed) if x is not None]
            computed = [x for x in computed if x is not None]
        if not computed:
            raise DataError(f"{type(self).__name__}: no file of the {split} split could be read (skipped_files.csv)")
        # One tensor and the frames of each recording: torch.load takes ~0.1 ms per tensor (10 s for 100k recordings)
        _save_atomically({"features": torch.cat(computed), "frames": torch.tensor([len(x) for x in computed])}, path)
        return computed

    def _check_splits(self) -> None:
        """Everything checked once the splits are known, before any data is used; each step a method."""
        for split in SPLITS:
            if split not in self.splits:
                raise DataError(f"{type(self).__name__}.build_splits returned no {split!r} split")
        self._read_headers()
        self._check_classes()
        self._report_shared_groups()
        if self.check_duplicates:
            self._find_duplicates()
        self._log_summary()

    def _read_headers(self) -> None:
        """Read every header now, so a broken file fails at start-up, not in epoch 7; with on_bad_file=skip,
        leave out (and count) the files that cannot be used. Records durations and the shortest recording.
        What was read is kept in the file index (`data.file_index`), so the next start reads only the files
        that changed since."""
        index = self.file_index()
        items = [item for split in SPLITS for item in self.splits[split]]
        entries = index.lookup(item.path for item in items)
        if self.on_bad_file == "skip":  # decode every sample too, so that NaN files are counted now
            whole = {item.path for item in items if item.start is None and item.end is None}
            index.check_decoding([path for path, entry in entries.items() if entry.error is None and path in whole])
            entries = {path: index.entries.get(path, entry) for path, entry in entries.items()}
        if index.read or index.decoded:
            log.info(
                "Read %d headers and decoded %d files of %d (the others are unchanged since %s)",
                index.read,
                index.decoded,
                len(entries),
                index.path,
            )
        shortest = None
        for split in SPLITS:
            usable = []
            for item in self.splits[split]:
                entry = entries[item.path]
                try:
                    if entry.error is not None:
                        raise DataError(entry.error)
                    seconds = _segment_seconds(item, entry)
                    if self.on_bad_file == "skip" and (item.start is not None or item.end is not None):
                        load_audio(item.path, entry.samplerate, item.start, item.end)  # this segment, not the file
                except DataError as err:
                    if self.on_bad_file == "error":
                        index.save(entries)  # what was read stays read
                        raise
                    self.skipped.append((item.path, str(err)))
                    continue
                usable.append(item)
                self.seconds[item] = seconds
                samples = round(seconds * self.sample_rate)
                if shortest is None or samples < shortest[0]:
                    shortest = (samples, item.path)
            self.splits[split] = usable
        index.save(entries)
        self.file_entries = entries
        if self.skipped:  # here (data.on_bad_file=skip) or by scan() (a manifest's missing files, broken links)
            log.warning(
                "Skipped %d files that cannot be used (listed in skipped_files.csv), e.g. %s",
                len(self.skipped),
                self.skipped[0][1],
            )
        if not self.splits["train"]:
            raise DataError(f"{type(self).__name__}: the training split is empty")
        self.shortest_samples, self.shortest_path = shortest

    def _size_and_mtime(self, path: str) -> tuple[int, int]:
        entry = self.file_entries.get(path)  # as _read_headers saw it: no second stat of every file
        if entry is None:
            stat = os.stat(path)
            return stat.st_size, stat.st_mtime_ns
        return entry.size, entry.mtime_ns

    def file_index(self) -> FileIndex:
        """The dataset's index of file headers (kept under cache_dir when data.file_index is on)."""
        return FileIndex.for_dataset(self.cache_dir if self.use_file_index else None, type(self).__name__, self.root)

    def _check_classes(self) -> None:
        """The classes are the training split's: at least two, every val/test label among them, and neither
        val nor test empty."""
        if self.task == "multiclass" and any(it.labels is not None for it in self.splits["train"]):
            raise ConfigError(
                f"{type(self).__name__} is multi-label data (several or no classes per recording): "
                "choose task=multilabel"
            )
        self.class_names = sorted({name for item in self.splits["train"] for name in labels_of(item)})
        fewest = 1 if self.multilabel else 2  # multi-label: every class is its own yes/no question
        if len(self.class_names) < fewest:
            raise DataError(
                f"{type(self).__name__} (data.root={self.root}): the training split has "
                f"{len(self.class_names)} class ({', '.join(self.class_names)}); a classifier needs at least {fewest}"
            )
        for split in ("val", "test"):
            unknown = {}
            for it in self.splits[split]:
                for name in labels_of(it):
                    if name not in self.class_names:
                        unknown.setdefault(name, it.path)
            if unknown:
                examples = ", ".join(f"{label!r} (e.g. {path})" for label, path in sorted(unknown.items())[:5])
                raise DataError(f"{len(unknown)} labels occur in the {split} split but not in training: {examples}")
        for split in ("val", "test"):
            if not self.splits[split]:
                raise DataError(f"{type(self).__name__}: the {split} split is empty")

    def _check_multilabel_settings(self) -> None:
        if self.multilabel and self.balanced_sampling:
            raise ConfigError(
                "data.balanced_sampling draws by class, which multi-label data does not have one of per recording: "
                "use loss.pos_weight=balanced instead"
            )

    def _check_events(self) -> None:
        """Strong labels are times in the recording as stored: nothing may move or cut the audio under them."""
        if not self.has_events:
            return
        if self.num_samples is not None or (self.waveform_augment is not None and self.waveform_augment.shifts):
            raise ConfigError(
                f"{type(self).__name__} has sound event times (strong labels), which data.duration (crops) and "
                "augment.waveform.shift would move away from the audio: set data.duration=null and "
                "augment.waveform.shift=0"
            )

    def _report_shared_groups(self) -> None:
        shared = shared_groups(self.splits)
        if shared:
            log.info(
                "Groups (speakers/sources) found in two splits: %s",
                ", ".join(f"{pair} {n}" for pair, n in shared.items()),
            )

    def _find_duplicates(self) -> None:
        self.duplicates = duplicates_across_splits(self.splits, self.file_entries)
        if self.duplicates:
            a_split, a, b_split, b = self.duplicates[0]
            log.warning(
                "%d recordings have an identical copy in another split (e.g. %s in %s = %s in %s); "
                "they inflate validation/test scores (listed in duplicate_files.csv)",
                len(self.duplicates),
                a,
                a_split,
                b,
                b_split,
            )

    def _log_summary(self) -> None:
        def count(split: str) -> str:  # group counts make a group-disjoint split visible in the log
            n = len({it.group for it in self.splits[split]} - {None})
            return f"{split} {len(self.splits[split])} files" + (f" ({n} group{'s' * (n != 1)})" if n else "")

        log.info("Data: %s, classes %d; %s", type(self).__name__, self.num_classes, ", ".join(map(count, SPLITS)))

    def write_split_files(self, output_dir: Path) -> None:
        """splits.csv (every recording with its split), and skipped_files.csv / duplicate_files.csv when
        there were any: what a run trained and tested on, next to its results."""
        output_dir = Path(output_dir)
        with (output_dir / "splits.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("split", "path", "label", "group", "start", "end"))
            for split in SPLITS:
                writer.writerows((split, it.path, it.label, it.group, it.start, it.end) for it in self.splits[split])
        for name, header, rows in (
            ("skipped_files.csv", ("path", "reason"), self.skipped),
            ("duplicate_files.csv", ("split", "path", "other_split", "other_path"), self.duplicates),
        ):
            if rows:
                with (output_dir / name).open("w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerows([header, *rows])

    @property
    def min_frames(self) -> int:
        """Frames of the shortest recording after cropping/padding: the least a network must accept."""
        samples = self.num_samples or self.shortest_samples
        return int(self.features.num_frames(samples))

    def dataset_arguments(self, split: str, placement: str | None, augment: bool) -> tuple[str, bool, dict]:
        """What every AudioDataset of the split takes, for `dataset()` here and in subclasses: (the placement,
        `self.placement` unless given; whether the split is read for training (random crops, augmentation);
        the arguments). A test split read for test-time views is whole waveforms, on the device: the views
        crop them (features_of)."""
        views = placement is None and self.views_on(split)
        train = augment and split == "train"
        common = dict(
            items=self.splits[split],
            class_to_index={name: i for i, name in enumerate(self.class_names)},
            sample_rate=self.sample_rate,
            features=self.features,
            num_samples=None if views else self.num_samples,
            random_crop=train,
            multilabel=self.multilabel,
        )
        return "device" if views else placement or self.placement, train, common

    def dataset(self, split: str, placement: str | None = None, augment: bool = True) -> AudioDataset:
        """The split as the Dataset a placement needs (`self.placement` by default; "raw": un-normalized
        features for the cache). The training split is cropped at random and augmented unless `augment=False`."""
        placement, train, common = self.dataset_arguments(split, placement, augment)
        spec_augment = self.spec_augment if train else None
        if placement == "cache":
            return CachedFeatureDataset(**common, cached=self.cached[split], spec_augment=spec_augment)
        reading = dict(skip_bad_files=self.on_bad_file == "skip")
        if placement == "raw":
            return RawFeatureDataset(**common, **reading)
        reading["waveform_augment"] = self.waveform_augment if train else None
        if placement == "device":  # SpecAugment follows extraction, in on_after_batch_transfer
            return WaveformDataset(**common, **reading)
        return FeatureDataset(**common, **reading, spec_augment=spec_augment)

    def use_test_views(self, views: ShiftedCrops | None) -> None:
        """Test (and predict through Lightning) with these test-time views, or without (None)."""
        self.test_views = views

    def views_on(self, split: str) -> bool:
        """Whether `split` is read for test-time views: the test split, once `test_views` is set."""
        return split == "test" and self.test_views is not None

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Lightning's hook after a batch reached its device: `features_of` it, augmented while training."""
        trainer, views = self.trainer, self.test_views
        if views is not None and not (trainer is not None and (trainer.testing or trainer.predicting)):
            views = None  # test-time views are for testing and prediction only
        return self.features_of(batch, train=trainer is not None and trainer.training, views=views)

    def features_of(self, batch: dict, train: bool = False, views: ShiftedCrops | None = None) -> dict:
        """The batch with features for inputs. placement=device: batches hold padded waveforms, extracted here
        batched on their device (in float32, also under mixed precision) and, with `train`, masked
        (SpecAugment); other placements already hold features. With `views`, a batch of whole waveforms
        becomes its test-time views (`views` * batch rows, view-major; `batch["views"]` says how many)."""
        if views is not None:
            inputs, lengths = views(batch["inputs"], batch["lengths"], self.num_samples)
            batch = {**batch, "inputs": inputs, "lengths": lengths, "views": views.views}
        elif self.placement != "device":
            return batch
        device = batch["inputs"].device
        if self._device_features is None or self._device_features[0] != device:
            self._device_features = (device, copy.deepcopy(self.features).to(device))
        features = self._device_features[1]
        frames = features.num_frames(batch["lengths"])
        with torch.no_grad():
            inputs = features(batch["inputs"], batch["lengths"])
            if train and self.spec_augment is not None:
                inputs = self.spec_augment(inputs, frames)
        return {**batch, "inputs": inputs, "lengths": frames}

    def _loader(
        self, split: str, shuffle: bool, persistent: bool = False, augment: bool = True, by_length: bool = True
    ) -> DataLoader:
        dataset = self.dataset(split, augment=augment)
        sampler = batch_sampler = None
        if split == "train" and augment:  # training order and per-item seeds (see EpochSampler)
            weights = None
            if self.balanced_sampling and shuffle:
                counts = Counter(it.label for it in dataset.items)
                weights = [1.0 / counts[it.label] for it in dataset.items]
            # Start at the trainer's epoch: Lightning creates the first iterator (and workers prefetch from it)
            # before it calls set_epoch, so a resumed run would otherwise replay epoch 0's order and seeds.
            epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
            sampler = EpochSampler(len(dataset), weights=weights, shuffle=shuffle, epoch=epoch)
        seconds = [
            min(self.seconds.get(it, 0.0), (self.num_samples or math.inf) / self.sample_rate) for it in dataset.items
        ]
        if self.length_buckets and self.num_samples is None and sampler is not None:
            batch_sampler, sampler = (
                LengthBucketSampler(sampler, seconds, self.batch_size, self.max_batch_seconds),
                None,
            )
        elif split in ("val", "test") and by_length:
            # Evaluation in length order (with length_buckets): the same numbers, since an item's logits do not
            # depend on its batch, with little padding. Prediction keeps file order. Under DDP every process
            # evaluates every batch: unequal shards would desynchronize DDP's per-step collectives.
            order = list(range(len(dataset)))
            if self.length_buckets and self.num_samples is None:
                order.sort(key=seconds.__getitem__)
            batch_sampler = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Cached features are in memory: handing them to worker processes costs more than it saves (and on a
        # small machine the workers' threads compete with the training process's).
        workers = 0 if isinstance(dataset, CachedFeatureDataset) else self.num_workers
        # Worker seeds come from a generator of the loader's own, not from the global RNG (see EpochSampler).
        return DataLoader(
            dataset,
            batch_size=1 if batch_sampler is not None else self.batch_size,
            sampler=sampler,
            batch_sampler=batch_sampler,
            collate_fn=pad_collate,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=persistent and workers > 0,
            generator=torch.Generator().manual_seed(torch.initial_seed()),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle, persistent=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, by_length=False)  # predictions in file order


def _segment_seconds(item: Item, entry: FileEntry) -> float:
    """Duration of the item (the whole file or its segment); a DataError if the segment does not fit."""
    duration = entry.seconds
    if item.start is None and item.end is None:
        return duration
    start, end = item.start or 0.0, duration if item.end is None else item.end
    if not 0 <= start < end or end > duration + 1e-3:
        raise DataError(f"{item.path}: segment {start}-{end} s does not fit in the recording ({duration:.3f} s)")
    return end - start


def _save_atomically(obj, path: Path) -> None:
    """torch.save to `path` through a temporary name of this process's own: ranks started together (torchrun,
    srun) all compute the same file, and each replaces it atomically with identical content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def require_dir(path: str | Path, key: str = "data.root") -> Path:
    """`path` as a Path, or a DataError naming the config key if it is not a directory."""
    p = Path(path).expanduser()
    if not p.is_dir():
        hint = ""
        if not p.is_absolute():  # paths.* default to the launch directory: the usual slip is launching elsewhere
            hint = f" (relative to {Path.cwd()}; launch from the repository or set AUDIO_CLS_ROOT)"
        raise DataError(f"{key}={path}: no such directory{hint}")
    return p
