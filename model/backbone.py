"""HybridBackbone: per-frame CNN stages at 1, 1/2, 1/4, then LGS stages at 1/8 and 1/16 (docs/DESIGN.md 1.1, 4.4, 10).

The two frames travel as one batch ``(2B, C, H, W)`` with frame 0 in the first half. CNN stages treat the
rows independently (no cross-frame mixing there); the LGS blocks mix the frames through the interleaved scan
(Branch A) and cross-frame windows (Branch B) but still return one feature map per frame. Features leave the
backbone per frame at every scale; they are never summed or averaged across frames (the defect that sank an
earlier public attempt, docs/DESIGN.md 9).

LGS block (channels-last, (2B, H, W, C))::

    U  = LN1(X)
    F  = Linear_{2C->C}(ECA_{2C}([BranchA(U) ; BranchB(U)]))     (hybrid; F = A or F = B in the ablations)
    X1 = s1 * X + DropPath(F)
    X2 = s2 * X1 + DropPath(ECAB(LN2(X1)))                        (CAB with use_ecab=False)

With ``use_mhc`` both residual updates become :class:`model.mhc.ManifoldHyperConnection` updates on n streams
that persist across the blocks of a stage. Block ``k`` of a stage holds sub-layers ``2k`` (mixer) and ``2k + 1``
(ECAB); the sub-layer index sets which stream gets the larger update gain at initialisation, which is what lets
the streams (and so H_res) differ while the stage still starts as the plain residual stage (model/mhc.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .attention import GatedWindowAttention
from .channel_attention import ECA, ChannelAttentionBlock
from .mamba_branch import InterleavedMamba2
from .mhc import ManifoldHyperConnection
from .ops.conv import channel_aligned_conv2d
from .ops.stochastic_depth import drop_path


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (:func:`model.ops.stochastic_depth.drop_path`), active in training.

    Ours rather than ``timm.layers.DropPath`` (the same draw): importing timm pulls in torchvision and Dynamo, over a
    second of every process's start-up before its first output, for this one module."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        return drop_path(branch, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


def conv_prelu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (padding 1, with bias) followed by a per-channel PReLU, as in RIFE's ``conv``."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.PReLU(out_channels))


def run_conv_prelu(pair: nn.Sequential, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``pair(torch.cat(parts, 1))`` for one conv + PReLU pair (:func:`conv_prelu`).

    In compiled inference (``interpolate.py --compile``) the convolution pads its input channels to a multiple of 8
    inside the concatenation (:func:`model.ops.conv.channel_aligned_conv2d`; same result, no cuDNN padding pass):
    63.0 -> 61.2 ms for 4K on an H100. Eager code keeps the plain concatenation: there the zero channels are one
    more memory pass, not fused, and the same 4K call went 94.2 -> 97.0 ms; training keeps it too (the
    training-step figures in docs/PERF.md were measured that way).
    parts: maps (N, C_i, H, W) of one size; returns (N, C_out, H', W').
    """
    if torch.compiler.is_compiling() and not torch.is_grad_enabled():
        conv, prelu = pair
        return prelu(channel_aligned_conv2d(parts, conv.weight, conv.bias, conv.stride, conv.padding))
    return pair(parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1))


