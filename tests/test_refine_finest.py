"""``--refine_finest half``: RefineNet's finest level at 1/2 behind a stride-2 entry, a transposed-convolution head.

What it must keep: the model's outputs and their shapes at any size, the prior model's classical start, gradients to
every parameter, and a checkpoint of the other arrangement refused by name. What it must change: no convolution of
RefineNet but the head writes a full-resolution map.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from checkpoint import config_differences, describe_model_differences
from config import ConfigError, config_from_argv, preset
from model import build_model
from model.ops.prior import flows_at_t
from model.ops.warp import backward_warp
from model.refine import HalfResolutionLevel, RefineNet


def tiny_model(phase: int, finest: str, **model_fields) -> nn.Module:
    cfg = preset(phase, "tiny")
    return build_model(replace(cfg, model=replace(cfg.model, refine_finest=finest, **model_fields))).eval()


def refine_conv_output_sizes(model: nn.Module, img0: torch.Tensor, img1: torch.Tensor, **inputs) -> dict[str, tuple]:
    """Spatial size (H, W) of every convolution's output inside model.refine over one forward."""
    sizes: dict[str, tuple] = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:])))
             for name, module in model.refine.named_modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(img0, img1, 0.5, **inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


@pytest.mark.parametrize("phase", [1, 2])
def test_half_finest_level_leaves_only_the_head_at_full_resolution(phase):
    torch.manual_seed(0)
    img0, img1 = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    full = refine_conv_output_sizes(tiny_model(phase, "full"), img0, img1)
    half = refine_conv_output_sizes(tiny_model(phase, "half"), img0, img1)
    at_full = lambda sizes: sorted(name for name, size in sizes.items() if size == (64, 96))
    assert len(at_full(full)) == 3                       # the design's finest level: two convolutions and the head
    assert at_full(half) == ["head"]
    assert half["levels.3.entry.0"] == (32, 48)        # the stride-2 entry reads full resolution, writes 1/2


@pytest.mark.parametrize("phase", [1, 2])
@pytest.mark.parametrize("size", [(40, 56), (33, 47)])
def test_half_finest_level_gives_full_size_images_at_any_size(phase, size):
    torch.manual_seed(1)
    img0, img1 = torch.rand(2, 3, *size), torch.rand(2, 3, *size)
    with torch.no_grad():
        out = tiny_model(phase, "half")(img0, img1, torch.tensor([0.3, 0.7]))
    assert out.pred.shape == (2, 3, *size) and out.mask.shape == (2, 1, *size)
    assert torch.isfinite(out.pred).all() and 0 <= float(out.pred.min()) and float(out.pred.max()) <= 1


def test_half_finest_level_trains_every_parameter():
    torch.manual_seed(2)
    model = tiny_model(2, "half").train()
    img0, img1, target = torch.rand(3, 2, 3, 32, 48).unbind(0)
    (model(img0, img1, 0.5).pred - target).abs().mean().backward()
    unreached = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert unreached == []


def test_half_finest_prior_model_starts_as_the_classical_interpolation():
    """The zero-initialised head is the transposed convolution now: the untrained prior model is still the prior's
    two warps blended equally, with no residual."""
    torch.manual_seed(3)
    model = tiny_model(2, "half", flow_prior="dis")
    assert isinstance(model.refine.head, nn.ConvTranspose2d) and not model.refine.head.weight.any()
    img0, img1 = torch.rand(1, 3, 40, 56), torch.rand(1, 3, 40, 56)
    pair = torch.zeros(1, 4, 40, 56)
    pair[:, 0], pair[:, 2] = 5.0, -5.0
    t = torch.tensor([0.5])
    out = model(img0, img1, t, flow_prior=pair)
    start = flows_at_t(pair, t)
    assert torch.all(out.residual == 0)
    expected = 0.5 * backward_warp(img0, start[:, :2]) + 0.5 * backward_warp(img1, start[:, 2:])
    torch.testing.assert_close(out.pred, expected.clamp(0, 1), atol=1e-4, rtol=0)


def test_half_resolution_level_resizes_a_state_of_another_size():
    """A state already at 1/2 goes straight in; one of another size (odd padded sizes upstream) is resized first."""
    torch.manual_seed(4)
    level = HalfResolutionLevel(state_channels=4, skip_channels=5, out_channels=6)
    skips = [torch.rand(1, 2, 16, 24), torch.rand(1, 3, 16, 24)]
    assert level(torch.rand(1, 4, 8, 12), skips).shape == (1, 6, 8, 12)
    assert level(torch.rand(1, 4, 4, 6), skips).shape == (1, 6, 8, 12)
    with pytest.raises(ValueError, match="full or half"):
        RefineNet([4, 4, 4, 4, 4], (4, 4, 4, 4), finest="quarter")


def test_refine_finest_is_a_model_flag_and_names_itself_in_errors():
    cfg = config_from_argv(["--phase", "2", "--data_path", "x", "--refine_finest", "half"])
    assert cfg.model.refine_finest == "half"
    assert config_from_argv(["--phase", "2", "--data_path", "x"]).model.refine_finest == "full"
    with pytest.raises(SystemExit):
        config_from_argv(["--phase", "2", "--data_path", "x", "--refine_finest", "quarter"])
    with pytest.raises(ConfigError, match="--refine_finest"):
        replace(preset(2, "tiny").model, refine_finest="quarter").validate()
    saved = preset(2, "tiny").to_dict()
    del saved["model"]["refine_finest"]                  # a checkpoint from before the flag
    assert type(preset(2, "tiny")).from_dict(saved).model.refine_finest == "full"


def test_a_checkpoint_of_the_other_arrangement_is_named_by_its_flag():
    saved, current = preset(2, "tiny").model, replace(preset(2, "tiny").model, refine_finest="half")
    names = config_differences(saved, current)
    assert names == ["refine_finest"]
    assert describe_model_differences(saved, current, names) == "--refine_finest (checkpoint full, this run half)"

