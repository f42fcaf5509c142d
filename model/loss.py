"""Training losses for Thesis-VFI (SPEC "Loss Function Design", docs/DESIGN.md 8.2-8.6).

Conventions shared by every loss here:

* Images are (B, 3, H, W) RGB in [0, 1]; any H, W the individual loss can support (odd sizes included).
* Every loss computes in float32 with autocast switched off inside, whatever the caller's precision: the
  Laplacian bands and census differences are small numbers whose means bfloat16 (8 mantissa bits) would
  round away, and VGG features feed an L1 whose scale must not depend on the mixed-precision setting.
* Every loss returns a 0-dim float32 tensor.

Components:

* :class:`LaplacianLoss` -- L1 between Laplacian pyramids (RIFE / EMA-VFI / VFIMamba).
* :class:`TernaryLoss` -- census-transform distance on luma (RIFE / IFRNet).
* :class:`VGGPerceptualLoss` -- RIFE's VGG19 perceptual loss; weights only from local files, never downloaded
  (finding, checking and loading them: model/vgg19.py).
* :class:`FlowSmoothnessLoss` -- edge-aware flow smoothness (ARFlow form), gated by the edges of I_t.
* :class:`FlowTeacherLoss` -- pulls the estimated flow towards a teacher flow (OpenCV DIS from the middle frame)
  where the teacher warps the inputs better than the model does (docs/LARGE_MOTION.md).
* :class:`PriorAnchorLoss` -- holds a ``--flow_prior`` model's flow to the prior's wherever moving away has not
  improved the warp (docs/LARGE_MOTION.md, thirteenth round).
* :class:`CompositeLoss` -- the phase-aware weighted sum, with :class:`LossWeights` from the SPEC table, plus
  the optional deep supervision of the flow blocks' intermediate blends (docs/DESIGN.md 8.6).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .ops.warp import backward_warp
from .vgg19 import VGGWeightsUnavailable, frozen_vgg19_trunk

__all__ = [
    "LOSS_LOG_KEYS",
    "CompositeLoss",
    "FlowSmoothnessLoss",
    "FlowTeacherLoss",
    "LaplacianLoss",
    "LossWeights",
    "PriorAnchorLoss",
    "TernaryLoss",
    "VGGPerceptualLoss",
]


def _autocast_off(tensor: torch.Tensor) -> torch.autocast:
    """Context that disables autocast for ``tensor``'s device type, so the loss runs in true float32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _check_image_pair(pred: torch.Tensor, gt: torch.Tensor, loss_name: str) -> None:
    if pred.dim() != 4 or pred.shape != gt.shape:
        raise ValueError(f"{loss_name} expects pred and gt of the same shape (B, C, H, W), got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Laplacian pyramid L1 (docs/DESIGN.md 8.2)
# ----------------------------------------------------------------------------------------------------------------

_BINOMIAL_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)
_BINOMIAL_SIZE = len(_BINOMIAL_TAPS)
_BINOMIAL_PAD = _BINOMIAL_SIZE // 2


