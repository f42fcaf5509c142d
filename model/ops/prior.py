"""A classical flow prior for the flow estimator: a frame pair's flows both ways -> the flows at time t.

The estimator (``--flow_prior dis``, model/flow.py) starts from flows that OpenCV's DIS computed between the two
input frames on the CPU (``measures.motion.prior_pair_flows``) instead of from zero, and its three blocks refine
them. The pair's flows are given once per pair; the flows at ``t`` are derived here, on the model's device, so a
pair interpolated at several times (``--multi 4``, X-TEST, Phase 3) needs one DIS computation, and a CUDA graph
sees ``t`` as a tensor.

Layout: ``pair_flows`` is (B, 4, H, W) in pixels, channels [0:2] = F_0->1 (x, y), [2:4] = F_1->0, each defined
on its source frame's grid (``frame0(p) ~ frame1(p + F_0->1(p))``). The result is the model's flow layout
(model/flow.py): [0:2] = F_t->0, [2:4] = F_t->1 on the grid of the frame at ``t``.
"""

from __future__ import annotations

import torch


def flows_at_t(pair_flows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) pair flows, t (B,) / (B, 1, 1, 1) / one element -> (B, 4, H, W) float32 flows at ``t``.

    Linear motion (Jiang et al., Super SloMo, CVPR 2018, eq. 4), the approximation of the classical baseline
    (``measures.motion.interpolate_dis``)::

        F_t->0 = -(1 - t) t F_0->1 + t^2 F_1->0
        F_t->1 = (1 - t)^2 F_0->1 - t (1 - t) F_1->0

    It reads each pair flow at the target pixel instead of the source pixel it belongs to, which is exact for
    uniform motion and a blur of the flow's edges elsewhere: the estimator's blocks correct it from the frames.
    """
    if pair_flows.dim() != 4 or pair_flows.shape[1] != 4:
        raise ValueError(f"pair flows must be (B, 4, H, W) = [F_0->1, F_1->0], got {tuple(pair_flows.shape)}")
    batch = pair_flows.shape[0]
    t = torch.as_tensor(t, device=pair_flows.device, dtype=torch.float32)
    if t.numel() not in (1, batch):
        raise ValueError(f"t must have one value or one per sample ({batch}), got shape {tuple(t.shape)}")
    t = t.reshape(-1, 1, 1, 1)
    forward, backward = pair_flows[:, 0:2].float(), pair_flows[:, 2:4].float()
    to_frame0 = -(1 - t) * t * forward + t * t * backward
    to_frame1 = (1 - t) ** 2 * forward - t * (1 - t) * backward
    return torch.cat([to_frame0, to_frame1], dim=1)


def flip_flows(flows: torch.Tensor) -> torch.Tensor:
    """The flows of frames flipped upside down and left to right ((B, 2k, H, W), x / y pairs): the field is flipped
    with the frames and every vector points the other way. What test-time augmentation does to a prior."""
    return -flows.flip(2, 3)
