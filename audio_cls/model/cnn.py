"""Convolutional classifiers over time.

CNN1d is the note's network: a Conv1d over time whose in_channels is the feature dimension,
input (batch, time, feat) permuted to (batch, feat, time). CNN2d treats (feat x time) as an image.
Both track every item's length through each block with the conv length formula: padded frames are
zeroed before every block and left out of batch-norm statistics, so an item gives the same logits
alone or in any padded batch; the final pooling reads only valid frames; and a configuration that
shrinks time below one frame fails with a message instead of a shape error deep inside PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.model.layers import (READOUTS, ConvBlock, MaskedBatchNorm1d, MaskedBatchNorm2d, make_activation,
                                    masked_pool, per_block, time_mask)


class _ConvClassifier(nn.Module):
    """Blocks of [conv -> norm -> activation -> pool -> dropout], pooled over valid frames, then Linear.

    Settings that take a list give one value per block; a single value applies to every block.
    `channels` is a list (one per block) or one width for `num_blocks` blocks, which lets a sweep
    vary width and depth as two numbers.
    """

    dims: int  # 1 for Conv1d over time, 2 for Conv2d over (feat, time)

    def __init__(self, in_features: int, num_classes: int, channels: int | list[int] = (64, 128, 128),
                 num_blocks: int | None = None, kernel_size: int | list[int] = 5, stride: int | list[int] = 1,
                 padding: int | str | list = "same", dilation: int | list[int] = 1,
                 activation: str = "relu", norm: str = "batch", pool_size: int | list[int] = 2,
                 dropout: float = 0.1, readout: str = "meanmax"):
        super().__init__()
        if isinstance(channels, int):
            if not num_blocks:
                raise ConfigError(f"model.channels={channels} is one width: set model.num_blocks too")
            channels = [channels] * num_blocks
        elif num_blocks is not None and num_blocks != len(channels):
            raise ConfigError(f"model.num_blocks={num_blocks} but model.channels lists {len(channels)} blocks")
        n = len(channels)
        self.blocks_spec = []
        for i, (k, s, p, d, ps) in enumerate(zip(
                per_block(kernel_size, n, "model.kernel_size"), per_block(stride, n, "model.stride"),
                per_block(padding, n, "model.padding"), per_block(dilation, n, "model.dilation"),
                per_block(pool_size, n, "model.pool_size"))):
            if p == "same" and s != 1:
                raise ConfigError(f"model.padding='same' needs stride 1 (block {i} has stride {s}); "
                                  f"use an integer padding such as (kernel-1)//2 = {(k - 1) // 2}")
            if p == "valid":
                p = 0
            self.blocks_spec.append(dict(kernel_size=k, stride=s, padding=p, dilation=d, pool_size=ps))

        conv, batchnorm, maxpool = {1: (nn.Conv1d, MaskedBatchNorm1d, nn.MaxPool1d),
                                    2: (nn.Conv2d, MaskedBatchNorm2d, nn.MaxPool2d)}[self.dims]
        if readout not in READOUTS:
            raise ConfigError(f"model.readout={readout!r}: expected one of {', '.join(READOUTS)}")
        if norm not in ("batch", "none"):
            raise ConfigError(f"model.norm={norm!r}: expected 'batch' or 'none'")
        blocks, in_ch = [], self.in_channels(in_features)
        for out_ch, spec in zip(channels, self.blocks_spec):
            blocks.append(ConvBlock(
                conv(in_ch, out_ch, spec["kernel_size"], stride=spec["stride"], padding=spec["padding"],
                     dilation=spec["dilation"], bias=norm == "none"),
                batchnorm(out_ch) if norm == "batch" else None, make_activation(activation),
                maxpool(spec["pool_size"]) if spec["pool_size"] > 1 else None, dropout))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.readout = readout
        self.head = nn.Linear(in_ch * (2 if readout == "meanmax" else 1), num_classes)

    def in_channels(self, in_features: int) -> int:
        raise NotImplementedError

    def block_lengths(self, length):
        """Time length after each block (an int or a tensor of lengths), by the conv length formula."""
        out = []
        for block in self.blocks:
            length = block.output_lengths(length)[1]
            out.append(length)
        return out

    def output_lengths(self, lengths):
        """Valid frames left after the last block for inputs of `lengths` frames."""
        return self.block_lengths(lengths)[-1]

    def check_lengths(self, lengths: torch.Tensor) -> None:
        """A ConfigError if the shortest input shrinks below one frame. Checked on CPU tensors only: on an
        accelerator `lengths.min()` would make the host wait for the device every step; there the check
        that train.py runs on the shortest recording before training covers it."""
        if lengths.device.type != "cpu" or torch.compiler.is_compiling():
            return
        shortest = int(lengths.min())
        for i, n in enumerate(self.block_lengths(shortest)):
            if n < 1:
                spec = ", ".join(f"{k}={v}" for k, v in self.blocks_spec[i].items())
                raise ConfigError(
                    f"model: an input of {shortest} frames shrinks to {n} frames after block {i} ({spec}); "
                    f"use smaller model.kernel_size/stride/pool_size, fewer blocks (model.channels, model.num_blocks) or longer inputs")

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (batch, time, feat) -> feature maps after the last block ((batch, ch, time') or
        (batch, ch, freq', time')) and their valid frames (batch,). Padding is zeroed before every block
        and kept out of batch-norm statistics, so an item's maps do not depend on its batch."""
        self.check_lengths(lengths)
        lengths = lengths.to(x.device)
        h = time_mask(self.features_to_maps(x), lengths)
        for block in self.blocks:
            h, lengths = block(h, lengths)
        return h, lengths

    def features_to_maps(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, feat), lengths: (batch,) valid frames -> logits (batch, num_classes)."""
        h, frames = self.encode(x, lengths)
        if self.dims == 2:
            h = h.mean(dim=2)  # average over what is left of the feature axis: (batch, ch, time)
        return self.head(masked_pool(h.transpose(1, 2), frames, self.readout))


class CNN1d(_ConvClassifier):
    """Conv1d over time, in_channels = feature dimension: (batch, time, feat) -> (batch, feat, time)."""

    dims = 1

    def in_channels(self, in_features):
        return in_features

    def features_to_maps(self, x):
        return x.transpose(1, 2)


class CNN2d(_ConvClassifier):
    """Conv2d over the (feat x time) image: (batch, time, feat) -> (batch, 1, feat, time)."""

    dims = 2

    def __init__(self, in_features: int, num_classes: int, **kwargs):
        super().__init__(in_features, num_classes, **kwargs)
        freq = self.block_lengths(in_features)  # the feature axis shrinks by the same rules as time
        if min(freq) < 1:
            raise ConfigError(f"model: the feature axis of {in_features} bins shrinks to {min(freq)}; "
                              f"use fewer model.channels or smaller pool_size/stride")

    def in_channels(self, in_features):
        return 1

    def features_to_maps(self, x):
        return x.transpose(1, 2).unsqueeze(1)
