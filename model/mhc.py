"""Manifold-constrained hyper-connections (mHC, arXiv 2512.24880) for the residual sub-layers of an LGS stage.

The residual stream is widened to ``n`` streams ``X`` (..., n, C) that persist across all blocks of a stage
(expanded by tiling at stage entry, averaged at stage exit). Each residual sub-layer ``F`` becomes::

    u  = sum_s H_pre[s] X_s                    H_pre  = sigmoid(.)           (n,)
    X' = H_res (skip * X) + H_post^T F(u)      H_post = 2 sigmoid(.)         (n,)
                                               H_res  = SinkhornKnopp(.)     (n, n), rows and columns sum to 1

with per-pixel ("dynamic") coefficients ``alpha * (RMSNorm(vec X) phi) + bias`` (docs/DESIGN.md 5.2). Sinkhorn
runs in float32.

Initialisation (ours; docs/DESIGN.md 5.1, 5.3). ``phi = 0``, so only the static biases act, and
``H_res = SK(4 I)``, which by symmetry is ``a I + b 1 1^T`` (diagonal ~0.95). Stream 0 is an ANCHOR:

* ``H_pre``: every sub-layer reads mainly the anchor, ``(n + 1) / 2n`` on stream 0 and ``1 / 2n`` on each other
  stream (5/8 and 1/8 for n = 4); the weights sum to 1.
* ``H_post``: the anchor receives the full update (gain 1); the other ``n - 1`` streams receive it with gains
  that differ but average 1: sub-layer ``j`` of the stage gives ``1 + (n - 2) g`` to stream ``1 + (j mod (n - 1))``
  and ``1 - g`` to the rest, ``g = 1 / (2 (n - 2))`` (1.5 and 0.75 for n = 4). (n = 2 leaves one non-anchor
  stream, whose gain must then be 1.)

Why this is exactly the plain residual stage at step 0. Write ``X = 1 x^T + D`` with ``x`` the plain residual
stream. At entry ``D = 0``. If ``D`` has zero anchor row and zero column sums, a sub-layer reads
``H_pre^T X = x`` (weights sum to 1, and ``H_pre`` is constant on the rows where ``D`` lives, whose sum is 0), and
the update gives ``1 (s x + F)^T + [a (s D) + (H_post - 1) F^T]``: the bracket again has a zero anchor row (anchor
gain 1) and zero column sums (the gains average 1), so by induction every sub-layer sees the plain input and the
exit average ``x + 1^T D / n`` is the plain output. The same algebra makes the gradients reaching the sub-layers'
own weights equal to the plain stage's at step 0.

Why it must not be symmetric. With every stream read and written alike (``H_pre = 1/n``, ``H_post = 1``), all
streams stay equal, and the gradients keep them equal forever: mHC would stay "residual plus scalar gains" at n
times the memory (issue 8; AdamW's per-entry normalisation even erases small gradient differences between
streams). Here the non-anchor streams differ from the first update on, and because the reads prefer the anchor
the gradient reaching stream ``t`` depends on ``t``; ``H_res``'s gradient needs both (it is
``sum <dL/dX'_t, X_s>`` minus its row and column parts), so the mixing learns from step 0.

Two updates per stage cannot use their ``H_res``: the first sees tiled, equal streams (``H_res 1 = 1``), and the
last feeds the exit average (``1^T H_res = 1^T``). A stage of depth 1 (two sub-layers) therefore has no live
``H_res``; depth 2 has two. (An earlier public attempt mixed three within-block streams and summed them in the same
block, which makes H_res and H_post cancel out everywhere; that is not mHC.)
"""

from __future__ import annotations

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


def initial_pre_logits(streams: int) -> torch.Tensor:
    """Static H_pre logits (n,): sigmoid gives (n + 1)/2n on the anchor (stream 0), 1/2n elsewhere; sum 1.

    A soft preference rather than HC's one-hot read: a sigmoid kept well inside (0, 1) stays trainable.
    """
    n = streams
    weights = torch.full((n,), 1.0 / (2 * n), dtype=torch.float64)
    weights[0] = (n + 1) / (2 * n)
    return torch.logit(weights).float()


def initial_post_logits(streams: int, layer: int) -> torch.Tensor:
    """Static H_post logits (n,) for sub-layer ``layer`` of a stage: 2 sigmoid gives 1 on the anchor, and on the
    other streams ``1 + (n - 2) g`` for stream ``1 + (layer mod (n - 1))``, ``1 - g`` elsewhere, ``g = 1/(2(n - 2))``;
    the non-anchor gains average 1 (all 1 when n = 2)."""
    n = streams
    gains = torch.ones(n, dtype=torch.float64)
    if n > 2:
        g = 1.0 / (2 * (n - 2))
        gains[1:] = 1.0 - g
        gains[1 + layer % (n - 1)] = 1.0 + (n - 2) * g
    return torch.logit(gains / 2).float()


class ManifoldHyperConnection(nn.Module):
    """One mHC residual update around a sub-layer. forward(streams (..., n, C), sublayer) -> (..., n, C).

    ``layer``: this update's index among the stage's sub-layers (mixer of block k = 2k, its ECAB = 2k + 1); it
    picks which non-anchor stream receives the larger gain at initialisation (module docstring).
    """

    def __init__(self, dim: int, streams: int = 4, sinkhorn_iters: int = 20, diagonal_logit: float = 4.0,
                 gain_init: float = 0.01, eps: float = 1e-6, layer: int = 0):
        super().__init__()
        n = streams
        if n < 2 or layer < 0:
            raise ValueError(f"mHC needs streams >= 2 and layer >= 0, got streams {n}, layer {layer}")
        self.streams, self.sinkhorn_iters, self.eps, self.layer = n, sinkhorn_iters, eps, layer
        self.phi = nn.Linear(n * dim, n * n + 2 * n, bias=False)
        nn.init.zeros_(self.phi.weight)              # dynamic part starts at zero: only the static biases act
        self.gain = nn.Parameter(torch.full((3,), gain_init))          # alpha_pre, alpha_post, alpha_res
        self.bias_pre = nn.Parameter(initial_pre_logits(n))
        self.bias_post = nn.Parameter(initial_post_logits(n, layer))
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
