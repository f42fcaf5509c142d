"""Branch B of the LGS block: gated window attention (Qwen-style output gate, docs/DESIGN.md 3).

Per window: ``O = SDPA(q, k, v)``, then ``O * sigmoid(x W_g + b_g)`` per head (head-wise gate) or per channel
(element-wise gate), then the output projection. The gate reads the same normalised tokens that produce
q, k, v, after attention and before ``proj`` (the paper's position G1).

Nothing is passed to SDPA but q, k, v: no relative-position bias and no shift mask, so on CUDA in fp16/bf16 with
head dims <= 256 PyTorch can dispatch to FlashAttention-2. Positional information comes from the convolutions
and the SSM branch. The shift variant pads half a window in front instead of rolling (see ``model.ops.window``),
which needs no mask either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops.window import cross_frame_window_partition, cross_frame_window_reverse, window_partition, window_reverse


class GatedWindowAttention(nn.Module):
    """forward: (2B, H, W, C) stacked frame pairs -> (2B, H, W, C).

    Args:
        dim: channels C.  num_heads: h (head dim C/h).  window: M.
        gate: "headwise" (W_g: C -> h), "elementwise" (C -> C) or "none".
        cross_frame: one window holds the same M x M tile of both frames (2*M*M tokens); else per-frame windows.
        shift: use the half-window-offset layout (for alternate blocks).
    """

    def __init__(self, dim: int, num_heads: int, window: int = 8, gate: str = "headwise", cross_frame: bool = True,
                 shift: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} not divisible by {num_heads} heads")
        self.num_heads, self.head_dim, self.window = num_heads, dim // num_heads, window
        self.cross_frame, self.shift, self.gate_kind = cross_frame, shift, gate
        self.qkv = nn.Linear(dim, 3 * dim)
        gate_width = {"headwise": num_heads, "elementwise": dim, "none": 0}[gate]
        self.gate = nn.Linear(dim, gate_width) if gate_width else None
        self.proj = nn.Linear(dim, dim)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Gated attention within windows. tokens: (Bw, N, C) -> (Bw, N, C)."""
        windows, length, channels = tokens.shape
        q, k, v = self.qkv(tokens).view(windows, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)          # (Bw, N, h, d)
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(tokens))                            # (Bw, N, h) or (Bw, N, C)
            out = out * (gate.unsqueeze(-1) if self.gate_kind == "headwise" else gate.view_as(out))
        return self.proj(out.reshape(windows, length, channels))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.cross_frame:
            windows, layout = cross_frame_window_partition(u, self.window, self.shift)
            return cross_frame_window_reverse(self.attend(windows), layout)
        windows, layout = window_partition(u, self.window, self.shift)
        return window_reverse(self.attend(windows), layout)
