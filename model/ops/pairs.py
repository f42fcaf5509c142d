"""The stacked frame-pair convention: a pair batch (2B, ...) holds frame 0 of every pair in its first B rows."""

from __future__ import annotations

import torch


def split_frames(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, ...) -> (frame-0 rows (B, ...), frame-1 rows (B, ...)), as views."""
    if stacked.shape[0] % 2:
        raise ValueError(f"a stacked frame-pair batch must have an even size, got {stacked.shape[0]}")
    half = stacked.shape[0] // 2
    return stacked[:half], stacked[half:]
