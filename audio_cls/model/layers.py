"""Pieces the networks share: activations by name, the conv length formula, pooling over valid frames."""

from __future__ import annotations

import torch
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.features import frame_mask

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}
READOUTS = ("mean", "max", "meanmax")


def make_activation(name: str, key: str = "model.activation") -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"{key}={name!r}: expected one of {', '.join(ACTIVATIONS)}") from None


def conv_output_length(length, kernel_size: int, stride: int = 1, padding: int | str = 0, dilation: int = 1):
    """Frames after a convolution or pooling layer; works on ints and integer tensors.

    The note's N2 = (N1 - kernel) / stride + 1, generalized for padding and dilation as in
    the PyTorch docs: N2 = floor((N1 + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1.
    padding="same" (stride 1) keeps the length: N2 = N1.
    """
    if padding == "same":
        return length
    return (length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def masked_pool(x: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool (batch, time, channels) over each item's valid frames -> (batch, channels), or 2x channels
    for "meanmax". Padding frames never enter the result."""
    mask = frame_mask(lengths, x.shape[1]).unsqueeze(-1)
    pooled = []
    if mode in ("mean", "meanmax"):
        pooled.append((x * mask).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype))
    if mode in ("max", "meanmax"):
        pooled.append(x.masked_fill(~mask, torch.finfo(x.dtype).min).amax(1))
    if not pooled:
        raise ConfigError(f"model.readout={mode!r}: expected one of {', '.join(READOUTS)}")
    return torch.cat(pooled, dim=-1)


def per_block(value, num_blocks: int, key: str) -> list:
    """A setting given once (applies to every block) or as a list with one entry per block."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_blocks:
            raise ConfigError(f"{key}={list(value)}: has {len(value)} entries for {num_blocks} blocks")
        return list(value)
    return [value] * num_blocks
