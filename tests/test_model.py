"""Phase-1 model: shapes for every ablation, gradients, timestep handling, frame separation, mHC, MaTVLM, gating."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from config import ConfigError, ModelConfig, matvlm_compatible, preset
from model import build_model, count_parameters
from model.attention import GatedWindowAttention
from model.backbone import LGSBlock
from model.matvlm import MaTVLMIncompatible, init_hybrid_from_attention, init_mamba_from_attention
from model.mamba_branch import InterleavedMamba2
from model.mhc import ManifoldHyperConnection, sinkhorn_knopp

# A tiny but complete configuration: every component present, CPU-fast.
TINY = ModelConfig(conv_channels=(8, 8, 16), conv_depths=(1, 1, 1), lgs_channels=(32, 32), lgs_depths=(2, 1),
                   attn_heads=(2, 2), window_size=4, ssm_headdim=16, ssm_state=8, ssm_chunk_size=32,
                   refine_channels=(8, 8, 16, 16), drop_path=0.0)
ODD_SIZE = (100, 132)


def make_pair(batch=2, size=ODD_SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=g), torch.rand(batch, 3, *size, generator=g)


@pytest.mark.parametrize("mode,use_mhc,use_ecab",
                         list(itertools.product(("hybrid", "mamba2_only", "gated_attn_only"), (False, True), (True, False))))
def test_every_ablation_gives_valid_images_at_odd_size(mode, use_mhc, use_ecab):
    torch.manual_seed(0)
    model = build_model(replace(TINY, backbone_mode=mode, use_mhc=use_mhc, use_ecab=use_ecab))
    img0, img1 = make_pair()
    out = model(img0, img1, 0.5)
    assert out.pred.shape == (2, 3, *ODD_SIZE)
    assert out.mask.shape == (2, 1, *ODD_SIZE)
    assert torch.isfinite(out.pred).all()
    assert out.pred.min() >= 0 and out.pred.max() <= 1


@pytest.mark.parametrize("mode,use_mhc", [("hybrid", False), ("hybrid", True), ("mamba2_only", False),
                                          ("gated_attn_only", False)])
def test_gradients_reach_every_parameter(mode, use_mhc):
    torch.manual_seed(1)
    model = build_model(replace(TINY, backbone_mode=mode, use_mhc=use_mhc))
    img0, img1 = make_pair(size=(64, 48))
    out = model(img0, img1, torch.tensor([0.25, 0.75]))
    weights = torch.randn_like(out.pred)

    def loss_of(result):   # weighted, so no gradient cancels by symmetry; mask/residual keep clamped pixels in
        return (result.pred * weights).sum() + result.residual.sum() + result.mask.sum()

    loss_of(out).backward()
    assert all(p.grad is not None for p in model.parameters())
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    # mHC's dynamic projection phi starts at zero (so the stage equals the plain one), hence the gains that
    # scale phi's output get an exactly-zero gradient at init; everything else must get a real one.
    assert all(n.endswith(".gain") for n in zero), f"no gradient for {zero}"
    if zero:
        torch.optim.SGD(model.parameters(), lr=1e-5).step()   # small: the summed loss has large gradients
        model.zero_grad()
        loss_of(model(img0, img1, torch.tensor([0.25, 0.75]))).backward()
        still_zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
        assert not still_zero, f"no gradient after one step for {still_zero}"


def test_timestep_forms_and_per_sample_independence():
    torch.manual_seed(2)
    model = build_model(TINY).eval()
    img0, img1 = make_pair(batch=2, size=(32, 48))
    scalar = model(img0, img1, 0.3).pred
    torch.testing.assert_close(model(img0, img1, torch.tensor(0.3)).pred, scalar)
    torch.testing.assert_close(model(img0, img1, torch.full((2,), 0.3)).pred, scalar)
    torch.testing.assert_close(model(img0, img1, torch.full((2, 1, 1, 1), 0.3)).pred, scalar)
    mixed = model(img0, img1, torch.tensor([0.2, 0.9])).pred
    alone = model(img0[1:], img1[1:], 0.9).pred
    torch.testing.assert_close(mixed[1:], alone, rtol=1e-4, atol=1e-5)    # no leakage between samples
    assert not torch.allclose(mixed[:1], model(img0[:1], img1[:1], 0.9).pred)   # t matters
    with pytest.raises(ValueError, match="one value per sample"):
        model(img0, img1, torch.tensor([0.1, 0.2, 0.3]))


def test_swapping_frames_with_reversed_time_is_supported():
    torch.manual_seed(3)
    model = build_model(TINY).eval()
    img0, img1 = make_pair(batch=2, size=(32, 32))
    t = torch.tensor([0.25, 0.6])
    forward = model(img0, img1, t).pred
    swapped = model(img1, img0, 1 - t).pred
    assert swapped.shape == forward.shape and torch.isfinite(swapped).all()
    # Swapping the frames reverses the frame order the scan sees, so the result differs for an untrained net,
    # but must be a valid image; data augmentation (temporal swap) teaches the symmetry.
    assert swapped.min() >= 0 and swapped.max() <= 1


@pytest.mark.parametrize("phase", [1, 2])
def test_bf16_prediction_is_blended_in_float32(phase):
    """Under bf16 autocast the blend's parts leave RefineNet in float32 and the prediction is composed in float32: a
    bf16 sigmoid rounded the residual (and the Phase-1 mask) to steps of up to 1/256, which moved bf16 eager 0.04 dB
    away from the compiled model (Inductor keeps float32 inside its fused blend; docs/PERF.md section 10)."""
    torch.manual_seed(0)
    model = build_model(preset(phase, "tiny")).eval()
    img0, img1 = make_pair(batch=1, size=(32, 48))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(img0, img1, 0.5)
    assert out.pred.dtype == out.mask.dtype == out.residual.dtype == torch.float32
    for name in ("pred", "mask", "residual"):            # values bf16 cannot hold: nothing rounded on the way
        value = getattr(out, name)
        assert (value != value.bfloat16().float()).any(), name
    first, second = (img0, img1) if phase == 1 else (out.warped0, out.warped1)
    assert torch.equal(out.pred, (out.mask * first + (1 - out.mask) * second + out.residual).clamp(0, 1))


def test_bad_input_shapes_give_clear_errors():
    model = build_model(TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 4, 32, 32), torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="equal shape"):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 48))


def test_frames_stay_apart_until_the_first_cross_frame_mixing():
    torch.manual_seed(4)
    model = build_model(TINY).eval()
    img0, img1 = make_pair(batch=1, size=(32, 32))
    changed1 = img1.clone()
    changed1[..., 5:20, 7:30] = torch.rand(1, 3, 15, 23)
    before = model.backbone(img0, img1)
    after = model.backbone(img0, changed1)
    assert len(before) == 5 and all(f.shape[0] == 2 for f in before)      # one map per frame at every scale
    for level in range(3):                                                 # per-frame CNN stages
        torch.testing.assert_close(after[level][:1], before[level][:1], rtol=0, atol=0)
        assert not torch.allclose(after[level][1:], before[level][1:])
    # The LGS stages mix the frames: frame-0 features now depend on frame 1.
    assert not torch.allclose(after[3][:1], before[3][:1])


def test_backbone_features_are_not_summed_across_frames():
    torch.manual_seed(5)
    model = build_model(TINY).eval()
    img0, img1 = make_pair(batch=1, size=(32, 32))
    features = model.backbone(img0, img1)
    swapped = model.backbone(img1, img0)
    # Swapping the inputs must not give identical per-frame maps (it would if frames were summed or averaged).
    assert not torch.allclose(features[0][:1], swapped[0][:1])
    torch.testing.assert_close(features[0][:1], swapped[0][1:])            # CNN stage: frame identity travels


# ---------------------------------------------------------------------------------------------- mHC
def test_sinkhorn_gives_doubly_stochastic_matrices():
    logits = torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(0))   # logit spread of a trained H_res
    m = sinkhorn_knopp(logits, 20)
    assert (m >= 0).all()
    torch.testing.assert_close(m.sum(-1), torch.ones(5, 4), rtol=0, atol=1e-3)
    torch.testing.assert_close(m.sum(-2), torch.ones(5, 4), rtol=0, atol=1e-6)


def test_mhc_at_init_equals_the_plain_model_and_h_res_is_doubly_stochastic():
    torch.manual_seed(6)
    with_mhc = build_model(replace(TINY, use_mhc=True)).eval()
    plain = build_model(TINY).eval()
    missing, unexpected = plain.load_state_dict(with_mhc.state_dict(), strict=False)
    assert not missing and all(".hc_" in k for k in unexpected)
    img0, img1 = make_pair(batch=2, size=(48, 40))
    torch.testing.assert_close(with_mhc(img0, img1, 0.5).pred, plain(img0, img1, 0.5).pred, rtol=0, atol=1e-5)
    hc = next(m for m in with_mhc.modules() if isinstance(m, ManifoldHyperConnection))
    _, _, h_res = hc.coefficients(torch.randn(3, 5, hc.streams, 32))
    torch.testing.assert_close(h_res.sum(-1), torch.ones(3, 5, hc.streams), rtol=0, atol=1e-3)
    torch.testing.assert_close(h_res.sum(-2), torch.ones(3, 5, hc.streams), rtol=0, atol=1e-5)


def test_mhc_streams_persist_and_the_mixing_matters():
    """Once streams differ, changing H_res changes the output: the mixing does not cancel out."""
    torch.manual_seed(7)
    dim, n = 8, 4
    hc = ManifoldHyperConnection(dim, n)
    streams = torch.randn(2, 3, n, dim)                       # streams that already differ
    sublayer = torch.nn.Linear(dim, dim)
    base = hc(streams, sublayer)
    assert base.shape == streams.shape
    with torch.no_grad():
        hc.bias_res.copy_(torch.zeros(n, n))                  # uniform mixing instead of near-identity
    mixed = hc(streams, sublayer)
    assert (mixed - base).abs().max() > 1e-2
    with torch.no_grad():
        hc.bias_post.fill_(-2.0)                              # H_post scales the update per stream
    assert (hc(streams, sublayer) - mixed).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- gating
def test_constant_gate_equals_ungated_attention_times_the_constant():
    torch.manual_seed(8)
    for kind in ("headwise", "elementwise"):
        gated = GatedWindowAttention(32, 4, window=4, gate=kind)
        plain = GatedWindowAttention(32, 4, window=4, gate="none")
        plain.load_state_dict(gated.state_dict(), strict=False)
        with torch.no_grad():
            gated.gate.weight.zero_()
            gated.gate.bias.fill_(0.7)
            for m in (gated, plain):
                m.proj.bias.zero_()
        u = torch.randn(4, 8, 12, 32)
        torch.testing.assert_close(gated(u), plain(u) * torch.sigmoid(torch.tensor(0.7)), rtol=1e-5, atol=1e-6)


def test_window_attention_matches_explicit_softmax_attention():
    """SDPA path vs a written-out softmax(q k^T / sqrt(d)) v over cross-frame windows."""
    torch.manual_seed(9)
    attn = GatedWindowAttention(16, 2, window=4, gate="headwise")
    u = torch.randn(2, 4, 4, 16)                              # one pair, exactly one window
    tokens = torch.cat((u[0].reshape(16, 16), u[1].reshape(16, 16)))   # (32 tokens, C): frame 0 then frame 1
    q, k, v = attn.qkv(tokens).view(32, 3, 2, 8).permute(1, 2, 0, 3)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    out = (weights @ v).transpose(0, 1) * torch.sigmoid(attn.gate(tokens)).unsqueeze(-1)
    expected = attn.proj(out.reshape(32, 16))
    got = attn(u)
    torch.testing.assert_close(got[0].reshape(16, 16), expected[:16], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1].reshape(16, 16), expected[16:], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- Mamba branch
def test_mamba_branch_per_direction_parameters_run_and_differ_per_direction():
    torch.manual_seed(10)
    branch = InterleavedMamba2(16, expand=2, headdim=8, state_size=4, per_direction=True, chunk_size=16)
    assert branch.A_log.shape == (4, 4)
    u = torch.randn(4, 6, 5, 16)
    out = branch(u)
    assert out.shape == u.shape
    with torch.no_grad():
        branch.A_log[3] += 2.0                                # only direction 3's decay changes
    assert not torch.allclose(branch(u), out)


def test_mamba_branch_is_batch_independent():
    torch.manual_seed(11)
    branch = InterleavedMamba2(16, expand=2, headdim=8, state_size=4, chunk_size=16)
    u = torch.randn(4, 6, 5, 16)                              # pairs (rows 0,2) and (rows 1,3)
    out = branch(u)
    single = branch(u[[0, 2]])
    torch.testing.assert_close(out[[0, 2]], single, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- MaTVLM
def test_matvlm_copies_attention_weights_exactly():
    torch.manual_seed(12)
    attn = GatedWindowAttention(32, 2, window=4)
    mamba = InterleavedMamba2(32, expand=1, headdim=16, state_size=16, groups=0)
    init_mamba_from_attention(mamba, attn)
    rows = mamba.projection_slices()
    q, k, v = attn.qkv.weight.split(32)
    torch.testing.assert_close(mamba.in_proj.weight[rows["x"]], v, rtol=0, atol=0)
    torch.testing.assert_close(mamba.in_proj.weight[rows["B"]], k, rtol=0, atol=0)
    torch.testing.assert_close(mamba.in_proj.weight[rows["C"]], q, rtol=0, atol=0)
    torch.testing.assert_close(mamba.in_proj.bias[rows["C"]], attn.qkv.bias[:32], rtol=0, atol=0)
    torch.testing.assert_close(mamba.out_proj.weight, attn.proj.weight, rtol=0, atol=0)


def test_matvlm_refuses_mismatched_shapes():
    attn = GatedWindowAttention(32, 2, window=4)
    for kwargs in (dict(expand=2, headdim=16, state_size=16, groups=0), dict(expand=1, headdim=16, state_size=64, groups=0),
                   dict(expand=1, headdim=16, state_size=16, groups=1)):
        with pytest.raises(MaTVLMIncompatible, match="refused"):
            init_mamba_from_attention(InterleavedMamba2(32, **kwargs), attn)


def test_matvlm_whole_model_init_from_attention_only_model():
    torch.manual_seed(13)
    hybrid_cfg = matvlm_compatible(TINY)
    attention_only = build_model(replace(hybrid_cfg, backbone_mode="gated_attn_only"))
    hybrid = build_model(hybrid_cfg)
    report = init_hybrid_from_attention(hybrid, attention_only)
    assert len(report["mapped"]) == sum(TINY.lgs_depths)
    assert any(k.endswith("attn.qkv.weight") for k in report["copied"])
    assert any("fuse_proj" in k for k in report["new"])
    first = [m for m in hybrid.modules() if isinstance(m, LGSBlock)][0]
    source = [m for m in attention_only.modules() if isinstance(m, LGSBlock)][0]
    torch.testing.assert_close(first.mamba.out_proj.weight, source.attn.proj.weight, rtol=0, atol=0)
    with pytest.raises(MaTVLMIncompatible):
        init_hybrid_from_attention(build_model(TINY), attention_only)


def test_matvlm_preset_needs_one_head_dim():
    with pytest.raises(ConfigError, match="one attention head dim"):
        matvlm_compatible(replace(TINY, attn_heads=(2, 4)))


def test_phase1_small_preset_is_about_the_seed_size():
    params = count_parameters(build_model(preset(1)))
    assert 1.1e6 < params < 1.5e6, params


def test_mamba_branch_scans_in_the_inference_chunk_without_gradients_on_cuda(monkeypatch):
    """InterleavedMamba2's chunk length: the configured one with gradients or off CUDA (training, the CPU), at most
    INFERENCE_TRITON_CHUNK without gradients on CUDA (the fastest measured at inference lengths), or the length set
    by hand (bench_model.py --ssm_chunk_size); a shorter configured length stays. forward hands the scan what
    chunk_for says (recorded by a stand-in scan)."""
    import model.mamba_branch as branch_module
    from model.ops.ssd import INFERENCE_TRITON_CHUNK
    branch = InterleavedMamba2(16, expand=2, headdim=8, state_size=4, chunk_size=256)
    assert INFERENCE_TRITON_CHUNK == 128
    assert branch.chunk_for(on_cuda=True, grad_enabled=True) == 256          # training
    assert branch.chunk_for(on_cuda=False, grad_enabled=False) == 256        # the CPU
    assert branch.chunk_for(on_cuda=True, grad_enabled=False) == 128         # inference on CUDA
    branch.inference_chunk_size = 64
    assert branch.chunk_for(on_cuda=True, grad_enabled=False) == 64
    assert InterleavedMamba2(16, expand=2, headdim=8, state_size=4, chunk_size=32).chunk_for(True, False) == 32
    chunks = []

    real_scan = branch_module.ssd_scan

    def recording_scan(*args, chunk_size, **kwargs):
        chunks.append(chunk_size)
        return real_scan(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(branch_module, "ssd_scan", recording_scan)
    monkeypatch.setattr(branch, "chunk_for", lambda on_cuda, grad_enabled: 8 if grad_enabled else 16)
    u = torch.randn(2, 4, 6, 16)
    out = branch(u)
    with torch.no_grad():
        out_inference = branch(u)
    assert chunks == [8, 16]
    torch.testing.assert_close(out_inference, out.detach(), rtol=1e-5, atol=1e-5)    # the same scan
