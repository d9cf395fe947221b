"""Feature extraction: waveform -> (frames, features), built from torchaudio transforms.

Every extractor takes a waveform of shape (samples,) or (batch, samples) and returns
(frames, features) or (batch, frames, features): time first, as the networks expect.
`num_frames(samples)` gives the frame count of a waveform of that length, which is how a
padded batch knows its `lengths` in frames.

Normalization is part of the extractor, so it travels with the checkpoint:
  none       features as computed
  utterance  per recording, per feature: zero mean, unit variance over its valid frames
  global     per feature, with mean and std measured on the training set (`GlobalNorm.fit`)

An extractor is a plain nn.Module: where it runs (DataLoader workers, the accelerator, once into a
cache) is the data pipeline's choice (`data.placement`, audio_cls/data/base.py), and training-time
augmentation of its output is `audio_cls.augment.SpecAugment`'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
import torchaudio.functional as F
import torchaudio.transforms as T
from torch import nn

from audio_cls.errors import ConfigError

NORMALIZATIONS = ("none", "utterance", "global")


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


def make_norm(normalize: str, num_features: int) -> nn.Module | None:
    """The normalization module of `normalize` (none | utterance | global) for `num_features` features."""
    return {"none": None, "utterance": UtteranceNorm(), "global": GlobalNorm(num_features)}[normalize]


class FeatureExtractor(nn.Module):
    """Base class: subclasses define `num_features`, `num_frames` and `compute` (no normalization).

    Every extractor also takes `normalize` (none | utterance | global), described at the top of this module.
    """

    num_features: int

    def __init__(self, num_features: int, normalize: str = "none"):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"features.normalize={normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
        self.num_features = num_features
        self.normalize = normalize
        self.norm = make_norm(normalize, num_features)

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        raise NotImplementedError

    @property
    def hop_samples(self) -> int:
        """Samples from one frame's start to the next (frame t starts at t * hop_samples)."""
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

    @property
    def hop_samples(self) -> int:
        return self.hop_length


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

    @property
    def hop_samples(self) -> int:
        return self.frame_length

    def compute(self, waveform):
        pad = (-waveform.shape[-1]) % self.frame_length
        wave = nn.functional.pad(waveform, (0, pad))
        return wave.reshape(wave.shape[0], -1, self.frame_length)


class Spectrogram(_StftFrames):
    """|STFT|^power in dB (log=True) or linear: (…, frames, n_fft // 2 + 1)."""

    def __init__(
        self,
        n_fft: int = 256,
        win_length: int | None = None,
        hop_length: int | None = None,
        power: float = 2.0,
        log: bool = True,
        **common,
    ):
        hop_length = hop_length or (win_length or n_fft) // 2
        super().__init__(n_fft // 2 + 1, hop_length, **common)
        self.spectrogram = T.Spectrogram(
            n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=power, pad_mode="constant"
        )
        # top_db=None: clamping relative to a batch maximum would make a clip's features depend on its batch.
        self.to_db = T.AmplitudeToDB(stype="power" if power == 2.0 else "magnitude", top_db=None) if log else None

    def compute(self, waveform):
        x = self.spectrogram(waveform)
        if self.to_db is not None:
            x = self.to_db(x)
        return x.transpose(-1, -2)


class LogMel(_StftFrames):
    """Log-mel spectrogram in dB: (…, frames, n_mels)."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int = 256,
        win_length: int | None = None,
        hop_length: int | None = None,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        **common,
    ):
        hop_length = hop_length or (win_length or n_fft) // 2
        super().__init__(n_mels, hop_length, **common)
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            pad_mode="constant",
        )
        self.to_db = T.AmplitudeToDB(stype="power", top_db=None)

    def compute(self, waveform):
        return self.to_db(self.mel(waveform)).transpose(-1, -2)


class MFCC(LogMel):
    """Mel-frequency cepstral coefficients: (…, frames, n_mfcc); the mel settings are LogMel's.

    As torchaudio's MFCC(log_mels=True) computes them: log(mel + 1e-6), per value and so independent of the
    rest of the batch, then an orthonormal DCT-II over the mel bands.
    """

    def __init__(self, sample_rate: int, n_mfcc: int = 20, **log_mel):
        super().__init__(sample_rate, **log_mel)
        if n_mfcc > self.mel.n_mels:
            raise ConfigError(f"features.n_mfcc={n_mfcc}: more coefficients than mel bands (n_mels={self.mel.n_mels})")
        del self.to_db
        self.num_features = n_mfcc
        self.norm = make_norm(self.normalize, n_mfcc)  # of the coefficients, not of the mel bands
        self.register_buffer("dct_mat", F.create_dct(n_mfcc, self.mel.n_mels, "ortho"))

    def compute(self, waveform):
        return torch.log(self.mel(waveform) + 1e-6).transpose(-1, -2) @ self.dct_mat

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before MFCC shared LogMel's front end held torchaudio's MFCC as `mfcc`.
        for old, new in (("mfcc.MelSpectrogram.", "mel."), ("mfcc.dct_mat", "dct_mat")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
