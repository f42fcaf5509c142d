"""measures/quality.py: PSNR and SSIM of the published protocols against independent computations (by hand, by
loops over every window, one full 3-D convolution, scikit-image when installed), and validation's batched PSNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from measures.quality import batch_psnr, psnr, psnr_uint8, quantize, ssim_matlab, ssim_skimage_uint8


def test_psnr_by_hand():
    gt = torch.zeros(3, 4, 4, dtype=torch.float64)
    pred = gt.clone()
    pred[0, :2] = 0.2                                     # 8 of 48 values off by 0.2: mse = 8 * 0.04 / 48
    assert psnr(pred, gt) == pytest.approx(-10 * math.log10(8 * 0.04 / 48), abs=1e-9)
    assert psnr(torch.full((3, 2, 2), 0.1, dtype=torch.float64), torch.zeros(3, 2, 2)) == pytest.approx(20.0, abs=1e-9)
    assert psnr(gt, gt) == math.inf


def gaussian_reference(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    weights = np.array([math.exp(-((i - size // 2) ** 2) / (2 * sigma ** 2)) for i in range(size)])
    return weights / weights.sum()


def ssim_matlab_triple_loop(a: np.ndarray, b: np.ndarray) -> float:
    """Independent ssim_matlab: pad the (C, H, W) volumes by 5 (edge), then one full 11x11x11 window per voxel."""
    g = gaussian_reference()
    window = g[:, None, None] * g[None, :, None] * g[None, None, :]
    pa, pb = np.pad(a, 5, mode="edge"), np.pad(b, 5, mode="edge")
    values = []
    for c in range(a.shape[0]):
        for i in range(a.shape[1]):
            for j in range(a.shape[2]):
                wa, wb = pa[c:c + 11, i:i + 11, j:j + 11], pb[c:c + 11, i:i + 11, j:j + 11]
                mu_a, mu_b = (window * wa).sum(), (window * wb).sum()
                var_a = (window * wa * wa).sum() - mu_a ** 2
                var_b = (window * wb * wb).sum() - mu_b ** 2
                cov = (window * wa * wb).sum() - mu_a * mu_b
                c1, c2 = 0.01 ** 2, 0.03 ** 2
                values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                              / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(3, 12, 12), (3, 13, 17)])
def test_ssim_matlab_matches_triple_loop(shape):
    rng = np.random.default_rng(1)
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    expected = ssim_matlab_triple_loop(a, b)
    assert ssim_matlab(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, abs=1e-10)
    # Batched float32 input, as the evaluator passes it, gives the same number to float32 precision.
    assert ssim_matlab(torch.from_numpy(a).float()[None], torch.from_numpy(b).float()[None]) == pytest.approx(
        expected, abs=1e-6)


def test_ssim_matlab_matches_one_full_3d_convolution():
    """The separable filter equals the reference's single 11x11x11 conv3d on a larger image."""
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 56, generator=generator, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(3, 40, 56, generator=generator, dtype=torch.float64)).clamp(0, 1)
    g = torch.from_numpy(gaussian_reference())
    window = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None]

    def blur(v):
        return F.conv3d(F.pad(v[None, None], (5,) * 6, mode="replicate"), window)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    expected = ssim_map.mean()
    assert ssim_matlab(a, b) == pytest.approx(expected.item(), abs=1e-12)


def test_ssim_matlab_identity_symmetry_and_channel_order():
    generator = torch.Generator().manual_seed(2)
    a = torch.rand(3, 16, 20, generator=generator)
    b = (a + 0.1 * torch.randn(3, 16, 20, generator=generator)).clamp(0, 1)
    assert ssim_matlab(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim_matlab(a, b) == pytest.approx(ssim_matlab(b, a), abs=1e-12)
    assert ssim_matlab(a.flip(0), b.flip(0)) == pytest.approx(ssim_matlab(a, b), abs=1e-12)   # BGR vs RGB
    assert ssim_matlab(a, b) < 0.99


def ssim_skimage_by_loops(a: np.ndarray, b: np.ndarray) -> float:
    """Independent skimage-default SSIM: per channel, every full 7x7 window, sample (co)variances, mean."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for c in range(a.shape[2]):
        values = []
        for i in range(a.shape[0] - 6):
            for j in range(a.shape[1] - 6):
                wa, wb = a[i:i + 7, j:j + 7, c].ravel(), b[i:i + 7, j:j + 7, c].ravel()
                cov = np.cov(wa, wb)          # ddof = 1: skimage's use_sample_covariance=True
                values.append((2 * wa.mean() * wb.mean() + c1) * (2 * cov[0, 1] + c2)
                              / ((wa.mean() ** 2 + wb.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)))
        per_channel.append(np.mean(values))
    return float(np.mean(per_channel))


def noisy_uint8_pair(shape, seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, shape, dtype=np.uint8)
    pred = np.clip(gt.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
    return pred, gt


def test_skimage_style_metrics_match_direct_computation():
    pred, gt = noisy_uint8_pair((12, 15, 3), 3)
    assert ssim_skimage_uint8(pred, gt) == pytest.approx(ssim_skimage_by_loops(pred, gt), abs=1e-10)
    mse = np.mean((pred.astype(np.float64) - gt) ** 2)
    assert psnr_uint8(pred, gt) == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-10)
    assert ssim_skimage_uint8(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert ssim_skimage_uint8(torch.from_numpy(pred), torch.from_numpy(gt)) == pytest.approx(
        ssim_skimage_uint8(pred, gt), abs=1e-12)


@pytest.mark.parametrize("shape", [(7, 9, 3), (37, 53, 3), (64, 48, 3)])
def test_skimage_style_metrics_match_scikit_image(shape):
    metrics = pytest.importorskip("skimage.metrics")
    pred, gt = noisy_uint8_pair(shape, shape[0])
    assert ssim_skimage_uint8(pred, gt) == pytest.approx(
        metrics.structural_similarity(gt, pred, data_range=255, channel_axis=-1), abs=1e-6)
    assert psnr_uint8(pred, gt) == pytest.approx(
        metrics.peak_signal_noise_ratio(gt, pred, data_range=255), abs=1e-6)


def test_quantize_rounds_to_8_bit_levels():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    q = quantize(x)
    levels = q * 255
    assert torch.allclose(levels, levels.round(), atol=1e-9)          # on the 8-bit grid
    assert (q - x).abs().max() <= 0.5 / 255 + 1e-12                   # the nearest level
    assert torch.equal(quantize(q), q)                                 # idempotent
    assert quantize(torch.tensor([0.2 / 255, 0.7 / 255, 254.6 / 255], dtype=torch.float64)).mul(255).tolist() == \
        pytest.approx([0.0, 1.0, 255.0])


def test_batch_psnr_is_the_per_image_psnr_of_each_sample():
    generator = torch.Generator().manual_seed(5)
    gt = torch.rand(3, 3, 8, 8, generator=generator)
    pred = (gt + 0.05 * torch.randn(3, 3, 8, 8, generator=generator)).clamp(0, 1)
    values = batch_psnr(pred, gt)
    assert values.shape == (3,) and values.dtype == torch.float32
    assert values.tolist() == pytest.approx([psnr(p, g) for p, g in zip(pred, gt)], abs=1e-4)
    assert batch_psnr(gt, gt).tolist() == pytest.approx([100.0] * 3)      # floored, never inf
