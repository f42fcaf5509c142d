"""Backward warping of half-precision feature maps in one Triton kernel (inference on CUDA).

The same sampling as :func:`model.ops.warp.border_grid_sample` (bilinear, border padding, ``align_corners=True``),
computed from the flow in pixels directly: the source of target pixel (x, y) is (x + fx, y + fy), clamped to the
image, which is what ATen's kernel computes from the normalised grid (its ``((g + 1) / 2) (W - 1)`` undoes our
``x 2 / (W - 1) - 1``), so the two agree to float32 rounding of the coordinates.

Why a kernel of our own: ATen's ``grid_sample`` needs input and grid in one dtype, and the grid must be float32 (a
half-precision grid rounds 4K coordinates to whole pixels, model/ops/warp.py), so a bf16 feature map was converted to
float32, sampled, and converted back: about five times its bf16 bytes moved per warp. At 1080p the backbone's
full-resolution level alone is 2 frames x 16 channels x 2 Mpx. Here the weights are computed once per pixel in
float32, the four neighbours are read in the map's own dtype, one channel after another, and the output is written in
that dtype: its bytes once in (gathered) and once out. The prediction: docs/PERF.md 10.18; the GPU measurements:
right, but its first version's sampling no faster than ATen's (10.19: 0.71 against 0.68 ms for a 1080p call's 9 bf16
warps); walking NCHW maps plane by plane, 0.48 ms, and a compiled + graphed 1080p call 0.74 ms faster (10.20), so it
is the default; ``THESIS_TRITON_WARP=0`` turns it off.

Triton is imported when this module is; :func:`model.ops.warp.backward_warp` imports it only for CUDA tensors without
gradients (no backward here: training keeps ATen's differentiable path).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

PIXELS_PER_PROGRAM = 128
MAX_CHANNELS_PER_STEP = 16


@triton.jit
def _border_warp_kernel(image_ptr, flow_ptr, out_ptr, channels, height, width,
                        in_stride_b, in_stride_c, in_stride_h, in_stride_w,
                        out_stride_b, out_stride_c, out_stride_h, out_stride_w,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, DENSE_PIXELS: tl.constexpr,
                        CHANNELS_INNER: tl.constexpr):
    """One program: BLOCK_P target pixels of one batch row, all channels; the four weights once per pixel.

    The channels are walked in the order the map's strides make contiguous, since a gather is only as fast as the
    neighbouring threads' addresses are near each other, and Triton spreads threads along a tile's last axis:
    CHANNELS_INNER (channels-last: a pixel's channels side by side): a (pixels, channels) tile of BLOCK_C channels per
    step; else (NCHW: each channel a plane) one channel per step, its BLOCK_P pixels along the threads, which then
    read neighbouring pixels of one plane (call Y's version took every map as a (pixels, channels) tile, which in an
    NCHW map puts a warp's threads on 16 planes: 0.71 ms for the 9 bf16 warps of a 1080p call, no faster than ATen's).
    DENSE_PIXELS: the output's rows follow each other (stride_h = width x stride_w, true of NCHW and channels-last
    alike), so a pixel's offset is its index x stride_w, which Triton's analysis can see is contiguous (NCHW) and so
    coalesce the stores; from y and x, recovered by a division, it cannot."""
    batch = tl.program_id(1)
    pixels = height * width
    offsets = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    inside = offsets < pixels
    y = offsets // width
    x = offsets - y * width
    flow_base = flow_ptr + batch.to(tl.int64) * 2 * pixels
    source_x = x.to(tl.float32) + tl.load(flow_base + offsets, mask=inside, other=0.0)
    source_y = y.to(tl.float32) + tl.load(flow_base + pixels + offsets, mask=inside, other=0.0)
    # "* 1.0", not ".to(tl.float32)": Triton passes an integer argument equal to 1 as a compile-time constant, and
    # then width - 1 is a Python 0 (a one-pixel-wide map: the 1/16 level of a 16-pixel frame).
    source_x = tl.minimum(tl.maximum(source_x, 0.0), (width - 1) * 1.0)
    source_y = tl.minimum(tl.maximum(source_y, 0.0), (height - 1) * 1.0)
    left = tl.floor(source_x)
    top = tl.floor(source_y)
    weight_x = source_x - left
    weight_y = source_y - top
    x0 = left.to(tl.int64)
    y0 = top.to(tl.int64)
    x1 = tl.minimum(x0 + 1, width - 1)       # at the last column weight_x is 0: the clamped neighbour adds nothing
    y1 = tl.minimum(y0 + 1, height - 1)
    w00 = (1.0 - weight_x) * (1.0 - weight_y)
    w01 = weight_x * (1.0 - weight_y)
    w10 = (1.0 - weight_x) * weight_y
    w11 = weight_x * weight_y
    at00 = y0 * in_stride_h + x0 * in_stride_w
    at01 = y0 * in_stride_h + x1 * in_stride_w
    at10 = y1 * in_stride_h + x0 * in_stride_w
    at11 = y1 * in_stride_h + x1 * in_stride_w
    if DENSE_PIXELS:
        out_at = offsets.to(tl.int64) * out_stride_w
    else:
        out_at = y.to(tl.int64) * out_stride_h + x.to(tl.int64) * out_stride_w
    image_base = image_ptr + batch.to(tl.int64) * in_stride_b
    out_base = out_ptr + batch.to(tl.int64) * out_stride_b
    if CHANNELS_INNER:
        for first in range(0, channels, BLOCK_C):
            channel = first + tl.arange(0, BLOCK_C)
            keep = inside[:, None] & (channel < channels)[None, :]
            planes = image_base + (channel.to(tl.int64) * in_stride_c)[None, :]
            value = (w00[:, None] * tl.load(planes + at00[:, None], mask=keep, other=0.0).to(tl.float32)
                     + w01[:, None] * tl.load(planes + at01[:, None], mask=keep, other=0.0).to(tl.float32)
                     + w10[:, None] * tl.load(planes + at10[:, None], mask=keep, other=0.0).to(tl.float32)
                     + w11[:, None] * tl.load(planes + at11[:, None], mask=keep, other=0.0).to(tl.float32))
            targets = out_base + (channel.to(tl.int64) * out_stride_c)[None, :] + out_at[:, None]
            tl.store(targets, value.to(out_ptr.dtype.element_ty), mask=keep)
    else:
        plane = image_base                   # pointers step a plane at a time: no 32-bit channel x stride product
        out_plane = out_base + out_at
        for _ in range(0, channels):
            value = (w00 * tl.load(plane + at00, mask=inside, other=0.0).to(tl.float32)
                     + w01 * tl.load(plane + at01, mask=inside, other=0.0).to(tl.float32)
                     + w10 * tl.load(plane + at10, mask=inside, other=0.0).to(tl.float32)
                     + w11 * tl.load(plane + at11, mask=inside, other=0.0).to(tl.float32))
            tl.store(out_plane, value.to(out_ptr.dtype.element_ty), mask=inside)
            plane += in_stride_c
            out_plane += out_stride_c


def channels_side_by_side(image: torch.Tensor) -> bool:
    """Whether a (B, C, H, W) map keeps each pixel's channels next to each other (channels-last), so that the kernel
    walks them as (pixels, channels) tiles; else (NCHW, or a single channel) one plane at a time."""
    return image.shape[1] > 1 and image.stride(1) == 1


def border_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``image`` (B, C, H, W; any strides) by ``flow`` (B, 2, H, W) in pixels: (B, C, H, W) in
    ``image``'s dtype and memory layout (``torch.empty_like``: a channels-last map gives a channels-last output, as
    Inductor's convolutions around it want). Border padding, bilinear, the coordinates in float32."""
    batch, channels, height, width = image.shape
    flow32 = flow.float().contiguous()       # two channels: small beside the map
    out = torch.empty_like(image)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(height * width, PIXELS_PER_PROGRAM), batch)
    # Triton launches on the current device: a map on another one (a model moved to cuda:1 by hand) is launched there
    launch_on = torch.cuda.device(image.device) if image.is_cuda else contextlib.nullcontext()
    with launch_on:
        _border_warp_kernel[grid](image, flow32, out, channels, height, width, *image.stride(), *out.stride(),
                                  BLOCK_P=PIXELS_PER_PROGRAM,
                                  BLOCK_C=triton.next_power_of_2(min(channels, MAX_CHANNELS_PER_STEP)),
                                  DENSE_PIXELS=out.stride(2) == width * out.stride(3),
                                  CHANNELS_INNER=channels_side_by_side(image))
    return out
