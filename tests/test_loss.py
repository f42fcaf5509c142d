"""Behavioural tests for model/loss.py and the VGG19 trunk it measures with, model/vgg19.py (CPU, small images)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.loss import (
    LOSS_LOG_KEYS,
    CompositeLoss,
    FlowSmoothnessLoss,
    FlowTeacherLoss,
    PriorAnchorLoss,
    LaplacianLoss,
    LossWeights,
    TernaryLoss,
    VGGPerceptualLoss,
)
from model.ops.warp import backward_warp
from model.vgg19 import VGG19_HUB_FILENAME, VGG_WEIGHTS_ENV_VAR, VGGWeightsUnavailable

SHAPES = [(2, 3, 64, 64), (1, 3, 45, 67)]


def _images(shape, seed=0, low=0.0, high=1.0):
    generator = torch.Generator().manual_seed(seed)
    first = low + (high - low) * torch.rand(shape, generator=generator)
    second = low + (high - low) * torch.rand(shape, generator=generator)
    return first, second


def _smooth_images(shape, seed=0):
    """Two different but natural-ish images (blurred noise) in [0, 1]."""
    noisy_a, noisy_b = _images((shape[0], shape[1], shape[2] // 4 + 2, shape[3] // 4 + 2), seed)
    resize = dict(size=shape[-2:], mode="bilinear", align_corners=False)
    return F.interpolate(noisy_a, **resize), F.interpolate(noisy_b, **resize)


@pytest.fixture
def no_vgg_weights(monkeypatch, tmp_path):
    """No VGG19 weights anywhere: empty torch hub dir, env var unset. Returns the hub checkpoints dir."""
    hub_dir = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
    monkeypatch.delenv(VGG_WEIGHTS_ENV_VAR, raising=False)
    return hub_dir / "checkpoints"


@pytest.fixture(scope="module")
def random_vgg():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-thesis-vfi-hub")
        patch.delenv(VGG_WEIGHTS_ENV_VAR, raising=False)
        return VGGPerceptualLoss(allow_random=True)


def _assert_zero_positive_and_differentiable(loss_fn, shape, seed=0):
    first, second = _images(shape, seed)
    assert loss_fn(first, first.clone()).item() == 0.0
    pred = first.clone().requires_grad_(True)
    value = loss_fn(pred, second)
    assert value.dim() == 0 and value.dtype == torch.float32
    assert value.item() > 0.0
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ Laplacian


def _reference_laplacian_loss(pred: torch.Tensor, gt: torch.Tensor, levels: int = 5) -> float:
    """Straightforward float64 NumPy version of docs/DESIGN.md 8.2: two pyramids, tap-by-tap 5x5 sums, reflect padding."""
    taps = np.array([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = np.outer(taps, taps) / 256.0

    def blur(image, scale):
        height, width = image.shape[-2:]
        padded = np.pad(image, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
        out = np.zeros_like(image)
        for i in range(5):
            for j in range(5):
                out += scale * kernel[i, j] * padded[..., i:i + height, j:j + width]
        return out

    def pyramid(image):
        bands = []
        for _ in range(levels):
            height, width = image.shape[-2:]
            if min(height, width) < 5:
                break
            down = blur(image, 1.0)[..., ::2, ::2]
            zero_inserted = np.zeros(down.shape[:2] + (2 * down.shape[2], 2 * down.shape[3]))
            zero_inserted[..., ::2, ::2] = down
            bands.append(image - blur(zero_inserted, 4.0)[..., :height, :width])
            image = down
        return bands

    pred_bands = pyramid(pred.double().numpy())
    gt_bands = pyramid(gt.double().numpy())
    return sum(np.abs(a - b).mean() for a, b in zip(pred_bands, gt_bands))


@pytest.mark.parametrize("shape", SHAPES)
def test_laplacian_zero_positive_and_gradients(shape):
    _assert_zero_positive_and_differentiable(LaplacianLoss(), shape)


@pytest.mark.parametrize("shape", SHAPES + [(1, 3, 9, 300), (2, 1, 32, 32)])
def test_laplacian_matches_float64_reference(shape):
    pred, gt = _images(shape, seed=1)
    expected = _reference_laplacian_loss(pred, gt)
    assert LaplacianLoss()(pred, gt).item() == pytest.approx(expected, abs=1e-6, rel=1e-6)


def test_laplacian_levels_and_bands():
    loss_fn = LaplacianLoss()
    # 45x67 -> 23x34 -> 12x17 -> 6x9 -> 3x5: the fifth level would be smaller than the kernel, so four bands.
    bands = loss_fn.pyramid(torch.rand(1, 3, 45, 67))
    assert [tuple(band.shape[-2:]) for band in bands] == [(45, 67), (23, 34), (12, 17), (6, 9)]
    # A constant image has no band-pass content.
    assert all(band.abs().max() < 1e-6 for band in loss_fn.pyramid(torch.full((1, 3, 64, 64), 0.3)))
    with pytest.raises(ValueError, match="at least 5x5"):
        loss_fn(torch.rand(1, 3, 4, 16), torch.rand(1, 3, 4, 16))


# ------------------------------------------------------------------------------------------------ Census


def _reference_ternary_loss(pred: torch.Tensor, gt: torch.Tensor, patch_size: int = 7) -> float:
    """Offset-by-offset float64 version of docs/DESIGN.md 8.3 with a margin of patch_size // 2 and mean over valid pixels."""
    def luma(image):
        image = image.double().numpy()
        return 0.2989 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]

    pred_luma, gt_luma = luma(pred), luma(gt)
    height, width = pred_luma.shape[-2:]
    margin = patch_size // 2
    rows, cols = slice(margin, height - margin), slice(margin, width - margin)
    per_offset = []
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            shifted_rows = slice(margin + dy, height - margin + dy)
            shifted_cols = slice(margin + dx, width - margin + dx)

            def code(grey):
                t = grey[:, shifted_rows, shifted_cols] - grey[:, rows, cols]
                return t / np.sqrt(0.81 + t * t)

            d = code(pred_luma) - code(gt_luma)
            per_offset.append(d * d / (0.1 + d * d))
    return np.mean(np.stack(per_offset).mean(axis=0))