class LaplacianLoss(nn.Module):
    """L1 distance between the Laplacian pyramids of ``pred`` and ``gt``.

    With the 5x5 binomial kernel ``K = (1,4,6,4,1)^T (1,4,6,4,1) / 256`` applied depthwise with reflect padding 2,
    level ``k`` of an image ``I_0`` is::

        g   = K * I_k
        d   = g[::2, ::2]                        # I_{k+1}, size ceil(h/2) x ceil(w/2)
        u   = (4K * zero_insert(d))[:h, :w]      # zero_insert -> 2*ceil(h/2) x 2*ceil(w/2), crop to I_k's size
        L_k = I_k - u

    and the loss is ``sum_k mean|L_k(pred) - L_k(gt)|`` over ``levels`` levels; the final low-pass residual is not
    included.  For H, W divisible by 2**levels this is RIFE's ``LapLoss``; the crop makes odd sizes work.

    A level needs at least 5 px on each side (the kernel size; this also keeps reflect padding legal).  When a
    deeper level would be smaller, the pyramid stops early and the loss sums the levels computed so far (e.g. a
    64x64 input uses 4 levels: 64, 32, 16, 8).

    Implementation note: every step above is linear, so ``L_k(pred) - L_k(gt) = L_k(pred - gt)``; one pyramid of
    the difference is built instead of two (half the work, and no cancellation between two large pyramids).
    """

    def __init__(self, levels: int = 5):
        super().__init__()
        if levels < 1:
            raise ValueError(f"LaplacianLoss needs levels >= 1, got {levels}")
        self.levels = levels
        taps = torch.tensor(_BINOMIAL_TAPS, dtype=torch.float32)
        kernel = torch.outer(taps, taps) / 256.0
        # Non-persistent: a constant, so it follows .to(device) but never enters a checkpoint.
        self.register_buffer("kernel", kernel.view(1, 1, _BINOMIAL_SIZE, _BINOMIAL_SIZE), persistent=False)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"

    @staticmethod
    def _blur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Depthwise 5x5 convolution with reflect padding: (N, C, h, w) -> (N, C, h, w)."""
        channels = image.shape[1]
        padded = F.pad(image, (_BINOMIAL_PAD,) * 4, mode="reflect")
        return F.conv2d(padded, kernel.to(image.dtype).expand(channels, 1, -1, -1), groups=channels)

    def pyramid(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Laplacian bands of ``image`` (N, C, H, W): list of (N, C, H_k, W_k), finest first, without the residual.

        Runs in the dtype of ``image``; :meth:`forward` calls it in float32.
        """
        height, width = image.shape[-2:]
        if min(height, width) < _BINOMIAL_SIZE:
            raise ValueError(f"LaplacianLoss needs images of at least {_BINOMIAL_SIZE}x{_BINOMIAL_SIZE}, "
                             f"got {height}x{width}")
        bands: list[torch.Tensor] = []
        current = image
        for _ in range(self.levels):
            height, width = current.shape[-2:]
            if min(height, width) < _BINOMIAL_SIZE:
                break
            downsampled = self._blur(current, self.kernel)[..., ::2, ::2]
            down_h, down_w = downsampled.shape[-2:]
            zero_inserted = downsampled.new_zeros(*downsampled.shape[:2], 2 * down_h, 2 * down_w)
            zero_inserted[..., ::2, ::2] = downsampled
            # 4K restores the mean brightness lost to the three zeros inserted per sample.
            upsampled = self._blur(zero_inserted, 4.0 * self.kernel)[..., :height, :width]
            bands.append(current - upsampled)
            current = downsampled
        return bands

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """pred, gt: (B, C, H, W), H, W >= 5 -> 0-dim float32 loss."""
        _check_image_pair(pred, gt, "LaplacianLoss")
        with _autocast_off(pred):
            bands = self.pyramid(pred.float() - gt.float())
            return torch.stack([band.abs().mean() for band in bands]).sum()


# ----------------------------------------------------------------------------------------------------------------
# Census / ternary loss (docs/DESIGN.md 8.3)
# ----------------------------------------------------------------------------------------------------------------

_LUMA_WEIGHTS = (0.2989, 0.587, 0.114)   # RIFE's (ITU-R BT.601) grey conversion


