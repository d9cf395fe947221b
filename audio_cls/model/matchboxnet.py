"""MatchboxNet (Majumdar & Ginsburg, Interspeech 2020): a small keyword-spotting network of 1-D
time-channel separable convolutions with residual blocks; 3x2x64 has about 75k parameters and reaches 97-98%
on Speech Commands.

    x (batch, time, feat) -> (batch, feat, time)
      -> prologue: separable conv (kernel 11) -> BN -> ReLU                              (prologue_channels)
      -> B blocks, each R sub-blocks of [separable conv (kernel k_b) -> BN -> ReLU -> dropout], the last
         sub-block's ReLU after adding the block's input through a 1x1 conv + BN (the residual)   (channels)
      -> epilogue: separable conv (kernel 29, dilation 2) -> BN -> ReLU; 1x1 conv -> BN -> ReLU (epilogue_channels)
      -> mean over valid frames -> Linear -> logits (batch, num_classes)

A separable convolution is a depthwise Conv1d over time (one filter per channel) followed by a pointwise
(1x1) Conv1d across channels: k*C + C*C' weights instead of k*C*C'. Every convolution is "same" with stride 1
(padding dilation*(k-1)/2, odd kernels), so time keeps its length and valid frames stay those of the input;
padding is zeroed before every convolution and kept out of batch-norm statistics (MaskedBatchNorm1d), so an
item gives the same logits alone or in any padded batch.
"""

from __future__ import annotations

import torch
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.model.layers import MaskedBatchNorm1d, check_readout, masked_pool, per_block, readout_width, time_mask


class SeparableConv1d(nn.Sequential):
    """Depthwise Conv1d over time (kernel `kernel_size`, "same", `dilation`), then pointwise Conv1d to `out_channels`:
    (batch, in_channels, time) -> (batch, out_channels, time). Without biases (batch norm follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        if kernel_size % 2 == 0:
            raise ConfigError(
                f"model: kernel size {kernel_size} is even; MatchboxNet's 'same' convolutions need odd ones"
            )
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv1d(
                in_channels,
                in_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv1d(in_channels, out_channels, 1, bias=False),
        )


class MatchboxBlock(nn.Module):
    """`repeat` sub-blocks of [conv -> masked BN -> activation -> dropout] over (batch, channels, time), with
    an optional residual (1x1 conv + BN of the block's input, added before the last activation).

    forward(h (batch, in_channels, time) zero past each length, lengths (batch,)) -> (batch, out_channels, time),
    zero past each length. `kernel_size` 1 makes the convolutions plain 1x1 ones.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        repeat: int = 1,
        dilation: int = 1,
        residual: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if repeat < 1:
            raise ConfigError(f"model.repeat={repeat}: each block needs at least one sub-block")
        convs, norms = [], []
        for i in range(repeat):
            c_in = in_channels if i == 0 else out_channels
            if kernel_size == 1:
                convs.append(nn.Conv1d(c_in, out_channels, 1, bias=False))
            else:
                convs.append(SeparableConv1d(c_in, out_channels, kernel_size, dilation))
            norms.append(MaskedBatchNorm1d(out_channels))
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.residual = (
            nn.ModuleDict(
                {"conv": nn.Conv1d(in_channels, out_channels, 1, bias=False), "norm": MaskedBatchNorm1d(out_channels)}
            )
            if residual
            else None
        )
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = h
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h), lengths)
            if self.residual is not None and i == len(self.convs) - 1:
                h = h + self.residual["norm"](self.residual["conv"](x), lengths)
            h = time_mask(self.dropout(self.activation(h)), lengths)  # zero padding before the next conv reads it
        return h


class MatchboxNet(nn.Module):
    """MatchboxNet-BxRxC: `len(kernel_sizes)` blocks (B) of `repeat` sub-blocks (R) of `channels` (C), between a
    prologue and an epilogue; see the module docstring for the layout.

    Args:
        in_features: feature bins per frame (the prologue's input channels).
        num_classes: outputs.
        channels: width of the residual blocks (C).
        repeat: sub-blocks per residual block (R).
        kernel_sizes: one odd kernel per residual block (B = their number); or one kernel with `num_blocks`.
        num_blocks: the number of blocks when `kernel_sizes` is one kernel.
        prologue_channels, prologue_kernel: the first separable convolution.
        epilogue_channels, epilogue_kernel, epilogue_dilation: the dilated separable convolution at the end (then a
            1x1 conv of the same width).
        dropout: after every activation.
        readout: "mean" (the paper's global average pooling), "max" or "meanmax" over valid frames.

    forward(x (batch, time, feat), lengths (batch,)) -> logits (batch, num_classes). Time keeps its length.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        channels: int = 64,
        repeat: int = 2,
        kernel_sizes: int | list[int] = (13, 15, 17),
        num_blocks: int | None = None,
        prologue_channels: int = 128,
        prologue_kernel: int = 11,
        epilogue_channels: int = 128,
        epilogue_kernel: int = 29,
        epilogue_dilation: int = 2,
        dropout: float = 0.0,
        readout: str = "mean",
    ):
        super().__init__()
        check_readout(readout)
        if isinstance(kernel_sizes, int):
            if not num_blocks:
                raise ConfigError(f"model.kernel_sizes={kernel_sizes} is one kernel: set model.num_blocks too")
            kernel_sizes = per_block(kernel_sizes, num_blocks, "model.kernel_sizes")
        elif num_blocks is not None and num_blocks != len(kernel_sizes):
            raise ConfigError(f"model.num_blocks={num_blocks} but model.kernel_sizes lists {len(kernel_sizes)} blocks")
        layers = [MatchboxBlock(in_features, prologue_channels, prologue_kernel, dropout=dropout)]
        width = prologue_channels
        for kernel in kernel_sizes:
            layers.append(MatchboxBlock(width, channels, kernel, repeat, residual=True, dropout=dropout))
            width = channels
        layers += [
            MatchboxBlock(width, epilogue_channels, epilogue_kernel, dilation=epilogue_dilation, dropout=dropout),
            MatchboxBlock(epilogue_channels, epilogue_channels, 1, dropout=dropout),
        ]
        self.blocks = nn.ModuleList(layers)
        self.readout = readout
        self.head = nn.Linear(readout_width(epilogue_channels, readout), num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, feat), lengths: (batch,) valid frames -> logits (batch, num_classes)."""
        lengths = lengths.to(x.device)
        h = time_mask(x.transpose(1, 2), lengths)  # (batch, feat, time), padding zeroed
        for block in self.blocks:
            h = block(h, lengths)
        return self.head(masked_pool(h.transpose(1, 2), lengths, self.readout))
