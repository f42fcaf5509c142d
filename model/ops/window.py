"""Window partition / reverse for channels-last maps, with padding and a mask-free shift.

Windows are ``M x M`` tiles of an ``(N, H, W, C)`` map. The map is zero-padded to a multiple of ``M`` first.
The *shifted* layout (Swin's alternate blocks) is made by padding ``M // 2`` rows and columns in front of the
map instead of rolling it: windows then straddle the unshifted windows' borders without wrap-around, so no
attention mask is needed and SDPA may still use FlashAttention (docs/DESIGN.md 3.4, option b).

Cross-frame windows put the same window of both frames into one sequence of ``2 * M * M`` tokens
(frame-0 tokens first), so attention mixes the frames locally as the interleaved scan does globally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WindowLayout:
    """Geometry needed to undo a partition."""

    height: int          # original H
    width: int           # original W
    window: int          # M
    pad_top: int
    pad_left: int
    padded_height: int   # multiple of M
    padded_width: int    # multiple of M

    @property
    def windows_per_map(self) -> int:
        return (self.padded_height // self.window) * (self.padded_width // self.window)


def window_layout(height: int, width: int, window: int, shift: bool = False) -> WindowLayout:
    if window < 1:
        raise ValueError(f"window size must be positive, got {window}")
    offset = window // 2 if shift else 0
    padded_height = -(-(height + offset) // window) * window
    padded_width = -(-(width + offset) // window) * window
    return WindowLayout(height, width, window, offset, offset, padded_height, padded_width)


def window_partition(x: torch.Tensor, window: int, shift: bool = False) -> tuple[torch.Tensor, WindowLayout]:
    """Split a map into windows.

    Args:
        x: (N, H, W, C).
        window: M.
        shift: use the half-window-offset layout.
    Returns:
        windows (N * nW, M*M, C) with windows of one map contiguous, row-major over window positions;
        the :class:`WindowLayout` for :func:`window_reverse`.
    """
    batch, height, width, channels = x.shape
    layout = window_layout(height, width, window, shift)
    pad_bottom = layout.padded_height - height - layout.pad_top
    pad_right = layout.padded_width - width - layout.pad_left
    if pad_bottom or pad_right or layout.pad_top or layout.pad_left:
        x = F.pad(x, (0, 0, layout.pad_left, pad_right, layout.pad_top, pad_bottom))
    rows, cols = layout.padded_height // window, layout.padded_width // window
    x = x.view(batch, rows, window, cols, window, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch * rows * cols, window * window, channels), layout


def window_reverse(windows: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (N * nW, M*M, C) -> (N, H, W, C), padding removed."""
    window = layout.window
    rows, cols = layout.padded_height // window, layout.padded_width // window
    channels = windows.shape[-1]
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window, window, channels).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, layout.padded_height, layout.padded_width, channels)
    return x[:, layout.pad_top:layout.pad_top + layout.height, layout.pad_left:layout.pad_left + layout.width]


def cross_frame_window_partition(x: torch.Tensor, window: int, shift: bool = False
                                 ) -> tuple[torch.Tensor, WindowLayout]:
    """Windows holding the same tile of both frames.

    Args:
        x: (2B, H, W, C), frame 0 of every pair in the first half of the batch, frame 1 in the second.
    Returns:
        (B * nW, 2*M*M, C): tokens 0..M*M-1 from frame 0, M*M..2*M*M-1 from frame 1; and the layout.
    """
    if x.shape[0] % 2:
        raise ValueError(f"cross-frame windows need an even batch of stacked frame pairs, got {x.shape[0]}")
    windows, layout = window_partition(x, window, shift)
    per_frame = windows.shape[0] // 2
    frame0, frame1 = windows[:per_frame], windows[per_frame:]
    return torch.cat((frame0, frame1), dim=1), layout


def cross_frame_window_reverse(windows: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """Inverse of :func:`cross_frame_window_partition`: (B * nW, 2*M*M, C) -> (2B, H, W, C)."""
    tokens = windows.shape[1] // 2
    stacked = torch.cat((windows[:, :tokens], windows[:, tokens:]), dim=0)
    return window_reverse(stacked, layout)
