"""Stochastic depth (Huang et al., 2016, "Deep Networks with Stochastic Depth"): drop a residual branch per sample.

A pure tensor op; the module that applies it in the backbone's blocks is :class:`model.backbone.DropPath`.
"""

from __future__ import annotations

import torch


def drop_path(branch: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """``branch`` (B, ...) with each sample's whole branch zeroed with probability ``drop_prob`` and the kept ones
    scaled by ``1 / (1 - drop_prob)`` (the expectation is unchanged); the identity outside training or at 0.

    The per-sample mask is drawn with ``bernoulli_`` on a tensor of ``branch``'s device and dtype, so on CUDA it comes
    from the device's generator: a CUDA-graph capture of the training step registers that generator and every replay
    draws new masks (tests/test_step_graph.py). The draw is the one timm's ``DropPath`` makes (same shape, same call),
    which this replaces, so a seeded run draws the masks it drew with timm.
    """
    if drop_prob <= 0.0 or not training:
        return branch
    keep_prob = 1.0 - drop_prob
    mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        mask.div_(keep_prob)
    return branch * mask
