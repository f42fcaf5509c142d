"""Per-frame multi-scale context features, backward-warped to the target frame (RIFE ContextNet, docs/DESIGN.md §7.2).

One ContextNet is applied to each input frame with the *same* weights: ``context(img0, flow[:, 0:2])`` and
``context(img1, flow[:, 2:4])``. Level k (0-based) is a stride-2 conv3x3+PReLU followed by a conv3x3+PReLU with
``base_channels * 2**k`` channels at 1/2**(k+1) of the input size; after each level the flow is resized to that
level's exact size (bilinear) and halved, and the level's features are warped by it. The next level is computed
from the *unwarped* features, as in RIFE, so warping errors do not compound through the pyramid.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import conv_prelu, run_conv_prelu_stack
from .flow import resize_bilinear
from .warplayer import BackwardWarp


class ContextNet(nn.Module):
    """Shared-weight per-frame feature pyramid warped by a backward flow.

    Args:
        base_channels: channels ``c`` of the first level; level k has ``c * 2**k``.
        levels: number of pyramid levels (3 here: ``3 -> c -> 2c -> 4c``; RIFE uses 4, adding ``8c`` at 1/16).
        in_channels: channels of the input image.
    """

    def __init__(self, base_channels: int = 16, levels: int = 3, in_channels: int = 3):
        super().__init__()
        if levels < 1:
            raise ValueError(f"ContextNet needs at least one level, got {levels}")
        self.out_channels = tuple(base_channels * 2 ** level for level in range(levels))
        channels_in = (in_channels,) + self.out_channels[:-1]
        self.levels = nn.ModuleList([
            nn.Sequential(conv_prelu(c_in, c_out, stride=2), conv_prelu(c_out, c_out))
            for c_in, c_out in zip(channels_in, self.out_channels)
        ])
        self.warp = BackwardWarp()

    def forward(self, image: torch.Tensor, flow: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Extract and warp the pyramid.

        Args:
            image: (B, 3, H, W) one frame (any H, W).
            flow: (B, 2, H, W) backward flow from the target grid to this frame, in pixels of (H, W);
                None returns the unwarped features.
        Returns:
            ``levels`` tensors; level k is (B, c * 2**k, H_k, W_k) with ``H_k = ceil(H_{k-1} / 2)``, ``H_{-1} = H``
            (the stride-2 conv output size), in the dtype the convolutions produce.
        """
        if flow is not None and (flow.shape[0] != image.shape[0] or flow.shape[1] != 2
                                 or flow.shape[-2:] != image.shape[-2:]):
            raise ValueError(f"ContextNet flow must be (B, 2, H, W) matching image {tuple(image.shape)}, "
                             f"got {tuple(flow.shape)}")
        pyramid: list[torch.Tensor] = []
        features = image
        level_flow = flow.float() if flow is not None else None   # keep sub-pixel flow precision under autocast
        for level in self.levels:
            features = run_conv_prelu_stack(level, [features])   # compiled: the 3-channel image gets aligned channels
            if level_flow is None:
                pyramid.append(features)
                continue
            # Resize progressively (a cheap pyramid, less aliasing than one big jump) to this level's exact size.
            # A stride-2 conv maps output pixel i to input pixel 2i whatever the parity of the size, so a
            # displacement halves exactly at every level even when the size is odd.
            level_flow = resize_bilinear(level_flow, tuple(features.shape[-2:])) * 0.5
            pyramid.append(self.warp(features, level_flow))
        return pyramid