def run_conv_prelu_stack(stack: nn.Sequential, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``stack(torch.cat(parts, 1))`` for a Sequential whose first entry is a conv + PReLU pair (:func:`conv_prelu`),
    the first pair run by :func:`run_conv_prelu` (aligned input channels in compiled inference).
    parts: maps (N, C_i, H, W) of one size; returns what ``stack`` returns.
    """
    first, *rest = stack
    x = run_conv_prelu(first, parts)
    for layer in rest:
        x = layer(x)
    return x


class ConvStage(nn.Sequential):
    """(N, C_in, H, W) -> (N, C_out, H/stride, W/stride): one (strided) conv + PReLU, then depth-1 more."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, stride: int):
        layers = [conv_prelu(in_channels, out_channels, stride)]
        layers += [conv_prelu(out_channels, out_channels) for _ in range(depth - 1)]
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_conv_prelu_stack(self, [x])       # compiled: the 3-channel image gets aligned channels


class PatchEmbed(nn.Module):
    """LayerNorm over input channels, then a 3x3 stride-2 conv: (N, C_in, H, W) -> (N, H/2, W/2, C) channels-last."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_channels)
        self.proj = nn.Conv2d(in_channels, out_channels, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj(x).permute(0, 2, 3, 1)


class LGSBlock(nn.Module):
    """Local-Global Synergistic block. forward: (2B, H, W, C), or (2B, H, W, n, C) streams with mHC -> same shape.

    ``index``: the block's position in its stage; with mHC its two updates are the stage's sub-layers
    ``2 index`` and ``2 index + 1`` (their initial per-stream gains, model/mhc.py).
    """

    def __init__(self, dim: int, num_heads: int, mode: str = "hybrid", window: int = 8, shift: bool = False,
                 use_ecab: bool = True, use_mhc: bool = False, mhc_streams: int = 4, mhc_sinkhorn_iters: int = 20,
                 drop_path: float = 0.0, index: int = 0, attn_gate: str = "headwise", attn_cross_frame: bool = True,
                 ssm_expand: int = 2, ssm_headdim: int = 32, ssm_state: int = 64, ssm_groups: int = 1,
                 ssm_chunk_size: int = 256, ssm_per_direction: bool = False, ssm_backend: str = "auto"):
        super().__init__()
        self.mode = mode
        self.norm1 = nn.LayerNorm(dim)
        self.mamba = InterleavedMamba2(dim, ssm_expand, ssm_headdim, ssm_state, ssm_groups, ssm_chunk_size,
                                       ssm_per_direction, backend=ssm_backend) if mode in ("hybrid", "mamba2_only") else None
        self.attn = GatedWindowAttention(dim, num_heads, window, attn_gate, attn_cross_frame,
                                         shift) if mode in ("hybrid", "gated_attn_only") else None
        if self.mamba is None and self.attn is None:
            raise ValueError(f"unknown backbone mode {mode!r}")
        if mode == "hybrid":
            # ECA over the 2C concatenation acts as a per-channel selector between the two branches.
            self.fuse_eca = ECA(2 * dim)
            self.fuse_proj = nn.Linear(2 * dim, dim)
        self.skip1 = nn.Parameter(torch.ones(dim))
        self.skip2 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = ChannelAttentionBlock(dim, use_eca=use_ecab)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.hc_mixer = ManifoldHyperConnection(dim, mhc_streams, mhc_sinkhorn_iters,
                                                layer=2 * index) if use_mhc else None
        self.hc_ffn = ManifoldHyperConnection(dim, mhc_streams, mhc_sinkhorn_iters,
                                              layer=2 * index + 1) if use_mhc else None

    @torch.no_grad()
    def start_fusion_as_attention(self) -> None:
        """Make the hybrid fusion pass Branch B (attention) through unchanged, Branch A (Mamba2) contributing zero.

        Used by the MaTVLM start (model/matvlm.py), so a hybrid built from a trained attention-only model computes
        exactly that model at step 0. The fusion is ``fuse_proj(ECA([A; B]))``, and ECA multiplies every channel by
        ``sigmoid(conv1d(GAP))`` -- an input-dependent gate that no fixed ``fuse_proj`` could undo. ECA's 1-D conv
        has no bias, so zeroing its weight makes the gate exactly 1/2 for every channel and every input; then
        ``fuse_proj = [0 | 2 I]`` (bias 0) returns ``B`` exactly (products by 1/2 and 2 are exact in floating
        point). Nothing is frozen: at step 0 the ECA conv and the Mamba half of ``fuse_proj`` already receive
        gradient, so the gate becomes input-dependent and Branch A's contribution grows from the first step; Branch
        A's own parameters receive gradient once that half is non-zero (from the second step). The architecture of
        the ``hybrid`` ablation is unchanged (a residual or bypassed ECA would have changed what it measures);
        only these starting values differ.
        """
        if self.mode != "hybrid":
            raise ValueError(f"start_fusion_as_attention needs a hybrid block, this one is {self.mode!r}")
        dim = self.fuse_proj.out_features
        self.fuse_eca.conv.weight.zero_()
        self.fuse_proj.weight.zero_()
        self.fuse_proj.weight[:, dim:] = 2.0 * torch.eye(dim)     # columns dim.. read the attention half
        self.fuse_proj.bias.zero_()

    def token_mixer(self, u: torch.Tensor) -> torch.Tensor:
        """(2B, H, W, C) normalised tokens -> (2B, H, W, C) mixed across space and frames."""
        if self.mode == "mamba2_only":
            return self.mamba(u)
        if self.mode == "gated_attn_only":
            return self.attn(u)
        both = torch.cat((self.mamba(u), self.attn(u)), dim=-1)       # [A; B]: start_fusion_as_attention relies on it
        both = self.fuse_eca(both.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fuse_proj(both)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hc_mixer is None:
            x = self.skip1 * x + self.drop_path(self.token_mixer(self.norm1(x)))
            return self.skip2 * x + self.drop_path(self.ffn(self.norm2(x)))
        x = self.hc_mixer(x, lambda u: self.drop_path(self.token_mixer(self.norm1(u))), self.skip1)
        return self.hc_ffn(x, lambda u: self.drop_path(self.ffn(self.norm2(u))), self.skip2)


class LGSStage(nn.Module):
    """PatchEmbed (stride 2) then LGS blocks: (2B, C_in, H, W) -> (2B, C, H/2, W/2).

    With mHC the n streams are made by tiling at stage entry, carried through every block, and averaged at exit.
    At initialisation the stage computes exactly what the plain stage with the same weights computes, although
    the streams already differ inside it (the algebra is in model/mhc.py).
    """

    def __init__(self, in_channels: int, dim: int, depth: int, num_heads: int, drop_paths: list[float],
                 use_mhc: bool, mhc_streams: int, attn_shift: bool, **block_kwargs):
        super().__init__()
        self.embed = PatchEmbed(in_channels, dim)
        self.mhc_streams = mhc_streams if use_mhc else 0
        self.blocks = nn.ModuleList(
            LGSBlock(dim, num_heads, shift=attn_shift and i % 2 == 1, use_mhc=use_mhc, mhc_streams=mhc_streams,
                     drop_path=drop_paths[i], index=i, **block_kwargs)
            for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)                                                   # (2B, h, w, C)
        if self.mhc_streams:
            x = x.unsqueeze(-2).expand(*x.shape[:-1], self.mhc_streams, x.shape[-1])
        for block in self.blocks:
            x = block(x)
        if self.mhc_streams:
            x = x.mean(dim=-2)
        return x.permute(0, 3, 1, 2).contiguous()


class HybridBackbone(nn.Module):
    """forward(img0, img1) with (B, 3, H, W) images in [0, 1], H and W multiples of 16 ->
    list of five per-frame maps (2B, C_k, H/2^k, W/2^k), k = 0..4, frame 0 in the first B rows.
    """

    def __init__(self, cfg):
        super().__init__()
        convs, depths = cfg.conv_channels, cfg.conv_depths
        self.conv_stages = nn.ModuleList([
            ConvStage(3, convs[0], depths[0], stride=1),
            ConvStage(convs[0], convs[1], depths[1], stride=2),
            ConvStage(convs[1], convs[2], depths[2], stride=2)])
        total_blocks = sum(cfg.lgs_depths)
        rates = torch.linspace(0, cfg.drop_path, total_blocks).tolist() if total_blocks else []
        block_kwargs = dict(mode=cfg.backbone_mode, window=cfg.window_size, use_ecab=cfg.use_ecab,
                            mhc_sinkhorn_iters=cfg.mhc_sinkhorn_iters, attn_gate=cfg.attn_gate,
                            attn_cross_frame=cfg.attn_cross_frame, ssm_expand=cfg.ssm_expand,
                            ssm_headdim=cfg.ssm_headdim, ssm_state=cfg.ssm_state, ssm_groups=cfg.ssm_groups,
                            ssm_chunk_size=cfg.ssm_chunk_size, ssm_per_direction=cfg.ssm_per_direction,
                            ssm_backend=cfg.ssm_backend)
        self.lgs_stages = nn.ModuleList()
        in_channels, start = convs[-1], 0
        for dim, depth, heads in zip(cfg.lgs_channels, cfg.lgs_depths, cfg.attn_heads):
            self.lgs_stages.append(LGSStage(in_channels, dim, depth, heads, rates[start:start + depth],
                                            cfg.use_mhc, cfg.mhc_streams, cfg.attn_shift, **block_kwargs))
            in_channels, start = dim, start + depth
        self.channels = list(convs) + list(cfg.lgs_channels)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat((img0, img1), dim=0) - 0.5                            # (2B, 3, H, W), centred
        features = []
        for stage in self.conv_stages:
            x = stage(x)
            features.append(x)
        for stage in self.lgs_stages:
            x = stage(x)
            features.append(x)
        return features

