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
that dtype: its bytes once in (gathered) and once out. The prediction, and the GPU measurement still to make:
docs/PERF.md 10.18 (until then it is opt-in, ``THESIS_TRITON_WARP=1``).

Triton is imported when this module is; :func:`model.ops.warp.backward_warp` imports it only for CUDA tensors without
gradients (no backward here: training keeps ATen's differentiable path).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

PIXELS_PER_PROGRAM = 256


@triton.jit
def _border_warp_kernel(image_ptr, flow_ptr, out_ptr, channels, height, width,
                        stride_b, stride_c, stride_h, stride_w, BLOCK: tl.constexpr):
    batch = tl.program_id(1)
    pixels = height * width
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
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
    x0 = left.to(tl.int32)
    y0 = top.to(tl.int32)
    x1 = tl.minimum(x0 + 1, width - 1)       # at the last column weight_x is 0: the clamped neighbour adds nothing
    y1 = tl.minimum(y0 + 1, height - 1)
    w00 = (1.0 - weight_x) * (1.0 - weight_y)
    w01 = weight_x * (1.0 - weight_y)
    w10 = (1.0 - weight_x) * weight_y
    w11 = weight_x * weight_y
    at00 = y0.to(tl.int64) * stride_h + x0.to(tl.int64) * stride_w
    at01 = y0.to(tl.int64) * stride_h + x1.to(tl.int64) * stride_w
    at10 = y1.to(tl.int64) * stride_h + x0.to(tl.int64) * stride_w
    at11 = y1.to(tl.int64) * stride_h + x1.to(tl.int64) * stride_w
    image_base = image_ptr + batch.to(tl.int64) * stride_b
    out_base = out_ptr + batch.to(tl.int64) * channels * pixels
    for channel in range(0, channels):
        plane = image_base + channel * stride_c
        value = (w00 * tl.load(plane + at00, mask=inside, other=0.0).to(tl.float32)
                 + w01 * tl.load(plane + at01, mask=inside, other=0.0).to(tl.float32)
                 + w10 * tl.load(plane + at10, mask=inside, other=0.0).to(tl.float32)
                 + w11 * tl.load(plane + at11, mask=inside, other=0.0).to(tl.float32))
        tl.store(out_base + channel * pixels + offsets, value.to(out_ptr.dtype.element_ty), mask=inside)


def border_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``image`` (B, C, H, W; any strides, e.g. channels-last) by ``flow`` (B, 2, H, W) in pixels:
    (B, C, H, W) contiguous, in ``image``'s dtype. Border padding, bilinear, the coordinates in float32."""
    batch, channels, height, width = image.shape
    flow32 = flow.float().contiguous()       # two channels: small beside the map
    out = torch.empty((batch, channels, height, width), dtype=image.dtype, device=image.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(height * width, PIXELS_PER_PROGRAM), batch)
    _border_warp_kernel[grid](image, flow32, out, channels, height, width, *image.stride(),
                              BLOCK=PIXELS_PER_PROGRAM)
    return out
