"""Convolutions on channel counts aligned for tensor cores: a concatenation padded at run time (compiled inference),
and trained weights zero-padded to aligned widths (an exact transformation, for the flow estimator)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F


def channel_aligned_conv2d(parts: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                           stride=1, padding=0, multiple: int = 8) -> torch.Tensor:
    """``F.conv2d(torch.cat(parts, 1), weight, bias, stride, padding)`` computed on ``multiple``-aligned channels.

    cuDNN's tensor-core kernels need the input channels in multiples of 8 (bf16); for any other count it first
    copies the whole input into a padded buffer (``nhwcAddPaddingKernel``, 4.7 ms of a 4K interpolation on an
    H100, where the inputs are 3-channel images and 82-, 129-, 241- and 321-channel RefineNet concatenations).
    Here the zero channels are part of the concatenation, which is written anyway (under ``torch.compile`` the
    fill fuses into the concatenation kernel; in eager code it is an extra pass, so callers use this only when
    compiling), and the weight gets matching zero input channels, so the result is the same sum of the same
    products.

    parts: maps (N, C_i, H, W) of one spatial size; weight (C_out, sum C_i, k, k); returns (N, C_out, H', W').
    """
    channels = sum(part.shape[1] for part in parts)
    if weight.shape[1] != channels:
        raise ValueError(f"channel_aligned_conv2d: the parts have {channels} channels, the weight takes "
                         f"{weight.shape[1]}")
    extra = (-channels) % multiple
    parts = list(parts)
    if extra:
        first = parts[0]
        parts.append(first.new_zeros(first.shape[0], extra, *first.shape[2:]))
        weight = F.pad(weight, (0, 0, 0, 0, 0, extra))
    inputs = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return F.conv2d(inputs, weight, bias, stride, padding)


# --------------------------------------------------------------------------------------------------------
# Zero-padding a trained convolution's weights to aligned channel counts (exact: the function is unchanged)
# --------------------------------------------------------------------------------------------------------
class ChannelLayout(NamedTuple):
    """Where the real channels of a map sit once it is widened: channel ``i`` of the original map is channel
    ``positions[i]`` of a map with ``size`` channels; every other channel of the wider map is zero."""

    positions: tuple[int, ...]
    size: int


def aligned_layout(group_sizes: Sequence[int], multiple: int = 8) -> ChannelLayout:
    """The layout of a concatenation of groups when each group is padded to a multiple of ``multiple`` on its own.

    Each group is padded separately because each has its own producer (for ``cat(a, b)`` with 75 channels each the
    producers emit 80, so the real channels are 0..74 and 80..154 of 160). ``multiple=1`` keeps a map as it is.
    """
    if multiple < 1 or any(size < 0 for size in group_sizes):
        raise ValueError(f"aligned_layout: need multiple >= 1 and sizes >= 0, got {multiple} and {tuple(group_sizes)}")
    positions: list[int] = []
    start = 0
    for size in group_sizes:
        positions.extend(range(start, start + size))
        start += size + (-size) % multiple
    return ChannelLayout(tuple(positions), start)


def spread_channels(tensor: torch.Tensor, dim: int, layout: ChannelLayout) -> torch.Tensor:
    """A tensor like ``tensor`` but with ``layout.size`` entries along ``dim``: entry ``i`` of ``tensor`` lands at
    ``layout.positions[i]``, all others are zero. Same dtype and device."""
    if tensor.shape[dim] != len(layout.positions):
        raise ValueError(f"spread_channels: dimension {dim} of a {tuple(tensor.shape)} tensor does not match a layout "
                         f"of {len(layout.positions)} channels")
    shape = list(tensor.shape)
    shape[dim] = layout.size
    index = torch.tensor(layout.positions, dtype=torch.long, device=tensor.device)
    return tensor.new_zeros(shape).index_copy(dim, index, tensor)


def spread_conv_weight(weight: torch.Tensor, bias: torch.Tensor | None, in_layout: ChannelLayout,
                       out_layout: ChannelLayout, transposed: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the same (ungrouped) convolution acting on widened maps.

    The new input channels get zero weight columns, so whatever they hold adds nothing; the new output channels get
    zero weight rows and zero bias, so they are exactly zero (and stay zero through a PReLU, a residual sum of such
    maps, or a consumer whose matching input columns are zero). Where the real channels sit on each side is given
    by the layouts (:func:`aligned_layout`).

    weight: (C_out, C_in, k, k), or (C_in, C_out, k, k) with ``transposed`` (``nn.ConvTranspose2d``'s layout);
    bias: (C_out,) or None. Returns them with C_in -> ``in_layout.size``, C_out -> ``out_layout.size``.
    """
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    weight = spread_channels(spread_channels(weight, in_dim, in_layout), out_dim, out_layout)
    return weight, None if bias is None else spread_channels(bias, 0, out_layout)
