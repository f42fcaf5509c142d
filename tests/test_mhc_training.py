"""mHC must be able to leave the plain residual: streams that differ, and an H_res that learns (issue 8 §1).

At initialisation every stream holds the same tensor (tiled at stage entry) and an mHC stage must compute exactly
the plain residual stage. That is only useful if the streams then differ and the mixing receives gradient; with a
fully symmetric initialisation (every stream read and written alike) the gradients kept all streams equal forever
(relative spread 2e-7 after 40 AdamW steps, H_res gradients at float noise).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from config import preset
from model import build_model
from model.backbone import LGSStage
from model.mhc import ManifoldHyperConnection, initial_post_logits, initial_pre_logits

STEPS = 20


def tiny_mhc_config(depth: int = 2):
    """The tiny hybrid_mhc preset with ``depth`` blocks per stage (depth 2: two updates per stage with a live H_res)."""
    return replace(preset(1, size="tiny", ablation="hybrid_mhc").model, lgs_depths=(depth, depth))


def stage_updates(model) -> list[list[ManifoldHyperConnection]]:
    """The mHC updates of every LGS stage, in order (mixer, ECAB, mixer, ECAB, ...)."""
    return [[m for m in stage.modules() if isinstance(m, ManifoldHyperConnection)]
            for stage in model.modules() if isinstance(stage, LGSStage)]


def exit_streams(model, img0, img1) -> list[torch.Tensor]:
    """Each LGS stage's streams (2B, h, w, n, C) just before the exit average."""
    captured: list[torch.Tensor] = []
    handles = [stage.blocks[-1].register_forward_hook(lambda module, args, out: captured.append(out.detach()))
               for stage in model.modules() if isinstance(stage, LGSStage)]
    try:
        with torch.no_grad():
            model(img0, img1, 0.5)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def relative_stream_spread(streams: torch.Tensor) -> float:
    """(..., n, C) -> RMS deviation of the streams from their mean, relative to the mean's RMS."""
    mean = streams.mean(dim=-2, keepdim=True)
    return float((streams - mean).pow(2).mean().sqrt() / mean.pow(2).mean().sqrt())


def live_res_gradient_ratios(model) -> list[float]:
    """For every update whose H_res can act, max |grad| of its off-diagonal static H_res logits divided by max
    |grad| of its H_post logits (scale-free: "float noise" is ~1e-10 here, a learning H_res ~1e-3 and up).

    The first update of a stage sees tiled, equal streams and the last one feeds the exit average; the mixing of
    neither can change anything (model/mhc.py), so they are left out.
    """
    ratios = []
    for updates in stage_updates(model):
        for hc in updates[1:-1]:
            off = ~torch.eye(hc.streams, dtype=torch.bool)
            ratios.append(float(hc.bias_res.grad[off].abs().max() / hc.bias_post.grad.abs().max()))
    return ratios


def fixed_batch():
    g = torch.Generator().manual_seed(1)
    img0, img1 = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    gt = (img0 + img1) / 2 + 0.05 * torch.randn(2, 3, 32, 32, generator=g)
    return img0, img1, gt


def l1_backward(model, batch) -> None:
    img0, img1, gt = batch
    model.zero_grad()
    (model(img0, img1, 0.5).pred - gt).abs().mean().backward()


@pytest.fixture(scope="module")
def trained_mhc_model():
    """The tiny hybrid_mhc model (depth 2 per stage) after STEPS AdamW steps at lr 1e-3 on one fixed batch."""
    torch.manual_seed(0)
    model = build_model(tiny_mhc_config())
    batch = fixed_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(STEPS):
        l1_backward(model, batch)
        optimizer.step()
    return model, batch


def test_initial_coefficients_read_the_anchor_and_average_the_gains_to_one():
    for n in (2, 3, 4, 6):
        h_pre = torch.sigmoid(initial_pre_logits(n).double())
        assert abs(float(h_pre.sum()) - 1) < 1e-6 and float(h_pre[0]) > float(h_pre[1:].max())
        for layer in range(2 * n):
            h_post = 2 * torch.sigmoid(initial_post_logits(n, layer).double())
            assert abs(float(h_post[0]) - 1) < 1e-6                      # the anchor gets the full update
            assert abs(float(h_post[1:].mean()) - 1) < 1e-6              # the others average 1
            assert float(h_post.min()) > 0.2 and float(h_post.max()) < 1.8   # well inside 2 sigmoid's (0, 2)
            assert (n == 2) == bool(torch.allclose(h_post, torch.ones(n, dtype=torch.float64)))


def test_tiled_streams_differ_inside_the_stage_yet_the_stage_equals_the_plain_one():
    """The model's own tiled entry (not hand-made streams): exact plain-residual output, streams already apart."""
    torch.manual_seed(3)
    with_mhc = build_model(tiny_mhc_config()).eval()
    plain = build_model(replace(tiny_mhc_config(), use_mhc=False)).eval()
    missing, unexpected = plain.load_state_dict(with_mhc.state_dict(), strict=False)
    assert not missing and all(".hc_" in k for k in unexpected)
    img0, img1, _ = fixed_batch()
    torch.testing.assert_close(with_mhc(img0, img1, 0.5).pred, plain(img0, img1, 0.5).pred, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_mhc.backbone(img0, img1)[-1], plain.backbone(img0, img1)[-1], rtol=0, atol=1e-5)
    spreads = [relative_stream_spread(x) for x in exit_streams(with_mhc, img0, img1)]
    assert min(spreads) > 1e-2, spreads
    # The sub-layers' own weights also get the plain stage's gradients: mHC changes nothing at step 0 but itself.
    batch = fixed_batch()
    l1_backward(with_mhc, batch)
    l1_backward(plain, batch)
    plain_params = dict(plain.named_parameters())
    for name, param in with_mhc.named_parameters():
        if name in plain_params:
            reference = plain_params[name].grad
            assert float((param.grad - reference).abs().max()) <= 1e-4 * float(reference.abs().max()) + 1e-12, name


def test_h_res_receives_gradient_from_the_first_step():
    torch.manual_seed(4)
    model = build_model(tiny_mhc_config())
    l1_backward(model, fixed_batch())
    ratios = live_res_gradient_ratios(model)
    assert len(ratios) == 4 and min(ratios) > 1e-4, ratios


def test_mhc_streams_come_apart_during_training(trained_mhc_model):
    model, (img0, img1, _) = trained_mhc_model
    spreads = [relative_stream_spread(x) for x in exit_streams(model, img0, img1)]
    assert len(spreads) == 2 and min(spreads) > 1e-3, f"streams (nearly) identical: relative spread {spreads}"


def test_mhc_mixing_and_reads_keep_learning(trained_mhc_model):
    model, batch = trained_mhc_model
    l1_backward(model, batch)
    ratios = live_res_gradient_ratios(model)
    assert min(ratios) > 1e-4, f"off-diagonal H_res logits get (almost) no gradient: {ratios}"
    # The non-anchor read weights start equal; updates that see differing streams must have told them apart.
    for updates in stage_updates(model):
        for hc in updates[1:]:
            assert float(torch.sigmoid(hc.bias_pre[1:].detach()).std()) > 1e-6, "H_pre still treats the streams alike"
