"""Backward warping by a dense optical flow.

``warped(p) = image(p + flow(p))`` sampled bilinearly, with flow in pixels (channel 0 = x, channel 1 = y) on
the target grid. Border padding replicates edge pixels for samples that leave the image, and
``align_corners=True`` maps the normalised coordinates -1 and +1 to the centres of the outermost pixels,
which is what makes "one pixel of flow" equal ``2 / (W - 1)`` in normalised units (RIFE / VFIMamba convention).

The grid arithmetic always runs in float32: at 4K width one pixel is ``2/3839 ~ 5e-4`` in normalised units,
comparable to the spacing of float16 near +-1, so a half-precision grid would round flows to whole pixels.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.nn.functional as F

# Half-precision inference warps on CUDA take the Triton kernel (model/ops/warp_triton.py) unless THESIS_TRITON_WARP=0.
# On by default since docs/PERF.md 10.20 (one H100, 1080p, one process): compiled + graphed 13.58 -> 12.84 ms,
# graphed 22.65 -> 21.65, its 9 warps 0.48 ms of GPU time where ATen's float32 round trip took about 0.7; its GPU
# tests passed on an H100 and an H200. `bench_model.py --warp_kernel aten triton` is the A/B; =0 restores ATen's path,
# the reference.
TRITON_WARP_ENV = "THESIS_TRITON_WARP"


def base_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Identity sampling grid, (1, H, W, 2) float32 in normalised [-1, 1] coordinates (x first)."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=torch.float32)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=torch.float32)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


def backward_warp(image: torch.Tensor, flow: torch.Tensor, grid: torch.Tensor | None = None,
                  max_chunk_elements: int = 1 << 26) -> torch.Tensor:
    """Warp ``image`` towards the target grid with a backward flow.

    Args:
        image: (B, C, H, W) any float dtype.
        flow: (B, 2, H, W) displacement in pixels from the target pixel to its source in ``image``.
        grid: optional cached :func:`base_grid` for (H, W) on the same device.
        max_chunk_elements: grid_sample needs the image in the grid's float32; a half-precision feature map is
            converted and sampled a few channels at a time so that each float32 copy stays under this many
            elements (at 4K, converting 2 x 16 channels at once would cost 2 GB of transient memory).
    Returns:
        (B, C, H, W) in ``image``'s dtype.

    A half-precision ``image`` on CUDA without gradients (inference) is warped by one Triton kernel that reads and
    writes it in its own dtype (model/ops/warp_triton.py; unless ``THESIS_TRITON_WARP=0`` or Triton is missing);
    everything else by ATen's ``grid_sample`` in float32, the reference the kernel is tested against.
    """
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"backward_warp expects image (B,C,H,W) and flow (B,2,H,W), got "
                         f"{tuple(image.shape)} and {tuple(flow.shape)}")
    if image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"backward_warp: image {tuple(image.shape)} and flow {tuple(flow.shape)} "
                         "must share batch and spatial size")
    batch, channels, height, width = image.shape
    if takes_triton_warp(image):
        return _border_warp_half_inference(image, flow)
    if grid is None:
        grid = base_grid(height, width, image.device)
    with torch.autocast(device_type=image.device.type, enabled=False):
        flow32 = flow.float()
        # Normalise pixels to [-1, 1] units; a 1-pixel axis has no extent, so any flow along it is moot.
        scale = xy_factors(2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1), 2, flow32)
        sample_at = grid + (flow32 * scale).permute(0, 2, 3, 1)
        sample = _border_grid_sample_inference if torch.compiler.is_compiling() and not torch.is_grad_enabled() \
            else border_grid_sample
        if image.dtype == torch.float32:
            return sample(image, sample_at)
        step = max(1, min(channels, max_chunk_elements // max(1, batch * height * width)))
        chunks = [sample(image[:, c:c + step].float(), sample_at).to(image.dtype) for c in range(0, channels, step)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


def border_grid_sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling with border padding and ``align_corners=True``: image (B, C, H, W), grid (B, h, w, 2) in
    normalised coordinates, both float32 -> (B, C, h, w)."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


# The same sampling as an opaque custom operator, for compiled inference (as the SSD kernel is, model/ops/ssd.py).
# Why: Inductor decomposes grid_sample into index arithmetic and four gathers per output element and fuses that with
# the neighbouring pads, casts and concatenations. In a 1080p profile of the compiled model (docs/PERF.md 10.1) the
# kernels containing the warps took 2.76 ms where ATen's grid_sample kernel takes 0.97 ms for the same 17 warps in
# eager code, which computes each sample's weights once for all channels. As a custom operator the call stays ATen's
# kernel inside the one compiled graph; only the float32 casts around it are left to Inductor. No autograd formula:
# with gradients recorded (training, compiled or not) the plain function above is used.
@torch.library.custom_op("thesis_vfi::border_grid_sample_inference", mutates_args=())
def _border_grid_sample_inference(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return border_grid_sample(image, grid).contiguous()     # contiguous: the layout the fake states


@_border_grid_sample_inference.register_fake
def _(image, grid):
    return image.new_empty(image.shape[0], image.shape[1], grid.shape[1], grid.shape[2])


def takes_triton_warp(image: torch.Tensor) -> bool:
    """A half-precision map on CUDA, no gradient recorded, the kernel wanted: the Triton path."""
    return image.is_cuda and image.dtype != torch.float32 and not torch.is_grad_enabled() and triton_warp_wanted()


@torch.compiler.assume_constant_result
def triton_warp_wanted() -> bool:
    """Whether half-precision inference warps on CUDA take the Triton kernel (model/ops/warp_triton.py):
    Triton importable and ``THESIS_TRITON_WARP`` not ``0`` (on by default). A traced constant under torch.compile
    (read once per compilation)."""
    return os.environ.get(TRITON_WARP_ENV, "1") != "0" and triton_importable()


@functools.cache
def triton_importable() -> bool:
    """Whether Triton is installed: looked up once per process, since eager calls ask at every half-precision warp
    (where it is missing, ``find_spec`` searches ``sys.path`` on disk each time)."""
    return importlib.util.find_spec("triton") is not None


# Half-precision maps warped without the float32 round trip (model/ops/warp_triton.py says why), as an opaque operator
# so that a compiled graph calls the kernel as it is (no autograd formula: inference only).
@torch.library.custom_op("thesis_vfi::border_warp_half_inference", mutates_args=())
def _border_warp_half_inference(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    from . import warp_triton
    return warp_triton.border_warp(image, flow)


@_border_warp_half_inference.register_fake
def _(image, flow):
    return torch.empty_like(image)               # the input's layout, as the kernel writes it


def xy_factors(x_factor: float, y_factor: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    """(1, channels, 1, 1) of ``like``'s dtype and device: ``x_factor`` in even channels, ``y_factor`` in odd ones.

    Filled on the device rather than copied from a Python list: a host-to-device copy from pageable memory is
    not allowed while a CUDA graph is being captured (step_graph.py), and costs a synchronisation outside one.
    """
    factors = torch.empty(1, channels, 1, 1, dtype=like.dtype, device=like.device)
    factors[:, 0::2] = x_factor
    factors[:, 1::2] = y_factor
    return factors


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a pixel flow (B, 2k, h, w) to (B, 2k, *size) and rescale its values to the new pixel units.

    x components (even channels) are multiplied by ``new_w / w`` and y components (odd channels) by ``new_h / h``,
    which is exact for ``align_corners=False`` bilinear resizing.
    """
    old_h, old_w = flow.shape[-2:]
    new_h, new_w = size
    if (old_h, old_w) == (new_h, new_w):
        return flow
    per_channel = xy_factors(new_w / old_w, new_h / old_h, flow.shape[1], flow)
    return F.interpolate(flow, size=(new_h, new_w), mode="bilinear", align_corners=False) * per_channel
