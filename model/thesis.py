"""ThesisModel: the whole interpolator, Phase 1 (no flow) and Phases 2/3 (flow pipeline).

Phase 1::

    features     = HybridBackbone(I0, I1)                       per frame, scales 1 .. 1/16
    m, res       = RefineNet(features, [I0, I1], t)
    pred         = clamp(sigmoid(m) * I0 + (1 - sigmoid(m)) * I1 + res, 0, 1)

Phases 2/3 (SPEC "Phase 2 Flow Pipeline", docs/DESIGN.md 1.4, 7)::

    features     = HybridBackbone(I0, I1)                       on the original, unwarped frames
    F, m0        = OpticalFlowEstimator(I0, I1, t, backbone features)      F = [F_t->0, F_t->1] in pixels
    W0, W1       = warp(I0, F_t->0), warp(I1, F_t->1)
    features'    = each frame's features warped by its flow, resized per level
    context      = ContextNet(I0) warped by F_t->0, ContextNet(I1) warped by F_t->1
    dm, res      = RefineNet(features', [I0, I1, W0, W1, m0, F], t, context)
    pred         = clamp(M * W0 + (1 - M) * W1 + res, 0, 1),  M = sigmoid(m0 + dm)

Inputs are (B, 3, H, W) in [0, 1] of any size: they are replicate-padded to the multiple the network needs
and the outputs cropped back. ``t`` is a float, a 0-d tensor, or a per-sample tensor (B,) / (B, 1, 1, 1).
For high-resolution inference, ``flow_scale`` < 1 estimates flow on downscaled frames (0.5 for 2K, 0.25 for
4K) while the backbone and RefineNet run at full resolution.

With ``--flow_prior dis`` (ModelConfig.flow_prior) every call also takes ``flow_prior``: the pair's classical
flows both ways, (B, 4, H, W) = [F_0->1, F_1->0] in pixels (``measures.motion.prior_pair_flows``, computed on the
CPU by the caller); the estimator starts from their flows at t (model/ops/prior.py) and refines them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import HybridBackbone
from .ops.pairs import split_frames
from .ops.prior import flip_flows, flows_at_t
from .ops.warp import resize_flow
from .refine import RefineNet
from .warplayer import BackwardWarp


@dataclass
class InterpolationOutput:
    """What a forward pass returns. Images (B, 3, H, W), masks (B, 1, H, W), flow (B, 4, H, W) in pixels."""

    pred: torch.Tensor
    mask: torch.Tensor
    residual: torch.Tensor
    flow: torch.Tensor | None = None
    warped0: torch.Tensor | None = None
    warped1: torch.Tensor | None = None
    # Per flow block: (warped0, warped1, mask_logit) after that block's update; empty in Phase 1.
    intermediate: list = field(default_factory=list)

    def intermediate_blends(self) -> list[torch.Tensor]:
        """Per flow block i, the blend ``I_hat_i = sigmoid(m_i) W0_i + (1 - sigmoid(m_i)) W1_i`` (B, 3, H, W), float32.

        What the deep-supervision term ``sum_i Lap(I_hat_i, gt)`` reads (model/loss.py). At the input size when
        ``flow_scale`` is 1 (training); at the flow's working size otherwise. Empty in Phase 1 (no flow).
        """
        blends = []
        for warped0, warped1, mask_logit in self.intermediate:
            mask = torch.sigmoid(mask_logit.float())
            blends.append(mask * warped0.float() + (1 - mask) * warped1.float())
        return blends


def as_timestep(t, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """float | 0-d tensor | (B,) | (B, 1) | (B, 1, 1, 1) -> (B, 1, 1, 1) tensor on ``device``."""
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.numel() == 1:
        return t.reshape(1, 1, 1, 1).expand(batch, 1, 1, 1)
    if t.numel() == batch and t.shape[0] == batch:
        return t.reshape(batch, 1, 1, 1)
    raise ValueError(f"timestep must be a scalar or have one value per sample (batch {batch}), got shape "
                     f"{tuple(t.shape)}")


class ThesisModel(nn.Module):
    """forward(img0, img1, t=0.5, flow_scale=1.0, flow_prior=None) -> :class:`InterpolationOutput`."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.use_flow = cfg.use_flow
        self.backbone = HybridBackbone(cfg)
        self.warp = BackwardWarp()
        if self.use_flow:
            from .context import ContextNet
            from .flow import OpticalFlowEstimator
            channels = self.backbone.channels
            # Block 0 (coarsest) sees the 1/16 features, block 1 the 1/8, block 2 the 1/4 (VFIMamba feeds its
            # motion heads the backbone's coarse features).
            feature_channels = tuple(channels[k] for k in (4, 3, 2)) if cfg.flow_use_features else (0, 0, 0)
            self.flow_estimator = OpticalFlowEstimator(widths=tuple(cfg.flow_widths), scales=tuple(cfg.flow_scales),
                                                       num_res_layers=cfg.flow_res_layers,
                                                       feature_channels=feature_channels,
                                                       prior=cfg.flow_prior != "none")
            self.context = ContextNet(base_channels=cfg.context_channels)
            context_channels = tuple(cfg.context_channels * 2 ** k for k in range(3))
            self.refine = RefineNet(channels, cfg.refine_channels, image_channels=17, use_context=True,
                                    context_channels=context_channels, finest=cfg.refine_finest)
            if cfg.flow_prior != "none":
                # With the classical prior the untrained model is the classical interpolation: the flow blocks start
                # with zero updates (model/flow.py) and RefineNet with a zero mask correction and residual
                # (2 sigmoid(0) - 1 = 0), so training starts from the DIS flows' warps, equally blended.
                nn.init.zeros_(self.refine.head.weight)
                nn.init.zeros_(self.refine.head.bias)
        else:
            self.refine = RefineNet(self.backbone.channels, cfg.refine_channels, image_channels=6,
                                    finest=cfg.refine_finest)

    @property
    def size_multiple(self) -> int:
        return self.backbone.size_multiple

    def _pad(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-height) % m, (-width) % m
        return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image

    @property
    def needs_flow_prior(self) -> bool:
        """Whether every call needs the pair's classical flows (``flow_prior``): a ``--flow_prior dis`` model."""
        return self.use_flow and self.config.flow_prior != "none"

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t=0.5, flow_scale: float = 1.0,
                flow_prior: torch.Tensor | None = None) -> InterpolationOutput:
        if img0.dim() != 4 or img0.shape[1] != 3 or img0.shape != img1.shape:
            raise ValueError(f"ThesisModel expects two (B, 3, H, W) images of equal shape, got "
                             f"{tuple(img0.shape)} and {tuple(img1.shape)}")
        height, width = img0.shape[-2:]
        if self.needs_flow_prior != (flow_prior is not None):
            raise ValueError(f"this model was built with --flow_prior {self.config.flow_prior}: pass flow_prior, the "
                             "pair's DIS flows (B, 4, H, W) (measures.motion.prior_pair_flows)"
                             if self.needs_flow_prior else
                             "this model has no flow prior (--flow_prior none): flow_prior must be None")
        if flow_prior is not None and flow_prior.shape != (img0.shape[0], 4, height, width):
            raise ValueError(f"flow_prior must be (B, 4, H, W) = ({img0.shape[0]}, 4, {height}, {width}), got "
                             f"{tuple(flow_prior.shape)}")
        timestep = as_timestep(t, img0.shape[0], img0.device)
        prior = None if flow_prior is None else self._pad(flow_prior.to(img0.device, torch.float32))
        out = self._forward_padded(self._pad(img0), self._pad(img1), timestep, flow_scale, prior)
        if out.pred.shape[-2:] != (height, width):
            crop = lambda x: x[..., :height, :width] if x is not None else None   # noqa: E731
            out = InterpolationOutput(crop(out.pred), crop(out.mask), crop(out.residual), crop(out.flow),
                                      crop(out.warped0), crop(out.warped1),
                                      [tuple(crop(x) for x in step) for step in out.intermediate])
        return out

    def _forward_padded(self, img0, img1, timestep, flow_scale, flow_prior=None) -> InterpolationOutput:
        features = self.backbone(img0, img1)
        if not self.use_flow:
            mask_logit, residual = self.refine(features, (img0, img1), timestep)
            mask = torch.sigmoid(mask_logit)
            pred = (mask * img0 + (1 - mask) * img1 + residual).clamp(0, 1)
            return InterpolationOutput(pred, mask, residual)

        flow_features = [split_frames(features[k]) for k in (4, 3, 2)]
        estimate = self.flow_estimator(img0, img1, timestep, scale_factor=flow_scale,
                                       features=flow_features if self.config.flow_use_features else None,
                                       initial_flow=None if flow_prior is None else flows_at_t(flow_prior, timestep))
        flow, warped0, warped1 = estimate.flow, estimate.warped0, estimate.warped1
        del flow_features
        for index, level in enumerate(features):   # replaced in place: the unwarped map is freed at once (4K memory)
            level_flow = resize_flow(flow, level.shape[-2:])
            level_flow = torch.cat((level_flow[:, :2], level_flow[:, 2:]), dim=0)   # frame 0 rows, then frame 1
            features[index] = self.warp(level, level_flow)
        context = [torch.cat(pair, dim=1) for pair in zip(self.context(img0, flow[:, :2]),
                                                          self.context(img1, flow[:, 2:]))]
        # Passed as parts: RefineNet concatenates them itself, strip by strip at high resolution.
        image_inputs = (img0, img1, warped0, warped1, estimate.mask_logit, flow)
        mask_correction, residual = self.refine(features, image_inputs, timestep, context)
        mask = torch.sigmoid(estimate.mask_logit + mask_correction)
        pred = (mask * warped0 + (1 - mask) * warped1 + residual).clamp(0, 1)
        return InterpolationOutput(pred, mask, residual, flow, warped0, warped1, list(estimate.intermediate))

    def prior_warps(self, img0: torch.Tensor, img1: torch.Tensor, t, flow_prior: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(I0, I1) (B, 3, H, W) backward-warped by the prior's flows at ``t``: the warps a ``--flow_prior`` model's
        flow estimator starts from (their average is the untrained model's prediction). ``flow_prior``: (B, 4, H, W)
        = [F_0->1, F_1->0] in pixels, as ``forward`` takes it."""
        if flow_prior.shape != (img0.shape[0], 4, *img0.shape[-2:]):
            raise ValueError(f"flow_prior must be (B, 4, H, W) like the images {tuple(img0.shape)}, got "
                             f"{tuple(flow_prior.shape)}")
        timestep = as_timestep(t, img0.shape[0], img0.device)
        flows = flows_at_t(flow_prior.to(img0.device, torch.float32), timestep)
        return self.warp(img0, flows[:, :2]), self.warp(img1, flows[:, 2:])

    @torch.no_grad()
    def inference(self, img0: torch.Tensor, img1: torch.Tensor, t=0.5, flow_scale: float = 1.0,
                  tta: bool = False, flow_prior: torch.Tensor | None = None) -> torch.Tensor:
        """Prediction only, (B, 3, H, W). ``tta`` averages with the prediction on H+W-flipped inputs."""
        return predict_with_tta(self, img0, img1, t, flow_scale, tta, flow_prior)


def predict_with_tta(model: nn.Module, img0: torch.Tensor, img1: torch.Tensor, t, flow_scale: float, tta: bool,
                     flow_prior: torch.Tensor | None) -> torch.Tensor:
    """``model(...).pred`` (B, 3, H, W), averaged with ``tta`` with the prediction on both frames flipped along H and
    W (and the prior's flows flipped with them: :func:`model.ops.prior.flip_flows`), flipped back. Shared by every
    model class's ``inference``."""
    pred = model(img0, img1, t, flow_scale, flow_prior).pred
    if tta:
        flipped_prior = None if flow_prior is None else flip_flows(flow_prior)
        flipped = model(img0.flip(2, 3), img1.flip(2, 3), t, flow_scale, flipped_prior).pred.flip(2, 3)
        pred = (pred + flipped) / 2
    return pred


def build_model(cfg) -> ThesisModel:
    """Build from a :class:`config.ModelConfig` (or an ExperimentConfig, whose ``.model`` is used)."""
    model_cfg = getattr(cfg, "model", cfg)
    model_cfg.validate()
    return ThesisModel(model_cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
