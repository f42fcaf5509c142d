"""Channel attention: ECA, squeeze-excitation, and the conv blocks that use them (ECAB / CAB, docs/DESIGN.md 4).

``ECAB`` and ``CAB`` share one conv body (conv3x3 C->C/3, GELU, conv3x3 C/3->C) and differ only in the
attention that rescales its output: ECA (a 1-D conv across channels, no reduction) or HAT's squeeze-excitation
(squeeze 30). So the ``--no-use_ecab`` ablation changes exactly one thing.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def eca_kernel_size(channels: int, gamma: int = 2, bias: int = 1) -> int:
    """ECA-Net's adaptive kernel ``|log2(C)/gamma + b/gamma|_odd``: 16..96 channels -> 3, 128..512 -> 5."""
    size = int(abs(math.log2(channels) / gamma + bias / gamma))
    return size if size % 2 else size + 1


class ECA(nn.Module):
    """Efficient channel attention on (N, C, H, W): ``x * sigmoid(conv1d_k(GAP(x)))`` across channels."""

    def __init__(self, channels: int):
        super().__init__()
        size = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, size, padding=size // 2, bias=False)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 1, 1) weights in (0, 1)."""
        pooled = x.mean(dim=(2, 3))                                   # (N, C)
        return torch.sigmoid(self.conv(pooled.unsqueeze(1))).squeeze(1)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)


class SqueezeExcitation(nn.Module):
    """RCAN/HAT channel attention on (N, C, H, W): ``x * sigmoid(W2 relu(W1 GAP(x)))``, W1: C -> C/squeeze."""

    def __init__(self, channels: int, squeeze: int = 30):
        super().__init__()
        hidden = max(1, channels // squeeze)   # HAT's C//30 is 0 for C < 30
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.body(x)


class ChannelAttentionBlock(nn.Module):
    """ECAB (``use_eca=True``) or CAB (``False``) in the FFN slot of an LGS block.

    Takes and returns channels-last (N, H, W, C); the convolutions run per frame (frames are batch entries).
    """

    def __init__(self, channels: int, use_eca: bool = True, compress: int = 3):
        super().__init__()
        hidden = max(1, channels // compress)
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(hidden, channels, 3, padding=1))
        self.attention = ECA(channels) if use_eca else SqueezeExcitation(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(self.body(x.permute(0, 3, 1, 2)))
        return y.permute(0, 2, 3, 1)
