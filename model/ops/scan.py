"""Interleaved four-direction scan order of VFIMamba, with an exact inverse.

Two frames' feature maps are woven into one sequence token by token, so a causal scan alternates between
the frames at every pixel and its recurrent state carries information across time as well as space.

Index maps for frame ``f`` in {0, 1} at pixel ``(h, w)`` of an ``H x W`` map, sequence length ``L = 2HW``:

* direction 0 (row-major, H->W):    ``l = 2 (h W + w) + f``
* direction 1 (column-major, W->H): ``l = 2 (w H + h) + f``
* directions 2 and 3: directions 0 and 1 reversed, ``l' = L - 1 - l`` (this also swaps the frame order
  inside each pixel, so both temporal orders are seen).

VFIMamba's own inverse of directions 1 and 3 reshapes the sequence as a ``(2E, W, H)`` map, which splits it
into two contiguous halves instead of undoing ``2 (w H + h) + f``; that adds the column-major outputs to the
wrong pixels and frames (docs/DESIGN.md 1.3). :func:`merge_scan` is the true inverse and is tested with H != W.
"""

from __future__ import annotations

import torch

NUM_DIRECTIONS = 4


def interleave_scan(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Build the four interleaved scan sequences of two frames.

    Args:
        x0: frame-0 map, (B, H, W, C).
        x1: frame-1 map, (B, H, W, C).
    Returns:
        (B, 4, 2*H*W, C): directions 0..3 in the order documented in the module docstring.
    """
    if x0.shape != x1.shape or x0.dim() != 4:
        raise ValueError(f"interleave_scan expects two (B, H, W, C) maps of equal shape, got "
                         f"{tuple(x0.shape)} and {tuple(x1.shape)}")
    batch, height, width, channels = x0.shape
    pair = torch.stack((x0, x1), dim=3)                      # (B, H, W, 2, C): frame is the fastest index
    row_major = pair.reshape(batch, 2 * height * width, channels)
    col_major = pair.transpose(1, 2).reshape(batch, 2 * height * width, channels)
    forward = torch.stack((row_major, col_major), dim=1)     # (B, 2, L, C)
    return torch.cat((forward, forward.flip(2)), dim=1)      # (B, 4, L, C)


def merge_scan(seqs: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of :func:`interleave_scan`, summed over the four directions.

    Args:
        seqs: (B, 4, 2*H*W, C) per-direction outputs, laid out as :func:`interleave_scan` produced them.
        height, width: the map size H, W.
    Returns:
        (y0, y1), each (B, H, W, C): the per-frame sums
        ``Y(f,h,w) = s0[2(hW+w)+f] + s1[2(wH+h)+f] + s2[L-1-2(hW+w)-f] + s3[L-1-2(wH+h)-f]``.
    """
    batch, directions, length, channels = seqs.shape
    if directions != NUM_DIRECTIONS or length != 2 * height * width:
        raise ValueError(f"merge_scan expects (B, 4, 2*H*W, C) with H={height}, W={width}, "
                         f"got {tuple(seqs.shape)}")
    row_major = seqs[:, 0] + seqs[:, 2].flip(1)              # (B, L, C), row-major interleaved order
    col_major = seqs[:, 1] + seqs[:, 3].flip(1)              # (B, L, C), column-major interleaved order
    merged = row_major.reshape(batch, height, width, 2, channels) + \
        col_major.reshape(batch, width, height, 2, channels).transpose(1, 2)
    return merged[:, :, :, 0], merged[:, :, :, 1]
