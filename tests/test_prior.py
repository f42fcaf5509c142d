"""The classical flow prior (``--flow_prior dis``): the pair flows' conversion to time t, where the estimator starts,
what a model with a prior requires, and the DIS pair flows themselves."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from config import config_from_argv, preset
from measures.motion import PRIOR_WORK_MAX_SIDE, flow_pair, prior_from_pair, prior_pair_flows
from model import build_model
from model.flow import OpticalFlowEstimator
from model.ops.prior import flip_flows, flows_at_t
from model.ops.warp import backward_warp

from conftest import moving_pattern


def uniform_pair_flows(dx: float, dy: float, batch: int = 2, height: int = 8, width: int = 12) -> torch.Tensor:
    """Pair flows of a uniform translation by (dx, dy): F_0->1 = d, F_1->0 = -d."""
    flows = torch.empty(batch, 4, height, width)
    flows[:, 0], flows[:, 1], flows[:, 2], flows[:, 3] = dx, dy, -dx, -dy
    return flows


@pytest.mark.parametrize("t", [0.5, 0.25, 0.9])
def test_flows_at_t_of_a_uniform_translation_point_back_and_forward_by_their_share(t):
    out = flows_at_t(uniform_pair_flows(8.0, -4.0), torch.tensor([t, t]))
    # Frame t sits t of the way from I0 to I1: I0 is t * d behind it, I1 (1 - t) * d ahead.
    torch.testing.assert_close(out[:, 0], torch.full_like(out[:, 0], -t * 8.0))
    torch.testing.assert_close(out[:, 1], torch.full_like(out[:, 1], t * 4.0))
    torch.testing.assert_close(out[:, 2], torch.full_like(out[:, 2], (1 - t) * 8.0))
    torch.testing.assert_close(out[:, 3], torch.full_like(out[:, 3], -(1 - t) * 4.0))


def test_flows_at_t_takes_one_t_per_sample_and_refuses_other_shapes():
    pair = uniform_pair_flows(4.0, 0.0)
    out = flows_at_t(pair, torch.tensor([0.0, 1.0]))
    assert torch.all(out[0, :2] == 0) and torch.all(out[1, 2:] == 0)     # at t = 0 frame t is I0, at 1 it is I1
    with pytest.raises(ValueError, match="one per sample"):
        flows_at_t(pair, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        flows_at_t(pair[:, :2], 0.5)


def test_flipped_flows_warp_flipped_frames_as_the_flow_warps_the_frames():
    torch.manual_seed(0)
    image, flow = torch.rand(1, 3, 16, 20), torch.randn(1, 2, 16, 20) * 3
    torch.testing.assert_close(backward_warp(image.flip(2, 3), flip_flows(flow)),
                               backward_warp(image, flow).flip(2, 3), atol=1e-5, rtol=0)


def silent_estimator(**kwargs) -> OpticalFlowEstimator:
    """A freshly built estimator with a prior: its blocks' heads start at zero, so its output is where it starts."""
    return OpticalFlowEstimator(widths=(16, 12, 8), num_res_layers=1, prior=True, **kwargs)


@pytest.mark.parametrize("scale_factor", [1.0, 0.5])
def test_an_estimator_with_a_prior_starts_from_it(scale_factor):
    torch.manual_seed(1)
    img0, img1 = torch.rand(2, 3, 36, 52), torch.rand(2, 3, 36, 52)      # odd for the blocks: padded inside
    start = flows_at_t(uniform_pair_flows(6.0, 2.0, height=36, width=52), 0.5)
    out = silent_estimator()(img0, img1, 0.5, scale_factor=scale_factor, initial_flow=start)
    torch.testing.assert_close(out.flow, start, atol=1e-4, rtol=0)
    assert torch.all(out.mask_logit == 0)
    torch.testing.assert_close(out.warped0, backward_warp(img0, start[:, :2]), atol=1e-5, rtol=0)
    assert len(out.intermediate) == 3


def test_an_estimator_with_a_prior_needs_it_and_one_without_refuses_it():
    img = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="pass initial_flow"):
        silent_estimator()(img, img, 0.5)
    with pytest.raises(ValueError, match=r"initial_flow must be \(B, 4, H, W\)"):
        silent_estimator()(img, img, 0.5, initial_flow=torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="no prior"):
        OpticalFlowEstimator(widths=(16, 12, 8), num_res_layers=1)(img, img, 0.5, initial_flow=torch.zeros(1, 4, 32, 32))


def prior_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = preset(2, "tiny")
    return build_model(replace(cfg, model=replace(cfg.model, flow_prior="dis"))).eval()


