"""IFNet-style, timestep-aware optical flow estimator (Phase 2 flow pipeline, docs/DESIGN.md §7.1).

Three :class:`FlowBlock` s run coarse to fine (working scales 4, 2, 1). Each block sees both frames, a constant
timestep map and, from the second block on, the frames warped by the current flow, the current blend-mask logit
and the current flow itself (the 7 / 18-channel layout of RIFE's arbitrary-timestep ``IFNet_m``). Every block
predicts a residual update of the bidirectional flow and of the mask logit.

Conventions used throughout:

* ``flow`` is (B, 4, H, W) in pixels of the grid it lives on; channels [0:2] = F_{t->0} (x, y) and
  [2:4] = F_{t->1}, both defined on the *target* (intermediate) frame grid, so
  ``warped0 = warp(img0, flow[:, 0:2])`` and ``warped1 = warp(img1, flow[:, 2:4])``.
* ``mask_logit`` is (B, 1, H, W); the blend is ``sigmoid(mask_logit) * warped0 + (1 - sigmoid) * warped1``.
* Flow and mask are accumulated in float32 whatever the compute dtype (under bf16 autocast a bf16 sum would round
  a 100-pixel flow to half-pixel steps); the convolutions follow autocast / the parameters' dtype.
* Resizing is bilinear with ``align_corners=False``, so resizing by a factor ``r`` scales pixel displacements by
  exactly ``r``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import conv_prelu, run_conv_prelu
from .ops.conv import ChannelLayout, aligned_layout, spread_channels, spread_conv_weight
from .ops.warp import resize_flow
from .warplayer import BackwardWarp

FeaturePair = tuple[torch.Tensor, torch.Tensor]


def resize_bilinear(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size); a no-op when the size already matches."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


class FlowBlock(nn.Module):
    """One IFNet block: predicts a residual flow and mask-logit update at a given working scale.

    Layout (RIFE ``IFBlock``): downscale the inputs by ``1/scale`` -> stride-2 conv3x3+PReLU (``width // 2``) ->
    stride-2 conv3x3+PReLU (``width``) -> ``num_res_layers`` conv3x3+PReLU with one residual connection around the
    stack -> ``ConvTranspose2d(width, 5, 4, 2, 1)`` (at 1/(2*scale)) -> bilinear upsampling back to full size.

    Optional backbone features (``feature_channels > 0``): the two frames' features, already resized by the caller
    to the first stage's output grid, are projected by a 1x1 conv + PReLU to ``width // 2`` channels and
    concatenated to the output of the first stride-2 stage, so the second stage sees ``2 * (width // 2)``
    channels. They enter there because that grid (1/(2*scale)) is the finest one inside the block that is still
    cheap, and because the image-space input layout (7 / 18 channels) stays unchanged.

    Args:
        in_channels: channels of the concatenated block input *including* the 4 flow channels when a flow is passed
            (7 for the first block, 18 for the others). Exposed as ``self.in_channels``.
        width: channels of the block's main trunk.
        feature_channels: channels per frame of the optional backbone features (0 = no feature input).
        num_res_layers: conv3x3+PReLU layers inside the residual stack (8 in RIFE; 0 disables the stack).
    """

    def __init__(self, in_channels: int, width: int, feature_channels: int = 0, num_res_layers: int = 8):
        super().__init__()
        if width < 2:
            raise ValueError(f"FlowBlock width must be >= 2, got {width}")
        self.in_channels = in_channels
        self.width = width
        self.feature_channels = feature_channels
        self.channel_multiple: int | None = None       # set by align_channels_ (compiled inference only)
        half_width = width // 2

        self.stage1 = conv_prelu(in_channels, half_width, stride=2)
        if feature_channels > 0:
            self.feature_projection = nn.Sequential(
                nn.Conv2d(2 * feature_channels, half_width, kernel_size=1, bias=True),
                nn.PReLU(half_width),
            )
            stage2_in = 2 * half_width
        else:
            self.feature_projection = None
            stage2_in = half_width
        self.stage2 = conv_prelu(stage2_in, width, stride=2)
        self.residual_stack = nn.Sequential(*[conv_prelu(width, width) for _ in range(num_res_layers)])
        # 4 flow channels + 1 mask logit, at twice the resolution of the trunk.
        self.head = nn.ConvTranspose2d(width, 5, kernel_size=4, stride=2, padding=1)

    def forward(self, inputs: torch.Tensor, flow: torch.Tensor | None, scale: int,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict residual updates.

        Args:
            inputs: (B, C, H, W) image-space inputs at full (padded) resolution; ``C = in_channels - 4`` when
                ``flow`` is given, else ``in_channels``. H and W must be multiples of ``4 * scale``.
            flow: (B, 4, H, W) current flow in full-resolution pixels, or None for the first block.
            scale: integer working scale; the block runs at (H / scale, W / scale).
            features: (B, 2 * feature_channels, H / (2 * scale), W / (2 * scale)) aligned backbone features;
                required iff ``feature_channels > 0``.
        Returns:
            delta_flow (B, 4, H, W) float32 in full-resolution pixels and delta_mask_logit (B, 1, H, W) float32.
        """
        height, width = inputs.shape[-2:]
        if height % (4 * scale) or width % (4 * scale):
            raise ValueError(f"FlowBlock at scale {scale} needs H, W divisible by {4 * scale}, got {height}x{width}")
        low_size = (height // scale, width // scale)

        parts = [resize_bilinear(inputs, low_size)]
        if flow is not None:
            # Flow is appended last (RIFE order) and expressed in the working grid's pixels.
            parts.append(resize_flow(flow.float(), low_size))
        channels = sum(part.shape[1] for part in parts)
        if channels != self.in_channels:
            raise ValueError(f"FlowBlock expects {self.in_channels} input channels, got {channels}")
        # Mixed inputs (e.g. fp32 flow with half images) are cast to the weights' dtype, so that a
        # .half()/.bfloat16() module also works without autocast (under autocast the convs recast anyway). Casting
        # each part gives the values that casting their (promoted) concatenation gave; run_conv_prelu concatenates
        # them, with the channels padded to a multiple of 8 inside the concatenation when compiled (7 -> 8, 18 -> 24).
        compute_dtype = self.stage1[0].weight.dtype
        x = run_conv_prelu(self.stage1, [part.to(compute_dtype) for part in parts])

        if self.feature_projection is not None:
            if features is None:
                raise ValueError("FlowBlock was built with feature_channels > 0 but received no features")
            if features.shape[1] != 2 * self.feature_channels or features.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"FlowBlock features must be (B, {2 * self.feature_channels}, "
                                 f"{x.shape[-2]}, {x.shape[-1]}), got {tuple(features.shape)}")
            # The projection's input is the caller's concatenation of both frames' features: compiled, its
            # channels are padded inside that concatenation when they are not a multiple of 8.
            stage2_parts = [x, run_conv_prelu(self.feature_projection, [features.to(compute_dtype)])]
        else:
            stage2_parts = [x]
        x = run_conv_prelu(self.stage2, stage2_parts)   # compiled: an unaligned 2 x 75 becomes 152 in the concat
        if len(self.residual_stack) > 0:
            x = self.residual_stack(x) + x
        out = self.head(x).float()                       # (B, 5, H / (2s), W / (2s))
        out = resize_bilinear(out, (height, width))
        delta_flow = out[:, :4] * (2 * scale)            # head pixels are 2s full-resolution pixels
        delta_mask_logit = out[:, 4:5]
        return delta_flow, delta_mask_logit

    def align_channels_(self, multiple: int = 8) -> "FlowBlock":
        """Zero-pad the trunk in place so that every map inside the block has a multiple of ``multiple`` channels;
        the block computes the same function. For compiled inference only (:func:`align_flow_channels_`).

        Why: cuDNN's tensor-core kernels take channel counts in multiples of 8 (bf16) and pad any other count with
        an extra copy of the input before each convolution; RIFE's widths 240 / 150 / 90 give 150- and 90-wide
        trunks and 75- / 45-wide halves. A consumer's input cannot be aligned at run time without a copy when its
        producer emits an odd count, so the producers are widened: ``width // 2`` -> next multiple (stage1 and the
        feature projection), ``width`` -> next multiple (stage2, the residual stack). The new output channels get
        zero weight rows and zero bias, so they are 0, PReLU keeps them 0 (whatever its slope), the residual sum
        keeps them 0, and their consumers get zero weight columns at the same positions: stage2's input is
        ``cat(stage1, feature projection)`` with each half padded on its own (real channels at 0..h-1 and
        hp..hp+h-1 of 2 * hp, h = half width, hp = h aligned); the ConvTranspose2d head gets zero input rows (its
        weight is (in, out, k, k)) and keeps its 5 outputs. Stage1's image-space input (7 or 18 channels) and the
        feature projection's input (both frames' features) keep their counts: their producers are concatenations
        outside the trunk, which :func:`model.backbone.run_conv_prelu` pads at run time under ``torch.compile``.

        The aligned block's ``state_dict`` has shapes no checkpoint has: ``state_dict()`` and
        ``load_state_dict()`` on it raise :class:`AlignedForInferenceError`. ``width`` and ``in_channels`` keep
        the trained values; the conv modules' ``in_channels`` / ``out_channels`` follow their new weights.
        Returns ``self``; a block already aligned to ``multiple`` is left as it is.
        """
        if self.channel_multiple is not None:
            if self.channel_multiple != multiple:
                raise ValueError(f"FlowBlock is already aligned to {self.channel_multiple} channels, not {multiple}")
            return self
        half_width = self.width // 2
        half_layout = aligned_layout([half_width], multiple)
        width_layout = aligned_layout([self.width], multiple)

        def as_is(channels: int) -> ChannelLayout:          # a map from outside the trunk keeps its channels
            return aligned_layout([channels], 1)

        with torch.no_grad():
            _spread_conv_prelu(self.stage1, as_is(self.in_channels), half_layout)
            if self.feature_projection is not None:
                _spread_conv_prelu(self.feature_projection, as_is(2 * self.feature_channels), half_layout)
                stage2_layout = aligned_layout([half_width, half_width], multiple)
            else:
                stage2_layout = half_layout
            _spread_conv_prelu(self.stage2, stage2_layout, width_layout)
            for pair in self.residual_stack:
                _spread_conv_prelu(pair, width_layout, width_layout)
            _spread_conv(self.head, width_layout, as_is(self.head.out_channels))
        self.channel_multiple = multiple
        self.register_state_dict_pre_hook(_refuse_aligned_state_dict)
        self.register_load_state_dict_pre_hook(_refuse_aligned_load)
        return self


class AlignedForInferenceError(RuntimeError):
    """A channel-aligned flow block (:meth:`FlowBlock.align_channels_`) was asked for, or given, a state_dict."""


def _aligned_message(prefix: str) -> str:
    name = prefix.rstrip(".") or "this FlowBlock"
    return (f"{name} was channel-aligned for compiled inference (model.inference.compile_for_inference): its weights "
            f"are zero-padded to shapes no checkpoint has; save or load the model before compiling it for inference")


def _refuse_aligned_state_dict(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    raise AlignedForInferenceError(_aligned_message(prefix))


def _refuse_aligned_load(module: nn.Module, state_dict, prefix: str, *args) -> None:
    raise AlignedForInferenceError(_aligned_message(prefix))


def _spread_conv(conv: nn.Conv2d | nn.ConvTranspose2d, in_layout: ChannelLayout, out_layout: ChannelLayout) -> None:
    """Replace an ungrouped conv's weight and bias by their zero-padded versions (model.ops.conv.spread_conv_weight)
    and update its ``in_channels`` / ``out_channels``."""
    if conv.groups != 1:
        raise ValueError(f"channel alignment handles ungrouped convolutions only, got groups={conv.groups}")
    weight, bias = spread_conv_weight(conv.weight, conv.bias, in_layout, out_layout,
                                      transposed=isinstance(conv, nn.ConvTranspose2d))
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    if bias is not None:
        conv.bias = nn.Parameter(bias, requires_grad=conv.bias.requires_grad)
    conv.in_channels, conv.out_channels = in_layout.size, out_layout.size


def _spread_conv_prelu(pair: nn.Sequential, in_layout: ChannelLayout, out_layout: ChannelLayout) -> None:
    """:func:`_spread_conv` on a conv + PReLU pair; the PReLU's per-channel slopes follow the conv's outputs (the
    new channels' slopes are 0 and multiply zeros)."""
    conv, prelu = pair
    _spread_conv(conv, in_layout, out_layout)
    if prelu.num_parameters > 1:
        prelu.weight = nn.Parameter(spread_channels(prelu.weight, 0, out_layout),
                                    requires_grad=prelu.weight.requires_grad)
        prelu.num_parameters = out_layout.size


def align_flow_channels_(model: nn.Module, multiple: int = 8) -> int:
    """:meth:`FlowBlock.align_channels_` on every FlowBlock inside ``model`` (in place); returns how many there are
    (0 for a model without a flow estimator, which is left as it is). Inference only: see the method."""
    blocks = [module for module in model.modules() if isinstance(module, FlowBlock)]
    for block in blocks:
        block.align_channels_(multiple)
    return len(blocks)


class FlowOutput(NamedTuple):
    """Result of :class:`OpticalFlowEstimator` (a NamedTuple, so DDP / tuple-unpacking see plain tensors).

    Attributes:
        flow: (B, 4, H, W) float32, input-resolution pixels; [0:2] = F_{t->0}, [2:4] = F_{t->1}.
        mask_logit: (B, 1, H, W) float32 blend logit (weight of ``warped0`` is its sigmoid).
        warped0: (B, 3, H, W) ``img0`` warped by ``flow[:, 0:2]`` (input dtype).
        warped1: (B, 3, H, W) ``img1`` warped by ``flow[:, 2:4]`` (input dtype).
        intermediate: one ``(warped0, warped1, mask_logit)`` per block, after that block's update, for an
            auxiliary per-block blend loss. They live at the *working* resolution (the input size when
            ``scale_factor == 1``, i.e. in training; the downscaled size otherwise). The last entry equals the
            final outputs when ``scale_factor == 1``.
    """

    flow: torch.Tensor
    mask_logit: torch.Tensor
    warped0: torch.Tensor
    warped1: torch.Tensor
    intermediate: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class OpticalFlowEstimator(nn.Module):
    """Timestep-aware, coarse-to-fine IFNet flow estimator (RIFE ``IFNet_m`` student blocks, docs/DESIGN.md §7.1).

    Block 0 input: ``cat(img0, img1, t_map)`` = 7 channels.
    Block k>0 input: ``cat(img0, img1, t_map, warped0, warped1, mask_logit)`` = 14 channels, plus the current flow
    (4) = 18 channels. Updates accumulate: ``flow += delta_flow``, ``mask_logit += delta_mask_logit``.

    High-resolution mode (``scale_factor < 1``): the frames are first resized to ``round(H * scale_factor)`` x
    ``round(W * scale_factor)`` and the whole estimator (unchanged block scales) runs there; the flow is then
    upsampled to the input size with its values multiplied by the size ratio (= 1 / scale_factor) and the mask
    logit is upsampled bilinearly (VFIMamba's ``hr_inference`` rather than RIFE's scale-list division, because the
    padding multiple and the feature alignment then stay the same as in training).

    Any H, W: the (working-size) frames are replicate-padded on the bottom/right to a multiple of
    ``pad_multiple = lcm(4 * s for s in scales)`` (16 for scales 4, 2, 1: each block divides by ``s`` and then by
    4 in its two stride-2 convs), and every output is cropped back. Replicate padding makes the cropped warps
    identical to warping the unpadded frames with the border-padded warp.

    With a prior (``prior=True``, ``--flow_prior dis``): ``forward`` takes an ``initial_flow`` (the classical flows
    at t, model/ops/prior.py) and the first block too is a refinement block (18 channels): the estimate starts
    there, with a mask logit of 0 (the two warps weighted equally), instead of at zero.

    Args:
        widths: trunk width per block (RIFE: 240, 150, 90).
        scales: integer working scale per block, coarse to fine (RIFE: 4, 2, 1).
        num_res_layers: conv layers in each block's residual stack (RIFE: 8).
        feature_channels: per-frame channels of the optional backbone feature maps fed to each block (0 = none).
        prior: whether ``forward`` starts from a given ``initial_flow`` (then required) instead of zero.
    """

    image_channels = 3

    def __init__(self, widths: Sequence[int] = (240, 150, 90), scales: Sequence[int] = (4, 2, 1),
                 num_res_layers: int = 8, feature_channels: Sequence[int] = (0, 0, 0), prior: bool = False):
        super().__init__()
        if not (len(widths) == len(scales) == len(feature_channels)) or len(widths) == 0:
            raise ValueError("widths, scales and feature_channels need one (equal, non-zero) entry per block, got "
                             f"{len(widths)}, {len(scales)}, {len(feature_channels)}")
        if any(int(s) != s or s < 1 for s in scales):
            raise ValueError(f"scales must be positive integers, got {tuple(scales)}")
        self.scales = tuple(int(s) for s in scales)
        self.feature_channels = tuple(int(c) for c in feature_channels)
        self.pad_multiple = math.lcm(*(4 * s for s in self.scales))
        self.prior = prior

        first_in = 2 * self.image_channels + 1                        # img0, img1, t          = 7
        later_in = 4 * self.image_channels + 2 + 4                    # + warp0, warp1, mask, flow = 18
        self.blocks = nn.ModuleList([
            FlowBlock(first_in if index == 0 and not prior else later_in, width, channels, num_res_layers)
            for index, (width, channels) in enumerate(zip(widths, self.feature_channels))
        ])
        if prior:
            # The estimate starts at the prior, so every block's update starts at zero: a randomly initialised head
            # moves the classical flows by several pixels (its output is multiplied by 2 x scale) and makes the
            # untrained model worse than the frame average (measured on the held-out corpus clip: 18.4-18.7 dB
            # against 26.8 for the frame average and 33.3 for DIS). The heads still learn from the first step:
            # their gradient is their input, which is not zero; the layers before them follow from the second.
            for block in self.blocks:
                nn.init.zeros_(block.head.weight)
                nn.init.zeros_(block.head.bias)
        self.warp = BackwardWarp()

    @property
    def in_channels(self) -> tuple[int, ...]:
        """Input channels of each block (7, 18, 18 for three blocks)."""
        return tuple(block.in_channels for block in self.blocks)

    @staticmethod
    def timestep_map(t: float | torch.Tensor, batch: int, height: int, width: int,
                     dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Broadcast ``t`` to a constant (B, 1, H, W) map.

        ``t`` may be a Python number, a tensor with one element (0-d, (1,), ...) or a per-sample tensor with ``B``
        elements ((B,), (B, 1), (B, 1, 1, 1), ...).
        """
        if not torch.is_tensor(t):
            return torch.full((batch, 1, height, width), float(t), dtype=dtype, device=device)
        t = t.to(device=device, dtype=dtype)
        if t.numel() == 1:
            per_sample = t.reshape(1, 1, 1, 1)
        elif t.numel() == batch:
            per_sample = t.reshape(batch, 1, 1, 1)
        else:
            raise ValueError(f"timestep must be a scalar or have one value per sample (B={batch}), "
                             f"got shape {tuple(t.shape)}")
        # expand() alone would give a stride-0 view; torch.cat copies it, so no materialisation is needed here.
        return per_sample.expand(batch, 1, height, width)

    def _aligned_features(self, features: Sequence[FeaturePair | None] | None, content_size: tuple[int, int],
                          padded_size: tuple[int, int]) -> list[torch.Tensor | None]:
        """Resize each block's ``cat(f0, f1)`` to that block's first-stage grid (padded working size / (2s)).

        The feature maps cover the unpadded frame, so they are resized to the part of the grid the real content
        occupies (rounded) and replicate-padded like the frames; misalignment is at most half a grid pixel.
        """
        aligned: list[torch.Tensor | None] = []
        for index, (scale, channels) in enumerate(zip(self.scales, self.feature_channels)):
            if channels == 0:
                aligned.append(None)      # features for this block, if any, are ignored by design
                continue
            if features is None or len(features) != len(self.blocks) or features[index] is None:
                raise ValueError(f"block {index} has feature_channels={channels}: pass `features` as a list with "
                                 f"one (f0, f1) pair per block ({len(self.blocks)} entries)")
            f0, f1 = features[index]
            if f0.shape != f1.shape or f0.shape[1] != channels:
                raise ValueError(f"block {index} features must be two (B, {channels}, h, w) maps, got "
                                 f"{tuple(f0.shape)} and {tuple(f1.shape)}")
            grid_h, grid_w = padded_size[0] // (2 * scale), padded_size[1] // (2 * scale)
            content_h = min(grid_h, max(1, round(content_size[0] / (2 * scale))))
            content_w = min(grid_w, max(1, round(content_size[1] / (2 * scale))))
            pair = resize_bilinear(torch.cat([f0, f1], dim=1), (content_h, content_w))
            if (content_h, content_w) != (grid_h, grid_w):
                pair = F.pad(pair, (0, grid_w - content_w, 0, grid_h - content_h), mode="replicate")
            aligned.append(pair)
        return aligned

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: float | torch.Tensor,
                scale_factor: float = 1.0, features: Sequence[FeaturePair | None] | None = None,
                initial_flow: torch.Tensor | None = None) -> FlowOutput:
        """Estimate the flows from the frame at time ``t`` to both inputs.

        Args:
            img0, img1: (B, 3, H, W) frames at t=0 and t=1 (any H, W).
            t: target time in [0, 1]: float, one-element tensor, or per-sample tensor (B,) / (B, 1, 1, 1).
            scale_factor: run the estimator on frames resized by this factor (e.g. 0.5 for 2K, 0.25 for 4K) and
                upsample the flow / mask to (H, W).
            features: optional list with one ``(f0, f1)`` pair of per-frame maps (B, C_k, h_k, w_k) per block, at
                any resolution covering the whole frame; used only by blocks with ``feature_channels[k] > 0``.
            initial_flow: (B, 4, H, W) flows at ``t`` in input pixels to start from; required iff built with
                ``prior=True``.
        Returns:
            :class:`FlowOutput` (flow and mask at (H, W) in float32; warps in the input dtype).
        """
        if img0.shape != img1.shape or img0.dim() != 4 or img0.shape[1] != self.image_channels:
            raise ValueError(f"img0/img1 must both be (B, 3, H, W), got {tuple(img0.shape)} and {tuple(img1.shape)}")
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor}")
        batch, _, height, width = img0.shape
        if self.prior != (initial_flow is not None):
            raise ValueError("this flow estimator was built with a prior (--flow_prior): pass initial_flow"
                             if self.prior else "this flow estimator has no prior (--flow_prior none): initial_flow "
                             "must be None")
        if initial_flow is not None and initial_flow.shape != (batch, 4, height, width):
            raise ValueError(f"initial_flow must be (B, 4, H, W) = ({batch}, 4, {height}, {width}), got "
                             f"{tuple(initial_flow.shape)}")

        work_size = (max(1, round(height * scale_factor)), max(1, round(width * scale_factor)))
        work0, work1 = resize_bilinear(img0, work_size), resize_bilinear(img1, work_size)
        pad_h = -work_size[0] % self.pad_multiple
        pad_w = -work_size[1] % self.pad_multiple
        if pad_h or pad_w:
            work0 = F.pad(work0, (0, pad_w, 0, pad_h), mode="replicate")
            work1 = F.pad(work1, (0, pad_w, 0, pad_h), mode="replicate")
        padded_size = tuple(work0.shape[-2:])

        def crop(tensor: torch.Tensor) -> torch.Tensor:
            return tensor[..., :work_size[0], :work_size[1]]

        t_map = self.timestep_map(t, batch, *padded_size, dtype=img0.dtype, device=img0.device)
        block_features = self._aligned_features(features, work_size, padded_size)

        flow: torch.Tensor | None = None
        mask_logit: torch.Tensor | None = None
        warped0 = warped1 = None
        if initial_flow is not None:
            flow = resize_flow(initial_flow.float(), work_size)
            if pad_h or pad_w:
                flow = F.pad(flow, (0, pad_w, 0, pad_h), mode="replicate")
            mask_logit = flow.new_zeros(batch, 1, *padded_size)
            warped0 = self.warp(work0, flow[:, 0:2])
            warped1 = self.warp(work1, flow[:, 2:4])
        intermediate: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for index, (block, scale) in enumerate(zip(self.blocks, self.scales)):
            if flow is None:
                block_input = torch.cat([work0, work1, t_map], dim=1)
            else:
                block_input = torch.cat([work0, work1, t_map, warped0, warped1,
                                         mask_logit.to(work0.dtype)], dim=1)
            delta_flow, delta_mask_logit = block(block_input, flow, scale, block_features[index])
            flow = delta_flow if flow is None else flow + delta_flow
            mask_logit = delta_mask_logit if mask_logit is None else mask_logit + delta_mask_logit
            warped0 = self.warp(work0, flow[:, 0:2])
            warped1 = self.warp(work1, flow[:, 2:4])
            intermediate.append((crop(warped0), crop(warped1), crop(mask_logit)))

        flow, mask_logit = crop(flow), crop(mask_logit)
        if work_size == (height, width):
            # Cropping a warp of the replicate-padded frame equals warping the unpadded frame (border padding).
            final_warped0, final_warped1 = intermediate[-1][0], intermediate[-1][1]
        else:
            flow = resize_flow(flow, (height, width))
            mask_logit = resize_bilinear(mask_logit, (height, width))
            final_warped0 = self.warp(img0, flow[:, 0:2])
            final_warped1 = self.warp(img1, flow[:, 2:4])
        return FlowOutput(flow=flow, mask_logit=mask_logit, warped0=final_warped0, warped1=final_warped1,
                          intermediate=intermediate)
