"""Images for TensorBoard: colour-coded optical flow and the sample grid (I0, prediction, ground truth, I1, ...)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid


def flow_to_rgb(flow: torch.Tensor, max_magnitude: float | None = None) -> torch.Tensor:
    """Middlebury-style colour coding: hue = direction, saturation = magnitude (white = no motion).

    flow (B, 2, H, W) in pixels -> (B, 3, H, W) in [0, 1]. ``max_magnitude`` defaults to each image's maximum.
    """
    u, v = flow[:, 0].float(), flow[:, 1].float()
    magnitude = torch.sqrt(u * u + v * v)
    scale = magnitude.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1) if max_magnitude is None else max_magnitude
    saturation = (magnitude / scale).clamp(0, 1)
    hue = (torch.atan2(-v, -u) / math.pi + 1.0) / 2.0                   # [0, 1]
    # HSV -> RGB with value 1: each channel is a clamped triangle wave of the hue.
    offsets = torch.tensor([0.0, 2.0 / 3.0, 1.0 / 3.0], device=flow.device).view(1, 3, 1, 1)
    channel = ((hue.unsqueeze(1) + offsets) % 1.0) * 6.0
    pure = (torch.abs(channel - 3.0) - 1.0).clamp(0, 1)                # fully saturated colour of the hue
    return 1.0 - saturation.unsqueeze(1) * (1.0 - pure)


def sample_grid(img0: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor, img1: torch.Tensor,
                flow: torch.Tensor | None = None, mask: torch.Tensor | None = None, max_samples: int = 2) -> torch.Tensor:
    """One row per sample: I0 | prediction | ground truth | I1 [| flow t->0 | flow t->1 | mask]. (3, H', W')."""
    columns = [img0, pred, gt, img1]
    if flow is not None:
        columns += [flow_to_rgb(flow[:, :2]), flow_to_rgb(flow[:, 2:4])]
    if mask is not None:
        columns.append(mask.expand(-1, 3, -1, -1))
    size = img0.shape[-2:]
    tiles = [F.interpolate(c[:max_samples].float(), size=size, mode="bilinear", align_corners=False)
             if c.shape[-2:] != size else c[:max_samples].float() for c in columns]
    rows = torch.stack(tiles, dim=1).flatten(0, 1).clamp(0, 1).cpu()
    return make_grid(rows, nrow=len(columns), padding=2)