class TernaryLoss(nn.Module):
    """Soft census-transform (ternary) distance between ``pred`` and ``gt``, computed on luma.

    For every pixel ``p`` and every offset ``o`` of a ``patch_size`` x ``patch_size`` window (the centre included,
    as in RIFE's 49 one-hot filters)::

        t_o(p) = Y(p + o) - Y(p)                   # Y = 0.2989 R + 0.587 G + 0.114 B, in [0, 1]
        c_o(p) = t_o / sqrt(0.81 + t_o^2)          # soft sign
        dist(p) = mean_o  d^2 / (0.1 + d^2),   d = c_o(p; pred) - c_o(p; gt)

    and the loss is the mean of ``dist`` over valid pixels.

    Border: pixels closer than ``margin = patch_size // 2`` (3 px for 7x7, IFRNet's choice; RIFE masks only 1 px)
    to the image edge are excluded, because their windows would reach into padding and compare real pixels with
    invented ones.  Implemented by extracting windows with ``F.unfold`` without padding, which visits exactly the
    valid pixels, so "mask then mean over valid pixels" needs no explicit mask.

    Adding a constant to both images leaves the loss unchanged (only differences of luma enter).
    """

    def __init__(self, patch_size: int = 7):
        super().__init__()
        if patch_size < 3 or patch_size % 2 == 0:
            raise ValueError(f"TernaryLoss needs an odd patch_size >= 3, got {patch_size}")
        self.patch_size = patch_size
        self.margin = patch_size // 2

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, margin={self.margin}"

    @staticmethod
    def luma(image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB -> (B, 1, H, W) luma."""
        red, green, blue = image.unbind(dim=1)
        return (_LUMA_WEIGHTS[0] * red + _LUMA_WEIGHTS[1] * green + _LUMA_WEIGHTS[2] * blue).unsqueeze(1)

    def census(self, grey: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> soft census codes (B, patch_size**2, (H - 2m) * (W - 2m)) at the valid pixels."""
        height, width = grey.shape[-2:]
        m = self.margin
        neighbours = F.unfold(grey, kernel_size=self.patch_size)             # (B, P*P, L), windows fully inside
        centres = grey[..., m:height - m, m:width - m].flatten(start_dim=2)  # (B, 1, L), same pixel order
        differences = neighbours - centres
        return differences / torch.sqrt(0.81 + differences * differences)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """pred, gt: (B, 3, H, W) with H, W > 2 * margin -> 0-dim float32 loss."""
        _check_image_pair(pred, gt, "TernaryLoss")
        if pred.shape[1] != 3:
            raise ValueError(f"TernaryLoss expects RGB images (B, 3, H, W), got {tuple(pred.shape)}")
        height, width = pred.shape[-2:]
        if min(height, width) <= 2 * self.margin:
            raise ValueError(f"TernaryLoss(patch_size={self.patch_size}) needs images larger than "
                             f"{2 * self.margin}x{2 * self.margin}, got {height}x{width}")
        with _autocast_off(pred):
            code_difference = self.census(self.luma(pred.float())) - self.census(self.luma(gt.float()))
            squared = code_difference * code_difference
            # Every valid pixel has the same number of offsets, so one mean = mean over offsets, then pixels.
            return (squared / (0.1 + squared)).mean()


# ----------------------------------------------------------------------------------------------------------------
# VGG19 perceptual loss (docs/DESIGN.md 8.4)
# ----------------------------------------------------------------------------------------------------------------

# torchvision ``vgg19().features`` indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (the trunk's last layer,
# model/vgg19.py) and RIFE's weights.
_VGG19_TAP_INDICES = (1, 6, 11, 20, 29)
_VGG19_TAP_WEIGHTS = (1.0 / 2.6, 1.0 / 4.8, 1.0 / 3.7, 1.0 / 5.6, 10.0 / 1.5)
_VGG19_TOTAL_SCALE = 0.1                      # RIFE's final x0.1; CompositeLoss's weight multiplies on top
_VGG19_MIN_SIZE = 16                          # four 2x max-pools before relu5_1
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGPerceptualLoss(nn.Module):
    """RIFE's VGG19 perceptual loss: ``0.1 * sum_i w_i * mean|phi_i(pred) - phi_i(gt)|``.

    ``phi_i`` are the torchvision VGG19 activations at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of the
    ImageNet-normalised RGB input, ``w = (1/2.6, 1/4.8, 1/3.7, 1/5.6, 10/1.5)``; target features run under
    ``no_grad``.  The network (model/vgg19.py) is truncated after relu5_1, always in eval mode, with frozen
    weights stored as non-persistent buffers (see :func:`model.vgg19.freeze_as_constants`): ``state_dict()`` is
    empty and ``parameters()`` yields nothing, yet ``.to(device)`` moves the network.

    Args:
        weights_path: VGG19 weights file; if None, :func:`model.vgg19.find_vgg19_weights` searches for one.
        allow_random: when no file is found, use randomly initialised weights instead of raising (tests only:
            a random VGG makes the perceptual term meaningless).

    Raises:
        VGGWeightsUnavailable: no file found and ``allow_random`` is False.
        FileNotFoundError: an explicitly named file (argument or env var) does not exist.
        ValueError: the file is not a VGG19 state dict (one line, naming the file).

    Attribute ``weights_source`` holds the file path used, or ``"random"``.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, allow_random: bool = False):
        super().__init__()
        self.features, self.weights_source = frozen_vgg19_trunk(weights_path, allow_random)

        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        """Always stays in eval mode: the perceptual network is a fixed measuring instrument."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"weights_source={self.weights_source!r}"

    def _tapped_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) float32 in [0, 1] -> the five relu activations, coarsening from (B, 64, H, W)."""
        activation = (image - self.mean) / self.std
        tapped = []
        for index, layer in enumerate(self.features):
            activation = layer(activation)
            if index in _VGG19_TAP_INDICES:
                # Safe to keep although ReLUs are in-place: every tap is followed by a conv (or is the last layer),
                # which writes a new tensor, so no later layer overwrites a kept activation.
                tapped.append(activation)
        return tapped

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """pred, gt: (B, 3, H, W) RGB in [0, 1], H, W >= 16 -> 0-dim float32 loss (already x0.1)."""
        _check_image_pair(pred, gt, "VGGPerceptualLoss")
        if pred.shape[1] != 3:
            raise ValueError(f"VGGPerceptualLoss expects RGB images (B, 3, H, W), got {tuple(pred.shape)}")
        if min(pred.shape[-2:]) < _VGG19_MIN_SIZE:
            raise ValueError(f"VGGPerceptualLoss needs images of at least {_VGG19_MIN_SIZE}x{_VGG19_MIN_SIZE}, "
                             f"got {pred.shape[-2]}x{pred.shape[-1]}")
        with _autocast_off(pred):
            pred_features = self._tapped_features(pred.float())
            with torch.no_grad():
                gt_features = self._tapped_features(gt.float())
            total = sum(weight * (pred_feature - gt_feature).abs().mean()
                        for weight, pred_feature, gt_feature
                        in zip(_VGG19_TAP_WEIGHTS, pred_features, gt_features))
            return _VGG19_TOTAL_SCALE * total


# ----------------------------------------------------------------------------------------------------------------
# Edge-aware flow smoothness (docs/DESIGN.md 8.5)
# ----------------------------------------------------------------------------------------------------------------

def _forward_differences(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (d/dx: (B, C, H, W-1), d/dy: (B, C, H-1, W)), forward differences."""
    return tensor[..., :, 1:] - tensor[..., :, :-1], tensor[..., 1:, :] - tensor[..., :-1, :]


