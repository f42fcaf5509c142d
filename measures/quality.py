"""Image-quality measures: PSNR and SSIM exactly as the published VFI tables compute them (docs/DESIGN.md 12).

Used by the benchmarks, by training's validation (its SSIM is ``ssim_matlab``, so a validation number means what
the Vimeo90K table means) and by inference (``to_uint8``). Two families, because the field uses two:

* ``psnr`` + ``ssim_matlab`` on float images in [0, 1] -- Vimeo90K, UCF101, SNU-FILM, X-TEST (the metric code
  shared by RIFE, EMA-VFI and VFIMamba). ``ssim_matlab`` treats the colour image as a (C, H, W) *volume*: one
  11x11x11 Gaussian (sigma 1.5) slides over channel and space, so neighbouring channels mix. That is not the
  textbook per-channel SSIM, but it is what every published number in those tables used.
* ``psnr_uint8`` + ``ssim_skimage_uint8`` on 8-bit images -- the Xiph protocol, which calls scikit-image's
  ``peak_signal_noise_ratio`` and ``structural_similarity(data_range=255, channel_axis=-1)``. Re-implemented
  here so the project does not depend on scikit-image; ``tests/test_benchmark.py`` cross-checks both against
  scikit-image when it is installed.

Every protocol metric computes in float64 (the reference scripts mix float32 and float64; float64 removes our own
rounding from the comparison, and the difference to the float32 references is ~1e-6 in SSIM and ~1e-6 dB).
Inputs may live on any device; the computation stays there. :func:`batch_psnr` is the exception: the per-sample
PSNR of a whole validation batch in float32 during training, where no table is reproduced.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_MATLAB_WINDOW = 11
SSIM_MATLAB_SIGMA = 1.5
SKIMAGE_WINDOW = 7


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round a [0, 1] image to the nearest 8-bit level, back in [0, 1]: ``round(x * 255) / 255``.

    ``torch.round`` rounds halves to even, as ``np.round`` in the reference scripts does.
    """
    return torch.round(image * 255) / 255


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """(..., H, W) float in [0, 1] -> uint8, clamped then rounded (the Xiph and X-TEST protocols)."""
    return torch.round(image.clamp(0, 1) * 255).to(torch.uint8)


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR in dB of one image (any shape, e.g. (3, H, W)) in [0, 1]: -10 log10(mean((gt - pred)^2)).

    The mean runs over all pixels and channels; identical images give ``inf``.
    """
    mse = torch.mean((gt.to(torch.float64) - pred.to(torch.float64)) ** 2).item()
    return math.inf if mse == 0 else -10 * math.log10(mse)


def difference_stats(result: torch.Tensor, reference: torch.Tensor) -> dict:
    """Pixel differences of two predictions in [0, 1] (any shape, any device): max, mean and the 99.9th percentile
    of |result - reference|, under the keys the parity reports use ("..._abs_diff_vs_eager").

    The 99.9th percentile is the smallest of the 0.1 % largest differences: the figure issue 21's parity target
    bounds (1/255), where the maximum alone is one pixel's worst case."""
    difference = (result.float() - reference.float()).abs().flatten()
    top = max(1, difference.numel() // 1000)
    return {"max_abs_diff_vs_eager": float(difference.max()), "mean_abs_diff_vs_eager": float(difference.mean()),
            "p999_abs_diff_vs_eager": float(difference.topk(top).values.min())}


def batch_psnr(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (B,) of (B, C, H, W) images in [0, 1], in float32 over all pixels and channels; the mean
    squared error is floored at 1e-10 (at most 100 dB), so identical images give 100, not ``inf``."""
    mse = (pred.float() - gt.float()).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def gaussian_window_1d(size: int = SSIM_MATLAB_WINDOW, sigma: float = SSIM_MATLAB_SIGMA,
                       dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """(size,) normalised Gaussian centred on ``size // 2``."""
    offsets = torch.arange(size, dtype=dtype, device=device) - size // 2
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def _as_volume(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (1, 1, C, H, W) float64, the layout conv3d needs."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"ssim_matlab scores one image at a time, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"ssim_matlab expects (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
    return image.to(torch.float64)[None, None]


def _gaussian_filter_3d(volume: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Replicate-pad (1, 1, D, H, W) by size//2 on all three axes, then the separable 3-D Gaussian ('valid').

    The 11x11x11 window of the reference is the outer product g x g x g, so three 1-D passes over the same
    padded volume give the same numbers as the one 3-D convolution (up to float64 rounding) at 33 instead of
    1,331 multiply-adds per voxel, which matters at 4K.
    """
    radius = window.numel() // 2
    padded = F.pad(volume, (radius,) * 6, mode="replicate")
    size = window.numel()
    for kernel_shape in ((size, 1, 1), (1, size, 1), (1, 1, size)):
        padded = F.conv3d(padded, window.reshape(1, 1, *kernel_shape))
    return padded


def ssim_matlab(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """SSIM of the RIFE/EMA-VFI/VFIMamba ``ssim_matlab``: the colour image as one (C, H, W) volume.

    pred, gt: (C, H, W) or (1, C, H, W) in [0, 1] (data range L = 1: C1 = 0.01^2, C2 = 0.03^2).
    Window 11x11x11 Gaussian, sigma 1.5, replicate padding 5 on channel, height and width, mean of the SSIM map
    (which has the input's shape). Symmetric in its arguments. Computed in float64.
    Reversing the channel axis (BGR vs RGB) does not change the value: window and padding are symmetric.
    """
    x, y = _as_volume(pred), _as_volume(gt)
    if x.shape != y.shape:
        raise ValueError(f"ssim_matlab: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if min(x.shape[-2:]) < SSIM_MATLAB_WINDOW:
        # The reference shrinks its window for such images while keeping padding 5; no benchmark comes near.
        raise ValueError(f"ssim_matlab needs H, W >= {SSIM_MATLAB_WINDOW}, got {tuple(x.shape[-2:])}")
    window = gaussian_window_1d(device=x.device)
    mu_x, mu_y = _gaussian_filter_3d(x, window), _gaussian_filter_3d(y, window)
    # Replicate padding commutes with element-wise products, so filtering x*y equals the reference's pad(x*y).
    var_x = _gaussian_filter_3d(x * x, window) - mu_x ** 2
    var_y = _gaussian_filter_3d(y * y, window) - mu_y ** 2
    cov_xy = _gaussian_filter_3d(x * y, window) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def _as_uint8_hwc(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if tensor.dtype != torch.uint8 or tensor.dim() != 3:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor


def psnr_uint8(pred_u8: np.ndarray | torch.Tensor, gt_u8: np.ndarray | torch.Tensor) -> float:
    """skimage ``peak_signal_noise_ratio(gt, pred, data_range=255)`` of two (H, W, C) uint8 images."""
    pred, gt = _as_uint8_hwc(pred_u8), _as_uint8_hwc(gt_u8)
    mse = torch.mean((gt.to(torch.float64) - pred.to(gt.device, torch.float64)) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ssim_skimage_uint8(pred_u8: np.ndarray | torch.Tensor, gt_u8: np.ndarray | torch.Tensor) -> float:
    """skimage ``structural_similarity(gt, pred, data_range=255, channel_axis=-1)`` of (H, W, C) uint8 images.

    scikit-image defaults, reproduced: per channel, a 7x7 *uniform* window (no Gaussian), K1 = 0.01, K2 = 0.03,
    sample covariance (variances scaled by N / (N - 1), N = 49), the SSIM map cropped by the window radius 3 on
    every side (so the border mode of its filter never matters), the crop's mean per channel, then the mean over
    channels. Computed in float64 with a stride-1 average pool, whose output is exactly the cropped region.
    """
    pred, gt = _as_uint8_hwc(pred_u8), _as_uint8_hwc(gt_u8)
    if pred.shape != gt.shape:
        raise ValueError(f"ssim_skimage_uint8: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if min(pred.shape[:2]) < SKIMAGE_WINDOW:
        raise ValueError(f"ssim_skimage_uint8 needs H, W >= {SKIMAGE_WINDOW}, got {tuple(pred.shape[:2])}")
    # (H, W, C) -> (C, 1, H, W): each channel is its own image, as skimage loops over channel_axis.
    x = pred.to(torch.float64).permute(2, 0, 1)[:, None]
    y = gt.to(device=x.device, dtype=torch.float64).permute(2, 0, 1)[:, None]

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(image, SKIMAGE_WINDOW, stride=1)

    samples = SKIMAGE_WINDOW ** 2
    covariance_scale = samples / (samples - 1)
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = covariance_scale * (local_mean(x * x) - mu_x * mu_x)
    var_y = covariance_scale * (local_mean(y * y) - mu_y * mu_y)
    cov_xy = covariance_scale * (local_mean(x * y) - mu_x * mu_y)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    per_channel = ssim_map.flatten(1).mean(dim=1)
    return per_channel.mean().item()
