"""Convolutional classifiers over time.

CNN1d is the network of the practitioner's note on deep learning for audio that this template grew from:
a Conv1d over time whose in_channels is the feature dimension, input (batch, time, feat) permuted to
(batch, feat, time). CNN2d treats (feat x time) as an image.
Both are a ConvStack (layers.py) pooled over valid frames, then a Linear. The stack tracks every item's
length through each block with the conv length formula: padded frames are zeroed before every block and
left out of batch-norm statistics, so an item gives the same logits alone or in any padded batch; the final
pooling reads only valid frames; and a configuration that shrinks time below one frame fails with a message
instead of a shape error deep inside PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from audio_cls.model.layers import ConvFront, ConvStack, check_readout, masked_pool, readout_width


class _ConvClassifier(ConvFront, nn.Module):
    """Blocks of [conv -> norm -> activation -> pool -> dropout] (a ConvStack), pooled over valid frames,
    then Linear.

    Settings that take a list give one value per block; a single value applies to every block.
    `channels` is a list (one per block) or one width for `num_blocks` blocks, which lets a sweep
    vary width and depth as two numbers. See ConvStack for each setting; readout: "mean", "max" or
    "meanmax" over valid frames.

    forward(x (batch, time, feat), lengths (batch,)) -> logits (batch, num_classes);
    min_input_frames(): the fewest frames it accepts.
    """

    dims: int  # 1 for Conv1d over time, 2 for Conv2d over (feat, time)

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        channels: int | list[int] = (64, 128, 128),
        readout: str = "meanmax",
        **conv,
    ):
        super().__init__()
        check_readout(readout)
        self.blocks = ConvStack(in_features, channels, dims=self.dims, **conv)
        self.readout = readout
        self.head = nn.Linear(readout_width(self.blocks.out_channels, readout), num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, feat), lengths: (batch,) valid frames -> logits (batch, num_classes)."""
        h, frames = self.blocks(x, lengths)  # (batch, ch, time') or (batch, ch, feat', time'); (batch,)
        if self.dims == 2:
            h = h.mean(dim=2)  # average over what is left of the feature axis: (batch, ch, time')
        return self.head(masked_pool(h.transpose(1, 2), frames, self.readout))


class CNN1d(_ConvClassifier):
    """Conv1d over time, in_channels = feature dimension: (batch, time, feat) -> (batch, feat, time)."""

    dims = 1


class CNN2d(_ConvClassifier):
    """Conv2d over the (feat x time) image: (batch, time, feat) -> (batch, 1, feat, time); the maps are
    averaged over what is left of the feature axis, then pooled over valid frames."""

    dims = 2
