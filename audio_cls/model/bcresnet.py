"""BC-ResNet (Kim et al., "Broadcasted Residual Learning for Efficient Keyword Spotting", Interspeech 2021):
a 2-D CNN over the (freq x time) image whose blocks split into a frequency-depthwise part (2-D features) and a
temporal part computed once per frame on the features averaged over frequency and broadcast back over it;
BC-ResNet-1 has 9.2k parameters, BC-ResNet-8 321k and 98.0% / 98.7% on Speech Commands v1 / v2 (12 classes).

    x (batch, time, feat) -> (batch, 1, feat, time)
      -> Conv2d 5x5, stride 2 over frequency -> BN -> ReLU                                            (2 * c1)
      -> stage s (s = 1..4; c = 1, 1.5, 2, 2.5 x c1 channels; blocks 2, 2, 4, 4; the first block of stages 2
         and 3 halves frequency; temporal dilation 1, 2, 4, 8), each block:
           [transition: 1x1 conv -> BN -> ReLU to c channels]
           f2: frequency-depthwise conv 3x1 -> SubSpectralNorm                        (batch, c, freq, time)
           f1: mean over frequency -> time-depthwise conv 1x3 -> BN -> SiLU -> 1x1 conv -> channel dropout
                                                                                         (batch, c, 1, time)
           out = ReLU([x +] f2 + f1)   (f1 broadcast over frequency; the identity only when shapes agree)
      -> depthwise Conv2d 5x5 (no frequency padding) -> 1x1 conv to 4 * c1 -> BN -> ReLU
      -> mean over frequency, then over valid frames -> Linear -> logits (batch, num_classes)

c1 = 8 * width (the paper's tau). The frequency strides take F bins to (F - 1) // 2 + 1 at each of three steps and
the last conv needs 5, so at least 33 feature bins (40 mels: 20, 10, 5). Time keeps its length through every layer;
padding frames are zeroed before every convolution that reads across time and kept out of every batch norm's
statistics, so an item gives the same logits alone or in any padded batch. SubSpectralNorm (Chang et al.,
Interspeech 2021) is batch norm with separate statistics for each of `sub_bands` equal frequency bands.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.model.layers import (
    MaskedBatchNorm2d,
    check_readout,
    conv_output_length,
    masked_pool,
    readout_width,
    time_mask,
)

STAGES = ((1.0, 2, 1, 1), (1.5, 2, 2, 2), (2.0, 4, 2, 4), (2.5, 4, 1, 8))  # (width x c1, blocks, freq stride, dilation)


class SubSpectralNorm(nn.Module):
    """Batch norm over (batch, channels, freq, time) with statistics per channel and per frequency band (freq
    split into `sub_bands` equal bands): (batch, channels, freq, time), lengths (batch,) -> the same shape."""

    def __init__(self, channels: int, sub_bands: int):
        super().__init__()
        self.sub_bands = sub_bands
        self.norm = MaskedBatchNorm2d(channels * sub_bands)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        return self.norm(x.reshape(b, c * self.sub_bands, f // self.sub_bands, t), lengths).reshape(b, c, f, t)


class BCResBlock(nn.Module):
    """One broadcasted residual block (see the module docstring): h (batch, in_channels, freq, time) zero past each
    length, lengths (batch,) -> (batch, out_channels, (freq - 1) // freq_stride + 1, time), zero past each length.
    A transition block (the channels change, or a frequency stride) has no identity path; it starts with a 1x1
    conv when the channels change."""

    def __init__(
        self, in_channels: int, out_channels: int, freq_stride: int, dilation: int, sub_bands: int, dropout: float
    ):
        super().__init__()
        self.transition = in_channels != out_channels or freq_stride != 1
        c = out_channels
        self.expand = nn.Conv2d(in_channels, c, 1, bias=False) if in_channels != c else None
        self.expand_norm = MaskedBatchNorm2d(c) if in_channels != c else None
        self.freq_conv = nn.Conv2d(c, c, (3, 1), stride=(freq_stride, 1), padding=(1, 0), groups=c, bias=False)
        self.freq_norm = SubSpectralNorm(c, sub_bands)
        self.time_conv = nn.Conv2d(c, c, (1, 3), padding=(0, dilation), dilation=(1, dilation), groups=c, bias=False)
        self.time_norm = MaskedBatchNorm2d(c)
        self.pointwise = nn.Conv2d(c, c, 1, bias=False)
        self.activation, self.time_activation = nn.ReLU(), nn.SiLU()
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.expand is not None:
            x = self.activation(self.expand_norm(self.expand(x), lengths))
        f2 = self.freq_norm(self.freq_conv(x), lengths)
        f1 = time_mask(f2.mean(2, keepdim=True), lengths)  # the temporal conv reads zeros past each item's end
        f1 = self.time_activation(self.time_norm(self.time_conv(f1), lengths))
        f1 = self.dropout(self.pointwise(f1))
        out = f2 + f1 if self.transition else x + f2 + f1
        return time_mask(self.activation(out), lengths)


class BCResNet(nn.Module):
    """BC-ResNet-`width` (the paper's tau): see the module docstring for the layout.

    Args:
        in_features: feature bins per frame (frequency of the input image).
        num_classes: outputs.
        width: the paper's tau; c1 = 8 * width channels in the first stage (1: 9.2k parameters, 8: 321k).
        sub_bands: SubSpectralNorm's frequency bands; must divide the bins of every stage (40 mels: 20, 10, 5
            bins -> 5; 64 mels: 32, 16, 8 -> 8, 4, 2; 1 is plain batch norm).
        dropout: channel dropout on the temporal part of every block (the paper: 0.1).
        readout: over valid frames after the mean over frequency: "mean" (the paper's), "max" or "meanmax".

    forward(x (batch, time, feat), lengths (batch,)) -> logits (batch, num_classes). Time keeps its length.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: float = 1.0,
        sub_bands: int = 5,
        dropout: float = 0.1,
        readout: str = "mean",
    ):
        super().__init__()
        check_readout(readout)
        c1 = round(8 * width)
        if c1 < 1:
            raise ConfigError(f"model.width={width}: 8 * width channels must round to at least 1")
        if sub_bands < 1:
            raise ConfigError(f"model.sub_bands={sub_bands}: need at least 1 (1 is plain batch norm)")
        # frequency bins after the stem and after each block (stride 2 at the first block of stages 2 and 3)
        bins, per_block = conv_output_length(in_features, 5, stride=2, padding=2), []
        for _, count, freq_stride, _ in STAGES:
            for i in range(count):
                bins = conv_output_length(bins, 3, stride=freq_stride if i == 0 else 1, padding=1)
                per_block.append(bins)
        if bins < 5:
            raise ConfigError(
                f"model=bcresnet: {in_features} feature bins leave {bins} after its frequency strides and its last "
                f"conv needs 5: at least 33 feature bins (e.g. features.n_mels=40)"
            )
        stage_bins = sorted(set(per_block), reverse=True)
        if any(b % sub_bands for b in stage_bins):
            raise ConfigError(
                f"model.sub_bands={sub_bands} must divide the frequency bins of every stage "
                f"({', '.join(map(str, stage_bins))} for {in_features} feature bins): choose a divisor of "
                f"{math.gcd(*stage_bins)}, or 1 (plain batch norm)"
            )
        self.stem = nn.Conv2d(1, 2 * c1, 5, stride=(2, 1), padding=2, bias=False)
        self.stem_norm = MaskedBatchNorm2d(2 * c1)
        channels, blocks = 2 * c1, []
        for scale, count, freq_stride, dilation in STAGES:
            for i in range(count):
                out = round(scale * c1)
                blocks.append(BCResBlock(channels, out, freq_stride if i == 0 else 1, dilation, sub_bands, dropout))
                channels = out
        self.blocks = nn.ModuleList(blocks)
        self.final_conv = nn.Conv2d(channels, channels, 5, padding=(0, 2), groups=channels, bias=False)
        self.final_pointwise = nn.Conv2d(channels, 4 * c1, 1, bias=False)
        self.final_norm = MaskedBatchNorm2d(4 * c1)
        self.activation = nn.ReLU()
        self.readout = readout
        self.head = nn.Linear(readout_width(4 * c1, readout), num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, feat), lengths: (batch,) valid frames -> logits (batch, num_classes)."""
        lengths = lengths.to(x.device)
        h = time_mask(x.transpose(1, 2).unsqueeze(1), lengths)  # (batch, 1, feat, time), padding zeroed
        h = time_mask(self.activation(self.stem_norm(self.stem(h), lengths)), lengths)
        for block in self.blocks:
            h = block(h, lengths)
        h = self.final_pointwise(self.final_conv(h))  # h is zero past each length: the 5x5 conv reads zeros there
        h = self.activation(self.final_norm(h, lengths)).mean(2)  # (batch, channels, time)
        return self.head(masked_pool(h.transpose(1, 2), lengths, self.readout))
