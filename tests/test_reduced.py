"""--work_scale (model/reduced.py): the model on downscaled frames, its flow, mask and residual applied at full size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from config import preset
from model import build_model
from model.reduced import ReducedResolution, reduce_resolution
from model.thesis import InterpolationOutput
from model.warplayer import BackwardWarp


class ConstantFlowModel(nn.Module):
    """Stand-in flow model: F_t->0 = (+dx, 0) and F_t->1 = (-dx, 0) in its input's pixels, mask 0.5, a constant
    residual; records the size, flow scale and prior of each call."""

    use_flow = True

    def __init__(self, dx: float, residual: float = 0.0):
        super().__init__()
        self.dx, self.residual = dx, residual
        self.warp = BackwardWarp()
        self.calls = []
        self.weight = nn.Parameter(torch.zeros(1))            # a device for the runners

    def forward(self, img0, img1, t=0.5, flow_scale=1.0, flow_prior=None):
        self.calls.append((tuple(img0.shape[-2:]), flow_scale, flow_prior))
        batch, _, height, width = img0.shape
        flow = torch.zeros(batch, 4, height, width)
        flow[:, 0], flow[:, 2] = self.dx, -self.dx
        mask = torch.full((batch, 1, height, width), 0.5)
        residual = torch.full((batch, 3, height, width), self.residual)
        warped0, warped1 = self.warp(img0, flow[:, :2]), self.warp(img1, flow[:, 2:])
        pred = (mask * warped0 + (1 - mask) * warped1 + residual).clamp(0, 1)
        return InterpolationOutput(pred, mask, residual, flow, warped0, warped1, [])


def test_flows_are_rescaled_and_the_full_resolution_frames_are_warped():
    """A flow of 1.5 px on the half-size frames is 3 px at full size, applied to the full-size frames themselves: the
    warped frame is the input shifted by exactly 3 px (no detail lost to the downscale), the mask and residual are
    upsampled, and the inner model saw the half-size frames and flow scale 0.25 / 0.5."""
    torch.manual_seed(0)
    inner = ConstantFlowModel(dx=1.5, residual=0.01)
    wrapper = ReducedResolution(inner, 0.5)
    img0, img1 = torch.rand(1, 3, 32, 48) * 0.9, torch.rand(1, 3, 32, 48) * 0.9
    out = wrapper(img0, img1, 0.5, flow_scale=0.25)
    assert inner.calls[0][:2] == ((16, 24), 0.5)
    assert out.pred.shape == out.warped0.shape == (1, 3, 32, 48) and out.flow.shape == (1, 4, 32, 48)
    assert torch.allclose(out.flow[:, 0], torch.full((1, 32, 48), 3.0)) and torch.allclose(out.flow[:, 1],
                                                                                          torch.zeros(1, 32, 48))
    # backward warp by +3 px in x: warped(x) = I0(x + 3), exact away from the right border
    assert torch.allclose(out.warped0[..., :, :-3], img0[..., :, 3:], atol=1e-5)   # grid arithmetic in float32
    assert torch.allclose(out.warped1[..., :, 3:], img1[..., :, :-3], atol=1e-5)
    expected = (0.5 * out.warped0 + 0.5 * out.warped1 + 0.01).clamp(0, 1)
    assert torch.allclose(out.pred, expected, atol=1e-6)
    # the flow scale is capped at the work frames' size
    wrapper(img0, img1, 0.5, flow_scale=1.0)
    assert inner.calls[-1][1] == 1.0


def test_a_prior_is_resized_with_its_vectors_for_the_inner_model():
    inner = ConstantFlowModel(dx=0.0)
    prior = torch.zeros(1, 4, 32, 48)
    prior[:, 0], prior[:, 3] = 6.0, -4.0
    ReducedResolution(inner, 0.5)(torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 48), 0.5, flow_prior=prior)
    small = inner.calls[0][2]
    assert small.shape == (1, 4, 16, 24)
    assert torch.allclose(small[:, 0], torch.full((1, 16, 24), 3.0)) and torch.allclose(small[:, 3],
                                                                                       torch.full((1, 16, 24), -2.0))


def test_scale_one_is_the_model_itself_and_phase_one_is_refused():
    model = build_model(preset(2, "tiny")).eval()
    assert reduce_resolution(model, None) is model and reduce_resolution(model, 1.0) is model
    with pytest.raises(ValueError, match="--work_scale"):
        reduce_resolution(build_model(preset(1, "tiny")), 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ReducedResolution(model, 1.5)


def test_a_real_model_at_half_scale_predicts_full_size_frames_with_tta():
    """The tiny Phase-2 model through the wrapper: full-size prediction in [0, 1], TTA averages two passes, and the
    model's children are reachable for --flops and compilation (named model.backbone, ...)."""
    torch.manual_seed(0)
    wrapper = ReducedResolution(build_model(preset(2, "tiny")).eval(), 0.5)
    img0, img1 = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    plain = wrapper.inference(img0, img1, 0.5)
    with_tta = wrapper.inference(img0, img1, 0.5, tta=True)
    assert plain.shape == with_tta.shape == (1, 3, 64, 96)
    assert 0 <= float(plain.min()) and float(plain.max()) <= 1 and not torch.equal(plain, with_tta)
    names = {name for name, _ in wrapper.named_children()} | {name for name, _ in wrapper.model.named_children()}
    assert {"model", "backbone", "flow_estimator", "refine"} <= names
    assert wrapper.config is wrapper.model.config and wrapper.use_flow and not wrapper.needs_flow_prior
