"""Feature extraction: waveform -> (frames, features), built from torchaudio transforms.

Every extractor takes a waveform of shape (samples,) or (batch, samples) and returns
(frames, features) or (batch, frames, features): time first, as the networks expect.
`num_frames(samples)` gives the frame count of a waveform of that length, which is how a
padded batch knows its `lengths` in frames.

Normalization is part of the extractor, so it travels with the checkpoint:
  none       features as computed
  utterance  per recording, per feature: zero mean, unit variance over its valid frames
  global     per feature, with mean and std measured on the training set (`GlobalNorm.fit`)

Where features are computed (`placement`), one switch for the whole pipeline:
  auto       the datamodule picks one of the three below at start-up and logs it (AudioDataModule.setup)
  worker     per recording in the DataLoader workers, on the CPU
  device     batched on the accelerator, in AudioClassifier.on_after_batch_transfer
  cache      once, stored on disk and reused until the extractor or the files change (AudioDataModule)
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch
import torchaudio.transforms as T
from torch import nn

from audio_cls.errors import ConfigError

NORMALIZATIONS = ("none", "utterance", "global")
PLACEMENTS = ("auto", "worker", "device", "cache")


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch,) lengths -> (batch, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class UtteranceNorm(nn.Module):
    """Per recording and feature: subtract the mean and divide by the std of its valid frames."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, frames, feat), lengths: (batch,) -> same shape; padding stays zero."""
        mask = frame_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        count = lengths.clamp(min=1).to(x.dtype)[:, None, None]
        mean = (x * mask).sum(1, keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / count
        return (x - mean) / (var + self.eps).sqrt() * mask


class GlobalNorm(nn.Module):
    """Per feature, with statistics of the training set held as buffers (saved in checkpoints).

    Before `fit` it is the identity (mean 0, std 1), so the training set can be passed
    through the extractor once to measure them.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Measure mean and std over the valid frames of (features, lengths) batches."""
        total = total_sq = None
        count = 0
        for x, lengths in batches:
            mask = frame_mask(lengths, x.shape[1]).unsqueeze(-1)
            x = x.double() * mask
            s, sq = x.sum((0, 1)), (x**2).sum((0, 1))
            total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
            count += int(lengths.sum())
        if not count:
            raise ValueError("GlobalNorm.fit: no frames to measure")
        mean = total / count
        var = (total_sq / count - mean**2).clamp(min=0)
        self.mean.copy_(mean.float())
        self.std.copy_((var + self.eps).sqrt().float())
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        return (x - self.mean) / self.std * mask


class SpecAugment(nn.Module):
    """Feature-domain augmentation for training (SpecAugment's masking): `num_masks` frequency bands of
    up to `freq_mask` features and time spans of up to `time_mask` frames are set to zero (the mean,
    after normalization), drawn independently for every recording (torchaudio's masking transforms).

    (batch, frames, feat), lengths (batch,) -> same shape; padding stays zero. Time masks are drawn over
    the padded width (as torchaudio does), so a short item in a padded batch can have a mask fall in its
    padding and be masked less than a long one.
    """

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, num_masks: int = 1):
        super().__init__()
        self.num_masks = num_masks
        self.freq = T.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask else None
        self.time = T.TimeMasking(time_mask, iid_masks=True) if time_mask else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        spec = x.transpose(1, 2).unsqueeze(1)  # torchaudio masks (batch, channel, freq, time)
        for _ in range(self.num_masks):
            if self.freq is not None:
                spec = self.freq(spec)
            if self.time is not None:
                spec = self.time(spec)
        return spec.squeeze(1).transpose(1, 2) * frame_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)


