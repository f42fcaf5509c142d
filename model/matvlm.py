"""MaTVLM-style initialisation of Branch A (Mamba2) from a trained attention branch (arXiv 2503.13440, docs/DESIGN.md 6).

Softmax-free attention ``y_t = sum_s (q_t . k_s) v_s`` is an SSD scan with ``C <-> q``, ``B <-> k``, ``x <-> v``
and no decay, so a trained attention layer gives Branch A a meaningful start: ``x <- W_v``, ``B <- W_k``,
``C <- W_q``, ``out_proj <- W_o`` (weights and biases). The copy is exact only when the shapes correspond:
expand 1 (inner width = C), one B/C group per head, head count = attention heads, head dim = state size =
attention head dim, shared (not per-direction) parameters. Anything else (for example expand 2, one group, state
64) has no attention correspondence, so it is refused rather than approximated by slicing (the defect of an
earlier public attempt). ``z``, ``dt``, the depthwise conv, ``A_log``, ``D`` and ``dt_bias`` keep their init.

The whole-model start (:func:`init_hybrid_from_attention`) is function-preserving: every other tensor is copied
and each hybrid block's fusion starts as a pass-through of the attention branch with a zero (but trainable)
Mamba2 contribution (:meth:`model.backbone.LGSBlock.start_fusion_as_attention`), so at step 0 the hybrid computes
the trained attention-only model exactly and training only adds to it. MaTVLM replaces attention layers by the
mapped Mamba layers; our hybrid keeps both branches, so the mapped branch enters through the fusion instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .attention import GatedWindowAttention
from .backbone import LGSBlock
from .mamba_branch import InterleavedMamba2


class MaTVLMIncompatible(ValueError):
    """The Mamba2 branch's shapes do not correspond to the attention's; the message says which and how to fix."""


def check_correspondence(mamba: InterleavedMamba2, attn: GatedWindowAttention) -> None:
    need = {
        "expand 1 (inner width == model width)": mamba.inner == attn.num_heads * attn.head_dim,
        f"SSM heads == attention heads ({attn.num_heads})": mamba.num_heads == attn.num_heads,
        "one B/C group per head (ssm_groups 0)": mamba.groups == mamba.num_heads,
        f"SSM head dim == attention head dim ({attn.head_dim})": mamba.headdim == attn.head_dim,
        f"SSM state size == attention head dim ({attn.head_dim})": mamba.state_size == attn.head_dim,
        "shared (not per-direction) SSM parameters": not mamba.per_direction,
    }
    missing = [name for name, ok in need.items() if not ok]
    if missing:
        raise MaTVLMIncompatible(
            "MaTVLM init refused: Branch A does not correspond to the attention (needs " + "; ".join(missing) +
            f"; got inner {mamba.inner}, heads {mamba.num_heads}, groups {mamba.groups}, head dim {mamba.headdim}, "
            f"state {mamba.state_size}). Use --ablation hybrid_matvlm.")


@torch.no_grad()
def init_mamba_from_attention(mamba: InterleavedMamba2, attn: GatedWindowAttention) -> None:
    """Copy V->x, K->B, Q->C and O->out_proj from ``attn`` into ``mamba`` in place (raises if shapes differ)."""
    check_correspondence(mamba, attn)
    width = attn.num_heads * attn.head_dim
    q_w, k_w, v_w = attn.qkv.weight.split(width, dim=0)
    q_b, k_b, v_b = attn.qkv.bias.split(width, dim=0)
    rows = mamba.projection_slices()
    for name, weight, bias in (("x", v_w, v_b), ("B", k_w, k_b), ("C", q_w, q_b)):
        mamba.in_proj.weight[rows[name]] = weight
        mamba.in_proj.bias[rows[name]] = bias
    mamba.out_proj.weight.copy_(attn.proj.weight)
    mamba.out_proj.bias.copy_(attn.proj.bias)


def load_attention_source(model_cfg, state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """The trained ``gated_attn_only`` model a MaTVLM start copies from, in eval mode.

    ``model_cfg``: the checkpoint's :class:`config.ModelConfig`; ``state``: its weights (EMA when it has them);
    ``where``: the checkpoint path, for the one-line refusal when the checkpoint is not attention-only. Keep the
    returned model to report its validation PSNR next to the initialised hybrid's (they must agree: the start is
    function-preserving).
    """
    if model_cfg.backbone_mode != "gated_attn_only":
        raise MaTVLMIncompatible(f"--init_from_attn needs a gated_attn_only checkpoint; {where} is "
                                 f"{model_cfg.backbone_mode}")
    from .thesis import build_model
    source = build_model(model_cfg)
    source.load_state_dict(state)
    return source.eval()


def lgs_blocks(model: nn.Module) -> list[tuple[str, LGSBlock]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LGSBlock)]


@torch.no_grad()
def init_hybrid_from_attention(hybrid: nn.Module, attention_only: nn.Module) -> dict[str, list[str]]:
    """Start a hybrid model from a trained ``gated_attn_only`` model of the same widths, function-preserving.

    Every tensor with the same name and shape is copied (convs, norms, ECAB, the attention branch, RefineNet);
    each LGS block's Mamba2 branch is initialised from that block's attention, and its fusion set to pass the
    attention through (so ``hybrid`` gives ``attention_only``'s output at step 0 when the two configs differ only
    in the backbone mode and Branch A's shapes). Returns ``{"copied": [...], "mapped": [...], "new": [...]}``
    parameter/block names for reporting; "new" are the target tensors not copied from the source (Branch A,
    whose x/B/C/out_proj rows are then mapped, and the fusion, set to the pass-through).
    """
    target_blocks, source_blocks = lgs_blocks(hybrid), lgs_blocks(attention_only)
    if [n for n, _ in target_blocks] != [n for n, _ in source_blocks]:
        raise MaTVLMIncompatible("MaTVLM init refused: the two models have different LGS block layouts "
                                 f"({len(target_blocks)} vs {len(source_blocks)} blocks)")
    for name, block in source_blocks:
        if block.attn is None:
            raise MaTVLMIncompatible(f"MaTVLM init refused: source block {name} has no attention branch")
    for name, block in target_blocks:
        if block.mamba is None:
            raise MaTVLMIncompatible(f"MaTVLM init refused: target block {name} has no Mamba2 branch")
        check_correspondence(block.mamba, dict(source_blocks)[name].attn)
    source_state = attention_only.state_dict()
    copied = []
    for key, tensor in hybrid.state_dict().items():
        if key in source_state and source_state[key].shape == tensor.shape:
            tensor.copy_(source_state[key])
            copied.append(key)
    mapped = []
    for name, block in target_blocks:
        init_mamba_from_attention(block.mamba, dict(source_blocks)[name].attn)
        block.start_fusion_as_attention()
        mapped.append(f"{name}.mamba <- {name}.attn")
    new = [k for k in hybrid.state_dict() if k not in copied]
    return {"copied": copied, "mapped": mapped, "new": new}
