"""RefineNet: a U-Net decoder over the per-frame backbone pyramid that predicts a blend-mask logit and a residual.

Coarse to fine: the 1/16 level of both frames is fused, then at 1/8, 1/4, 1/2 and 1 the running decoder state
is upsampled and concatenated with that level's per-frame features (frame 0 and frame 1 side by side, never
summed), the timestep map, and (``use_context=True``, Phases 2/3) the two flow-warped ContextNet features at
1/2, 1/4 and 1/8. The full-resolution level also sees the image inputs (Phase 1: I0, I1; Phases 2/3: I0, I1, the
two warped frames, the mask logit and the flow). The head outputs 4 channels: a mask logit (Phase 1) or mask
logit correction (Phases 2/3), and a residual ``2 sigmoid(.) - 1`` in [-1, 1] (RIFE's convention).

``finest="half"`` (``--refine_finest half``) moves the finest level to 1/2: a stride-2 convolution reads its
full-resolution skips (features, timestep, image inputs), the level's two convolutions run at 1/2 beside the running
state, and a 4x4 stride-2 transposed convolution is the head (RIFE's U-Net arrangement). Per output pixel the level
does about 2,400 multiply-adds at full resolution instead of about 15,500 (1080p: about 45 GFLOP less).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import conv_prelu, run_conv_prelu, run_conv_prelu_stack
from .ops.pairs import split_frames


class DecoderLevel(nn.Module):
    """Upsample the running state to this level's size, concatenate the skips, two conv3x3 + PReLU."""

    halo = 2    # rows of context each side that the two 3x3 convolutions need

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_prelu(in_channels, out_channels), conv_prelu(out_channels, out_channels))

    def forward(self, state: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        size = skips[0].shape[-2:]
        state = F.interpolate(state, size=size, mode="bilinear", align_corners=False)
        return run_conv_prelu_stack(self.body, [state, *skips])


class HalfResolutionLevel(nn.Module):
    """The finest decoder level at 1/2 of the skips' size (``RefineNet(finest="half")``).

    forward(state (B, C_s, H/2, W/2), skips: maps (B, C_k, H, W)) -> (B, C_out, H/2, W/2): a stride-2 conv3x3 +
    PReLU over the concatenated skips, then two conv3x3 + PReLU over it and the state. H and W must be even.
    """

    def __init__(self, state_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.entry = conv_prelu(skip_channels, out_channels, stride=2)
        self.body = nn.Sequential(conv_prelu(state_channels + out_channels, out_channels),
                                  conv_prelu(out_channels, out_channels))

    def forward(self, state: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        entry = run_conv_prelu(self.entry, skips)
        if state.shape[-2:] != entry.shape[-2:]:
            state = F.interpolate(state, size=entry.shape[-2:], mode="bilinear", align_corners=False)
        return run_conv_prelu_stack(self.body, [state, entry])


def decode_in_row_strips(decoder: DecoderLevel, state: torch.Tensor, skips: list[torch.Tensor],
                         tail: nn.Module | None, strip_rows: int) -> torch.Tensor:
    """``tail(decoder(state, skips))`` computed in horizontal strips, for inference at high resolution.

    Exactly equal to the whole-frame computation (up to float rounding) whenever ``state`` is half the skips'
    size: each strip reads ``halo`` extra rows each side (two 3x3 convs, plus one for a 3x3 ``tail``) and two
    extra rows of the half-resolution state, so bilinear upsampling and zero padding only differ from the whole
    frame in rows that are cropped away. The full-resolution concatenation (82 channels at 4K: 1.4 GB in bf16),
    the convolution outputs and cuDNN's workspaces then exist for one strip at a time: at 4K this took the peak of
    2x inference from 11.1 GiB to the figure in docs/PERF.md.

    state: (B, C_s, H/2, W/2); skips: maps (B, C_k, H, W); returns (B, C_out, H, W).
    """
    height = skips[0].shape[-2]
    halo = decoder.halo + (1 if tail is not None else 0)
    strips = []
    for top in range(0, height, strip_rows):
        bottom = min(height, top + strip_rows)
        first, last = max(0, top - halo), min(height, bottom + halo)          # rows this strip reads
        coarse_first, coarse_last = max(0, first // 2 - 1), min(state.shape[-2], (last + 1) // 2 + 1)
        upsampled = F.interpolate(state[..., coarse_first:coarse_last, :],
                                  size=(2 * (coarse_last - coarse_first), skips[0].shape[-1]),
                                  mode="bilinear", align_corners=False)
        upsampled = upsampled[..., first - 2 * coarse_first:last - 2 * coarse_first, :]
        rows = [s[..., first:last, :].to(upsampled.dtype) for s in skips]
        out = run_conv_prelu_stack(decoder.body, [upsampled, *rows])
        if tail is not None:
            out = tail(out)
        strips.append(out[..., top - first:bottom - first, :])
    return torch.cat(strips, dim=-2)


class RefineNet(nn.Module):
    """U-Net decoder.

    Args:
        feature_channels: per-frame backbone channels at scales 1, 1/2, 1/4, 1/8, 1/16 (five entries).
        decoder_channels: decoder widths at scales 1, 1/2, 1/4, 1/8 (four entries).
        image_channels: channels of the full-resolution image inputs (6 in Phase 1, 17 with flow).
        use_context: also take two warped ContextNet pyramids at 1/2, 1/4, 1/8.
        context_channels: ContextNet widths (c, 2c, 4c) at 1/2, 1/4, 1/8, per frame.
        finest: "full" (the finest level and the head at full resolution) or "half" (that level at 1/2 behind a
            stride-2 entry, a transposed-convolution head; :class:`HalfResolutionLevel`).
    forward(features, image_inputs, timestep, context=None) -> (mask_logit (B,1,H,W), residual (B,3,H,W)), both
    float32 (also under autocast).
    """

    def __init__(self, feature_channels: list[int], decoder_channels: tuple[int, ...], image_channels: int = 6,
                 use_context: bool = False, context_channels: tuple[int, ...] = (16, 32, 64), finest: str = "full"):
        super().__init__()
        if len(feature_channels) != 5 or len(decoder_channels) != 4:
            raise ValueError("RefineNet needs five feature levels (1 .. 1/16) and four decoder widths (1 .. 1/8)")
        if finest not in ("full", "half"):
            raise ValueError(f"RefineNet's finest level is full or half, got {finest!r}")
        self.use_context = use_context
        context_extra = [0] + [2 * c for c in context_channels] if use_context else [0, 0, 0, 0]
        bottom = decoder_channels[3]
        self.bottom = nn.Sequential(nn.Conv2d(2 * feature_channels[4], bottom, 1), nn.PReLU(bottom),
                                    conv_prelu(bottom, bottom))
        self.levels = nn.ModuleList()
        state = bottom
        for level in (3, 2, 1, 0):   # 1/8, 1/4, 1/2, 1
            skip = 2 * feature_channels[level] + context_extra[level] + 1 + (image_channels if level == 0 else 0)
            if level == 0 and finest == "half":
                self.levels.append(HalfResolutionLevel(state, skip, decoder_channels[level]))
            else:
                self.levels.append(DecoderLevel(state + skip, decoder_channels[level]))
            state = decoder_channels[level]
        # kernel 4, stride 2, padding 1: exactly twice the size, each output pixel from 2x2 inputs (no checkerboard
        # of uncovered taps, as a kernel of 3 would leave)
        self.head = nn.Conv2d(state, 4, 3, padding=1) if finest == "full" else nn.ConvTranspose2d(state, 4, 4, 2, 1)
        # Inference only: a level whose concatenated input exceeds this many bytes runs in row strips (None: never).
        # Under torch.compile the strips are 4x larger: Inductor fuses the concatenation, casts and channel padding,
        # so 1 GiB strips peaked at 5.4 GiB for 4K (9.2 GiB in eager), and the fewer strips copy fewer slices
        # (61.2 -> 59.8 ms on an H100, docs/PERF.md section 4).
        self.strip_bytes: int | None = 256 * 2**20
        self.compiled_strip_bytes: int | None = 1024 * 2**20

    def forward(self, features: list[torch.Tensor], image_inputs: torch.Tensor | Sequence[torch.Tensor],
                timestep: torch.Tensor, context: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features: five stacked-pair maps (2B, C_k, H/2^k, W/2^k) (warped per frame in Phases 2/3).
            image_inputs: (B, image_channels, H, W), or the maps to concatenate into it (never built whole when
                the finest level runs in strips).
            timestep: (B, 1, 1, 1).
            context: with use_context, three maps (B, 2 * c_k, H/2^(k+1), W/2^(k+1)) (both frames concatenated).

        Without gradients (inference), a level whose concatenated input would exceed ``strip_bytes``
        (``compiled_strip_bytes`` under torch.compile) runs in row strips (:func:`decode_in_row_strips`), which
        bounds memory at 4K without changing the result.
        """
        if self.use_context != (context is not None):
            raise ValueError("RefineNet(use_context=True) needs context features, and only then")
        image_parts = [image_inputs] if isinstance(image_inputs, torch.Tensor) else list(image_inputs)
        pairs = image_parts[0].shape[0]

        def both_frames(level: int) -> torch.Tensor:   # (2B, C, h, w) -> (B, 2C, h, w): frames side by side
            return torch.cat(split_frames(features[level]), dim=1)

        state = self.bottom(both_frames(4))
        for decoder, level in zip(self.levels, (3, 2, 1, 0)):
            skip = both_frames(level)
            skips = [skip, timestep.expand(pairs, 1, *skip.shape[-2:]).to(skip.dtype)]
            if context is not None and level > 0:
                skips.append(context[level - 1])
            if level == 0:
                skips += image_parts
            tail = self.head if level == 0 else None
            channels = state.shape[1] + sum(s.shape[1] for s in skips)
            # The half-resolution level has no full-resolution convolution chain to cut into strips (its largest
            # map is the skips' concatenation, which the stride-2 entry reads once).
            strip_rows = None if isinstance(decoder, HalfResolutionLevel) else self._strip_rows(channels, skip, state)
            if strip_rows is not None:
                state = decode_in_row_strips(decoder, state, skips, tail, strip_rows)   # casts strip by strip
            else:
                state = decoder(state, [s.to(skip.dtype) for s in skips])
                if tail is not None:
                    state = tail(state)
        # The head leaves in float32 whatever autocast made it: a bf16 sigmoid rounds the residual to steps of up to
        # 1/256, and with it the prediction (bf16 eager sat 0.04 dB from the compiled model, which keeps float32
        # inside its fused blend; docs/PERF.md section 10). Four channels: the cast costs next to nothing.
        head = state.float()
        return head[:, :1], 2.0 * torch.sigmoid(head[:, 1:4]) - 1.0

    def _strip_rows(self, channels: int, skip: torch.Tensor, state: torch.Tensor) -> int | None:
        """Rows per strip for a level with ``channels`` concatenated input channels, or None for one pass."""
        exact_half = 2 * state.shape[-2] == skip.shape[-2] and 2 * state.shape[-1] == skip.shape[-1]
        limit = self.compiled_strip_bytes if torch.compiler.is_compiling() else self.strip_bytes
        if torch.is_grad_enabled() or limit is None or not exact_half:
            return None
        batch, _, height, width = skip.shape
        row_bytes = batch * channels * width * skip.element_size()
        if height * row_bytes <= limit:
            return None
        return max(16, limit // row_bytes)
