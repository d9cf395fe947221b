"""Labelling new audio with a trained model: `Classifier.from_checkpoint(path).predict(file_or_waveform)`.

    file or waveform -> mono at the model's rate -> windows (batched) -> front end -> network -> softmax
                     -> per-window probabilities -> file-level aggregate (mean or max) -> top-k labels

Windows: a model trained on fixed-length clips (`data.duration`) sees the same length here, in windows
`hop` seconds apart (half a window by default); one trained on whole recordings sees each file whole,
unless `window` is set. A recording shorter than a window, and the last partial window, are zero-padded
at the end as training pads (`crop_or_pad`); the padding counts as signal, as it did in training.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn

from audio_cls import tta
from audio_cls.audio import AUDIO_EXTENSIONS, audio_files, audio_info, load_audio
from audio_cls.checkpoints import load_model
from audio_cls.data.manifest import parse_segment
from audio_cls.errors import ConfigError, DataError
from audio_cls.features import FeatureExtractor
from audio_cls.module import AudioClassifier, frame_hop

log = logging.getLogger(__name__)

# What Classifier.predict and .load take: a file's path, or a 1-D waveform.
AudioInput = str | Path | torch.Tensor | np.ndarray

AGGREGATES = ("auto", "mean", "max")


@dataclass
class WindowPrediction:
    start_s: float
    end_s: float  # where the window ends, padding included
    padded: bool  # it reaches past the end of the recording
    probabilities: list[float]  # one per class


@dataclass
class Prediction:
    """The result for one recording. `scores` holds every class's aggregate probability (softmax: they sum to 1
    with aggregate="mean"; with "max" each is that class's highest window probability). Multi-label models
    add `detected`, every class whose score reaches its decision threshold, best first, and models with a
    frame head `events`, (onset s, offset s, label, score) of each detected sound event."""

    labels: list[str]  # top-k, best first
    probabilities: list[float]  # their scores
    scores: list[float]  # one per class, in `class_names` order
    duration_s: float
    num_windows: int
    padded: bool  # shorter than one window (or than the network accepts): zero-padded
    notes: list[str] = field(default_factory=list)
    windows: list[WindowPrediction] | None = None
    detected: list[tuple[str, float]] | None = None  # multi-label: (label, score) at or above its threshold
    events: list[tuple[float, float, str, float]] | None = None  # sound event detection

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]


def extract(
    features: FeatureExtractor, waveforms: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded waveforms (batch, samples) and lengths in samples -> features (batch, frames, feat) and
    each item's valid frames (batch,)."""
    x = features(waveforms, lengths)
    return x, features.num_frames(lengths).clamp(max=x.shape[1])


def temperature_of(module: nn.Module) -> float:
    """The temperature that calibrates a single-label model's softmax (fitted on validation; 1 for checkpoints from
    before calibration and for multi-label models, whose sigmoids are left as trained)."""
    return 1.0 if getattr(module, "multilabel", False) else float(getattr(module, "temperature", 1.0))


