"""Running a model on whole frames: image <-> tensor, centred padding to the model's size multiple, precision.

One implementation for every caller that predicts full frames (the benchmarks' ``Evaluator`` and the footage
pipeline), so a video frame is predicted exactly as a benchmark frame is::

    (H, W, 3) uint8 -> frame_to_tensor -> (1, 3, H, W) in [0, 1] -> pad_centred (replicate, to a multiple of 32)
        -> model.inference under autocast (config.AMP_DTYPES) -> crop_padding -> clamp to [0, 1]
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def read_rgb_uint8(path: str | Path, error: type[Exception] = OSError) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one image file (cv2 reads BGR; the model works in RGB).

    error: the exception raised, naming the file, when it is missing or not a readable image (each caller's own
    one-line error class)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        reason = "file not found" if not Path(path).is_file() else "not a readable image"
        raise error(f"cannot read image {path} ({reason})")
    # cvtColor swaps the channels exactly, like image[..., ::-1], at a tenth of numpy's time and without the GIL.
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def frame_to_tensor(frame: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8, or float32 already in [0, 1] -> (1, 3, H, W) float32 in [0, 1] on ``device``."""
    tensor = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None]
    return tensor.float() / 255 if frame.dtype == np.uint8 else tensor.float()


def centred_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding that makes H and W multiples of ``multiple``.

    The odd pixel goes right/bottom (the field's InputPadder); where the padding sits changes the prediction
    near the borders, so matching it matters for matching published numbers.
    """
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def pad_centred(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(B, C, H, W) -> (padded (B, C, H', W'), padding) with H', W' multiples of ``multiple``."""
    padding = centred_padding(image.shape[-2], image.shape[-1], multiple)
    return (F.pad(image, padding, mode="replicate") if any(padding) else image), padding


def crop_padding(image: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Inverse of :func:`pad_centred`: (B, C, H', W') -> (B, C, H, W)."""
    left, right, top, bottom = padding
    return image[..., top:image.shape[-2] - bottom, left:image.shape[-1] - right]
