"""Pieces the networks share, and the length protocol they follow.

The network protocol: a network is an `nn.Module` with

    forward(x, lengths) -> logits
        x: (batch, time, feat) features, zero- (or anything-) padded past each item's length;
        lengths: (batch,) valid frames of each item; logits: (batch, num_classes).
    head: nn.Module   (for transfer learning: audio_cls/transfer.py)
        The classifier, the part shaped by num_classes; every other child module is the backbone (`backbone(net)`).
    min_input_frames() -> int   (optional)
        The fewest frames it accepts (a CNN's convolutions and pooling need a few); 1 when absent.
        Read it with `min_input_frames(net)`.
    forward_frames(x, lengths) -> (logits, frame_logits, frame_lengths)   (optional, with has_frames True)
        Sound event detection: frame_logits (batch, time', num_classes) for frame_lengths (batch,) valid
        frames, and the clip logits pooled from them (a FrameHead). Ask with `has_frame_head(net)`.
        frame_stride() -> int: input frames per output frame (output frame j starts at input frame j * stride).

Inside the convolutional networks, every length-changing piece takes and returns `(x, lengths)` (as
torchaudio's wav2vec2 components do): `ConvBlock(h, lengths) -> (h, lengths)`, and `ConvStack`, the blocks
of CNN1d, CNN2d and CRNN, `(x, lengths) -> (maps, lengths)`, with the conv length formula as
`output_lengths`, `block_lengths` and `min_input_frames`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from audio_cls.errors import ConfigError
from audio_cls.features import frame_mask

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
READOUTS = ("mean", "max", "meanmax")  # pooled over valid frames
RNN_READOUTS = ("last", *READOUTS)  # "last": the final state of each item's last valid step


def min_input_frames(net: nn.Module) -> int:
    """The fewest frames `net` accepts: `net.min_input_frames()` where the network defines it, else 1."""
    method = getattr(net, "min_input_frames", None)
    return int(method()) if callable(method) else 1


def backbone(net: nn.Module) -> list[nn.Module]:
    """The backbone of `net`: its child modules other than `head`, the classifier."""
    if not isinstance(getattr(net, "head", None), nn.Module):
        raise ConfigError(
            f"{type(net).__name__} has no `head` module (its classifier), which transfer learning needs to tell "
            f"the backbone from (see audio_cls/model/layers.py)"
        )
    return [module for name, module in net.named_children() if name != "head"]


def backbone_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters of `net`'s backbone (what `backbone_lr_scale` slows down)."""
    return [p for module in backbone(net) for p in module.parameters()]


def has_frame_head(net: nn.Module) -> bool:
    """Whether `net` scores every frame (sound event detection): it has `forward_frames` and `has_frames`."""
    return bool(getattr(net, "has_frames", False)) and callable(getattr(net, "forward_frames", None))


def check_readout(readout: str, choices: tuple[str, ...] = READOUTS) -> None:
    if readout not in choices:
        raise ConfigError(f"model.readout={readout!r}: expected one of {', '.join(choices)}")


def readout_width(width: int, readout: str) -> int:
    """Features per item after reading out `width` channels: twice as many for "meanmax" (mean, then max)."""
    return width * (2 if readout == "meanmax" else 1)


def host_checks_enabled(lengths: torch.Tensor) -> bool:
    """Whether Python may look at the values of `lengths` (`int(lengths.min())`) to check them: in eager mode
    on CPU tensors only. Not on an accelerator, where reading a value makes the host wait for the device
    every step, and not while torch.jit.trace, torch.compile / torch.export or an ONNX exporter captures a
    graph, which cannot hold a Python check (and torch.export fails on a data-dependent int). Inputs an
    exported graph gets are the caller's to pad to its minimum length, as Classifier does."""
    return (
        lengths.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


def make_activation(name: str, key: str = "model.activation") -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"{key}={name!r}: expected one of {', '.join(ACTIVATIONS)}") from None