class InferenceGraph(nn.Module):
    """The model end to end, as prediction runs it and export writes it: (waveform (batch, samples),
    lengths in samples) with the front end, or (features (batch, frames, feat), frames) without it
    -> (logits, probabilities): softmax, or a sigmoid per class for a multi-label model."""

    def __init__(
        self, features: FeatureExtractor | None, net: nn.Module, multilabel: bool = False, temperature: float = 1.0
    ):
        super().__init__()
        self.features, self.net, self.multilabel = features, net, multilabel
        self.temperature = float(temperature)  # the checkpoint's, fitted on validation (calibrated probabilities)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is not None:
            inputs, lengths = extract(self.features, inputs, lengths)
        logits = self.net(inputs, lengths)
        return logits, self.probabilities(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> what prediction gives: a sigmoid per class (multi-label), else the calibrated softmax."""
        return torch.sigmoid(logits) if self.multilabel else (logits / self.temperature).softmax(dim=-1)

    @property
    def input_names(self) -> tuple[str, str]:
        return ("waveform", "lengths") if self.features is not None else ("features", "frames")


def minimum_samples(features: FeatureExtractor, net: torch.nn.Module, limit: int = 1 << 24) -> int:
    """The fewest samples the network accepts: those giving `min_input_frames(net)` frames (the network
    protocol, audio_cls/model/layers.py: a CNN's convolutions and pooling need a few frames, others take 1)."""
    from audio_cls.model.layers import min_input_frames

    frames = min_input_frames(net)
    low, high = 1, 1
    while features.num_frames(high) < frames:
        high *= 2
        if high > limit:
            raise ConfigError(f"model: needs more than {limit} samples per input")
    while low < high:  # the smallest sample count giving `frames` frames
        mid = (low + high) // 2
        low, high = (mid + 1, high) if features.num_frames(mid) < frames else (low, mid)
    return low


class FrameGraph(InferenceGraph):
    """InferenceGraph of a sound event detection model: the clip outputs, then the frames' -> (logits,
    probabilities (sigmoid), frame_probabilities (batch, frames', classes) (sigmoid of the frame logits),
    frame_lengths (batch,) int64 valid frames)."""

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.features is not None:
            inputs, lengths = extract(self.features, inputs, lengths)
        logits, frame_logits, frame_lengths = self.net.forward_frames(inputs, lengths)
        return logits, torch.sigmoid(logits), torch.sigmoid(frame_logits), frame_lengths.to(torch.int64)


class Classifier:
    """A trained network with its front end, in eval mode, for inference on any device.

    Args:
        module: an AudioClassifier (e.g. `audio_cls.checkpoints.load_model(path)`).
        window: seconds per window; None: the training clip length (`data.duration`), or whole files when
            training used whole recordings; "whole": whole files.
        hop: seconds between window starts; None: half a window.
        aggregate: "mean" or "max" of the window probabilities; "auto": mean for a single-label model, max for a
            multi-label one (a sound heard in one window of a long recording is in the recording).
        top_k: labels returned per recording.
        batch_size: windows per forward pass.
        device: "cpu", "cuda", "cuda:1", ...; "auto" picks a GPU when there is one.
        frame_threshold, median_frames, min_duration, min_gap: how frame scores become events (networks with a
            frame head; `audio_cls.sed.events_from_scores`), always over the whole recording; None: the
            checkpoint's frame thresholds (per class, tuned on validation) and the training run's task.median_frames.
        tta_views, tta_shift: test-time augmentation (audio_cls/tta.py): each window's probabilities averaged over
            `tta_views` crops shifted by up to `tta_shift` seconds either way (None: the training run's
            augment.waveform.shift), read from the recording around the window.
    """

    def __init__(
        self,
        module: AudioClassifier,
        window: float | str | None = None,
        hop: float | None = None,
        aggregate: str = "auto",
        top_k: int = 3,
        batch_size: int = 32,
        device: str = "cpu",
        frame_threshold: float | None = None,
        median_frames: int | None = None,
        min_duration: float = 0.0,
        min_gap: float = 0.0,
        tta_views: int = 1,
        tta_shift: float | None = None,
    ):
        config = module.hparams.get("config") or {}
        if not (config.get("data") or {}).get("sample_rate") or module.features is None:
            raise ConfigError(
                "Classifier needs an AudioClassifier with its feature extractor and the training "
                "config (data.sample_rate), as audio_cls.train saves them"
            )
        self.sample_rate = int(config["data"]["sample_rate"])
        self.class_names = list(module.class_names)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device={device!r}: expected auto, cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device}: no CUDA GPU here; use device=cpu or auto")
        self.module = module.eval().to(self.device)
        self.features, self.net = self.module.features, self.module.net
        self.multilabel = bool(getattr(module, "multilabel", False))
        self.thresholds = module.thresholds.tolist() if self.multilabel else None
        self.graph = InferenceGraph(self.features, self.net, self.multilabel, temperature_of(module))
        self.detects_events = module.detects_events
        task = config.get("task") or {}  # the training run's settings where not given
        # Frame thresholds: the checkpoint's (tuned on validation, per class), unless one is given for all.
        self.frame_thresholds = module.frame_thresholds.tolist() if self.detects_events else None
        if frame_threshold is not None and self.detects_events:
            self.frame_thresholds = [float(frame_threshold)] * len(self.class_names)
        median_frames = task.get("median_frames", 1) if median_frames is None else median_frames
        self.event_settings = dict(median_frames=median_frames, min_duration=min_duration, min_gap=min_gap)
        self.min_samples = minimum_samples(self.features, self.net)

        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate={aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k={top_k!r}: must be a positive integer")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: must be a positive integer")
        if aggregate == "auto":
            aggregate = "max" if self.multilabel else "mean"
        self.aggregate, self.top_k, self.batch_size = aggregate, min(top_k, len(self.class_names)), batch_size
        self.window, self.hop = self._window_and_hop(window, hop, config["data"].get("duration"))
        views = tta.from_config({"tta": {"views": tta_views, "shift": tta_shift}}, config)
        if views is not None and self.detects_events:
            raise ConfigError("tta.views: test-time views are for clip-level models, not sound event detection")
        self.views = views  # None: each window once

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **settings) -> Classifier:
        """Everything comes from the checkpoint (classes, rate, front end and its statistics, network);
        `settings` are the other arguments of Classifier."""
        return cls(load_model(path), device=device, **settings)

    def _window_and_hop(self, window, hop, trained_duration) -> tuple[int | None, int | None]:
        """Window and hop in samples; (None, None) for whole files."""
        if window is None:
            window = trained_duration
        elif window == "whole":
            window = None
        elif isinstance(window, str) or not window > 0:
            raise ConfigError(f"window={window!r}: expected seconds > 0, null (the training clip length) or 'whole'")
        if window is None:
            if hop is not None:
                raise ConfigError(f"hop={hop}: whole recordings are predicted at once; set window= too")
            return None, None
        samples = round(window * self.sample_rate)
        if samples < self.min_samples:
            raise ConfigError(
                f"window={window}: {samples} samples, but the network needs at least "
                f"{self.min_samples} ({self.min_samples / self.sample_rate:.3f} s)"
            )
        if hop is not None and not hop > 0:
            raise ConfigError(f"hop={hop}: must be positive seconds")
        hop_samples = max(1, round(hop * self.sample_rate)) if hop is not None else max(1, samples // 2)
        return samples, hop_samples

    @property
    def window_s(self) -> float | None:
        return None if self.window is None else self.window / self.sample_rate

    @property
    def hop_s(self) -> float | None:
        return None if self.hop is None else self.hop / self.sample_rate

    # --- the batched core ----------------------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax probabilities (batch, num_classes) of a padded batch of waveforms (batch, samples) at
        the model's rate, `lengths` in samples (all of them when None): front end, network, softmax."""
        waveforms = waveforms.to(self.device, torch.float32)
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1])
        return self.graph(waveforms, lengths.to(self.device))[1].float().cpu()

    @torch.inference_mode()
    def window_probabilities(self, wave: torch.Tensor, starts: list[int], size: int) -> torch.Tensor:
        """Probabilities (windows, classes) of the `size`-sample windows of a mono waveform (samples,) that start
        at `starts` (zero past its end), each averaged over its test-time views when `tta_views` > 1."""
        views = 1 if self.views is None else self.views.views
        if views == 1:  # the windows themselves, sliced
            batch = self._slice(wave, starts, size)
            return torch.cat([self.probabilities(chunk) for chunk in batch.split(self.batch_size)])
        wave, out = wave.to(self.device, torch.float32), []
        for chunk in torch.tensor(starts).split(max(1, self.batch_size // views)):
            rows, lengths = wave[None].expand(len(chunk), -1), torch.full((len(chunk),), wave.numel())
            crops, sizes = self.views(rows, lengths, size, chunk)
            logits, _ = self.graph(crops, sizes.to(self.device))
            logits = tta.average_views(logits, views, self.multilabel)  # as a test with views computes them
            out.append(self.graph.probabilities(logits).float().cpu())
        return torch.cat(out)

    # --- one recording -------------------------------------------------------------------------------
    def predict(
        self,
        x: AudioInput,
        sample_rate: int | None = None,
        *,
        start: float | None = None,
        end: float | None = None,
        windows: bool = False,
    ) -> Prediction:
        """Label a file (optionally its segment from `start` to `end` seconds) or a 1-D waveform.

        A waveform is taken at `sample_rate` (default: the model's rate) and resampled if that differs.
        `windows=True` adds every window's probabilities to the result.
        """
        wave, notes = self.load(x, sample_rate, start=start, end=end)
        return self.predict_waveform(wave, windows=windows, notes=notes)

    def load(
        self, x: AudioInput, sample_rate: int | None = None, *, start: float | None = None, end: float | None = None
    ) -> tuple[torch.Tensor, list[str]]:
        """A file, segment or waveform as a mono waveform (samples,) at the model's rate, with notes on
        what was done to it (resampled, channels averaged)."""
        notes: list[str] = []
        if isinstance(x, (str, Path)):
            return self._read(Path(x), start, end, notes), notes
        return self._waveform(x, sample_rate, notes), notes

    def _read(self, path: Path, start: float | None, end: float | None, notes: list[str]) -> torch.Tensor:
        if not path.is_file():
            raise DataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        info = audio_info(path)  # a clear DataError for unreadable files and those without samples
        if info.samplerate != self.sample_rate:
            notes.append(f"resampled from {info.samplerate} Hz to {self.sample_rate} Hz")
            log.info("%s: %s (the model's rate)", path, notes[-1])
        if info.channels > 1:
            notes.append(f"{info.channels} channels averaged to mono")
        return load_audio(path, self.sample_rate, start, end)

    def _waveform(self, x, sample_rate: int | None, notes: list[str]) -> torch.Tensor:
        wave = torch.as_tensor(x).detach().float().cpu()
        if wave.dim() != 1:
            raise DataError(
                f"waveform of shape {tuple(wave.shape)}: expected one channel, (samples,); average the channels first"
            )
        if wave.numel() == 0:
            raise DataError("waveform: empty (0 samples)")
        if not torch.isfinite(wave).all():
            raise DataError(f"waveform: contains {int((~torch.isfinite(wave)).sum())} NaN or infinite samples")
        if sample_rate is not None and sample_rate != self.sample_rate:
            notes.append(f"resampled from {sample_rate} Hz to {self.sample_rate} Hz")
            log.info("waveform: %s (the model's rate)", notes[-1])
            wave = torchaudio.functional.resample(wave, int(sample_rate), self.sample_rate)
        return wave

    def predict_waveform(self, wave: torch.Tensor, windows: bool = False, notes: list[str] | None = None) -> Prediction:
        """Label a mono waveform (samples,) already at the model's rate."""
        notes = list(notes or [])
        n = wave.numel()
        starts, size = self.window_starts(n)
        padded = n < size
        if padded:
            notes.append(
                f"shorter than {'a window' if self.window else 'the network accepts'} "
                f"({n / self.sample_rate:.3f} s < {size / self.sample_rate:.3f} s): zero-padded"
            )
        probs = self.window_probabilities(wave, starts, size)
        scores = probs.mean(0) if self.aggregate == "mean" else probs.amax(0)
        top = scores.topk(self.top_k)
        detected = None
        if self.multilabel:
            order = scores.argsort(descending=True).tolist()
            detected = [(self.class_names[i], float(scores[i])) for i in order if scores[i] >= self.thresholds[i]]
        return Prediction(
            detected=detected,
            events=self.events(wave) if self.detects_events else None,
            labels=[self.class_names[i] for i in top.indices.tolist()],
            probabilities=top.values.tolist(),
            scores=scores.tolist(),
            duration_s=n / self.sample_rate,
            num_windows=len(starts),
            padded=padded,
            notes=notes,
            windows=[
                WindowPrediction(s / self.sample_rate, (s + size) / self.sample_rate, s + size > n, p.tolist())
                for s, p in zip(starts, probs)
            ]
            if windows
            else None,
        )

    @torch.inference_mode()
    def frame_probabilities(self, wave: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Frame probabilities (frames, classes) of a whole mono waveform (samples,) at the model's rate, and the
        seconds per frame (networks with a frame head)."""
        wave = self._pad(wave, self.min_samples).to(self.device, torch.float32)[None]
        # The exported graph of a sound event detection model (export.py), so that both give the same frames.
        graph = FrameGraph(self.features, self.net, self.multilabel)
        _, _, probs, frame_lengths = graph(wave, torch.tensor([wave.shape[1]], device=self.device))
        hop = frame_hop(self.features.hop_samples / self.sample_rate, self.net)
        return probs[0, : int(frame_lengths[0])].float().cpu(), hop

    def events(self, wave: torch.Tensor) -> list[tuple[float, float, str, float]]:
        """Sound events (onset s, offset s, label, score) of a whole waveform, at the model's thresholds."""
        from audio_cls.sed import events_from_scores

        probs, hop = self.frame_probabilities(wave)
        return events_from_scores(probs.numpy(), hop, self.class_names, self.frame_thresholds, **self.event_settings)

    def window_starts(self, n: int) -> tuple[list[int], int]:
        """Where the windows of an `n`-sample recording start, and their length: the whole file, padded to what the
        network accepts, or windows `hop` apart covering the whole recording, the last one zero-padded."""
        if self.window is None:
            return [0], max(n, self.min_samples)
        count = 1 if n <= self.window else 1 + math.ceil((n - self.window) / self.hop)
        return [i * self.hop for i in range(count)], self.window

    def windows(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[int], int]:
        """The windows of a mono waveform as a batch (windows, size), their starts and their size."""
        starts, size = self.window_starts(wave.numel())
        return self._slice(wave, starts, size), starts, size

    def _slice(self, wave: torch.Tensor, starts: list[int], size: int) -> torch.Tensor:
        padded = self._pad(wave, starts[-1] + size)
        return torch.stack([padded[s : s + size] for s in starts])

    @staticmethod
    def _pad(wave: torch.Tensor, length: int) -> torch.Tensor:
        return torch.nn.functional.pad(wave, (0, length - wave.numel())) if wave.numel() < length else wave


# What to label: the `input` of `audio_cls.predict` and the `check_input` of `audio_cls.export`.


@dataclass(frozen=True)
class Source:
    """One recording (or segment) to label."""

    path: Path
    start: float | None = None
    end: float | None = None
    label: str | None = None  # the true label, when a manifest gives one


def collect_sources(spec: str) -> list[Source]:
    """The recordings named by `input`: a file, a folder (recursive) or a CSV manifest."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = audio_files(path)
        if not files:
            raise DataError(f"input={spec}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in it or below")
        return [Source(Path(p)) for p in files]
    if path.suffix.lower() == ".csv" and path.is_file():
        return read_manifest(path)
    if not path.exists():
        raise ConfigError(f"input={spec}: no such file or directory")
    return [Source(path)]  # any other file: soundfile decides whether it can read it


def read_manifest(manifest: Path) -> list[Source]:
    with manifest.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns:
            raise ConfigError(f"input={manifest}: a manifest needs a `path` column (header: {','.join(columns)})")
        reader.fieldnames = columns
        sources = []
        for line, row in enumerate(reader, start=2):
            where = f"{manifest} line {line}"
            values = {k: (v or "").strip() for k, v in row.items() if k is not None}
            if not values["path"]:
                raise DataError(f"{where}: empty path")
            path = Path(values["path"]).expanduser()
            start, end = parse_segment(values, where)
            sources.append(
                Source(path if path.is_absolute() else manifest.parent / path, start, end, values.get("label") or None)
            )
    if not sources:
        raise DataError(f"input={manifest}: the manifest lists no recordings")
    return sources
