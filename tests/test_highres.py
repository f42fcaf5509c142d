"""High-resolution inference: RefineNet's row strips give the whole-frame result with bounded memory."""

from __future__ import annotations

import pytest
import torch

from config import preset
from model import build_model
from model.refine import RefineNet


def random_refine_inputs(height: int, width: int, use_context: bool, batch: int = 1):
    features_channels = [4, 6, 8, 10, 12]
    torch.manual_seed(0)
    features = [torch.randn(2 * batch, c, height >> k, width >> k) for k, c in enumerate(features_channels)]
    context = [torch.randn(batch, 2 * c, height >> (k + 1), width >> (k + 1)) for k, c in enumerate((3, 5, 7))] \
        if use_context else None
    images = (torch.rand(batch, 3, height, width), torch.rand(batch, 3, height, width))
    return features_channels, features, images, torch.full((batch, 1, 1, 1), 0.3), context


@pytest.mark.parametrize("use_context", [False, True])
@pytest.mark.parametrize("height", [48, 80])      # 3 strips; 5 strips at full resolution, the last one short
def test_refinenet_strips_equal_whole_frame(use_context, height):
    channels, features, images, t, context = random_refine_inputs(height, 48, use_context)
    strip_bytes = 1                                # the smallest strips (16 rows)
    net = RefineNet(channels, (5, 6, 7, 8), image_channels=6, use_context=use_context,
                    context_channels=(3, 5, 7)).eval()
    for p in net.parameters():      # PReLU slopes and biases away from their defaults, so every path matters
        p.data.add_(0.1 * torch.randn_like(p))
    with torch.no_grad():
        net.strip_bytes = None
        whole = net(features, images, t, context)
        net.strip_bytes = strip_bytes
        assert net._strip_rows(6 + 2 * channels[0] + 1 + 8, features[0][:1], features[1][:1]) is not None
        strips = net(features, images, t, context)
    for a, b in zip(whole, strips):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_strips_only_without_gradients_and_at_exact_half_sizes():
    channels, features, images, t, context = random_refine_inputs(32, 32, False)
    net = RefineNet(channels, (5, 6, 7, 8), image_channels=6)
    net.strip_bytes = 1
    assert net._strip_rows(30, features[0][:1], features[1][:1]) is None          # grad mode: one pass
    with torch.no_grad():
        assert net._strip_rows(30, features[0][:1], features[1][:1]) == 16
        odd_state = torch.zeros(1, 8, 17, 16)
        assert net._strip_rows(30, features[0][:1], odd_state) is None


def test_compiled_inference_uses_the_larger_strip_budget(monkeypatch):
    """Under torch.compile the strips are ``compiled_strip_bytes`` large (fewer slice copies, measured faster at
    4K); eager inference keeps ``strip_bytes``."""
    channels, features, images, t, context = random_refine_inputs(64, 32, False)
    net = RefineNet(channels, (5, 6, 7, 8), image_channels=6)
    row_bytes = 30 * 32 * 4                                  # 30 channels, 32 columns, float32
    net.strip_bytes, net.compiled_strip_bytes = 20 * row_bytes, 40 * row_bytes
    with torch.no_grad():
        assert net._strip_rows(30, features[0][:1], features[1][:1]) == 20
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert net._strip_rows(30, features[0][:1], features[1][:1]) == 40
        net.compiled_strip_bytes = None
        assert net._strip_rows(30, features[0][:1], features[1][:1]) is None


@pytest.mark.parametrize("phase", [1, 2])
def test_model_inference_with_strips_matches_one_pass(phase):
    torch.manual_seed(1)
    model = build_model(preset(phase, "tiny").model).eval()
    img0, img1 = torch.rand(1, 3, 72, 100), torch.rand(1, 3, 72, 100)
    model.refine.strip_bytes = None
    whole = model.inference(img0, img1, 0.5)
    model.refine.strip_bytes = 2000
    strips = model.inference(img0, img1, 0.5)
    torch.testing.assert_close(strips, whole, rtol=1e-5, atol=1e-5)
