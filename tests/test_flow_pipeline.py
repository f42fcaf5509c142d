"""Phases 2/3: the flow pipeline inside ThesisModel, high-resolution inference, and dry runs with X4K data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train
from checkpoint import load_checkpoint
from config import preset
from model import build_model
from model.flow import FlowOutput

from conftest import moving_pattern


def tiny_phase2_model(seed=0):
    torch.manual_seed(seed)
    return build_model(preset(2, "tiny")).eval()


def test_zero_flow_and_even_mask_reduce_to_the_average_plus_residual(monkeypatch):
    model = tiny_phase2_model()
    img0, img1 = torch.rand(2, 3, 40, 56) * 0.5, torch.rand(2, 3, 40, 56) * 0.5   # sums stay inside [0, 1]

    def still(img0, img1, t, scale_factor=1.0, features=None, initial_flow=None):
        zeros = torch.zeros(img0.shape[0], 1, *img0.shape[-2:])
        return FlowOutput(torch.zeros(img0.shape[0], 4, *img0.shape[-2:]), zeros, img0, img1, [])
    monkeypatch.setattr(model.flow_estimator, "forward", still)

    def no_correction_constant_residual(features, image_inputs, timestep, context=None):   # padded size inside
        size = image_inputs[0].shape[-2:]          # the image maps arrive as parts (img0, img1, ...)
        return torch.zeros(2, 1, *size), torch.full((2, 3, *size), 0.1)
    monkeypatch.setattr(model.refine, "forward", no_correction_constant_residual)
    out = model(img0, img1, 0.5)
    torch.testing.assert_close(out.mask, torch.full_like(out.mask, 0.5))
    torch.testing.assert_close(out.pred, (img0 + img1) / 2 + 0.1)


def test_phase2_outputs_flow_and_warps_at_odd_sizes_and_per_sample_t():
    model = tiny_phase2_model(1)
    img0, img1 = torch.rand(2, 3, 50, 70), torch.rand(2, 3, 50, 70)
    out = model(img0, img1, torch.tensor([0.2, 0.8]))
    assert out.pred.shape == (2, 3, 50, 70) and out.flow.shape == (2, 4, 50, 70)
    assert out.warped0.shape == out.warped1.shape == (2, 3, 50, 70)
    assert len(out.intermediate) == 3
    alone = model(img0[1:], img1[1:], 0.8).pred
    torch.testing.assert_close(out.pred[1:], alone, rtol=1e-4, atol=1e-5)


def test_high_resolution_inference_and_flip_tta():
    model = tiny_phase2_model(2)
    img0, img1 = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    for scale in (1.0, 0.5, 0.25):
        pred = model.inference(img0, img1, 0.5, flow_scale=scale)
        assert pred.shape == (1, 3, 64, 96) and torch.isfinite(pred).all()
    assert not torch.allclose(model.inference(img0, img1, 0.5, flow_scale=0.5), model.inference(img0, img1, 0.5))
    tta = model.inference(img0, img1, 0.5, tta=True)
    flipped = model(img0.flip(2, 3), img1.flip(2, 3), 0.5).pred.flip(2, 3)
    torch.testing.assert_close(tta, (model(img0, img1, 0.5).pred + flipped) / 2)


def write_x4k(root: Path, clips: int = 2, frames: int = 9, size: int = 64) -> Path:
    for clip in range(clips):
        folder = root / "train" / f"type{clip % 2}" / f"clip{clip:03d}"
        folder.mkdir(parents=True)
        for index in range(frames):
            cv2.imwrite(str(folder / f"{index:04d}.png"), moving_pattern(size, size, 1.5 * index, seed=100 + clip))
    return root


@pytest.mark.parametrize("phase", [2, 3])
def test_dry_run_phase2_and_phase3_log_flow_smoothness(vimeo_root, tmp_path, phase):
    args = ["--phase", str(phase), "--data_path", str(vimeo_root), "--model_size", "tiny", "--batch_size", "2",
            "--crop_size", "32", "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir",
            str(tmp_path / "log"), "--exp_name", f"dry{phase}", "--dry_run", "--log_every", "1"]
    if phase == 3:
        args += ["--x4k_path", str(write_x4k(tmp_path / "x4k")), "--curriculum", "--curriculum_T", "4",
                 "--mixed_ratio", "1:1"]
    assert train.main(args) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "log" / f"dry{phase}_dryrun"))   # a dry run's own folder
    events.Reload()
    smooth = [e.value for e in events.Scalars("loss/loss_flow_smooth")]
    assert smooth and all(np.isfinite(smooth)) and max(smooth) > 0
    if phase == 3:
        assert events.Scalars("curriculum/max_gap")[0].value == 2
    assert load_checkpoint(tmp_path / "ckpt" / f"dry{phase}_dryrun_last.pt")["config"]["train"]["phase"] == phase


def test_coarser_flow_scales_do_a_quarter_of_the_flow_arithmetic_and_still_interpolate():
    """--flow_scales 8 4 2 (config.ModelConfig.flow_scales): every block one octave coarser, so each block's trunk
    has a quarter of the pixels (docs/PERF.md 10.2); the model still returns full-size outputs at an odd size and
    trains (gradients reach the flow blocks)."""
    from dataclasses import replace
    from torch.utils.flop_counter import FlopCounterMode

    def flow_gflop(model) -> float:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128), 0.5)
        return sum(counter.get_flop_counts()["ThesisModel.flow_estimator"].values()) / 1e9

    torch.manual_seed(0)
    fine = build_model(preset(2, "tiny")).eval()
    torch.manual_seed(0)
    coarse = build_model(replace(preset(2, "tiny").model, flow_scales=(8, 4, 2))).eval()
    assert coarse.flow_estimator.scales == (8, 4, 2) and fine.flow_estimator.scales == (4, 2, 1)
    assert 0.2 < flow_gflop(coarse) / flow_gflop(fine) < 0.3

    img0, img1 = torch.rand(2, 3, 70, 90), torch.rand(2, 3, 70, 90)
    coarse.train()
    out = coarse(img0, img1, 0.5)
    assert out.pred.shape == (2, 3, 70, 90) and out.flow.shape == (2, 4, 70, 90)
    out.pred.mean().backward()
    assert all(p.grad is not None for p in coarse.flow_estimator.blocks[0].parameters())