class FlowSmoothnessLoss(nn.Module):
    """Edge-aware smoothness of the intermediate flows (ARFlow / UnFlow form).

    Edge weights come from the image that lives on the flow's grid.  For VFI the flows ``F_{t->0}, F_{t->1}``
    are defined on the target grid, so the image MUST be the target frame I_t (the ground truth in training),
    not I_0::

        w_x = exp(-alpha * mean_c |dx I|),   w_y likewise
        order 1:  0.5 * [ mean(w_x * |dx F| / 2) + mean(w_y * |dy F| / 2) ]
        order 2:  0.5 * [ mean(w_x' * |dxx F|)   + mean(w_y' * |dyy F|)   ]   (w' cropped to the 2nd-diff size)

    Means run over batch, all flow channels and positions.  Units: flow in pixels *of the flow's own grid*;
    the loss then is in those pixels (per pixel for order 1).  If the model hands in a low-resolution flow
    expressed in full-resolution pixels, the loss scales up by the resolution factor: the weight absorbs it,
    but keep the convention fixed across runs.  If the flow's size differs from the image's, the image is
    resized to the flow's size (area averaging when shrinking, bilinear otherwise) before taking edges.

    Args:
        edge_constant: alpha; with images in [0, 1], alpha = 10 gives w ~ exp(-10 * step), i.e. a 0.1 intensity
            edge already halves the penalty (alpha = 1 would leave w ~ 1 everywhere: no edge awareness).
        order: 1 (penalise flow gradients) or 2 (penalise flow curvature; affine flows are free).
    """

    def __init__(self, edge_constant: float = 10.0, order: int = 1):
        super().__init__()
        if order not in (1, 2):
            raise ValueError(f"FlowSmoothnessLoss order must be 1 or 2, got {order}")
        if not edge_constant >= 0.0:
            raise ValueError(f"FlowSmoothnessLoss edge_constant must be >= 0, got {edge_constant}")
        self.edge_constant = float(edge_constant)
        self.order = order

    def extra_repr(self) -> str:
        return f"edge_constant={self.edge_constant}, order={self.order}"

    @staticmethod
    def _image_on_flow_grid(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(image.shape[-2:]) == size:
            return image
        if image.shape[-2] >= size[0] and image.shape[-1] >= size[1]:
            return F.interpolate(image, size=size, mode="area")
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)

    def forward(self, flow: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """flow: (B, 4, h, w) pixels, [F_t->0, F_t->1] (any channel count works); image: (B, 3, H, W) I_t.

        Returns a 0-dim float32 loss.  Needs h, w >= order + 1.
        """
        if flow.dim() != 4 or image.dim() != 4 or flow.shape[0] != image.shape[0]:
            raise ValueError(f"FlowSmoothnessLoss expects flow (B, 4, h, w) and image (B, 3, H, W) with the same B, "
                             f"got {tuple(flow.shape)} and {tuple(image.shape)}")
        height, width = flow.shape[-2:]
        if min(height, width) < self.order + 1:
            raise ValueError(f"FlowSmoothnessLoss(order={self.order}) needs a flow of at least "
                             f"{self.order + 1}x{self.order + 1}, got {height}x{width}")
        with _autocast_off(flow):
            flow = flow.float()
            image = self._image_on_flow_grid(image.float(), (height, width))
            image_dx, image_dy = _forward_differences(image)
            weight_x = torch.exp(-self.edge_constant * image_dx.abs().mean(dim=1, keepdim=True))
            weight_y = torch.exp(-self.edge_constant * image_dy.abs().mean(dim=1, keepdim=True))
            flow_dx, flow_dy = _forward_differences(flow)
            if self.order == 1:
                return 0.5 * ((weight_x * flow_dx.abs() / 2).mean() + (weight_y * flow_dy.abs() / 2).mean())
            flow_dxx = flow_dx[..., :, 1:] - flow_dx[..., :, :-1]
            flow_dyy = flow_dy[..., 1:, :] - flow_dy[..., :-1, :]
            return 0.5 * ((weight_x[..., :, 1:] * flow_dxx.abs()).mean()
                          + (weight_y[..., 1:, :] * flow_dyy.abs()).mean())


class FlowTeacherLoss(nn.Module):
    """Distil a teacher flow into the estimated one, only where the teacher is the better warp.

    Why: trained from scratch for minutes, the flow estimator learns motion slowly (after 900 steps the model was
    still at the frame average in every motion bucket, docs/LARGE_MOTION.md), while a classical optical flow
    computed from the ground-truth middle frame already warps the inputs well. IFRNet distils a pre-trained
    flow network's flow; RIFE distils a privileged teacher block that sees the middle frame. Here the teacher is
    OpenCV's DIS run from the middle frame to each input (:func:`measures.motion.teacher_flows`: no weights, no
    download) and, as in RIFE, it teaches only where its warp is better, so the term fades where the model has
    overtaken it (occlusions, where DIS is wrong, included)::

        e_T,k = mean_c |warp(I_k, T_k) - I_t|,   e_S,k = mean_c |warp(I_k, F_k) - I_t|   (detached)
        trusted_k = [e_T,k + margin < e_S,k]
        loss = sum_k mean( trusted_k * sqrt(|F_k - T_k|^2 + epsilon^2) )          k = 0, 1

    with F_0, F_1 = the model's F_t->0, F_t->1 and T_k the teacher's. A Charbonnier endpoint error in pixels:
    robust to the teacher's outliers, and its gradient does not vanish as the error shrinks.

    Args:
        margin: how much better (mean absolute error over channels, images in [0, 1]) the teacher's warp must be
            at a pixel to teach there (RIFE: 0.01).
        epsilon: Charbonnier constant in pixels.
    """

    def __init__(self, margin: float = 0.01, epsilon: float = 0.01):
        super().__init__()
        if not (margin >= 0.0 and epsilon > 0.0):
            raise ValueError(f"FlowTeacherLoss needs margin >= 0 and epsilon > 0, got {margin}, {epsilon}")
        self.margin = float(margin)
        self.epsilon = float(epsilon)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, epsilon={self.epsilon}"

    def applies(self, target_error: torch.Tensor, model_error: torch.Tensor) -> torch.Tensor:
        """Boolean map of where the term pulls, from per-pixel warp errors: here where the teacher is better by
        ``margin``."""
        return target_error + self.margin < model_error

    def trusted(self, teacher: torch.Tensor, frames: tuple[torch.Tensor, torch.Tensor], gt: torch.Tensor,
                warped: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(B, 2, H, W) float32 in {0, 1}: where :meth:`applies` to each side's teacher warp and the model's
        (channel 0: frame 0)."""
        masks = []
        for side, (frame, model_warp) in enumerate(zip(frames, warped)):
            teacher_warp = backward_warp(frame.float(), teacher[:, 2 * side:2 * side + 2])
            teacher_error = (teacher_warp - gt).abs().mean(dim=1, keepdim=True)
            model_error = (model_warp.detach().float() - gt).abs().mean(dim=1, keepdim=True)
            masks.append(self.applies(teacher_error, model_error).float())
        return torch.cat(masks, dim=1)

    def forward(self, flow: torch.Tensor, teacher: torch.Tensor, frames: tuple[torch.Tensor, torch.Tensor],
                gt: torch.Tensor, warped: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """flow, teacher: (B, 4, H, W) pixels [F_t->0, F_t->1]; frames: (I0, I1) and gt: (B, 3, H, W) in [0, 1];
        warped: the model's (warp(I0, F_t->0), warp(I1, F_t->1)) when already computed (else warped here).

        Returns a 0-dim float32 loss (pixels).
        """
        if flow.shape != teacher.shape or flow.dim() != 4 or flow.shape[1] != 4:
            raise ValueError(f"FlowTeacherLoss expects flow and teacher of one shape (B, 4, H, W), got "
                             f"{tuple(flow.shape)} and {tuple(teacher.shape)}")
        if gt.shape[0] != flow.shape[0] or gt.shape[-2:] != flow.shape[-2:]:
            raise ValueError(f"FlowTeacherLoss: the flow {tuple(flow.shape)} must lie on the middle frame's grid "
                             f"{tuple(gt.shape)} (train with flow_scale 1)")
        with _autocast_off(flow):
            flow, teacher, gt = flow.float(), teacher.float(), gt.float()
            if warped is None:
                warped = tuple(backward_warp(frame.float(), flow[:, 2 * side:2 * side + 2])
                               for side, frame in enumerate(frames))
            trusted = self.trusted(teacher, frames, gt, warped)
            difference = (flow - teacher).reshape(flow.shape[0], 2, 2, *flow.shape[-2:])   # (B, side, xy, H, W)
            endpoint = torch.sqrt(difference.pow(2).sum(dim=2) + self.epsilon ** 2)         # (B, side, H, W)
            return (trusted * endpoint).mean() * 2          # a sum over the two sides of their means


class PriorAnchorLoss(FlowTeacherLoss):
    """Hold the estimated flow to the classical prior's, except where moving away from it has paid off.

    Why: a model with ``--flow_prior dis`` starts as DIS's interpolation, and on the held-out footage every measured
    step of training moved it further below DIS, in proportion to the motion (docs/LARGE_MOTION.md, rounds ten to
    twelve): its learned corrections to the prior help the training crops and hurt where DIS was right. What made the
    score hold (an EMA, a lower learning rate, coarser flow blocks) slowed every correction alike. This term slows
    only the corrections that have not earned their place: with A_k the prior's flow at t (where the model started),

        e_A,k = mean_c |warp(I_k, A_k) - I_t|,   e_S,k = mean_c |warp(I_k, F_k) - I_t|   (detached)
        kept_k = [e_A,k <= e_S,k + margin]
        loss = sum_k mean( kept_k * sqrt(|F_k - A_k|^2 + epsilon^2) )

    i.e. the flow teacher's Charbonnier endpoint term with the prior as teacher and the opposite burden of proof:
    the teacher taught only where it was better by ``margin``; the anchor holds wherever the model's own warp is not
    better than the prior's by more than ``margin``. Where the model's flow equals the prior's the term and its
    gradient are zero, so it never pushes, only pulls back.
    """

    def applies(self, target_error: torch.Tensor, model_error: torch.Tensor) -> torch.Tensor:
        """Where the model's move away from the prior has not paid off by ``margin`` (ties held)."""
        return target_error <= model_error + self.margin


# ----------------------------------------------------------------------------------------------------------------
# Composite (docs/DESIGN.md 8.6, SPEC "Loss Function Design")
# ----------------------------------------------------------------------------------------------------------------

# The SPEC's five TensorBoard tags (without "loss/"), plus loss_inter for the deep-supervision term.
LOSS_LOG_KEYS = ("loss_lap", "loss_ter", "loss_vgg", "loss_flow_smooth", "loss_inter", "loss_flow_teacher",
                 "loss_prior_anchor", "loss_total")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the composite loss (SPEC table).  A weight of 0 switches the term off.

    ``inter`` weights the deep supervision ``sum_i Lap(I_hat_i, gt)`` over the flow blocks' intermediate blends
    (docs/DESIGN.md 8.6; RIFE, EMA-VFI and VFIMamba use 0.5). It is 0 (off) by default until the ablation
    (benchmark/ablation.py, ``hybrid_inter``) measures whether it helps this model.

    ``flow_teacher`` weights :class:`FlowTeacherLoss` (DIS pseudo-labels, phases 2 and 3); 0 (off) by default.
    ``prior_anchor`` weights :class:`PriorAnchorLoss` (a ``--flow_prior`` model's flow held to the prior's); 0 (off).
    """

    lap: float = 1.0
    ter: float = 1.0
    vgg: float = 0.005
    flow_smooth: float = 0.1
    inter: float = 0.0
    flow_teacher: float = 0.0
    prior_anchor: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"LossWeights.{field.name} must be finite and >= 0, got {value}")


class CompositeLoss(nn.Module):
    """Phase-aware training loss ``lap*Lap + ter*Census + vgg*VGG + flow_smooth*Smooth(F, I_t)
    + inter*sum_i Lap(I_hat_i)``.

    Active terms:

    * Laplacian, census: whenever their weight is > 0 (all phases).
    * VGG perceptual: weight > 0 and weights found.  If no VGG19 file is found (and random weights are not
      allowed), construction emits ONE warning and the term stays off; ``vgg_enabled`` tells which.  A file that
      is named but missing (FileNotFoundError) or malformed (ValueError) is an error, not a warning.
    * Flow smoothness: phases 2 and 3 with weight > 0; then ``forward`` requires ``flow``.  Phase 1 ignores it.
    * Deep supervision (``inter``): phases 2 and 3 with weight > 0; then ``forward`` requires ``intermediate``, the
      blends ``I_hat_i = sigmoid(m_i) W0_i + (1 - sigmoid(m_i)) W1_i`` of every flow block
      (``InterpolationOutput.intermediate_blends()``), and adds ``inter * sum_i Lap(I_hat_i, gt)``: the flow then
      learns from every block's own blend, not only through the final one, where RefineNet's residual can hide a
      bad flow.  Phase 1 has no flow and ignores it.

    ``forward`` returns ``(total, logs)``:

    * ``total``: 0-dim float32 weighted sum of the active terms, differentiable.
    * ``logs``: exactly :data:`LOSS_LOG_KEYS` (the SPEC's TensorBoard tags without "loss/", and loss_inter),
      detached 0-dim float32.  ``loss_lap``, ``loss_ter``, ``loss_vgg``, ``loss_flow_smooth`` and ``loss_inter``
      (the sum over blocks) are the UNWEIGHTED term values (so runs with different weights stay comparable);
      inactive terms are 0.  ``loss_total`` is the WEIGHTED sum, equal to ``total``.

    Checkpointing: nothing here is trainable and ``state_dict()`` is empty (the VGG weights are non-persistent
    buffers, see :class:`VGGPerceptualLoss`), so the module never needs saving; ``.to(device)`` moves everything.
    """

    def __init__(self, phase: int, weights: LossWeights = LossWeights(),
                 vgg_weights_path: str | os.PathLike | None = None, vgg_allow_random: bool = False):
        super().__init__()
        if phase not in (1, 2, 3):
            raise ValueError(f"CompositeLoss phase must be 1, 2 or 3, got {phase!r}")
        self.phase = phase
        self.weights = weights
        self.laplacian = LaplacianLoss()
        self.ternary = TernaryLoss()
        self.smoothness = FlowSmoothnessLoss()

        perceptual: VGGPerceptualLoss | None = None
        if weights.vgg > 0:
            try:
                perceptual = VGGPerceptualLoss(vgg_weights_path, allow_random=vgg_allow_random)
            except VGGWeightsUnavailable as error:
                warnings.warn(f"VGG perceptual loss term DISABLED (loss_vgg will be logged as 0): {error}",
                              RuntimeWarning, stacklevel=2)
        self.perceptual = perceptual
        self.vgg_enabled: bool = perceptual is not None
        self.flow_smoothness_enabled: bool = phase >= 2 and weights.flow_smooth > 0
        self.deep_supervision_enabled: bool = phase >= 2 and weights.inter > 0
        self.flow_teacher_enabled: bool = phase >= 2 and weights.flow_teacher > 0
        self.flow_teacher = FlowTeacherLoss()
        self.prior_anchor_enabled: bool = phase >= 2 and weights.prior_anchor > 0
        self.prior_anchor = PriorAnchorLoss()

    def extra_repr(self) -> str:
        return (f"phase={self.phase}, weights={self.weights}, vgg_enabled={self.vgg_enabled}, "
                f"flow_smoothness_enabled={self.flow_smoothness_enabled}, "
                f"deep_supervision_enabled={self.deep_supervision_enabled}, "
                f"flow_teacher_enabled={self.flow_teacher_enabled}, prior_anchor_enabled={self.prior_anchor_enabled}")

    def forward(self, pred: torch.Tensor, gt: torch.Tensor, flow: torch.Tensor | None = None,
                intermediate: Sequence[torch.Tensor] | None = None, teacher_flow: torch.Tensor | None = None,
                frames: tuple[torch.Tensor, torch.Tensor] | None = None,
                warped: tuple[torch.Tensor, torch.Tensor] | None = None,
                prior_flow: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred, gt: (B, 3, H, W) RGB in [0, 1]; flow: (B, 4, h, w) pixels [F_t->0, F_t->1] (phases 2, 3);
        intermediate: the flow blocks' blends, each (B, 3, H, W) like ``gt`` (phases 2, 3 with ``inter`` > 0);
        teacher_flow (B, 4, H, W), frames (I0, I1) and optionally the model's warps (W0, W1): the flow-teacher term
        (phases 2, 3 with ``flow_teacher`` > 0); prior_flow (B, 4, H, W), the prior's flows at t (where a
        ``--flow_prior`` model starts), with frames: the prior-anchor term (``prior_anchor`` > 0).

        Returns (weighted total, logs); see the class docstring.
        """
        _check_image_pair(pred, gt, "CompositeLoss")
        if self.flow_smoothness_enabled and flow is None:
            raise ValueError(f"CompositeLoss(phase={self.phase}) needs the model's flow (B, 4, h, w) for the "
                             f"flow-smoothness term: call forward(pred, gt, flow=flow)")
        if self.deep_supervision_enabled:
            if not intermediate:
                raise ValueError(f"CompositeLoss(phase={self.phase}, inter={self.weights.inter}) needs the flow blocks' "
                                 "blends: call forward(..., intermediate=output.intermediate_blends())")
            for index, blend in enumerate(intermediate):
                if blend.shape != gt.shape:
                    raise ValueError(f"CompositeLoss: intermediate blend {index} has shape {tuple(blend.shape)}, "
                                     f"gt {tuple(gt.shape)} (deep supervision needs flow_scale 1)")

        if self.flow_teacher_enabled and (teacher_flow is None or frames is None or flow is None):
            raise ValueError(f"CompositeLoss(flow_teacher={self.weights.flow_teacher}) needs teacher_flow (B, 4, H, W) "
                             "and frames=(img0, img1): the training items carry 'flow_teacher' when the dataset's "
                             "teacher_flow is set (loaders.build_datasets does it for --flow_teacher)")

        if self.prior_anchor_enabled and (prior_flow is None or frames is None or flow is None):
            raise ValueError(f"CompositeLoss(prior_anchor={self.weights.prior_anchor}) needs prior_flow (B, 4, H, W), "
                             "the flow prior at t, and frames=(img0, img1): train a --flow_prior dis model")

        active: list[tuple[str, float, torch.Tensor]] = []
        if self.weights.lap > 0:
            active.append(("loss_lap", self.weights.lap, self.laplacian(pred, gt)))
        if self.weights.ter > 0:
            active.append(("loss_ter", self.weights.ter, self.ternary(pred, gt)))
        if self.perceptual is not None:
            active.append(("loss_vgg", self.weights.vgg, self.perceptual(pred, gt)))
        if self.flow_smoothness_enabled:
            # Edges from the ground-truth middle frame: the flows live on the target grid (docs/DESIGN.md 8.5).
            active.append(("loss_flow_smooth", self.weights.flow_smooth, self.smoothness(flow, gt)))
        if self.deep_supervision_enabled:
            inter = torch.stack([self.laplacian(blend, gt) for blend in intermediate]).sum()
            active.append(("loss_inter", self.weights.inter, inter))
        if self.flow_teacher_enabled:
            active.append(("loss_flow_teacher", self.weights.flow_teacher,
                           self.flow_teacher(flow, teacher_flow, frames, gt, warped)))
        if self.prior_anchor_enabled:
            active.append(("loss_prior_anchor", self.weights.prior_anchor,
                           self.prior_anchor(flow, prior_flow, frames, gt, warped)))

        def zero() -> torch.Tensor:
            return torch.zeros((), device=pred.device, dtype=torch.float32)

        total = zero()
        for _, weight, value in active:
            total = total + weight * value

        logs = {key: zero() for key in LOSS_LOG_KEYS}
        for key, _, value in active:
            logs[key] = value.detach()
        logs["loss_total"] = total.detach()
        return total, logs
