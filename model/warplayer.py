"""Backward-warp module that owns its base-grid cache (no module-level global, unlike RIFE's ``backwarp_tenGrid``)."""

from __future__ import annotations

import torch
from torch import nn

from .ops.warp import backward_warp, base_grid, takes_triton_warp


class BackwardWarp(nn.Module):
    """Callable ``warp(image, flow)``; caches the identity grid per (H, W, device) inside the instance.

    image (B, C, H, W), flow (B, 2, H, W) in pixels -> (B, C, H, W). See :func:`model.ops.warp.backward_warp`.
    """

    def __init__(self, max_cached: int = 8, max_chunk_elements: int = 1 << 26):
        super().__init__()
        self._grids: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._max_cached = max_cached
        self.max_chunk_elements = max_chunk_elements   # see backward_warp: bounds the float32 copy of a feature map

    def grid_for(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The identity grid (1, H, W, 2) for (height, width), cached per instance in eager code.

        Under ``torch.compile`` the grid is computed inside the graph and never cached: filling the cache from a
        compiled call is a side effect Dynamo guards on (the dict's keys), so the second call recompiled the whole
        model (minutes at 1080p; what made ``interpolate.py --compile`` 12x slower than eager on a short clip).
        While a CUDA graph is being captured (the graphed training step, graphed inference) the cache is neither
        read nor filled: the graph computes its own grid, in its own memory pool, at every replay. A graph reads its
        inputs by address, and a cached grid lives outside that pool: once evicted (evaluation at other frame sizes
        fills the cache) it is freed, its memory can be handed out again, and every later replay would warp with
        whatever is there.
        """
        if torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            return base_grid(height, width, device)
        key = (height, width, device)
        grid = self._grids.get(key)
        if grid is None:
            if len(self._grids) >= self._max_cached:   # bounded: evaluation walks many frame sizes
                self._grids.pop(next(iter(self._grids)))
            grid = base_grid(height, width, device)
            self._grids[key] = grid
        return grid

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        # The Triton path samples from the flow in pixels: no grid (while a CUDA graph is captured, one would be
        # computed afresh at every replay for nothing).
        grid = None if takes_triton_warp(image) else self.grid_for(height, width, image.device)
        return backward_warp(image, flow, grid, self.max_chunk_elements)
