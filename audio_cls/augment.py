"""Training-time augmentation, the `augment` config group: validation and test data never pass through it.

    waveform (samples,) -> speed, crop -> WaveformAugment (shift, gain, noise)   in the DataLoader workers
        -> feature extraction -> SpecAugment (frequency and time masks)     where the features are made
        -> batch -> mixup                                                    in AudioClassifier.training_step

Each part is off unless configured (`active` says whether it is on). Randomness comes from torch's RNG,
seeded per item by the training sampler (audio_cls/data/base.py), so a resumed run draws the same.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchaudio.transforms as T
from torch import nn

from audio_cls.audio import AUDIO_EXTENSIONS, audio_files, audio_info, load_audio
from audio_cls.errors import ConfigError, DataError
from audio_cls.features import frame_mask


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class RandomGain(nn.Module):
    """Multiply by a gain drawn uniformly in [min_db, max_db] decibels."""

    def __init__(self, min_db: float, max_db: float):
        super().__init__()
        if min_db > max_db:
            raise ConfigError(f"augment.waveform.gain_db=[{min_db}, {max_db}]: the first must not exceed the second")
        self.min_db, self.max_db = min_db, max_db

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return waveform * 10 ** (_uniform(self.min_db, self.max_db) / 20)


class RandomSpeed(nn.Module):
    """Play faster or slower by a factor drawn uniformly from `factors`, tempo and pitch together (speed
    perturbation, Ko et al. 2015: Kaldi's and ESPnet's 0.9/1.0/1.1), with torchaudio's SpeedPerturbation.
    A new voice from each recording: what a model trained on a few speakers lacks most.

    (samples,) -> (ceil(samples / factor),): time stretches by 1 / factor, and event times with it.
    """

    def __init__(self, sample_rate: int, factors: list[float]):
        super().__init__()
        factors = list(factors)
        if not factors or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0.5 <= f <= 2.0 for f in factors
        ):
            raise ConfigError(
                f"augment.waveform.speed={factors}: expected a list of factors in [0.5, 2], e.g. [0.9, 1.0, 1.1]"
            )
        self.perturb = T.SpeedPerturbation(sample_rate, factors)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.perturb(waveform)[0]


class RandomShift(nn.Module):
    """Shift in time by up to `max_samples` either way; what moves out is dropped, the gap is silence."""

    def __init__(self, max_samples: int):
        super().__init__()
        self.max_samples = max_samples

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shift = int(torch.randint(-self.max_samples, self.max_samples + 1, ()))
        if shift == 0:
            return waveform
        out = torch.zeros_like(waveform)
        if shift > 0:
            out[shift:] = waveform[:-shift]
        else:
            out[:shift] = waveform[-shift:]
        return out


class BackgroundNoise(nn.Module):
    """Add a random stretch of a random recording from `noise_dir` (searched recursively) at a
    signal-to-noise ratio drawn uniformly in `snr_db`, with probability `prob`.

    Only the part `noise_range` = [start, end] (shares of each recording's length) is drawn from:
    a dataset that cuts its validation/test `_silence_` clips from the same recordings (Speech
    Commands: the last 20%) must not have them heard in training. Noise recordings are read at the
    training sample rate when first drawn and kept in memory (per DataLoader worker); a part shorter
    than the waveform is repeated.
    """

    def __init__(
        self,
        noise_dir: str,
        sample_rate: int,
        snr_db: tuple[float, float] = (5.0, 20.0),
        prob: float = 1.0,
        noise_range: tuple[float, float] = (0.0, 1.0),
    ):
        super().__init__()
        folder = Path(noise_dir).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"augment.waveform.noise_dir={noise_dir}: no such directory")
        self.files = audio_files(folder)
        if not self.files:
            raise ConfigError(
                f"augment.waveform.noise_dir={noise_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in it"
            )
        if len(noise_range) != 2 or not 0 <= noise_range[0] < noise_range[1] <= 1:
            raise ConfigError(
                f"augment.waveform.noise_range={list(noise_range)}: expected [start, end] with "
                f"0 <= start < end <= 1 (shares of each noise recording)"
            )
        self.sample_rate = sample_rate
        self.snr_db = tuple(snr_db)
        self.prob = prob
        self.noise_range = (float(noise_range[0]), float(noise_range[1]))
        self._noise: dict[str, torch.Tensor] = {}

    def _recording(self, path: str) -> torch.Tensor:
        if path not in self._noise:
            try:
                seconds = audio_info(path).duration
                start, end = self.noise_range
                # Cut at the file's own rate, before resampling, so no sample beyond `end` is mixed in.
                self._noise[path] = load_audio(path, self.sample_rate, start * seconds, end * seconds)
            except DataError as err:
                raise DataError(f"augment.waveform.noise_dir: {err}") from None
        return self._noise[path]

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.prob:
            return waveform
        noise = self._recording(self.files[int(torch.randint(len(self.files), ()))])
        n = waveform.shape[0]
        if noise.shape[0] < n:
            noise = noise.repeat(-(-n // noise.shape[0]))
        start = int(torch.randint(noise.shape[0] - n + 1, ()))
        noise = noise[start : start + n]
        signal_power, noise_power = waveform.pow(2).mean(), noise.pow(2).mean()
        if signal_power == 0 or noise_power == 0:
            return waveform  # silence in, or a silent stretch of noise: no ratio to keep
        snr = _uniform(*self.snr_db)
        return waveform + noise * torch.sqrt(signal_power / (noise_power * 10 ** (snr / 10)))


class WaveformAugment(nn.Module):
    """The configured waveform augmentations in order: shift, gain, background noise; and `speed`, which
    the dataset applies first, before it crops to data.duration (so that crops keep their length). Each is
    off unless configured; `active` says whether any is on.

    Args (conf/augment/default.yaml, `augment.waveform.*`):
        sample_rate: the training rate (noise recordings are resampled to it).
        speed: factors to draw the speed from (RandomSpeed), or null.
        gain_db: [min, max] decibels of random gain, or null.
        shift: largest time shift in seconds (either way), 0 for none.
        noise_dir: a folder of noise recordings, or null; `snr_db` [min, max], `noise_prob` and
            `noise_range` [start, end] (the share of each recording drawn from) as in BackgroundNoise.
    """

    def __init__(
        self,
        sample_rate: int,
        gain_db: tuple[float, float] | None = None,
        shift: float = 0.0,
        noise_dir: str | None = None,
        snr_db: tuple[float, float] = (5.0, 20.0),
        noise_prob: float = 1.0,
        noise_range: tuple[float, float] = (0.0, 1.0),
        speed: list[float] | None = None,
    ):
        super().__init__()
        self.speed = RandomSpeed(sample_rate, speed) if speed is not None else None
        steps = []
        if shift:
            steps.append(RandomShift(round(shift * sample_rate)))
        if gain_db is not None:
            steps.append(RandomGain(*gain_db))
        if noise_dir:
            steps.append(BackgroundNoise(noise_dir, sample_rate, snr_db, noise_prob, noise_range))
        self.steps = nn.ModuleList(steps)

    @property
    def active(self) -> bool:
        return len(self.steps) > 0 or self.speed is not None

    @property
    def shifts(self) -> bool:
        """Whether it moves the audio in time (which event times would then not follow)."""
        return any(isinstance(step, RandomShift) for step in self.steps)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (samples,): the steps after the crop (not `speed`)."""
        for step in self.steps:
            waveform = step(waveform)
        return waveform


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
        for key, value in (("freq_mask", freq_mask), ("time_mask", time_mask), ("num_masks", num_masks)):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"augment.spec_augment.{key}={value!r}: expected a whole number >= 0")
        self.num_masks = num_masks
        self.freq = T.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask else None
        self.time = T.TimeMasking(time_mask, iid_masks=True) if time_mask else None

    @property
    def active(self) -> bool:
        return self.num_masks > 0 and (self.freq is not None or self.time is not None)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], device=x.device)
        spec = x.transpose(1, 2).unsqueeze(1)  # torchaudio masks (batch, channel, freq, time)
        for _ in range(self.num_masks):
            if self.freq is not None:
                spec = self.freq(spec)
            if self.time is not None:
                spec = self.time(spec)
        return spec.squeeze(1).transpose(1, 2) * frame_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)


def mixup(
    inputs: torch.Tensor, lengths: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix every item of a batch with another of the same batch (mixup, Zhang et al. 2018).

    inputs (B, T, F), lengths (B,) -> mixed inputs, lengths (the longer of each pair), the partner
    index `perm` (B,) and the weight `lam` of the original items: the loss is
    lam * loss(targets) + (1 - lam) * loss(targets[perm]).
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(inputs.shape[0], device=inputs.device)
    mixed = lam * inputs + (1 - lam) * inputs[perm]
    return mixed, torch.maximum(lengths, lengths[perm]), perm, lam
