"""LSTM classifier, by default that of the practitioner's note on deep learning for audio this template grew
from: LSTM(input, hidden=64, layers=3, batch_first) whose last time step feeds a Linear to the classes.

Sequences are packed, so padding never reaches the LSTM: an item gives the same logits alone
or in a padded batch.
"""

from __future__ import annotations

import torch
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.model.layers import RNN_READOUTS, check_readout, make_activation, make_rnn, readout_width, rnn_readout


class LSTMClassifier(nn.Module):
    """forward(x (batch, time, feat), lengths (batch,)) -> logits (batch, num_classes); accepts any length >= 1.

    readout: "last" (each item's last valid step; for a bidirectional LSTM the backward direction's
    final state, which has read the whole item), or "mean", "max", "meanmax" over valid steps.
    head_hidden: 0 for the founding note's single Linear; N for Linear(N) -> activation -> dropout -> Linear.
    activation: of that hidden layer (None: relu). The LSTM's own gates are fixed, so with head_hidden=0
        there is nothing to apply it to, and setting it is an error rather than silently ignored.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_size: int = 64,
        num_layers: int = 3,
        bidirectional: bool = False,
        dropout: float = 0.0,
        readout: str = "last",
        head_hidden: int = 0,
        activation: str | None = None,
    ):
        super().__init__()
        check_readout(readout, RNN_READOUTS)
        if activation is not None and not head_hidden:
            raise ConfigError(
                f"model.activation={activation!r}: has no effect with model.head_hidden=0 (the LSTM "
                f"feeds a single Linear); set model.head_hidden=N for a hidden layer, or "
                f"model.activation=null"
            )
        self.lstm = make_rnn(nn.LSTM, in_features, hidden_size, num_layers, bidirectional, dropout)
        self.readout = readout
        out = readout_width(hidden_size * (2 if bidirectional else 1), readout)
        if head_hidden:
            self.head = nn.Sequential(
                nn.Linear(out, head_hidden),
                make_activation(activation or "relu"),
                nn.Dropout(dropout),
                nn.Linear(head_hidden, num_classes),
            )
        else:
            self.head = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, feat), lengths: (batch,) valid frames -> logits (batch, num_classes)."""
        return self.head(rnn_readout(self.lstm, x, lengths, self.readout))
