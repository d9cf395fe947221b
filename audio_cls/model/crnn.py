"""CRNN: conv blocks (a ConvStack, as in CNN1d or CNN2d) followed by a GRU over the frames that remain.

    (batch, time, feat) -> conv blocks (conv, norm, activation, max-pool, dropout; lengths tracked
    with the conv length formula) -> GRU (packed: padding never reaches it) -> readout -> Linear

The convolutions see local patterns (formant transitions, onsets); the GRU reads their order. With
`dims: 2` the front is Conv2d over the (feat x time) image, pooled over frequency by `freq_pool_size`,
and the GRU reads the channels of the bands left at each frame (the DCASE baseline CRNN): the same
pattern is found at any pitch, which a Conv1d front, with one weight per mel band, has to learn per band.
Padded frames are zeroed before every block, so an item gives the same logits alone or in a padded
batch (in eval mode) whatever the padding holds. Built by `conf/model/crnn.yaml`:
`python -m audio_cls.train model=crnn`.

With `frame_pooling` set it is a sound event detection network (the DCASE baseline's shape): a FrameHead
scores every GRU step, and the clip logits are pooled from those frame logits.
"""

from __future__ import annotations

import torch
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.model.layers import (
    FRAME_POOLINGS,
    RNN_READOUTS,
    ConvFront,
    ConvStack,
    FrameHead,
    check_readout,
    make_rnn,
    readout_width,
    rnn_outputs,
    rnn_readout,
)


class CRNN(ConvFront, nn.Module):
    """Conv blocks (every CNN1d / CNN2d setting, one value or one per block; see ConvStack) -> GRU -> readout
    -> Linear.

    dims: 1 (Conv1d over time, the features as channels) or 2 (Conv2d over the (feat x time) image; the GRU
    reads out_channels x the feature bins left per frame, see ConvStack's freq_pool_size).

    hidden_size, num_layers, bidirectional, rnn_dropout: the GRU (rnn_dropout between its layers).
    readout: "last" (each item's last valid step; for a bidirectional GRU with the backward direction's
    final state, which has read the whole item), or "mean", "max", "meanmax" over valid steps.
    frame_pooling: null, or one of FRAME_POOLINGS: frame-level logits for every GRU step (sound event
    detection), pooled into the clip logits that way; `readout` is then unused.

    forward(x (batch, time, feat), lengths (batch,)) -> logits (batch, num_classes);
    forward_frames(x, lengths) -> clip logits, frame logits (batch, time', num_classes), frame lengths (batch,)
        (with frame_pooling);
    min_input_frames(): the fewest frames it accepts.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        channels: int | list[int] = (64, 128),
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        rnn_dropout: float = 0.0,
        readout: str = "meanmax",
        frame_pooling: str | None = None,
        dims: int = 1,
        **conv,
    ):
        super().__init__()
        check_readout(readout, RNN_READOUTS)
        self.blocks = ConvStack(in_features, channels, dims=dims, **conv)
        steps_in = self.blocks.out_channels * (self.blocks.out_features if dims == 2 else 1)
        self.gru = make_rnn(nn.GRU, steps_in, hidden_size, num_layers, bidirectional, rnn_dropout)
        self.readout = readout
        width = hidden_size * (2 if bidirectional else 1)
        if frame_pooling is None:
            self.head = nn.Linear(readout_width(width, readout), num_classes)
        else:
            self.head = FrameHead(width, num_classes, frame_pooling)

    @property
    def has_frames(self) -> bool:
        return isinstance(self.head, FrameHead)

    def frame_stride(self) -> int:
        """Input frames per frame of forward_frames (the conv blocks' pooling)."""
        return self.blocks.time_stride()

    def _maps(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, channels [x bands], time'), zero past each length; frames (batch,)."""
        h, frames = self.blocks(x, lengths)
        return h.flatten(1, 2) if h.dim() == 4 else h, frames

    def _steps(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, frames = self._maps(x, lengths)
        return rnn_outputs(self.gru, h.transpose(1, 2), frames), frames

    def forward_frames(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (batch, time, feat), lengths: (batch,) -> clip logits (batch, num_classes), frame logits
        (batch, time', num_classes) and the frames' valid lengths (batch,)."""
        if not self.has_frames:
            raise ConfigError(f"model.frame_pooling is null: this CRNN has no frame head ({', '.join(FRAME_POOLINGS)})")
        steps, frames = self._steps(x, lengths)
        frame_logits = self.head.frame_logits(steps)
        return self.head.pool(frame_logits, frames, steps), frame_logits, frames

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, feat), lengths: (batch,) valid frames -> logits (batch, num_classes)."""
        if self.has_frames:
            return self.forward_frames(x, lengths)[0]
        h, frames = self._maps(x, lengths)
        return self.head(rnn_readout(self.gru, h.transpose(1, 2), frames, self.readout))