class FeatureExtractor(nn.Module):
    """Base class: subclasses define `num_features`, `num_frames` and `compute` (no normalization).

    Every extractor also takes `normalize` (none | utterance | global), `placement`
    (worker | device | cache), described at the top of this module, and `spec_augment` (keyword
    arguments of SpecAugment, or null): feature-domain augmentation that `augment` applies to
    training batches after extraction and normalization, in every placement.
    """

    num_features: int

    def __init__(self, num_features: int, normalize: str = "none", placement: str = "worker",
                 spec_augment: dict | None = None):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"features.normalize={normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
        if placement not in PLACEMENTS:
            raise ConfigError(f"features.placement={placement!r}: expected one of {', '.join(PLACEMENTS)}")
        self.num_features = num_features
        self.normalize = normalize
        self.placement = placement
        self.norm = {"none": None, "utterance": UtteranceNorm(), "global": GlobalNorm(num_features)}[normalize]
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else None

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        raise NotImplementedError

    def compute(self, waveform: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, feat), before normalization."""
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """waveform (samples,) or (batch, samples), lengths (batch,) in samples -> (…, frames, feat).

        Extraction runs in float32 even under mixed precision: log and power spectra overflow in fp16.
        """
        single = waveform.dim() == 1
        wave = waveform.unsqueeze(0) if single else waveform
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = self.compute(wave.float())
            frames = None if lengths is None else self.num_frames(lengths).clamp(max=x.shape[1])
            x = self.apply_norm(x, frames)
        return x[0] if single else x

    def apply_norm(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Normalize computed features (batch, frames, feat) with `frames` valid frames per item
        (all of them when None); the cache stores features before this step."""
        if self.norm is None:
            return x
        if frames is None:
            frames = torch.full((x.shape[0],), x.shape[1], device=x.device)
        return self.norm(x, frames)

    def augment(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Training-time augmentation of normalized features (batch, frames, feat); identity when off."""
        if self.spec_augment is None:
            return x
        if frames is None:
            frames = torch.full((x.shape[0],), x.shape[1], device=x.device)
        return self.spec_augment(x, frames)

    def fingerprint(self, sample_rate: int) -> str:
        """A hash of what this extractor computes (before normalization): its class and its output on
        a fixed probe signal, so any setting that changes the features changes the fingerprint."""
        probe = torch.sin(torch.linspace(0, 2000, sample_rate)) * torch.linspace(0, 1, sample_rate)
        with torch.no_grad():
            out = self.compute(probe[None].float()).contiguous()
        digest = hashlib.sha256(f"{type(self).__qualname__}:{sample_rate}:{tuple(out.shape)}".encode())
        digest.update(out.numpy().tobytes())
        return digest.hexdigest()


class _StftFrames(FeatureExtractor):
    """Shared by the STFT-based extractors: centered frames, one every `hop_length` samples.

    Frames are centred with zero padding (pad_mode="constant", librosa's default since 0.10):
    reflect padding would fail on recordings shorter than n_fft / 2.
    """

    def __init__(self, num_features: int, hop_length: int, **common):
        super().__init__(num_features, **common)
        self.hop_length = hop_length

    def num_frames(self, num_samples):
        # torchaudio pads n_fft // 2 on both sides (center=True): 1 + samples // hop frames.
        return 1 + num_samples // self.hop_length


class RawWaveform(FeatureExtractor):
    """The waveform itself, cut into non-overlapping frames of `frame_length` samples.

    frame_length=1 gives (samples, 1): one sample per time step, as for a Conv1d front end
    with a long first kernel. The last partial frame is zero-padded.
    """

    def __init__(self, frame_length: int = 1, **common):
        super().__init__(frame_length, **common)
        self.frame_length = frame_length

    def num_frames(self, num_samples):
        return -(-num_samples // self.frame_length)  # ceil division, works for ints and tensors

    def compute(self, waveform):
        pad = (-waveform.shape[-1]) % self.frame_length
        wave = nn.functional.pad(waveform, (0, pad))
        return wave.reshape(wave.shape[0], -1, self.frame_length)


class Spectrogram(_StftFrames):
    """|STFT|^power in dB (log=True) or linear: (…, frames, n_fft // 2 + 1)."""

    def __init__(self, n_fft: int = 256, win_length: int | None = None, hop_length: int | None = None,
                 power: float = 2.0, log: bool = True, **common):
        hop_length = hop_length or (win_length or n_fft) // 2
        super().__init__(n_fft // 2 + 1, hop_length, **common)
        self.spectrogram = T.Spectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=power,
                                         pad_mode="constant")
        # top_db=None: clamping relative to a batch maximum would make a clip's features depend on its batch.
        self.to_db = T.AmplitudeToDB(stype="power" if power == 2.0 else "magnitude", top_db=None) if log else None

    def compute(self, waveform):
        x = self.spectrogram(waveform)
        if self.to_db is not None:
            x = self.to_db(x)
        return x.transpose(-1, -2)


class LogMel(_StftFrames):
    """Log-mel spectrogram in dB: (…, frames, n_mels)."""

    def __init__(self, sample_rate: int, n_fft: int = 256, win_length: int | None = None,
                 hop_length: int | None = None, n_mels: int = 64, f_min: float = 0.0,
                 f_max: float | None = None, **common):
        hop_length = hop_length or (win_length or n_fft) // 2
        super().__init__(n_mels, hop_length, **common)
        self.mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length,
                                    hop_length=hop_length, n_mels=n_mels, f_min=f_min, f_max=f_max,
                                    pad_mode="constant")
        self.to_db = T.AmplitudeToDB(stype="power", top_db=None)

    def compute(self, waveform):
        return self.to_db(self.mel(waveform)).transpose(-1, -2)


class MFCC(_StftFrames):
    """Mel-frequency cepstral coefficients: (…, frames, n_mfcc)."""

    def __init__(self, sample_rate: int, n_mfcc: int = 20, n_fft: int = 256, win_length: int | None = None,
                 hop_length: int | None = None, n_mels: int = 64, f_min: float = 0.0,
                 f_max: float | None = None, **common):
        hop_length = hop_length or (win_length or n_fft) // 2
        super().__init__(n_mfcc, hop_length, **common)
        melkwargs = dict(n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                         n_mels=n_mels, f_min=f_min, f_max=f_max, pad_mode="constant")
        # log_mels=True: log(mel + 1e-6) per value, independent of the rest of the batch.
        self.mfcc = T.MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc, log_mels=True, melkwargs=melkwargs)

    def compute(self, waveform):
        return self.mfcc(waveform).transpose(-1, -2)
