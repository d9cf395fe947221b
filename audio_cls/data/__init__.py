"""Datasets: each is one module here (an `AudioDataModule` subclass) plus one YAML in conf/data/."""

from audio_cls.data.base import AudioDataModule, AudioDataset, Item, pad_collate

__all__ = ["AudioDataModule", "AudioDataset", "Item", "pad_collate"]
