"""Images for people: colour-coded optical flow and the labelled sample grid.

The grid has one row per sample and the panels ``I0 | prediction | ground truth | I1``, followed by
``flow t->0 | flow t->1`` when a flow is given and ``mask`` when a mask is given (Phase-1 callers pass neither,
so their grid has four panels). A band above the panels names them. TensorBoard's training and validation image
grids and the benchmarks' ``--save_images`` use this same layout (docs/DESIGN.md 12.5).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

GRID_PADDING = 2                     # pixels between panels (torchvision's make_grid default)
PANEL_NAMES = ("I0", "prediction", "ground truth", "I1")
FLOW_PANEL_NAMES = ("flow t->0", "flow t->1")
MASK_PANEL_NAME = "mask"
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MIN_FONT_SCALE = 0.3


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


def panel_names(has_flow: bool, has_mask: bool) -> list[str]:
    """Names of the grid's panels, left to right, for the given optional panels."""
    return [*PANEL_NAMES, *(FLOW_PANEL_NAMES if has_flow else ()), *((MASK_PANEL_NAME,) if has_mask else ())]


def _fit_text(text: str, width: int, preferred_scale: float) -> tuple[str, float, int, int]:
    """Largest font scale <= preferred (down to a minimum) at which ``text`` fits ``width`` pixels, else truncate.

    Returns (text, scale, text width, text height incl. baseline) for cv2's Hershey simplex font, thickness 1.
    """
    scale = preferred_scale
    while True:
        (text_width, text_height), baseline = cv2.getTextSize(text, _FONT, scale, 1)
        if text_width <= width or scale <= _MIN_FONT_SCALE:
            break
        scale = max(_MIN_FONT_SCALE, scale * 0.85)
    while text and text_width > width:
        text = text[:-1]
        (text_width, text_height), baseline = cv2.getTextSize(text, _FONT, scale, 1)
    return text, scale, text_width, text_height + baseline


def label_band(names: Sequence[str], panel_width: int, panel_height: int, padding: int = GRID_PADDING) -> torch.Tensor:
    """A black band with one white, centred name above each panel column of a make_grid row.

    Returns (3, band_height, len(names) * (panel_width + padding) + padding) float32 in [0, 1]; the font grows
    with the panel height (about 1/20 of it), so labels stay readable from 64-pixel crops to 4K frames.
    """
    preferred = min(2.5, max(0.35, panel_height / 500))
    fitted = [_fit_text(name, max(1, panel_width - 4), preferred) for name in names]
    band_height = max(h for *_, h in fitted) + 6
    width = len(names) * (panel_width + padding) + padding
    band = np.zeros((band_height, width, 3), dtype=np.uint8)
    for column, (text, scale, text_width, text_height) in enumerate(fitted):
        left = padding + column * (panel_width + padding) + max(0, (panel_width - text_width) // 2)
        baseline_y = 3 + text_height - max(1, text_height // 5)
        cv2.putText(band, text, (left, baseline_y), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return torch.from_numpy(band).permute(2, 0, 1).float() / 255


def sample_grid(img0: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor, img1: torch.Tensor,
                flow: torch.Tensor | None = None, mask: torch.Tensor | None = None, max_samples: int = 2, *,
                labels: bool | Sequence[str] = True) -> torch.Tensor:
    """One row per sample: I0 | prediction | ground truth | I1 [| flow t->0 | flow t->1] [| mask].

    Args:
        img0, pred, gt, img1: (B, 3, H, W) in [0, 1].
        flow: optional (B, 4, h, w) pixel flow [F_t->0, F_t->1]; adds two colour-coded panels.
        mask: optional (B, 1, h, w) blend mask in [0, 1]; adds one panel. Pass None in Phase 1.
        max_samples: at most this many rows.
        labels: True names the panels in a band above the first row (:func:`panel_names`); a sequence gives
            one name per panel instead (e.g. a PSNR in the prediction's name); False draws no band.
    Returns:
        (3, H', W') float32 in [0, 1] on the CPU. Panels of another size than I0 are resized to it.
    """
    columns = [img0, pred, gt, img1]
    if flow is not None:
        columns += [flow_to_rgb(flow[:, :2]), flow_to_rgb(flow[:, 2:4])]
    if mask is not None:
        columns.append(mask.expand(-1, 3, -1, -1))
    size = img0.shape[-2:]
    tiles = [F.interpolate(c[:max_samples].float(), size=size, mode="bilinear", align_corners=False)
             if c.shape[-2:] != size else c[:max_samples].float() for c in columns]
    rows = torch.stack(tiles, dim=1).flatten(0, 1).clamp(0, 1).cpu()
    grid = make_grid(rows, nrow=len(columns), padding=GRID_PADDING)
    if labels is False:
        return grid
    names = panel_names(flow is not None, mask is not None) if labels is True else list(labels)
    if len(names) != len(columns):
        raise ValueError(f"sample_grid got {len(names)} labels for {len(columns)} panels ({names})")
    band = label_band(names, int(size[1]), int(size[0]))
    return torch.cat((band, grid), dim=1)
