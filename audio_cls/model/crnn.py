"""CRNN: the CNN1d front (Conv1d blocks over time) followed by a GRU over the frames that remain.

    (batch, time, feat) -> Conv1d blocks (conv, norm, activation, max-pool, dropout; lengths tracked
    with the conv length formula) -> GRU (packed: padding never reaches it) -> readout -> Linear

The convolutions see local patterns (formant transitions, onsets); the GRU reads their order.
Padded frames are zeroed before every block, so an item gives the same logits alone or in a padded
batch (in eval mode) whatever the padding holds. Built by `conf/model/crnn.yaml`:
`python -m audio_cls.train model=crnn`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from audio_cls.errors import ConfigError
from audio_cls.model.cnn import CNN1d
from audio_cls.model.layers import READOUTS, masked_pool


class CRNN(CNN1d):
    """Conv1d blocks (every CNN1d setting, one value or one per block) -> GRU -> readout -> Linear.

    hidden_size, num_layers, bidirectional, rnn_dropout: the GRU (rnn_dropout between its layers).
    readout: "last" (each item's last valid step; for a bidirectional GRU with the backward direction's
    final state, which has read the whole item), or "mean", "max", "meanmax" over valid steps.
    """

    def __init__(self, in_features: int, num_classes: int, channels: int | list[int] = (64, 128),
                 num_blocks: int | None = None, kernel_size: int | list[int] = 5, stride: int | list[int] = 1,
                 padding: int | str | list = "same", dilation: int | list[int] = 1,
                 activation: str = "relu", norm: str = "batch", pool_size: int | list[int] = 2,
                 dropout: float = 0.1, hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True,
                 rnn_dropout: float = 0.0, readout: str = "meanmax"):
        if readout not in ("last", *READOUTS):
            raise ConfigError(f"model.readout={readout!r}: expected one of last, {', '.join(READOUTS)}")
        super().__init__(in_features, num_classes, channels=channels, num_blocks=num_blocks,
                         kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                         activation=activation, norm=norm, pool_size=pool_size, dropout=dropout, readout="mean")
        conv_channels = self.head.in_features  # the last block's width (readout="mean" above: no doubling)
        self.gru = nn.GRU(conv_channels, hidden_size, num_layers=num_layers, batch_first=True,
                          bidirectional=bidirectional, dropout=rnn_dropout if num_layers > 1 else 0.0)
        self.readout = readout
        out = hidden_size * (2 if bidirectional else 1) * (2 if readout == "meanmax" else 1)
        self.head = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, feat), lengths: (batch,) valid frames -> logits (batch, num_classes)."""
        h, frames = self.encode(x, lengths)  # (batch, channels, time'): padding zeroed, see CNN1d
        packed = pack_padded_sequence(h.transpose(1, 2), frames.cpu(), batch_first=True, enforce_sorted=False)
        outputs, h_n = self.gru(packed)
        if self.readout == "last":
            # h_n: (layers * directions, batch, hidden); the top layer's directions come last.
            top = h_n[-2:] if self.gru.bidirectional else h_n[-1:]
            features = torch.cat(list(top), dim=-1)
        else:
            padded, _ = pad_packed_sequence(outputs, batch_first=True, total_length=h.shape[-1])
            features = masked_pool(padded, frames, self.readout)
        return self.head(features)