@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_zero_positive_and_gradients(shape):
    _assert_zero_positive_and_differentiable(TernaryLoss(), shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_matches_reference_with_3px_margin(shape):
    pred, gt = _images(shape, seed=2)
    assert TernaryLoss()(pred, gt).item() == pytest.approx(_reference_ternary_loss(pred, gt), abs=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_ignores_brightness_shift_but_sees_structure(shape):
    loss_fn = TernaryLoss()
    pred, gt = _images(shape, seed=3, low=0.2, high=0.7)
    shift = 0.25
    base = loss_fn(pred, gt)
    assert loss_fn(pred + shift, gt + shift).item() == pytest.approx(base.item(), abs=1e-6)
    # The same image, only brighter: census sees no difference (an L1 loss would).
    assert loss_fn(gt + shift, gt).item() < 1e-6
    # A structural change (a bright square) is seen.
    changed = gt.clone()
    changed[..., 10:20, 12:24] = 0.95
    assert loss_fn(changed, gt).item() > 1e-3


# ------------------------------------------------------------------------------------------------ Flow smoothness


def _step_flow(height, width, column):
    flow = torch.zeros(1, 4, height, width)
    flow[..., column:] = 3.0          # a 3 px motion discontinuity at `column`, in every channel
    return flow


def _step_image(height, width, column):
    image = torch.full((1, 3, height, width), 0.2)
    image[..., column:] = 0.8
    return image


@pytest.mark.parametrize("order", [1, 2])
def test_smoothness_zero_for_constant_flow_and_differentiable(order):
    loss_fn = FlowSmoothnessLoss(order=order)
    image = torch.rand(2, 3, 32, 40)
    constant = torch.tensor([1.5, -2.0, 0.25, 4.0]).view(1, 4, 1, 1).expand(2, 4, 32, 40)
    assert loss_fn(constant, image).item() == 0.0
    flow = torch.randn(2, 4, 32, 40, requires_grad=True)
    value = loss_fn(flow, image)
    assert value.item() > 0
    value.backward()
    assert torch.isfinite(flow.grad).all() and flow.grad.abs().sum() > 0


def test_smoothness_first_order_value_on_a_step():
    # Flat image: weights are 1; |dx F| = 3 on one column of 8 x 15 differences; dy F = 0.
    height, width, column = 8, 16, 5
    value = FlowSmoothnessLoss(order=1)(_step_flow(height, width, column), torch.full((1, 3, height, width), 0.5))
    expected = 0.5 * (3.0 / 2 * height / (height * (width - 1)))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_second_order_ignores_affine_flow():
    ramp = torch.linspace(0.0, 10.0, 24).view(1, 1, 1, 24).expand(1, 4, 16, 24)
    image = torch.rand(1, 3, 16, 24)
    assert FlowSmoothnessLoss(order=1)(ramp, image).item() > 0
    assert FlowSmoothnessLoss(order=2)(ramp, image).item() == pytest.approx(0.0, abs=1e-6)


# Order 1: the single flow difference at the step sits on the image edge, so the penalty almost vanishes.
# Order 2: the step gives two second differences (centred either side of the edge) and ARFlow's weight crop
# (w_x[..., 1:]) gates only one of them with the edge, so the penalty halves.
@pytest.mark.parametrize("order, max_ratio", [(1, 0.01), (2, 0.55)])
def test_smoothness_is_edge_aware_and_uses_the_given_image(order, max_ratio):
    loss_fn = FlowSmoothnessLoss(order=order)
    height, width, column = 24, 32, 13
    flow = _step_flow(height, width, column)
    target_frame = _step_image(height, width, column)         # I_t: edge where the flow jumps
    first_frame = _step_image(height, width, column - 6)      # I_0: the edge is elsewhere
    flat = torch.full((1, 3, height, width), 0.5)
    at_edge = loss_fn(flow, target_frame).item()
    without_edge = loss_fn(flow, flat).item()
    assert 0 < at_edge < max_ratio * without_edge
    assert loss_fn(flow, first_frame).item() == pytest.approx(without_edge, rel=1e-6)


def test_smoothness_resizes_image_to_low_resolution_flow():
    loss_fn = FlowSmoothnessLoss()
    image = torch.rand(2, 3, 64, 48)
    flow = torch.randn(2, 4, 16, 12)
    expected = loss_fn(flow, F.avg_pool2d(image, 4))
    assert loss_fn(flow, image).item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ VGG


def test_vgg_random_weights_zero_positive_and_gradients(random_vgg):
    _assert_zero_positive_and_differentiable(random_vgg, (2, 3, 64, 64))
    _assert_zero_positive_and_differentiable(random_vgg, (1, 3, 45, 67))


def test_vgg_is_frozen_eval_only_and_not_serialised(random_vgg):
    assert random_vgg.weights_source == "random"
    assert list(random_vgg.parameters()) == []
    assert random_vgg.state_dict() == {}
    random_vgg.train()
    assert not random_vgg.training and not any(module.training for module in random_vgg.modules())
    conv_buffers = [buffer for name, buffer in random_vgg.features.named_buffers() if name.endswith("weight")]
    assert len(conv_buffers) == 13 and not any(buffer.requires_grad for buffer in conv_buffers)


def test_vgg_trunk_ends_at_the_deepest_tap(random_vgg):
    """model/vgg19.py cuts the trunk where the loss reads its last activation (relu5_1): a shorter trunk would drop
    that term silently, a longer one would run layers nobody reads."""
    from model.loss import _VGG19_TAP_INDICES
    assert len(random_vgg.features) == max(_VGG19_TAP_INDICES) + 1
    assert isinstance(random_vgg.features[max(_VGG19_TAP_INDICES)], torch.nn.ReLU)


def test_vgg_moves_with_to(no_vgg_weights):
    # The frozen weights are non-persistent buffers, which .to() still moves (meta stands in for CUDA here).
    vgg = VGGPerceptualLoss(allow_random=True).to("meta")
    assert all(buffer.device.type == "meta" for buffer in vgg.buffers())
    assert vgg.features[0].weight.device.type == "meta"


def test_vgg_without_weights_raises(no_vgg_weights):
    with pytest.raises(VGGWeightsUnavailable, match="--vgg_weights") as error:
        VGGPerceptualLoss()
    assert VGG_WEIGHTS_ENV_VAR in str(error.value) and VGG19_HUB_FILENAME in str(error.value)


def _random_trunk_tensors(random_vgg, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(buffer.shape, generator=generator) * 0.01
            for name, buffer in random_vgg.features.named_buffers()}


def _assert_loaded(vgg, tensors):
    loaded = dict(vgg.features.named_buffers())
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


def test_vgg_loads_features_only_file_from_argument(random_vgg, no_vgg_weights, tmp_path):
    tensors = _random_trunk_tensors(random_vgg)
    path = tmp_path / "vgg_features.pth"
    torch.save(tensors, path)
    vgg = VGGPerceptualLoss(weights_path=path)
    assert vgg.weights_source == str(path)
    _assert_loaded(vgg, tensors)


def test_vgg_loads_full_torchvision_layout_from_env_and_hub(random_vgg, no_vgg_weights, tmp_path, monkeypatch):
    tensors = _random_trunk_tensors(random_vgg, seed=1)
    full = {f"features.{name}": value for name, value in tensors.items()}
    full["features.30.weight"] = torch.zeros(512, 512, 3, 3)      # conv5_2: beyond relu5_1, must be ignored
    full["classifier.0.weight"] = torch.zeros(4, 4)               # classifier: ignored
    path = tmp_path / "full_vgg19.pth"
    torch.save(full, path)
    monkeypatch.setenv(VGG_WEIGHTS_ENV_VAR, str(path))
    _assert_loaded(VGGPerceptualLoss(), tensors)

    monkeypatch.delenv(VGG_WEIGHTS_ENV_VAR)
    no_vgg_weights.mkdir(parents=True)
    torch.save(full, no_vgg_weights / VGG19_HUB_FILENAME)
    vgg = VGGPerceptualLoss()
    assert vgg.weights_source == str(no_vgg_weights / VGG19_HUB_FILENAME)
    _assert_loaded(vgg, tensors)


def test_vgg_rejects_mismatched_files_in_one_line(random_vgg, no_vgg_weights, tmp_path):
    tensors = _random_trunk_tensors(random_vgg)
    wrong_shape = dict(tensors, **{"28.weight": torch.zeros(512, 256, 3, 3)})
    candidates = {
        "unrelated.pth": {"encoder.weight": torch.zeros(3)},
        "wrong_shape.pth": wrong_shape,
        "truncated.pth": {name: value for name, value in tensors.items() if not name.startswith("28.")},
    }
    for file_name, content in candidates.items():
        torch.save(content, tmp_path / file_name)
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint")
    for file_name in list(candidates) + ["garbage.pth"]:
        path = tmp_path / file_name
        with pytest.raises(ValueError) as error:
            VGGPerceptualLoss(weights_path=path)
        message = str(error.value)
        assert str(path) in message and "\n" not in message, message
    with pytest.raises(FileNotFoundError):
        VGGPerceptualLoss(weights_path=tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------ Composite


@pytest.fixture(scope="module")
def composite_phase2(random_vgg):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-thesis-vfi-hub")
        patch.delenv(VGG_WEIGHTS_ENV_VAR, raising=False)
        return CompositeLoss(phase=2, vgg_allow_random=True)


def test_composite_phase1_without_vgg_weights_warns_once(no_vgg_weights):
    pred, gt = _smooth_images((2, 3, 64, 64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn = CompositeLoss(phase=1)
        total, logs = loss_fn(pred, gt, flow=torch.randn(2, 4, 64, 64))  # phase 1 ignores the flow
        loss_fn(pred, gt)
    vgg_warnings = [w for w in caught if "VGG" in str(w.message)]
    assert len(vgg_warnings) == 1 and len(caught) == 1
    assert "--vgg_weights" in str(vgg_warnings[0].message)
    assert loss_fn.vgg_enabled is False
    assert tuple(logs) == LOSS_LOG_KEYS
    assert logs["loss_vgg"].item() == 0.0 and logs["loss_flow_smooth"].item() == 0.0
    assert total.item() == pytest.approx(logs["loss_lap"].item() + logs["loss_ter"].item(), rel=1e-6)
    assert loss_fn.state_dict() == {}


def test_composite_phase2_requires_flow(composite_phase2):
    pred, gt = _smooth_images((1, 3, 32, 32))
    with pytest.raises(ValueError, match="flow"):
        composite_phase2(pred, gt)


@pytest.mark.parametrize("shape", SHAPES)
def test_composite_phase2_total_is_weighted_sum(composite_phase2, shape):
    pred, gt = _smooth_images(shape, seed=4)
    pred.requires_grad_(True)
    flow = torch.randn(shape[0], 4, shape[2], shape[3], requires_grad=True)
    total, logs = composite_phase2(pred, gt, flow)
    assert composite_phase2.vgg_enabled
    assert set(logs) == set(LOSS_LOG_KEYS) and len(logs) == 8
    assert all(value.dim() == 0 and value.dtype == torch.float32 and not value.requires_grad
               for value in logs.values())
    off_by_default = ("loss_inter", "loss_flow_teacher", "loss_prior_anchor")
    assert all(logs[key].item() > 0 for key in LOSS_LOG_KEYS if key not in off_by_default)
    assert all(logs[key].item() == 0.0 for key in off_by_default)   # deep supervision and the teacher are off
    # The dict holds unweighted terms: they equal the individual losses.
    assert logs["loss_lap"].item() == pytest.approx(LaplacianLoss()(pred, gt).item(), rel=1e-6)
    assert logs["loss_flow_smooth"].item() == pytest.approx(FlowSmoothnessLoss()(flow, gt).item(), rel=1e-6)
    weights = LossWeights()
    expected = (weights.lap * logs["loss_lap"] + weights.ter * logs["loss_ter"]
                + weights.vgg * logs["loss_vgg"] + weights.flow_smooth * logs["loss_flow_smooth"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["loss_total"].item() == pytest.approx(total.item(), rel=1e-7)
    total.backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(flow.grad).all() and flow.grad.abs().sum() > 0


def test_composite_custom_weights_and_zero_for_constant_flow(no_vgg_weights):
    weights = LossWeights(lap=2.0, ter=0.5, vgg=0.0, flow_smooth=0.3)
    loss_fn = CompositeLoss(phase=3, weights=weights)
    assert not loss_fn.vgg_enabled
    pred, gt = _smooth_images((1, 3, 40, 40), seed=5)
    total, logs = loss_fn(pred, gt, torch.ones(1, 4, 40, 40))
    assert logs["loss_flow_smooth"].item() == 0.0
    assert total.item() == pytest.approx(2.0 * logs["loss_lap"].item() + 0.5 * logs["loss_ter"].item(), rel=1e-6)
    with pytest.raises(ValueError):
        LossWeights(vgg=-1.0)
    with pytest.raises(ValueError):
        CompositeLoss(phase=4)


def test_composite_identical_images_give_zero(composite_phase2):
    _, gt = _smooth_images((1, 3, 32, 32))
    total, logs = composite_phase2(gt, gt.clone(), torch.zeros(1, 4, 32, 32))
    assert total.item() == 0.0 and all(value.item() == 0.0 for value in logs.values())


def test_composite_under_bf16_autocast_computes_in_float32(composite_phase2):
    pred_f32, gt = _smooth_images((2, 3, 48, 40), seed=6)
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.zero_()
    flow = torch.randn(2, 4, 24, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = conv(pred_f32)                          # a model output under autocast: bfloat16
        assert pred.dtype == torch.bfloat16
        total, logs = composite_phase2(pred, gt, flow.to(torch.bfloat16))
    assert total.dtype == torch.float32 and all(value.dtype == torch.float32 for value in logs.values())
    # Same numbers as a plain float32 call on the same (bf16-rounded) inputs: autocast really was off inside.
    reference_total, reference_logs = composite_phase2(pred.detach().float(), gt, flow.to(torch.bfloat16).float())
    assert total.item() == pytest.approx(reference_total.item(), rel=1e-5)
    for key in LOSS_LOG_KEYS:
        assert logs[key].item() == pytest.approx(reference_logs[key].item(), rel=1e-5, abs=1e-8)
    total.backward()
    assert torch.isfinite(conv.weight.grad).all()


# ------------------------------------------------------------------------------------------------ deep supervision


def test_spec_log_keys_stay_and_loss_inter_is_added():
    assert LOSS_LOG_KEYS == ("loss_lap", "loss_ter", "loss_vgg", "loss_flow_smooth", "loss_inter",
                             "loss_flow_teacher", "loss_prior_anchor", "loss_total")
    assert LossWeights().inter == 0.0 and LossWeights().flow_teacher == 0.0 and LossWeights().prior_anchor == 0.0


def test_deep_supervision_off_by_default_and_in_phase_1(no_vgg_weights):
    pred, gt = _smooth_images((2, 3, 64, 64), seed=7)
    blends = [_smooth_images((2, 3, 64, 64), seed=8 + i)[0] for i in range(3)]
    flow = torch.randn(2, 4, 64, 64)
    for loss_fn in (CompositeLoss(phase=2, weights=LossWeights(vgg=0.0)),
                    CompositeLoss(phase=1, weights=LossWeights(vgg=0.0, inter=0.5))):
        assert not loss_fn.deep_supervision_enabled
        total, logs = loss_fn(pred, gt, flow=flow, intermediate=blends)
        reference, _ = loss_fn(pred, gt, flow=flow)                  # without blends: the same number
        assert logs["loss_inter"].item() == 0.0 and total.item() == reference.item()


def test_deep_supervision_adds_half_the_laplacian_sum(no_vgg_weights):
    pred, gt = _smooth_images((2, 3, 64, 64), seed=11)
    blends = [_smooth_images((2, 3, 64, 64), seed=12 + i)[0] for i in range(3)]
    flow = torch.randn(2, 4, 64, 64)
    plain = CompositeLoss(phase=2, weights=LossWeights(vgg=0.0))
    supervised = CompositeLoss(phase=2, weights=LossWeights(vgg=0.0, inter=0.5))
    assert supervised.deep_supervision_enabled
    base, _ = plain(pred, gt, flow=flow)
    total, logs = supervised(pred, gt, flow=flow, intermediate=blends)
    laplacian_sum = sum(LaplacianLoss()(blend, gt).item() for blend in blends)
    assert logs["loss_inter"].item() == pytest.approx(laplacian_sum, rel=1e-6)         # unweighted sum
    assert total.item() == pytest.approx(base.item() + 0.5 * laplacian_sum, rel=1e-6)
    assert logs["loss_total"].item() == pytest.approx(total.item(), rel=1e-7)
    with pytest.raises(ValueError, match="intermediate_blends"):
        supervised(pred, gt, flow=flow)
    with pytest.raises(ValueError, match="intermediate blend 1"):
        supervised(pred, gt, flow=flow, intermediate=[blends[0], blends[1][..., :32, :32]])


def test_deep_supervision_gradient_reaches_every_flow_block_and_not_the_refinenet(no_vgg_weights):
    from config import preset
    from model import build_model
    torch.manual_seed(0)
    model = build_model(preset(2, size="tiny").model)
    img0, gt = _smooth_images((2, 3, 32, 32), seed=20)
    img1 = gt.roll(2, dims=-1)
    out = model(img0, img1, 0.5)
    assert len(out.intermediate_blends()) == 3
    only_inter = CompositeLoss(phase=2, weights=LossWeights(lap=0.0, ter=0.0, vgg=0.0, flow_smooth=0.0, inter=0.5))
    total, logs = only_inter(out.pred, gt, flow=out.flow, intermediate=out.intermediate_blends())
    assert logs["loss_inter"].item() > 0
    total.backward()
    for index, block in enumerate(model.flow_estimator.blocks):
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reaches flow block {index}"
    # The blends do not pass through the RefineNet: only the final prediction trains it.
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.refine.parameters())


# ------------------------------------------------------------------------------------------------ flow teacher


def _shifted_triplet(shift: int = 3, size: int = 32, seed: int = 7):
    """Smooth texture moving right by ``shift`` px per half step: img0, gt, img1 and the true flows at t."""
    generator = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.rand(1, 3, size + 4 * shift, size + 4 * shift, generator=generator), 5, 1, 2)
    crop = lambda offset: base[..., 2 * shift:2 * shift + size, offset:offset + size].contiguous()  # noqa: E731
    img0, gt, img1 = crop(2 * shift), crop(shift), crop(0)        # content moves right: gt(p) = img0(p - shift)
    true_flow = torch.zeros(1, 4, size, size)
    true_flow[:, 0] = -shift                                      # F_t->0 = -shift in x
    true_flow[:, 2] = shift                                       # F_t->1 = +shift in x
    return img0, gt, img1, true_flow


def test_flow_teacher_teaches_where_the_teacher_warps_better_and_only_there():
    img0, gt, img1, true_flow = _shifted_triplet()
    teacher = FlowTeacherLoss()
    zero_flow = torch.zeros_like(true_flow)
    # The teacher is right, the model's zero flow is wrong: the term is about the endpoint error (3 px per side).
    mask = teacher.trusted(true_flow, (img0, img1), gt, (img0, img1))
    assert mask[..., 4:-4, 4:-4].mean() > 0.9
    loss = teacher(zero_flow, true_flow, (img0, img1), gt)
    assert 3.0 < loss.item() < 6.5
    # The roles reversed (the model is right, the teacher wrong): nothing to learn from it, except in the border
    # columns whose content came from outside the frame (there the right flow's warp is wrong too).
    true_warps = (backward_warp(img0, true_flow[:, :2]), backward_warp(img1, true_flow[:, 2:]))
    assert teacher.trusted(zero_flow, (img0, img1), gt, true_warps)[..., 4:-4, 4:-4].sum() == 0
    assert teacher(true_flow, zero_flow, (img0, img1), gt).item() < 0.05 * loss.item()
    # Its gradient pulls the model's flow towards the teacher's.
    flow = zero_flow.clone().requires_grad_(True)
    teacher(flow, true_flow, (img0, img1), gt).backward()
    assert flow.grad[:, 0][..., 4:-4, 4:-4].mean() > 0 and flow.grad[:, 2][..., 4:-4, 4:-4].mean() < 0


def test_composite_adds_the_flow_teacher_term_and_demands_its_inputs():
    img0, gt, img1, true_flow = _shifted_triplet()
    composite = CompositeLoss(2, LossWeights(vgg=0.0, flow_teacher=0.5))
    flow = torch.zeros_like(true_flow)
    total, logs = composite(gt, gt, flow=flow, teacher_flow=true_flow, frames=(img0, img1))
    expected = FlowTeacherLoss()(flow, true_flow, (img0, img1), gt)
    assert logs["loss_flow_teacher"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert total.item() == pytest.approx(logs["loss_flow_smooth"].item() * 0.1 + 0.5 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="teacher_flow"):
        composite(gt, gt, flow=flow)
    assert not CompositeLoss(1, LossWeights(vgg=0.0, flow_teacher=0.5)).flow_teacher_enabled   # no flow in phase 1


# ------------------------------------------------------------------------------------------------ prior anchor


def test_prior_anchor_holds_the_flow_where_moving_did_not_pay_and_lets_go_where_it_did():
    """Left half: the prior is right and the model has moved off it (its warp is worse): held, pulled back. Right
    half: the prior is wrong and the model's flow is right (its warp better by more than the margin): let go."""
    img0, gt, img1, true_flow = _shifted_triplet()
    width = true_flow.shape[-1]
    left = torch.zeros_like(true_flow, dtype=torch.bool)
    left[..., : width // 2] = True
    wrong = torch.zeros_like(true_flow)                              # no motion: 3 px off on each side
    prior = torch.where(left, true_flow, wrong)
    model_flow = torch.where(left, wrong, true_flow)
    model_warps = (backward_warp(img0, model_flow[:, :2]), backward_warp(img1, model_flow[:, 2:]))
    anchor = PriorAnchorLoss()
    kept = anchor.trusted(prior, (img0, img1), gt, model_warps)
    assert kept[..., 4:-4, 4:width // 2 - 4].mean() > 0.9                 # held where the prior warps better
    assert kept[..., 4:-4, width // 2 + 4:-4].mean() < 0.1                # let go where the model's flow paid off
    flow = model_flow.clone().requires_grad_(True)
    anchor(flow, prior, (img0, img1), gt, model_warps).backward()
    grad = flow.grad
    assert grad[:, 0][..., 4:-4, 4:width // 2 - 4].mean() > 0 and grad[:, 2][..., 4:-4, 4:width // 2 - 4].mean() < 0
    assert grad[..., 4:-4, width // 2 + 4:-4].abs().max() < 0.1 * grad[..., 4:-4, 4:width // 2 - 4].abs().max()
    # Where moving changed nothing (a flat image: every warp is as good as any other) the move has not paid off, so
    # it is held: the burden of proof is on the model (the flow teacher's rule would let go here).
    flat = torch.full_like(gt, 0.5)
    assert anchor.trusted(prior, (flat, flat), flat, (flat, flat)).min() == 1
    assert FlowTeacherLoss().trusted(prior, (flat, flat), flat, (flat, flat)).max() == 0
    # A flow that has not moved off the prior gets no pull at all (the term only pulls back, never pushes).
    still = prior.clone().requires_grad_(True)
    anchor(still, prior, (img0, img1), gt).backward()
    assert still.grad.abs().max() == 0


def test_composite_adds_the_prior_anchor_and_demands_the_prior():
    img0, gt, img1, true_flow = _shifted_triplet()
    composite = CompositeLoss(2, LossWeights(vgg=0.0, prior_anchor=0.2))
    flow = torch.zeros_like(true_flow)
    total, logs = composite(gt, gt, flow=flow, frames=(img0, img1), prior_flow=true_flow)
    expected = PriorAnchorLoss()(flow, true_flow, (img0, img1), gt)
    assert expected.item() > 1.0 and logs["loss_prior_anchor"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert total.item() == pytest.approx(logs["loss_flow_smooth"].item() * 0.1 + 0.2 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="prior_flow"):
        composite(gt, gt, flow=flow, frames=(img0, img1))
    assert not CompositeLoss(1, LossWeights(vgg=0.0, prior_anchor=0.2)).prior_anchor_enabled
