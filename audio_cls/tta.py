"""Test-time augmentation: each recording's probabilities averaged over shifted crops of it (`tta` config).

    recording -> `views` crops, their starts spread evenly over [-shift, +shift] around the crop the
              test would take (silence outside the recording) -> network -> mean probability

A crop is as long as the network's input in training: `data.duration` when training cropped, else the whole
recording (then a view is the recording shifted in time, as `augment.waveform.shift` shifts it in training).
The middle view (odd `views`) is exactly the input an ordinary test gives. The averaged probabilities stand in
for the model's everywhere a test uses them: metrics, test_predictions.csv, calibration (the checkpoint's
temperature applies to their logarithm). Validation, and the checkpoint chosen on it, never use views.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from audio_cls.errors import ConfigError

log = logging.getLogger(__name__)


class ShiftedCrops(nn.Module):
    """`views` crops of every recording of a batch, `shift_samples` apart at most from the usual one.

    forward(waveforms (batch, samples), lengths (batch,), size: crop length in samples or None for each
    recording's own length, starts (batch,): where the usual crops start, by default the centre crop of a
    longer recording and 0 otherwise) -> (views * batch, longest crop) view-major (all recordings' first view,
    then their second, ...), and each crop's length (views * batch,).
    """

    def __init__(self, views: int, shift_samples: int):
        super().__init__()
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"tta.views={views!r}: must be a positive integer (1: no test-time augmentation)")
        if views > 1 and shift_samples <= 0:
            raise ConfigError(
                f"tta.views={views} needs a shift of at least one sample: set tta.shift > 0 seconds (null takes "
                "the training run's augment.waveform.shift)"
            )
        self.views = views
        self.shift_samples = int(shift_samples)

    @property
    def offsets(self) -> torch.Tensor:
        """The views' shifts in samples, evenly spread over [-shift, +shift] (0 alone for one view)."""
        if self.views == 1:
            return torch.zeros(1, dtype=torch.long)
        return torch.linspace(-self.shift_samples, self.shift_samples, self.views).round().long()

    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        size: int | None = None,
        starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.to(waveforms.device)
        sizes = lengths if size is None else torch.full_like(lengths, size)
        if starts is None:  # as a test crops: the centre of a longer recording; a shorter one is padded at the
            starts = (lengths - sizes).clamp(min=0) // 2  # end (data/base.py crop_or_pad); whole ones start at 0
        starts = starts.to(waveforms.device)
        offsets = self.offsets.to(waveforms.device)
        width = int(sizes.max())
        position = (starts[None, :, None] + offsets[:, None, None]) + torch.arange(width, device=waveforms.device)
        inside = (position >= 0) & (position < lengths[None, :, None])
        inside &= torch.arange(width, device=waveforms.device) < sizes[None, :, None]
        rows = waveforms[None].expand(len(offsets), -1, -1)
        crops = torch.where(inside, rows.gather(2, position.clamp(0, waveforms.shape[1] - 1)), 0.0)
        return crops.flatten(0, 1), sizes.repeat(len(offsets))


def average_views(logits: torch.Tensor, views: int, multilabel: bool) -> torch.Tensor:
    """Logits (views * batch, classes), view-major -> (batch, classes) logits of the views' mean probability:
    log of the mean softmax (single-label), logit of the mean sigmoid (multi-label)."""
    logits = logits.float().unflatten(0, (views, -1))
    if multilabel:
        return torch.logit(torch.sigmoid(logits).mean(0), eps=1e-7)
    return torch.logsumexp(torch.log_softmax(logits, -1), 0) - torch.log(torch.tensor(float(views)))


def check_settings(config: dict) -> None:
    """The `tta` block's values (config_checks, before any data is read)."""
    tta = config.get("tta") or {}
    views, shift = tta.get("views", 1), tta.get("shift")
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ConfigError(f"tta.views={views!r}: must be a positive integer (1: no test-time augmentation)")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift < 0):
        raise ConfigError(f"tta.shift={shift!r}: expected seconds >= 0, or null (the training run's shift)")


def from_config(config: dict, trained_config: dict) -> ShiftedCrops | None:
    """The `tta` block of `config` ({views, shift}) as ShiftedCrops, or None when off (views=1). shift=null takes
    the training run's (`trained_config`) augment.waveform.shift: views then come from the distribution the
    network was trained on."""
    check_settings(config)
    tta = config.get("tta") or {}
    if tta.get("views", 1) == 1:
        return None
    shift = tta.get("shift")
    if shift is None:
        shift = ((trained_config.get("augment") or {}).get("waveform") or {}).get("shift") or 0.0
    return ShiftedCrops(tta["views"], round(shift * trained_config["data"]["sample_rate"]))


def set_test_views(datamodule, module: nn.Module, config: dict, trained_config: dict) -> None:
    """Test (and predict through Lightning) `datamodule` with the views `config`'s `tta` block asks for."""
    views = from_config(config, trained_config)
    if views is not None and getattr(module, "detects_events", False):
        raise ConfigError(
            "tta.views: test-time views are for clip-level models; this one detects sound events, whose "
            "frame scores the shifts would move"
        )
    datamodule.use_test_views(views)
    if views is not None:
        rate = trained_config["data"]["sample_rate"]
        log.info(
            "Test-time augmentation: %d shifted crops per test recording (shifts %s s), probabilities averaged",
            views.views,
            ", ".join(f"{o / rate:+.3f}" for o in views.offsets.tolist()),
        )
