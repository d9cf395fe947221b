"""LSTM classifier, by default the note's: LSTM(input, hidden=64, layers=3, batch_first) whose
last time step feeds a Linear to the classes.

Sequences are packed, so padding never reaches the LSTM: an item gives the same logits alone
or in a padded batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from audio_cls.errors import ConfigError
from audio_cls.model.layers import READOUTS, make_activation, masked_pool


class LSTMClassifier(nn.Module):
    """(batch, time, feat) + lengths -> logits (batch, num_classes).

    readout: "last" (each item's last valid step; for a bidirectional LSTM the backward direction's
    final state, which has read the whole item), "mean" or "max" over valid steps.
    head_hidden: 0 for the note's single Linear; N for Linear(N) -> activation -> dropout -> Linear.
    activation: of that hidden layer (None: relu). The LSTM's own gates are fixed, so with head_hidden=0
        there is nothing to apply it to, and setting it is an error rather than silently ignored.
    """

    def __init__(self, in_features: int, num_classes: int, hidden_size: int = 64, num_layers: int = 3,
                 bidirectional: bool = False, dropout: float = 0.0, readout: str = "last",
                 head_hidden: int = 0, activation: str | None = None):
        super().__init__()
        if readout not in ("last", *READOUTS):
            raise ConfigError(f"model.readout={readout!r}: expected one of last, {', '.join(READOUTS)}")
        if activation is not None and not head_hidden:
            raise ConfigError(f"model.activation={activation!r}: has no effect with model.head_hidden=0 (the LSTM "
                              f"feeds a single Linear); set model.head_hidden=N for a hidden layer, or "
                              f"model.activation=null")
        self.lstm = nn.LSTM(in_features, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.readout = readout
        out = hidden_size * (2 if bidirectional else 1) * (2 if readout == "meanmax" else 1)
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(out, head_hidden), make_activation(activation or "relu"),
                                      nn.Dropout(dropout), nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, (h_n, _) = self.lstm(packed)
        if self.readout == "last":
            # h_n: (layers * directions, batch, hidden); the top layer's directions come last.
            top = h_n[-2:] if self.lstm.bidirectional else h_n[-1:]
            features = torch.cat(list(top), dim=-1)
        else:
            padded, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
            features = masked_pool(padded, lengths.to(padded.device), self.readout)
        return self.head(features)
