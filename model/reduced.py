"""Run a flow model on smaller frames and apply what it predicts at full resolution (``--work_scale``).

At 4K a Phase-2/3 model spends most of its arithmetic at full resolution: the backbone's CNN stages and RefineNet's
finest levels (884 and 664 of 1,726 GFLOP at 2160x3840, flow scale 0.25; docs/PERF.md 10.2), which the flow scale
does not touch. :class:`ReducedResolution` runs the whole model on both frames area-downscaled by ``scale`` and
keeps full resolution where the detail is, in the pixels themselves::

    small0, small1   = area-resize(I0, I1) by scale
    F, M, res        = model(small0, small1, t)                  flow, final mask, RefineNet's residual
    F', M', res'     = F resized to (H, W) with its vectors / scale, M and res bilinearly upsampled
    pred             = clamp(M' warp(I0, F'_t->0) + (1 - M') warp(I1, F'_t->1) + res', 0, 1)

So the warped frames keep every pixel of the inputs; what is lost is the resolution of the flow field, of the mask
and of the residual, which at 4K are predicted from 1080p-sized frames (close to the training clips' scale). At
``scale = 0.5`` the model's arithmetic falls to about a quarter. This deviates from docs/DESIGN.md's high-resolution
rule (flow on downscaled frames, backbone and RefineNet at full resolution): it is an inference option, off by
default, whose quality cost is measured per data set, never assumed (docs/PERF.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops.warp import resize_flow
from .thesis import InterpolationOutput, predict_with_tta


class ReducedResolution(nn.Module):
    """``model`` (a flow model: Phase 2 or 3) run on frames resized by ``scale`` in (0, 1], composed at full size.

    Same call interface as :class:`model.thesis.ThesisModel` (``forward`` -> :class:`InterpolationOutput` at the
    input's size, ``inference`` -> (B, 3, H, W)), so runners, benchmarks and ``interpolate.py`` use it unchanged.
    ``flow_scale`` keeps its meaning relative to the input frames: the inner model gets ``flow_scale / scale``
    (capped at 1: the flow never runs above the work frames' size).
    """

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        if not getattr(model, "use_flow", False):
            raise ValueError("--work_scale applies a model's flow, mask and residual at full resolution: this model "
                             "has no flow estimator (Phase 1)")
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"--work_scale must be in (0, 1], got {scale}")
        self.model = model
        self.scale = float(scale)

    @property
    def use_flow(self) -> bool:
        return True

    @property
    def needs_flow_prior(self) -> bool:
        return bool(getattr(self.model, "needs_flow_prior", False))

    @property
    def config(self):
        return self.model.config

    def work_size(self, height: int, width: int) -> tuple[int, int]:
        """The frames' size the inner model sees."""
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t=0.5, flow_scale: float = 1.0,
                flow_prior: torch.Tensor | None = None) -> InterpolationOutput:
        """(B, 3, H, W) frames in [0, 1] -> :class:`InterpolationOutput` at (H, W); ``flow_prior`` (B, 4, H, W) in
        full-resolution pixels for a ``--flow_prior`` model (resized with its vectors for the inner model)."""
        if img0.dim() != 4 or img0.shape != img1.shape:
            raise ValueError(f"ReducedResolution expects two (B, 3, H, W) images of equal shape, got "
                             f"{tuple(img0.shape)} and {tuple(img1.shape)}")
        height, width = img0.shape[-2:]
        size = self.work_size(height, width)
        if size == (height, width):
            return self.model(img0, img1, t, flow_scale, flow_prior)
        small0 = F.interpolate(img0, size=size, mode="area")
        small1 = F.interpolate(img1, size=size, mode="area")
        small_prior = None if flow_prior is None else resize_flow(flow_prior.float(), size)
        inner = self.model(small0, small1, t, min(1.0, flow_scale / self.scale), small_prior)
        flow = resize_flow(inner.flow.float(), (height, width))
        mask = F.interpolate(inner.mask.float(), size=(height, width), mode="bilinear", align_corners=False)
        residual = F.interpolate(inner.residual.float(), size=(height, width), mode="bilinear", align_corners=False)
        warped0 = self.model.warp(img0, flow[:, :2])
        warped1 = self.model.warp(img1, flow[:, 2:])
        pred = (mask * warped0 + (1 - mask) * warped1 + residual).clamp(0, 1)
        return InterpolationOutput(pred, mask, residual, flow, warped0, warped1, [])

    @torch.no_grad()
    def inference(self, img0: torch.Tensor, img1: torch.Tensor, t=0.5, flow_scale: float = 1.0,
                  tta: bool = False, flow_prior: torch.Tensor | None = None) -> torch.Tensor:
        """Prediction only, (B, 3, H, W). ``tta`` averages with the prediction on H+W-flipped inputs."""
        return predict_with_tta(self, img0, img1, t, flow_scale, tta, flow_prior)

    def prior_warps(self, img0: torch.Tensor, img1: torch.Tensor, t, flow_prior: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's own warps at full resolution (:meth:`model.thesis.ThesisModel.prior_warps`)."""
        return self.model.prior_warps(img0, img1, t, flow_prior)


WORK_SCALE_HELP = ("run the whole model on both frames area-downscaled by this factor in (0, 1] and apply its flow, "
                   "mask and residual at full resolution (warping the full-resolution frames): about scale^2 of the "
                   "model's arithmetic, for 4K; flow models only; default 1 (off). --flow_scale stays relative to "
                   "the input frames. Quality cost: measure it (docs/PERF.md 10.7)")


def reduce_resolution(model: nn.Module, scale: float | None) -> nn.Module:
    """``model`` itself for ``scale`` None or 1, else :class:`ReducedResolution` around it."""
    if scale is None or scale == 1.0:
        return model
    return ReducedResolution(model, scale)


def work_scale_of(model: nn.Module) -> float:
    """The scale ``model`` runs its frames at: its :class:`ReducedResolution` scale, else 1."""
    return model.scale if isinstance(model, ReducedResolution) else 1.0


def describe_work_scale(model: nn.Module) -> str:
    """"work scale S: ..." for a :class:`ReducedResolution` model (what the run lines print), '' for any other."""
    if not isinstance(model, ReducedResolution):
        return ""
    return (f"work scale {model.scale:g}: the model on downscaled frames, its flow, mask and residual applied at "
            f"full size")
