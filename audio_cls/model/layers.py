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
        pooled.append(x.masked_fill(~mask, 0.0).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype))
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


def time_mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero every frame of `x` ((batch, channels, time) or (batch, channels, freq, time)) past each item's
    length: what a `same` convolution reads at an item's edge is then zero, as for the item alone."""
    mask = frame_mask(lengths.to(x.device), x.shape[-1])
    return x.masked_fill(~mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1]), 0.0)


class _MaskedBatchNorm:
    """Batch norm whose training statistics come from valid frames only (padding would otherwise pull the
    batch mean towards zero, and by how much would depend on the batch's composition). In eval mode it is
    the plain batch norm with running statistics, so state dicts and exported graphs are unchanged."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None or not (self.training and self.track_running_stats):
            return super().forward(x)
        dtype, x = x.dtype, x.float()  # statistics in float32, also under mixed precision
        mask = frame_mask(lengths.to(x.device), x.shape[-1])
        mask = mask.view(mask.shape[0], 1, *([1] * (x.dim() - 3)), mask.shape[1])
        dims = [d for d in range(x.dim()) if d != 1]
        count = mask.sum() * (x[0, 0].numel() // x.shape[-1])  # valid frames x the other non-channel axes
        x = x.masked_fill(~mask, 0.0)  # padding may hold anything, even NaN
        mean = x.sum(dims) / count
        centred = (x - mean.view(1, -1, *([1] * (x.dim() - 2)))).masked_fill(~mask, 0.0)
        var = centred.square().sum(dims) / count  # two passes: exact also for features far from zero mean
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * count / (count - 1).clamp(min=1), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shape = (1, -1, *([1] * (x.dim() - 2)))
        if not self.affine:
            return (centred * scale.view(shape)).to(dtype)
        return torch.addcmul(self.bias.view(shape), centred, scale.view(shape)).to(dtype)


class MaskedBatchNorm1d(_MaskedBatchNorm, nn.BatchNorm1d):
    """(batch, channels, time), lengths (batch,) -> same shape; see _MaskedBatchNorm."""


class MaskedBatchNorm2d(_MaskedBatchNorm, nn.BatchNorm2d):
    """(batch, channels, freq, time), lengths (batch,) -> same shape; see _MaskedBatchNorm."""


class ConvBlock(nn.Sequential):
    """conv -> [norm] -> activation -> [max-pool] -> dropout, over (batch, channels, [freq,] time).

    `block(h)` runs the layers as a plain Sequential; `block(h, lengths)` also keeps padding out of the
    batch-norm statistics and zeroes the frames past each item's output length, returning
    (h, output lengths). With its input zero past each length (the caller masks the network's input),
    an item's valid outputs are then the same alone or in any padded batch.
    """

    def __init__(self, conv: nn.Module, norm: nn.Module | None, activation: nn.Module, pool: nn.Module | None,
                 dropout: float):
        super().__init__(*[m for m in (conv, norm, activation, pool, nn.Dropout(dropout)) if m is not None])
        self.conv_spec = dict(kernel_size=_first(conv.kernel_size), stride=_first(conv.stride),
                              padding=conv.padding if isinstance(conv.padding, str) else _first(conv.padding),
                              dilation=_first(conv.dilation))
        self.pool_size = _first(pool.kernel_size) if pool is not None else 1

    def output_lengths(self, lengths):
        """Frames after the conv and after the pool (ints or integer tensors)."""
        conv = conv_output_length(lengths, **self.conv_spec)
        return conv, (conv if self.pool_size == 1 else conv_output_length(conv, self.pool_size, self.pool_size))

    def forward(self, h: torch.Tensor, lengths: torch.Tensor | None = None):
        if lengths is None:
            return super().forward(h)
        conv_lengths, out_lengths = self.output_lengths(lengths)
        for layer in self:
            h = layer(h, conv_lengths) if isinstance(layer, _MaskedBatchNorm) else layer(h)
        return time_mask(h, out_lengths), out_lengths


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value
