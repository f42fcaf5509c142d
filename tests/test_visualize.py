"""The labelled sample grid shown in TensorBoard and written by the benchmarks' --save_images."""

from __future__ import annotations

import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from measures.visualize import GRID_PADDING, flow_to_rgb, panel_names, sample_grid  # noqa: E402

H, W = 32, 48


def frames(batch: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(batch, 3, H, W, generator=generator) for _ in range(4)]


def grid_width(panels: int) -> int:
    return panels * (W + GRID_PADDING) + GRID_PADDING


def test_phase1_grid_has_four_panels_and_no_mask_panel():
    img0, pred, gt, img1 = frames()
    grid = sample_grid(img0, pred, gt, img1, None, None)
    assert grid.shape[0] == 3 and grid.shape[2] == grid_width(4)
    assert panel_names(has_flow=False, has_mask=False) == ["I0", "prediction", "ground truth", "I1"]


def test_flow_model_grid_adds_two_flow_panels_and_the_mask():
    img0, pred, gt, img1 = frames()
    flow, mask = torch.randn(2, 4, H, W), torch.rand(2, 1, H, W)
    grid = sample_grid(img0, pred, gt, img1, flow, mask)
    assert grid.shape[2] == grid_width(7)
    assert panel_names(True, True)[4:] == ["flow t->0", "flow t->1", "mask"]


def test_labels_sit_in_a_band_above_the_unchanged_panels():
    img0, pred, gt, img1 = frames()
    plain = sample_grid(img0, pred, gt, img1, labels=False)
    labelled = sample_grid(img0, pred, gt, img1)
    assert plain.shape == (3, 2 * (H + GRID_PADDING) + GRID_PADDING, grid_width(4))   # the layout before labels
    band = labelled.shape[1] - plain.shape[1]
    assert band > 0 and torch.equal(labelled[:, band:], plain)
    assert labelled[:, :band].max() > 0.9                                               # white text was drawn
    # Panels in order: the second panel of the first row is the prediction.
    top, left = band + GRID_PADDING, W + 2 * GRID_PADDING
    assert torch.equal(labelled[:, top:top + H, left:left + W], pred[0])


def test_custom_labels_need_one_name_per_panel():
    img0, pred, gt, img1 = frames(1)
    grid = sample_grid(img0, pred, gt, img1, labels=["a", "b (25.00 dB)", "c", "d"])
    assert grid.shape[2] == grid_width(4)
    with pytest.raises(ValueError, match="3 labels for 4 panels"):
        sample_grid(img0, pred, gt, img1, labels=["a", "b", "c"])


def test_long_labels_are_shrunk_or_cut_to_their_panel():
    img0, pred, gt, img1 = (torch.rand(1, 3, 16, 20) for _ in range(4))
    grid = sample_grid(img0, pred, gt, img1, labels=["a very long label indeed"] * 4)
    assert grid.shape[2] == 4 * (20 + GRID_PADDING) + GRID_PADDING


def test_flow_colours_white_for_no_motion_and_saturated_for_the_largest():
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, 0, 0] = 3.0
    rgb = flow_to_rgb(flow)
    assert torch.allclose(rgb[0, :, 1, 1], torch.ones(3))
    assert rgb[0, :, 0, 0].min() < 0.01