def test_a_prior_model_uses_the_prior_at_any_size_with_tta():
    model = prior_model()
    assert model.flow_estimator.blocks[0].in_channels == 18          # the first block refines too
    img0, img1 = torch.rand(1, 3, 50, 70), torch.rand(1, 3, 50, 70)
    still, moving = torch.zeros(1, 4, 50, 70), uniform_pair_flows(10.0, 0.0, batch=1, height=50, width=70)
    out_still = model(img0, img1, 0.5, flow_prior=still)
    out_moving = model(img0, img1, 0.5, flow_prior=moving)
    assert out_still.pred.shape == (1, 3, 50, 70)
    assert (out_moving.flow - out_still.flow)[:, 0].mean() < -4          # F_t->0 moved by about -5 px
    pred = model.inference(img0, img1, 0.5, tta=True, flow_prior=moving)
    assert pred.shape == (1, 3, 50, 70) and torch.isfinite(pred).all()


def test_an_untrained_prior_model_is_the_classical_interpolation_and_learns_from_the_first_step():
    """Zero-initialised updates (model/flow.py, model/thesis.py): before training, the prediction is the two frames
    warped by the prior's flows at t and blended equally (no mask correction, no residual), whatever the random
    weights elsewhere; one optimizer step moves every head off zero."""
    model = prior_model(seed=3)
    plain = build_model(preset(2, "tiny"))
    assert plain.refine.head.weight.abs().sum() > 0                       # no prior: the default initialisation
    assert plain.flow_estimator.blocks[1].head.weight.abs().sum() > 0
    torch.manual_seed(4)
    img0, img1 = torch.rand(2, 3, 40, 56), torch.rand(2, 3, 40, 56)
    pair = uniform_pair_flows(6.0, -2.0, height=40, width=56)
    t = torch.tensor([0.5, 0.25])
    out = model(img0, img1, t, flow_prior=pair)
    start = flows_at_t(pair, t)
    torch.testing.assert_close(out.flow, start, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.mask, torch.full_like(out.mask, 0.5))
    assert torch.all(out.residual == 0)
    expected = 0.5 * backward_warp(img0, start[:, :2]) + 0.5 * backward_warp(img1, start[:, 2:])
    torch.testing.assert_close(out.pred, expected.clamp(0, 1), atol=1e-4, rtol=0)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.rand_like(img0)
    (model(img0, img1, t, flow_prior=pair).pred - target).abs().mean().backward()
    optimizer.step()
    heads = [block.head for block in model.flow_estimator.blocks] + [model.refine.head]
    assert all(head.weight.abs().sum() > 0 for head in heads)


def test_a_prior_model_names_the_missing_or_misshapen_prior():
    model = prior_model()
    img = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="--flow_prior dis: pass flow_prior"):
        model(img, img, 0.5)
    with pytest.raises(ValueError, match=r"flow_prior must be \(B, 4, H, W\) = \(1, 4, 32, 32\)"):
        model(img, img, 0.5, flow_prior=torch.zeros(1, 2, 32, 32))
    plain = build_model(preset(2, "tiny")).eval()
    with pytest.raises(ValueError, match="no flow prior"):
        plain(img, img, 0.5, flow_prior=torch.zeros(1, 4, 32, 32))


def test_the_flow_prior_flag_is_a_model_setting_of_phases_2_and_3(capsys):
    assert config_from_argv(["--phase", "2", "--data_path", "x", "--flow_prior", "dis"]).model.flow_prior == "dis"
    assert config_from_argv(["--phase", "2", "--data_path", "x"]).model.flow_prior == "none"
    for bad in (["--phase", "1", "--flow_prior", "dis"], ["--phase", "2", "--flow_prior", "raft"]):
        with pytest.raises(SystemExit):
            config_from_argv([*bad, "--data_path", "x"])
    assert "--flow_prior" in capsys.readouterr().err


def test_prior_pair_flows_measure_a_known_shift_both_ways():
    frame0 = moving_pattern(96, 128, 0.0, seed=3)
    frame1 = moving_pattern(96, 128, 5.0, seed=3)                          # content moves 5 px to the left
    flows = prior_pair_flows(frame0, frame1)
    assert flows.shape == (4, 96, 128) and flows.dtype == np.float32
    inner = (slice(None), slice(16, -16), slice(16, -16))
    assert abs(float(np.median(flows[inner][0])) + 5.0) < 0.5 and abs(float(np.median(flows[inner][2])) - 5.0) < 0.5
    assert abs(float(np.median(flows[inner][1]))) < 0.5
    # A benchmark reuses its motion flows where the prior would compute the same thing.
    np.testing.assert_array_equal(prior_from_pair(flow_pair(frame0, frame1), 96, 128), flows)
    assert prior_from_pair(flow_pair(frame0, frame1), 96, PRIOR_WORK_MAX_SIDE + 1) is None