def conv_output_length(length, kernel_size: int, stride: int = 1, padding: int | str = 0, dilation: int = 1):
    """Frames after a convolution or pooling layer; works on ints and integer tensors.

    The founding note's N2 = (N1 - kernel) / stride + 1, generalized for padding and dilation as in
    the PyTorch docs: N2 = floor((N1 + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1.
    padding="same" (stride 1) keeps the length: N2 = N1.
    """
    if padding == "same":
        return length
    return (length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def masked_pool(x: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool over each item's valid frames; padding frames never enter the result.

    Args:
        x: (batch, time, channels).
        lengths: (batch,) valid frames of each item.
        mode: "mean", "max" or "meanmax" (both, concatenated).

    Returns:
        (batch, channels), or (batch, 2 * channels) for "meanmax".
    """
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
    """A setting given once (applies to every block) or as a list with one entry per block (a list, a tuple,
    or the ListConfig Hydra passes for a list in the config or on the command line)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != num_blocks:
            raise ConfigError(f"{key}={list(value)}: has {len(value)} entries for {num_blocks} blocks")
        return list(value)
    return [value] * num_blocks


def last_state(h_n: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """The "last" readout of an nn.LSTM / nn.GRU run on packed sequences: its top layer's final states.

    Args:
        h_n: (layers * directions, batch, hidden), the RNN's final hidden states (the top layer's come last).
        bidirectional: the forward direction's state is then that of each item's last valid step, and the
            backward direction's the one after reading the whole item back to its first step.

    Returns:
        (batch, hidden * directions), forward direction first.
    """
    top = h_n[-2:] if bidirectional else h_n[-1:]
    return torch.cat(list(top), dim=-1)


def make_rnn(
    kind: type[nn.LSTM] | type[nn.GRU], in_features: int, hidden: int, layers: int, bidirectional: bool, dropout: float
) -> nn.LSTM | nn.GRU:
    """A batch-first LSTM or GRU; `dropout` between layers (none with one layer, where torch would warn)."""
    return kind(
        in_features,
        hidden,
        num_layers=layers,
        batch_first=True,
        bidirectional=bidirectional,
        dropout=dropout if layers > 1 else 0.0,
    )


def rnn_readout(rnn: nn.LSTM | nn.GRU, x: torch.Tensor, lengths: torch.Tensor, readout: str) -> torch.Tensor:
    """Run a batch_first RNN over each item's valid steps (packed: padding never reaches it) and read it out.

    Args:
        rnn: an nn.LSTM or nn.GRU with batch_first=True.
        x: (batch, time, rnn.input_size).
        lengths: (batch,) valid steps of each item, each at least 1.
        readout: one of RNN_READOUTS.

    Returns:
        (batch, readout_width(hidden * directions, readout)).
    """
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    outputs, h_n = rnn(packed)
    if readout == "last":
        return last_state(h_n[0] if isinstance(h_n, tuple) else h_n, rnn.bidirectional)  # LSTM: (h_n, c_n)
    padded, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
    return masked_pool(padded, lengths.to(padded.device), readout)


def rnn_outputs(rnn: nn.LSTM | nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A batch_first RNN's output at every step (packed: padding never reaches it).

    x: (batch, time, rnn.input_size), lengths: (batch,) -> (batch, time, hidden * directions), zero past
    each item's length."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    outputs, _ = rnn(packed)
    return pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])[0]


FRAME_POOLINGS = ("max", "mean", "attention", "linear_softmax")


class FrameHead(nn.Module):
    """Sound event detection's head: logits for every frame, and clip logits pooled from them over each
    item's valid frames, so that a network trained on clip labels alone still scores every frame.

        frame_logits(x (batch, time, width)) -> (batch, time, classes)
        pool(frame_logits, lengths (batch,)) -> clip logits (batch, classes)

    pooling: "max" (of the frame logits), "mean" (of the frame logits), "attention" (a softmax over time of
    a second linear map weighs the frame logits, per class; Kong et al. 2020), "linear_softmax" (the clip
    probability is sum p^2 / sum p over frames; Wang et al. 2019), returned as its logit.
    """

    def __init__(self, width: int, num_classes: int, pooling: str = "linear_softmax"):
        super().__init__()
        if pooling not in FRAME_POOLINGS:
            raise ConfigError(f"model.frame_pooling={pooling!r}: expected one of {', '.join(FRAME_POOLINGS)}")
        self.pooling = pooling
        self.classify = nn.Linear(width, num_classes)
        self.attend = nn.Linear(width, num_classes) if pooling == "attention" else None

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)

    def pool(self, logits: torch.Tensor, lengths: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Clip logits (float32) from frame logits (batch, time, classes) over valid frames; `x` (the frames'
        features) is needed by attention pooling. In float32 also under mixed precision: in bf16 or fp16
        1 - 1e-6 rounds to 1, and linear-softmax's logit of a confident clip would be infinite."""
        logits = logits.float()
        mask = frame_mask(lengths.to(logits.device), logits.shape[1]).unsqueeze(-1)  # (batch, time, 1)
        if self.pooling == "max":
            return logits.masked_fill(~mask, torch.finfo(logits.dtype).min).amax(1)
        if self.pooling == "mean":
            return logits.masked_fill(~mask, 0.0).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(logits.dtype)
        if self.pooling == "attention":
            weights = self.attend(x).float().masked_fill(~mask, torch.finfo(logits.dtype).min).softmax(dim=1)
            return (weights * logits).sum(1)
        probs = torch.sigmoid(logits).masked_fill(~mask, 0.0)
        clip = (probs * probs).sum(1) / probs.sum(1).clamp(min=1e-7)
        return torch.logit(clip, eps=1e-6)


def time_mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero every frame of `x` ((batch, channels, time) or (batch, channels, freq, time)) past each item's
    length (lengths: (batch,)): what a `same` convolution reads at an item's edge is then zero, as for the
    item alone. Returns the same shape."""
    mask = frame_mask(lengths.to(x.device), x.shape[-1])
    return x.masked_fill(~mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1]), 0.0)


class _MaskedBatchNorm:
    """Batch norm whose training statistics come from valid frames only (padding would otherwise pull the
    batch mean towards zero, and by how much would depend on the batch's composition). In eval mode it is
    the plain batch norm with running statistics, so state dicts and exported graphs are unchanged."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None or not (self.training and self.track_running_stats):
            return super().forward(x)
        # statistics in float32 at least, also under mixed precision (and in float64 for a float64 network)
        dtype, x = x.dtype, x.to(torch.promote_types(x.dtype, torch.float32))
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

    `block(h)` runs the layers as a plain Sequential: (batch, in_ch, [freq,] time) -> (batch, out_ch,
    [freq',] time'). `block(h, lengths)`, lengths (batch,) valid frames, also keeps padding out of the
    batch-norm statistics and zeroes the frames past each item's output length, returning (h, lengths')
    with lengths' (batch,) the valid frames after the block. With its input zero past each length (ConvStack
    masks the network's input), an item's valid outputs are then the same alone or in any padded batch.
    """

    def __init__(
        self, conv: nn.Module, norm: nn.Module | None, activation: nn.Module, pool: nn.Module | None, dropout: float
    ):
        super().__init__(*[m for m in (conv, norm, activation, pool, nn.Dropout(dropout)) if m is not None])
        self.conv_spec = dict(
            kernel_size=_first(conv.kernel_size),
            stride=_first(conv.stride),
            padding=conv.padding if isinstance(conv.padding, str) else _first(conv.padding),
            dilation=_first(conv.dilation),
        )
        # a 2-D pool is (feature bins, frames): time is its last axis
        pool_size = pool.kernel_size if pool is not None else 1
        self.pool_size = pool_size[-1] if isinstance(pool_size, tuple) else pool_size
        self.freq_pool_size = pool_size[0] if isinstance(pool_size, tuple) else pool_size

    @property
    def spec(self) -> dict:
        """The settings that change lengths: kernel_size, stride, padding, dilation, pool_size."""
        return {**self.conv_spec, "pool_size": self.pool_size}

    def feature_bins(self, bins: int) -> int:
        """Feature bins after the conv and the pool of a Conv2d block with `bins` bins in."""
        conv = conv_output_length(bins, **self.conv_spec)
        return conv if self.freq_pool_size == 1 else conv_output_length(conv, self.freq_pool_size, self.freq_pool_size)

    def output_lengths(self, lengths):
        """Frames after the conv and after the pool (ints or integer tensors)."""
        conv = conv_output_length(lengths, **self.conv_spec)
        return conv, (conv if self.pool_size == 1 else conv_output_length(conv, self.pool_size, self.pool_size))

    def min_input_length(self, out_frames: int = 1) -> int:
        """The fewest input frames that leave at least `out_frames` after the conv and the pool: the conv
        length formula solved for the input (the pool, stride = kernel, leaves floor(n / pool_size))."""
        frames = out_frames * self.pool_size
        spec = self.conv_spec
        if spec["padding"] != "same":  # floor((n + 2p - d(k-1) - 1) / s) + 1 >= m  <=>  n >= (m-1)s - 2p + d(k-1) + 1
            frames = (
                (frames - 1) * spec["stride"] - 2 * spec["padding"] + spec["dilation"] * (spec["kernel_size"] - 1) + 1
            )
        return max(frames, 1)

    def forward(self, h: torch.Tensor, lengths: torch.Tensor | None = None):
        if lengths is None:
            return super().forward(h)
        conv_lengths, out_lengths = self.output_lengths(lengths)
        for layer in self:
            h = layer(h, conv_lengths) if isinstance(layer, _MaskedBatchNorm) else layer(h)
        return time_mask(h, out_lengths), out_lengths


class ConvStack(nn.Module):
    """ConvBlocks over time with each item's length tracked through them: the front of CNN1d, CNN2d and CRNN.

    Args:
        in_features: feature bins per frame (Conv1d: the first block's input channels).
        channels: output channels of each block (a list), or one width for `num_blocks` blocks.
        num_blocks: the number of blocks when `channels` is one width (else None, or len(channels)).
        kernel_size, stride, padding, dilation, pool_size: one value for every block, or a list with one
            per block. padding: "same" (stride 1 only), "valid" (0) or an integer. pool_size: the max-pool
            (kernel = stride) after the block's activation; 1 for none.
        freq_pool_size: dims=2 only: the max-pool over the feature axis, one value or one per block (None:
            pool_size, a square pool). Pooling frequency harder than time keeps the frame rate a sound event
            detector needs while the maps shrink to a few bands (the DCASE baseline CRNN's front).
        activation: of every block, by name (see ACTIVATIONS).
        norm: "batch" (masked batch norm, conv without bias) or "none" (conv with bias).
        dropout: after every block.
        dims: 1: Conv1d over time, the features as channels; 2: Conv2d over the (feat x time) image, whose
            feature axis shrinks by the same rules as time (pooled by freq_pool_size); `out_features` is
            what is left of it.

    forward(x, lengths) -> (maps, lengths'):
        x: (batch, time, feat); lengths: (batch,) valid frames of each item.
        maps: (batch, out_channels, time') for dims=1, (batch, out_channels, feat', time') for dims=2,
            zero past each item's length; lengths': (batch,) valid frames after the last block.

    Padding is zeroed before every block and kept out of batch-norm statistics, so an item's maps do not
    depend on its batch. On CPU lengths in eager mode, an input too short to keep a frame through every block
    is a ConfigError that names the block (see `host_checks_enabled` for when it is checked).

    The blocks are its children "0", "1", ... (indexable and iterable like a list): held as a network's
    `blocks`, their state_dict keys are `blocks.0.0.weight`, ..., as with an nn.ModuleList.
    """

    def __init__(
        self,
        in_features: int,
        channels: int | list[int],
        num_blocks: int | None = None,
        kernel_size: int | list[int] = 5,
        stride: int | list[int] = 1,
        padding: int | str | list = "same",
        dilation: int | list[int] = 1,
        activation: str = "relu",
        norm: str = "batch",
        pool_size: int | list[int] = 2,
        freq_pool_size: int | list[int] | None = None,
        dropout: float = 0.1,
        dims: int = 1,
    ):
        super().__init__()
        if dims not in (1, 2):
            raise ConfigError(f"model.dims={dims}: expected 1 (Conv1d over time) or 2 (Conv2d over feat x time)")
        if freq_pool_size is not None and dims == 1:
            raise ConfigError(
                f"model.freq_pool_size={freq_pool_size}: a Conv1d front has no feature axis to pool "
                "(its features are channels); set it to null, or use a Conv2d front"
            )
        if isinstance(channels, int):
            if not num_blocks:
                raise ConfigError(f"model.channels={channels} is one width: set model.num_blocks too")
            channels = [channels] * num_blocks
        elif num_blocks is not None and num_blocks != len(channels):
            raise ConfigError(f"model.num_blocks={num_blocks} but model.channels lists {len(channels)} blocks")
        if norm not in ("batch", "none"):
            raise ConfigError(f"model.norm={norm!r}: expected 'batch' or 'none'")
        conv, batchnorm = {1: (nn.Conv1d, MaskedBatchNorm1d), 2: (nn.Conv2d, MaskedBatchNorm2d)}[dims]
        n, in_ch = len(channels), in_features if dims == 1 else 1
        pools = per_block(pool_size, n, "model.pool_size")
        freq_pools = pools if freq_pool_size is None else per_block(freq_pool_size, n, "model.freq_pool_size")
        for i, (out_ch, k, s, p, d, ps, fps) in enumerate(
            zip(
                channels,
                per_block(kernel_size, n, "model.kernel_size"),
                per_block(stride, n, "model.stride"),
                per_block(padding, n, "model.padding"),
                per_block(dilation, n, "model.dilation"),
                pools,
                freq_pools,
            )
        ):
            if p == "same" and s != 1:
                raise ConfigError(
                    f"model.padding='same' needs stride 1 (block {i} has stride {s}); "
                    f"use an integer padding such as (kernel-1)//2 = {(k - 1) // 2}"
                )
            self.add_module(
                str(i),
                ConvBlock(
                    conv(in_ch, out_ch, k, stride=s, padding=0 if p == "valid" else p, dilation=d, bias=norm == "none"),
                    batchnorm(out_ch) if norm == "batch" else None,
                    make_activation(activation),
                    _pool(dims, ps, fps),
                    dropout,
                ),
            )
            in_ch = out_ch
        self.dims, self.out_channels, self.out_features = dims, in_ch, None
        if dims == 2:
            bins = [in_features]
            for block in self:
                bins.append(block.feature_bins(bins[-1]))
            if min(bins) < 1:
                raise ConfigError(
                    f"model: the feature axis of {in_features} bins shrinks to {min(bins)}; "
                    f"use fewer model.channels or smaller pool_size/freq_pool_size/stride"
                )
            self.out_features = bins[-1]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[ConvBlock]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> ConvBlock:
        return list(self._modules.values())[index]

    def block_lengths(self, length) -> list:
        """Frames after each block for inputs of `length` frames (an int or a tensor of lengths)."""
        out = []
        for block in self:
            length = block.output_lengths(length)[1]
            out.append(length)
        return out

    def output_lengths(self, lengths):
        """Valid frames after the last block for inputs of `lengths` frames (an int or a tensor (batch,))."""
        return (self.block_lengths(lengths) or [lengths])[-1]

    def time_stride(self) -> int:
        """Input frames per output frame (the product of the blocks' strides and pools), read off the length
        formula on a long input, where the rounding of short ones cannot blur it."""
        long = 1 << 24
        return max(1, round(long / self.output_lengths(long)))

    def min_input_frames(self) -> int:
        """The fewest input frames that keep at least one frame after every block."""
        frames = 1
        for block in reversed(list(self)):
            frames = block.min_input_length(frames)
        return frames

    def check_lengths(self, lengths: torch.Tensor) -> None:
        """A ConfigError naming the block, its settings and what to change if the shortest of `lengths`
        (batch,) shrinks below one frame. Reads a value on the host: see `host_checks_enabled`."""
        shortest = int(lengths.min())
        for i, (block, n) in enumerate(zip(self, self.block_lengths(shortest))):
            if n < 1:
                spec = ", ".join(f"{k}={v}" for k, v in block.spec.items())
                raise ConfigError(
                    f"model: an input of {shortest} frames shrinks to {n} frames after block {i} ({spec}); "
                    f"use smaller model.kernel_size/stride/pool_size, fewer blocks (model.channels, "
                    f"model.num_blocks) or longer inputs"
                )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if host_checks_enabled(lengths):
            self.check_lengths(lengths)
        lengths = lengths.to(x.device)
        h = x.transpose(1, 2)  # (batch, feat, time)
        h = time_mask(h if self.dims == 1 else h.unsqueeze(1), lengths)
        for block in self:
            h, lengths = block(h, lengths)
        return h, lengths


class ConvFront:
    """For networks whose front is a ConvStack in `self.blocks`: its length arithmetic on the network
    (`block_lengths`, `output_lengths`, and `min_input_frames` of the network protocol)."""

    # config_checks: a network's `**conv` goes to ConvStack, less the arguments the network passes itself
    passes_kwargs_to = ConvStack
    fills_arguments = ("in_features", "channels", "dims")

    blocks: ConvStack

    def block_lengths(self, length) -> list:
        """Frames after each block for inputs of `length` frames (an int or a tensor of lengths)."""
        return self.blocks.block_lengths(length)

    def output_lengths(self, lengths):
        """Valid frames after the last block for inputs of `lengths` frames."""
        return self.blocks.output_lengths(lengths)

    def min_input_frames(self) -> int:
        """The fewest input frames the network accepts: one frame left after every block."""
        return self.blocks.min_input_frames()


def _pool(dims: int, pool_size: int, freq_pool_size: int) -> nn.Module | None:
    """The max-pool of a block (kernel = stride): over time, and for dims=2 over (feature bins, time)."""
    if dims == 1:
        return nn.MaxPool1d(pool_size) if pool_size > 1 else None
    if pool_size == freq_pool_size:
        return nn.MaxPool2d(pool_size) if pool_size > 1 else None
    return nn.MaxPool2d((freq_pool_size, pool_size))


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value
