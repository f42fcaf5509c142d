"""Manifold-constrained hyper-connections (mHC, arXiv 2512.24880) for the residual sub-layers of an LGS stage.

The residual stream is widened to ``n`` streams ``X`` (..., n, C) that persist across all blocks of a stage
(expanded by tiling at stage entry, averaged at stage exit). Each residual sub-layer ``F`` becomes::

    u  = sum_s H_pre[s] X_s                    H_pre  = sigmoid(.)           (n,)
    X' = H_res (skip * X) + H_post^T F(u)      H_post = 2 sigmoid(.)         (n,)
                                               H_res  = SinkhornKnopp(.)     (n, n), rows and columns sum to 1

with per-pixel ("dynamic") coefficients ``alpha * (RMSNorm(vec X) phi) + bias`` (docs/DESIGN.md 5.2). Sinkhorn runs
in float32. Initialisation (docs/DESIGN.md 5.3): ``phi = 0`` so only the biases act; ``H_pre = 1/n`` each (the
average of the streams), ``H_post = 1`` (every stream receives the full update) and a diagonal-dominant, hence
doubly stochastic, ``H_res``. Because all streams start equal, the stage then computes exactly what the plain
residual stage computes; training moves the streams apart and the mixing starts to matter. (An earlier
public attempt mixed three within-block streams and summed them in the same block, which makes H_res and
H_post cancel out; that is not mHC.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def sinkhorn_knopp(logits: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Project (..., n, n) logits to a (nearly) doubly stochastic matrix, in float32.

    Starts from exp(logits - max) and alternately normalises rows and columns; the last step normalises
    columns, so columns sum to 1 exactly and rows to within the convergence error.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        m = torch.exp(logits.float() - logits.float().amax(dim=(-2, -1), keepdim=True))
        for _ in range(iterations):
            m = m / m.sum(dim=-1, keepdim=True)
            m = m / m.sum(dim=-2, keepdim=True)
    return m


class ManifoldHyperConnection(nn.Module):
    """One mHC residual update around a sub-layer. forward(streams (..., n, C), sublayer) -> (..., n, C)."""

    def __init__(self, dim: int, streams: int = 4, sinkhorn_iters: int = 20, diagonal_logit: float = 4.0,
                 gain_init: float = 0.01, eps: float = 1e-6):
        super().__init__()
        n = streams
        self.streams, self.sinkhorn_iters, self.eps = n, sinkhorn_iters, eps
        self.phi = nn.Linear(n * dim, n * n + 2 * n, bias=False)
        nn.init.zeros_(self.phi.weight)              # dynamic part starts at zero: the block is a plain residual
        self.gain = nn.Parameter(torch.full((3,), gain_init))          # alpha_pre, alpha_post, alpha_res
        self.bias_pre = nn.Parameter(torch.full((n,), math.log(1.0 / (n - 1))))   # sigmoid -> 1/n
        self.bias_post = nn.Parameter(torch.zeros(n))                                # 2 sigmoid -> 1
        self.bias_res = nn.Parameter(torch.eye(n) * diagonal_logit)
        for p in (self.gain, self.bias_pre, self.bias_post, self.bias_res):
            p._no_weight_decay = True

    def coefficients(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """streams (..., n, C) -> H_pre (..., n), H_post (..., n), H_res (..., n, n), all float32."""
        n = self.streams
        flat = streams.flatten(-2).float()
        flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + self.eps)
        with torch.autocast(device_type=streams.device.type, enabled=False):
            raw = flat @ self.phi.weight.float().T                               # (..., n*n + 2n)
        h_pre = torch.sigmoid(self.gain[0] * raw[..., :n] + self.bias_pre)
        h_post = 2.0 * torch.sigmoid(self.gain[1] * raw[..., n:2 * n] + self.bias_post)
        h_res = sinkhorn_knopp(self.gain[2] * raw[..., 2 * n:].unflatten(-1, (n, n)) + self.bias_res,
                               self.sinkhorn_iters)
        return h_pre, h_post, h_res

    def forward(self, streams: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor],
                skip: torch.Tensor | None = None) -> torch.Tensor:
        dtype = streams.dtype
        h_pre, h_post, h_res = self.coefficients(streams)
        layer_input = torch.einsum("...s,...sc->...c", h_pre.to(dtype), streams)
        update = sublayer(layer_input)                                           # (..., C)
        carried = streams if skip is None else streams * skip
        mixed = torch.einsum("...ts,...sc->...tc", h_res.to(dtype), carried)
        return mixed + h_post.to(dtype).unsqueeze(-1) * update.unsqueeze(-2)
