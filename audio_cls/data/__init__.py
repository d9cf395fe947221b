"""Datasets: each is one module here (an `AudioDataModule` subclass) plus one YAML in conf/data/."""

from audio_cls.data.base import (
    AudioDataModule,
    AudioDataset,
    CachedFeatureDataset,
    FeatureDataset,
    Item,
    RawFeatureDataset,
    WaveformDataset,
    pad_collate,
)

__all__ = [
    "AudioDataModule",
    "AudioDataset",
    "CachedFeatureDataset",
    "FeatureDataset",
    "Item",
    "RawFeatureDataset",
    "WaveformDataset",
    "pad_collate",
]
