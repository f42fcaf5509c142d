"""MaTVLM warm start (issue 8 §2): the hybrid built from a trained attention-only model IS that model at step 0,
and its Mamba2 branch then starts to learn."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from config import matvlm_compatible, preset
from model import build_model
from model.backbone import LGSBlock
from model.matvlm import init_hybrid_from_attention


def matvlm_pair(phase: int, seed: int):
    """(hybrid, source): a hybrid_matvlm model and a gated_attn_only model of the same shapes whose weights are all
    perturbed away from their initialisation (so zero biases, unit norms and the like prove nothing)."""
    hybrid_cfg = preset(phase, size="tiny", ablation="hybrid_matvlm").model
    assert hybrid_cfg == matvlm_compatible(hybrid_cfg)
    torch.manual_seed(seed)
    source = build_model(replace(hybrid_cfg, backbone_mode="gated_attn_only"))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    hybrid = build_model(hybrid_cfg)
    init_hybrid_from_attention(hybrid, source)
    return hybrid, source


def frames(seed: int = 0, size=(48, 64)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, *size, generator=g), torch.rand(2, 3, *size, generator=g)


@pytest.mark.parametrize("phase", [1, 2])
def test_matvlm_hybrid_equals_its_source_at_step_0(phase):
    hybrid, source = matvlm_pair(phase, seed=phase)
    hybrid.eval(), source.eval()
    img0, img1 = frames()
    t = torch.tensor([0.5, 0.3])
    with torch.no_grad():
        got, want = hybrid(img0, img1, t), source(img0, img1, t)
    assert float((got.pred - want.pred).abs().max()) <= 1e-5
    assert float((got.mask - want.mask).abs().max()) <= 1e-5
    # Not trivially equal: the Mamba2 branch itself computes something (its contribution starts at zero).
    block = next(m for m in hybrid.modules() if isinstance(m, LGSBlock))
    u = torch.randn(2, 4, 4, block.norm1.normalized_shape[0])
    with torch.no_grad():
        assert float(block.mamba(u).abs().max()) > 1e-3


def test_matvlm_mamba_branch_learns_after_two_steps():
    hybrid, _ = matvlm_pair(1, seed=5)
    mamba = {n: p for n, p in hybrid.named_parameters() if ".mamba." in n}
    before = {n: p.detach().clone() for n, p in mamba.items()}
    optimizer = torch.optim.AdamW(hybrid.parameters(), lr=1e-3, weight_decay=0.0)   # no decay: only gradient moves
    img0, img1 = frames(seed=1, size=(32, 32))
    gt = (img0 + img1) / 2
    blocks = [m for m in hybrid.modules() if isinstance(m, LGSBlock)]
    for step in range(2):
        optimizer.zero_grad()
        (hybrid(img0, img1, 0.5).pred - gt).abs().mean().backward()
        assert all(p.grad is not None for p in hybrid.parameters())
        if step == 0:   # nothing is frozen: the zero-started paths into the fusion already learn at step 0
            for block in blocks:
                width = block.fuse_proj.out_features
                assert float(block.fuse_proj.weight.grad[:, :width].abs().max()) > 0
                assert float(block.fuse_eca.conv.weight.grad.abs().max()) > 0
        optimizer.step()
    unchanged = [n for n, p in mamba.items() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"Mamba2 parameters did not move in two steps: {unchanged}"


def test_load_attention_source_refuses_other_modes():
    from model.matvlm import MaTVLMIncompatible, load_attention_source
    cfg = preset(1, size="tiny", ablation="hybrid_matvlm").model
    source_cfg = replace(cfg, backbone_mode="gated_attn_only")
    state = build_model(source_cfg).state_dict()
    source = load_attention_source(source_cfg, state, "attn_last.pt")
    assert not source.training and torch.equal(source.state_dict()["backbone.conv_stages.0.0.0.weight"],
                                               state["backbone.conv_stages.0.0.0.weight"])
    with pytest.raises(MaTVLMIncompatible, match="hyb_last.pt is hybrid"):
        load_attention_source(cfg, build_model(cfg).state_dict(), "hyb_last.pt")
