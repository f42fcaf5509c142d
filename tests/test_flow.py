"""Tests for the Phase 2 flow estimator (model/flow.py) and ContextNet (model/context.py). CPU, tiny widths."""

from __future__ import annotations

import pytest
import torch

from model.context import ContextNet
from model.flow import FlowBlock, FlowOutput, OpticalFlowEstimator
from model.ops.warp import backward_warp

TINY = dict(widths=(16, 12, 8), scales=(4, 2, 1), num_res_layers=1)
SIZES = [(64, 96), (50, 70)]


def make_estimator(feature_channels=(0, 0, 0), seed: int = 0) -> OpticalFlowEstimator:
    torch.manual_seed(seed)
    return OpticalFlowEstimator(**TINY, feature_channels=feature_channels).eval()


def make_frames(height: int, width: int, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    img0 = torch.rand(batch, 3, height, width, generator=generator)
    img1 = torch.rand(batch, 3, height, width, generator=generator)
    return img0, img1


def make_features(batch: int, channels: int, sizes, seed: int = 2):
    """One (f0, f1) pair per block, each (B, channels, h_k, w_k)."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, channels, h, w, generator=generator),
             torch.randn(batch, channels, h, w, generator=generator)) for h, w in sizes]


def assert_output_shapes(out: FlowOutput, batch: int, height: int, width: int) -> None:
    assert out.flow.shape == (batch, 4, height, width)
    assert out.mask_logit.shape == (batch, 1, height, width)
    assert out.warped0.shape == (batch, 3, height, width)
    assert out.warped1.shape == (batch, 3, height, width)
    assert len(out.intermediate) == 3
    for warped0, warped1, mask_logit in out.intermediate:
        assert warped0.shape == warped1.shape == (batch, 3, height, width)
        assert mask_logit.shape == (batch, 1, height, width)
    assert torch.isfinite(out.flow).all() and torch.isfinite(out.mask_logit).all()


# ----------------------------------------------------------------------------------------------- flow estimator

def test_block_input_channels_follow_the_7_18_layout():
    estimator = make_estimator()
    assert estimator.in_channels == (7, 18, 18)
    assert [block.stage1[0].in_channels for block in estimator.blocks] == [7, 18, 18]
    assert estimator.pad_multiple == 16


def test_default_parameter_count_matches_spec():
    # Spec: FlowEstimator 6.82M (RIFE IFNet_m student blocks 7->240, 18->150, 18->90 at 8 residual layers).
    count = sum(p.numel() for p in OpticalFlowEstimator().parameters())
    print(f"OpticalFlowEstimator default parameters: {count}")
    assert abs(count - 6.82e6) < 0.01e6


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("t_kind", ["float", "0d", "per_sample_1d", "per_sample_4d"])
def test_output_shapes_for_every_timestep_form(height, width, t_kind):
    estimator = make_estimator()
    img0, img1 = make_frames(height, width)
    t = {"float": 0.5,
         "0d": torch.tensor(0.5),
         "per_sample_1d": torch.tensor([0.25, 0.75]),
         "per_sample_4d": torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)}[t_kind]
    with torch.no_grad():
        out = estimator(img0, img1, t)
    assert_output_shapes(out, 2, height, width)


def test_scalar_forms_agree_and_bad_timestep_is_rejected():
    estimator = make_estimator()
    img0, img1 = make_frames(64, 96)
    with torch.no_grad():
        from_float = estimator(img0, img1, 0.3).flow
        from_tensor = estimator(img0, img1, torch.tensor(0.3)).flow
        from_per_sample = estimator(img0, img1, torch.tensor([0.3, 0.3])).flow
    torch.testing.assert_close(from_tensor, from_float)
    torch.testing.assert_close(from_per_sample, from_float)
    with pytest.raises(ValueError):
        estimator(img0, img1, torch.tensor([0.1, 0.2, 0.3]))


def test_per_sample_timestep_is_broadcast_per_sample():
    estimator = make_estimator()
    img0, img1 = make_frames(64, 96, batch=1)
    pair0, pair1 = img0.expand(2, -1, -1, -1), img1.expand(2, -1, -1, -1)   # same images in both samples
    with torch.no_grad():
        batched = estimator(pair0, pair1, torch.tensor([0.2, 0.8]))
        alone_02 = estimator(img0, img1, 0.2)
        alone_08 = estimator(img0, img1, 0.8)
    assert not torch.allclose(batched.flow[0], batched.flow[1])
    torch.testing.assert_close(batched.flow[0:1], alone_02.flow, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.flow[1:2], alone_08.flow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("height,width", SIZES)
def test_final_warps_use_the_final_flow(height, width):
    estimator = make_estimator()
    img0, img1 = make_frames(height, width)
    with torch.no_grad():
        out = estimator(img0, img1, 0.5)
    torch.testing.assert_close(out.warped0, backward_warp(img0, out.flow[:, 0:2]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.warped1, backward_warp(img1, out.flow[:, 2:4]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.intermediate[-1][2], out.mask_logit)


@pytest.mark.parametrize("height,width", SIZES)
def test_scale_factor_returns_full_size_flow_in_input_pixels(height, width):
    estimator = make_estimator()
    img0, img1 = make_frames(height, width)
    with torch.no_grad():
        out = estimator(img0, img1, 0.5, scale_factor=0.5)
        # Same thing by hand: estimate on the half-size frames, then upsample with values x2.
        small_size = (round(height * 0.5), round(width * 0.5))
        small0 = torch.nn.functional.interpolate(img0, size=small_size, mode="bilinear", align_corners=False)
        small1 = torch.nn.functional.interpolate(img1, size=small_size, mode="bilinear", align_corners=False)
        small = estimator(small0, small1, 0.5)
    assert out.flow.shape == (2, 4, height, width)
    assert out.mask_logit.shape == (2, 1, height, width)
    assert out.warped0.shape == out.warped1.shape == (2, 3, height, width)
    expected = torch.nn.functional.interpolate(small.flow, size=(height, width), mode="bilinear",
                                               align_corners=False) * 2.0
    torch.testing.assert_close(out.flow, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.warped0, backward_warp(img0, out.flow[:, 0:2]), rtol=1e-5, atol=1e-5)
    # Intermediates stay at the working resolution.
    assert out.intermediate[0][0].shape == (2, 3, *small_size)


def test_features_are_used_when_feature_channels_are_set():
    estimator = make_estimator(feature_channels=(4, 4, 4))
    img0, img1 = make_frames(50, 70)
    # Backbone-like maps at arbitrary resolutions (1/4 of the frame, then 1/2, then odd sizes).
    features_a = make_features(2, 4, [(13, 18), (25, 35), (50, 70)], seed=2)
    features_b = make_features(2, 4, [(13, 18), (25, 35), (50, 70)], seed=3)
    with torch.no_grad():
        out_a = estimator(img0, img1, 0.5, features=features_a)
        out_b = estimator(img0, img1, 0.5, features=features_b)
        out_half = estimator(img0, img1, 0.5, scale_factor=0.5, features=features_a)
    assert_output_shapes(out_a, 2, 50, 70)
    assert out_half.flow.shape == (2, 4, 50, 70)
    assert not torch.allclose(out_a.flow, out_b.flow)
    with pytest.raises(ValueError):
        estimator(img0, img1, 0.5)   # features are required when the blocks were built for them


def test_features_only_feed_blocks_that_take_them():
    estimator = make_estimator(feature_channels=(0, 4, 0))
    assert estimator.blocks[0].feature_projection is None and estimator.blocks[1].feature_projection is not None
    img0, img1 = make_frames(64, 96)
    features = make_features(2, 4, [(16, 24), (16, 24), (16, 24)])
    changed = [(a, b) for a, b in features]
    changed[0] = (features[0][0] + 1.0, features[0][1])     # block 0 ignores its entry
    with torch.no_grad():
        reference = estimator(img0, img1, 0.5, features=features).flow
        same = estimator(img0, img1, 0.5, features=changed).flow
        changed[1] = (features[1][0] + 1.0, features[1][1])
        different = estimator(img0, img1, 0.5, features=changed).flow
    torch.testing.assert_close(same, reference)
    assert not torch.allclose(different, reference)


def test_features_are_ignored_without_feature_channels():
    estimator = make_estimator()
    img0, img1 = make_frames(64, 96)
    features = make_features(2, 4, [(16, 24), (32, 48), (64, 96)])
    with torch.no_grad():
        without = estimator(img0, img1, 0.5)
        with_features = estimator(img0, img1, 0.5, features=features)
    torch.testing.assert_close(with_features.flow, without.flow)
    torch.testing.assert_close(with_features.mask_logit, without.mask_logit)


def test_gradients_reach_every_parameter():
    estimator = make_estimator(feature_channels=(4, 4, 4)).train()
    img0, img1 = make_frames(50, 70)
    features = make_features(2, 4, [(13, 18), (25, 35), (50, 70)])
    out = estimator(img0, img1, torch.tensor([0.3, 0.6]), features=features)
    total = out.flow.sum() + out.mask_logit.sum() + out.warped0.sum() + out.warped1.sum()
    total = total + sum(sum(item.sum() for item in block) for block in out.intermediate)
    total.backward()
    for name, parameter in estimator.named_parameters():
        assert parameter.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(parameter.grad).all(), f"non-finite gradient for {name}"


def test_runs_under_bfloat16_autocast():
    estimator = make_estimator()
    img0, img1 = make_frames(50, 70)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = estimator(img0, img1, torch.tensor([0.5, 0.5]))
    assert out.flow.dtype == torch.float32 and out.mask_logit.dtype == torch.float32
    assert_output_shapes(out, 2, 50, 70)


# ---------------------------------------------------------------------------------------------------- ContextNet

def test_context_default_parameter_count():
    count = sum(p.numel() for p in ContextNet().parameters())
    print(f"ContextNet(c=16, levels=3) parameters: {count}")
    assert count == 72304


@pytest.mark.parametrize("height,width", SIZES + [(37, 53)])
def test_context_shapes_and_channels(height, width):
    torch.manual_seed(0)
    context = ContextNet(base_channels=8, levels=3)
    image = torch.rand(2, 3, height, width)
    flow = torch.randn(2, 2, height, width)
    pyramid = context(image, flow)
    assert len(pyramid) == 3
    level_h, level_w = height, width
    for level, features in enumerate(pyramid):
        level_h, level_w = (level_h + 1) // 2, (level_w + 1) // 2
        assert features.shape == (2, 8 * 2 ** level, level_h, level_w)


def test_context_zero_flow_is_the_identity():
    torch.manual_seed(0)
    context = ContextNet(base_channels=8, levels=3)
    image = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        warped = context(image, torch.zeros(2, 2, 50, 70))
        plain = image
        for level, features in zip(context.levels, warped):
            plain = level(plain)    # the conv layers alone, no warping
            torch.testing.assert_close(features, plain, rtol=1e-5, atol=1e-5)


def test_context_integer_flow_shifts_level_one_by_half():
    torch.manual_seed(0)
    context = ContextNet(base_channels=8, levels=3)
    image = torch.rand(1, 3, 50, 70)
    flow = torch.zeros(1, 2, 50, 70)
    flow[:, 0] = 2.0      # +2 px in x at full resolution -> +1 px at H/2
    flow[:, 1] = -2.0     # -2 px in y at full resolution -> -1 px at H/2
    with torch.no_grad():
        unwarped = context(image)[0]
        warped = context(image, flow)[0]
    # warped(y, x) = features(y - 1, x + 1): compare away from the replicated border.
    torch.testing.assert_close(warped[..., 1:, :-1], unwarped[..., :-1, 1:], rtol=1e-5, atol=1e-5)


def test_context_rejects_mismatched_flow():
    context = ContextNet(base_channels=4, levels=2)
    with pytest.raises(ValueError):
        context(torch.rand(1, 3, 32, 32), torch.zeros(1, 2, 16, 16))


# --------------------------------------------------------------------------------------------------------
# Channel alignment for compiled inference (FlowBlock.align_channels_)
# --------------------------------------------------------------------------------------------------------
ODD = dict(widths=(24, 14, 10), scales=(4, 2, 1), num_res_layers=2)     # halves 12, 7, 5: two odd ones


def randomise_biases_and_slopes(module: torch.nn.Module, seed: int = 5) -> None:
    """Non-zero biases and distinct PReLU slopes everywhere, so that a zero placed at a wrong position shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.dim() == 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def aligned_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy
    from model.flow import align_flow_channels_
    aligned = copy.deepcopy(module)
    assert align_flow_channels_(aligned) == sum(isinstance(m, FlowBlock) for m in module.modules())
    return aligned


def assert_convs_aligned(module: torch.nn.Module) -> None:
    """Every conv's channel counts are multiples of 8 (weights and attributes alike), except the inputs from outside
    the trunk (stage1's image-space input, the feature projection's 2 x feature channels) and the head's 5 outputs."""
    for name, conv in module.named_modules():
        if not isinstance(conv, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            continue
        in_dim, out_dim = (0, 1) if isinstance(conv, torch.nn.ConvTranspose2d) else (1, 0)
        assert (conv.weight.shape[in_dim], conv.weight.shape[out_dim]) == (conv.in_channels, conv.out_channels), name
        assert conv.in_channels % 8 == 0 or name.endswith(("stage1.0", "feature_projection.0")), name
        assert conv.out_channels % 8 == 0 or (name.endswith("head") and conv.out_channels == 5), name


@pytest.mark.parametrize("feature_channels", [(0, 0, 0), (0, 3, 5)])
def test_aligned_estimator_computes_what_the_original_computes(feature_channels):
    """Odd trunk widths and odd halves, with and without the feature projection: every output (flow, mask, warps,
    per-block intermediates) equals the original's in float32, and every trunk conv is 8-aligned."""
    torch.manual_seed(0)
    estimator = OpticalFlowEstimator(**ODD, feature_channels=feature_channels).eval()
    randomise_biases_and_slopes(estimator)
    aligned = aligned_copy(estimator)
    assert_convs_aligned(aligned)
    # stage2 reads the half width (12, 7, 5 -> 16, 8, 8), with features twice that.
    assert [block.stage2[0].in_channels for block in aligned.blocks] == (
        [16, 8, 8] if feature_channels == (0, 0, 0) else [16, 16, 16])
    assert [block.residual_stack[0][0].out_channels for block in aligned.blocks] == [24, 16, 16]
    img0, img1 = make_frames(40, 56)
    features = make_features(2, 3, [(5, 7), (10, 14), (20, 28)]) if any(feature_channels) else None
    if features is not None:     # block 2 takes 5 channels per frame
        generator = torch.Generator().manual_seed(9)
        features[2] = (torch.randn(2, 5, 20, 28, generator=generator), torch.randn(2, 5, 20, 28, generator=generator))
    with torch.no_grad():
        expected = estimator(img0, img1, 0.3, features=features)
        got = aligned(img0, img1, 0.3, features=features)
    assert expected.flow.abs().mean() > 0.1            # a non-trivial flow: the trunk's values reach the output
    for want, have in zip(torch.utils._pytree.tree_leaves(expected), torch.utils._pytree.tree_leaves(got)):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)


def test_stage2_zero_columns_follow_each_half_of_its_input(monkeypatch):
    """stage2 reads cat(stage1, feature projection), each half widened 7 -> 8 by its own producer: the zero weight
    columns sit at 7 and 15, not at 14 and 15. The parity check above fails if they are put after the concatenation
    instead (shown here by aligning with that wrong layout)."""
    import copy

    import model.flow as flow_module
    torch.manual_seed(1)
    block = FlowBlock(18, 14, feature_channels=3, num_res_layers=1).eval()
    randomise_biases_and_slopes(block)
    aligned = copy.deepcopy(block).align_channels_()
    weight, original = aligned.stage2[0].weight, block.stage2[0].weight
    assert weight.shape == (16, 16, 3, 3)
    assert torch.equal(weight[:14, :7], original[:, :7]) and torch.equal(weight[:14, 8:15], original[:, 7:])
    assert not weight[:, [7, 15]].any() and not weight[14:].any()
    inputs, flow = torch.rand(2, 14, 16, 24), torch.randn(2, 4, 16, 24)
    features = torch.randn(2, 6, 4, 6)
    extra_channels = {}           # every widened map's added channels, which must be exact zeros
    for name, real in (("stage1", 7), ("feature_projection", 7), ("stage2", 14), ("residual_stack", 14)):
        def keep_extra(module, args, out, name=name, real=real) -> None:
            extra_channels[name] = out[:, real:]
        getattr(aligned, name).register_forward_hook(keep_extra)
    with torch.no_grad():
        expected = block(inputs, flow, 2, features)
        torch.testing.assert_close(aligned(inputs, flow, 2, features), expected, rtol=1e-5, atol=1e-5)
    assert {name: tuple(extra.shape[:2]) for name, extra in extra_channels.items()} == {
        "stage1": (2, 1), "feature_projection": (2, 1), "stage2": (2, 2), "residual_stack": (2, 2)}
    assert not any(extra.any() for extra in extra_channels.values())

    plain_layout = flow_module.aligned_layout
    monkeypatch.setattr(flow_module, "aligned_layout",       # the zero columns after the concatenation: wrong
                        lambda group_sizes, multiple=8: plain_layout([sum(group_sizes)], multiple))
    misplaced = copy.deepcopy(block).align_channels_()
    with torch.no_grad():
        assert not torch.allclose(misplaced(inputs, flow, 2, features)[0], expected[0], rtol=1e-3, atol=1e-3)


def test_aligned_block_refuses_checkpoints_and_aligns_once():
    """Its shapes match no checkpoint: saving or loading one says so instead of writing or reading wrong shapes."""
    from model.flow import AlignedForInferenceError
    estimator = OpticalFlowEstimator(**ODD)
    state = estimator.state_dict()
    aligned = aligned_copy(estimator)
    with pytest.raises(AlignedForInferenceError, match="blocks.0 was channel-aligned for compiled inference"):
        aligned.state_dict()
    with pytest.raises(AlignedForInferenceError, match="save or load the model before compiling it"):
        aligned.load_state_dict(state)
    block = aligned.blocks[1]
    weight = block.stage2[0].weight
    assert block.align_channels_(8) is block and block.stage2[0].weight is weight      # already aligned: as it is
    with pytest.raises(ValueError, match="already aligned to 8 channels, not 16"):
        block.align_channels_(16)
    assert block.width == 14 and block.in_channels == 18                                # the trained values


def test_compiled_aligned_block_matches_eager():
    """The compiled path of FlowBlock.forward (run_conv_prelu pads stage1's 18 input channels to 24 inside the
    concatenation; stage2's halves arrive aligned) traced by Dynamo, run without Inductor to stay fast."""
    torch.manual_seed(2)
    block = FlowBlock(18, 10, feature_channels=3, num_res_layers=1).eval()
    randomise_biases_and_slopes(block)
    inputs, flow, features = torch.rand(1, 14, 16, 16), torch.randn(1, 4, 16, 16), torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        expected = block(inputs, flow, 1, features)
        compiled = torch.compile(block.align_channels_(), backend="eager", dynamic=False)
        got = compiled(inputs, flow, 1, features)
    torch._dynamo.reset()
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
