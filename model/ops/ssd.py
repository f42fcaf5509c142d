"""Mamba2 state-space duality (SSD) scan with a PyTorch reference and mamba-ssm's Triton kernel behind one function.

Per head ``h`` (head dim ``P``, state size ``N``, group ``g(h)`` shared by ``H/G`` heads), for tokens ``t``::

    dt_t = softplus(dt_t + dt_bias_h)            (bias and softplus optional)
    S_t  = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T      S_t in R^{P x N}, zero initial state
    y_t  = S_t C_t + D_h * x_t                   (then y_t *= SiLU(z_t) if z is given)

Argument layouts are exactly those of ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``:
x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n), D (h,) or (h, p), z (b, l, h, p), dt_bias (h,);
output (b, l, h, p) in x's dtype.

Backends:
* ``"torch"``: the chunked SSD algorithm (docs/DESIGN.md 2.2) in plain PyTorch; any length (the tail is padded
  to a whole chunk and dropped, which causality makes exact), float32 arithmetic (float64 if given
  float64), differentiable by autograd, memory O(l * chunk_size) per head.
* ``"triton"``: mamba-ssm's fused kernels (CUDA only). mamba-ssm installed without its compiled extension
  cannot ``import mamba_ssm`` (its ``__init__`` imports ``selective_scan_cuda``), so the Triton module is
  loaded with the package ``__init__`` bypassed (docs/DESIGN.md 2.6). A missing or broken mamba-ssm never breaks
  ``import model``. Under ``torch.compile`` with gradients the kernel is a graph break (mamba-ssm's own autograd);
  without gradients it is the custom operator ``thesis_vfi::triton_ssd_inference``, so compiled inference is one
  graph.
* ``"auto"``: Triton for CUDA tensors when it loads, else torch. The choice is logged once per reason.

:func:`ssd_scan_reference` is the per-token recurrence above, the twin every backend is tested against.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
import types
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")


# ----------------------------------------------------------------------------------------------------------
# Reference twin: the literal recurrence, one token at a time.
# ----------------------------------------------------------------------------------------------------------
def _discretise_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool) -> torch.Tensor:
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    return F.softplus(dt) if dt_softplus else dt


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """Add the D skip and apply the SiLU(z) gate; y and x are (b, l, h, p) in the compute dtype."""
    if D is not None:
        skip = D.to(y.dtype)
        y = y + x * (skip[:, None] if skip.dim() == 1 else skip)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def ssd_scan_reference(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False) -> torch.Tensor:
    """Naive per-token SSD recurrence in the inputs' dtype (use float64 for tests). Same layouts as :func:`ssd_scan`."""
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[2], B.shape[3]
    heads_per_group = heads // groups
    dt = _discretise_dt(dt, dt_bias, dt_softplus)
    B_heads = B.repeat_interleave(heads_per_group, dim=2)           # (b, l, h, n)
    C_heads = C.repeat_interleave(heads_per_group, dim=2)
    state = x.new_zeros(batch, heads, head_dim, state_size)
    outputs = []
    for step in range(length):
        decay = torch.exp(dt[:, step] * A)                           # (b, h)
        inject = (dt[:, step, :, None] * x[:, step])[..., None] * B_heads[:, step, :, None, :]
        state = state * decay[..., None, None] + inject              # (b, h, p, n)
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, C_heads[:, step]))
    return _finish(torch.stack(outputs, dim=1), x, D, z)


# ----------------------------------------------------------------------------------------------------------
# Torch backend: chunked SSD.
# ----------------------------------------------------------------------------------------------------------
def _segment_sums(values: torch.Tensor) -> torch.Tensor:
    """Stable ``out[..., i, j] = sum(values[..., j+1 : i+1])`` for i >= j, else -inf.

    values (..., T) -> (..., T, T). Summing masked copies (instead of differencing one long cumulative sum)
    keeps precision when the decays over many chunks add up to large negative numbers.
    """
    length = values.shape[-1]
    # column[..., k, j] = values[k], kept only where k > j, then summed over k <= i by a cumsum down the rows.
    column = values[..., :, None].expand(*values.shape, length)
    after_start = torch.tril(torch.ones(length, length, dtype=torch.bool, device=values.device), -1)
    sums = column.masked_fill(~after_start, 0).cumsum(dim=-2)
    ends_after_start = torch.tril(torch.ones(length, length, dtype=torch.bool, device=values.device))
    return sums.masked_fill(~ends_after_start, float("-inf"))


def _ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus) -> torch.Tensor:
    out_dtype = x.dtype
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(compute) for t in (x, dt, A, B, C))
        dt = _discretise_dt(dt, dt_bias.to(compute) if dt_bias is not None else None, dt_softplus)
        batch, length, heads, head_dim = x.shape
        groups, state_size = B.shape[2], B.shape[3]
        per_group = heads // groups
        chunk = min(chunk_size, length)
        pad = (-length) % chunk
        total = length + pad
        num_chunks = total // chunk

        def pad_tokens(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t

        x_in = pad_tokens(x * dt[..., None])                                   # (b, T, h, p): dt folded into x
        decay_rate = pad_tokens((dt * A).unsqueeze(-1)).squeeze(-1)            # (b, T, h) log-decays
        B_c = pad_tokens(B).view(batch, num_chunks, chunk, groups, state_size)
        C_c = pad_tokens(C).view(batch, num_chunks, chunk, groups, state_size)
        # Heads split as (group, head-in-group) so B and C are never copied per head.
        x_c = x_in.view(batch, num_chunks, chunk, groups, per_group, head_dim).permute(0, 3, 4, 1, 2, 5)
        log_a = decay_rate.view(batch, num_chunks, chunk, groups, per_group).permute(0, 3, 4, 1, 2)
        cum = log_a.cumsum(dim=-1)                                             # (b, g, r, c, Q)

        # 1) within each chunk: masked "attention" (C B^T o decay) applied to the inputs.
        scores = torch.einsum("bclgn,bcsgn->bgcls", C_c, B_c).unsqueeze(2)     # (b, g, 1, c, Q, Q)
        # Mask with -inf *before* exp: the upper triangle holds large positive differences whose exp overflows,
        # and masking afterwards would still send 0 * inf = NaN back through exp in the backward pass.
        causal = torch.tril(torch.ones(chunk, chunk, dtype=torch.bool, device=x.device))
        intra = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")))
        y = torch.matmul(scores * intra, x_c)                                  # (b, g, r, c, Q, p)

        # 2) state each chunk leaves behind, from its own tokens only.
        to_end = torch.exp(cum[..., -1:] - cum)                                # (b, g, r, c, Q)
        chunk_states = torch.einsum("bcsgn,bgrcs,bgrcsp->bgrcpn", B_c, to_end, x_c)

        # 3) carry states across chunks: state entering chunk k = sum_{j<k} decay(j+1..k-1) * chunk_states[j].
        chunk_decay = F.pad(cum[..., -1], (1, 0))                              # (b, g, r, c+1)
        carry = torch.exp(_segment_sums(chunk_decay))                          # (b, g, r, c+1, c+1)
        padded_states = F.pad(chunk_states, (0, 0, 0, 0, 1, 0))                # (b, g, r, c+1, p, n)
        entering = torch.einsum("bgrkj,bgrjpn->bgrkpn", carry, padded_states)[..., :-1, :, :]

        # 4) contribution of the entering state to every token of the chunk.
        y = y + torch.einsum("bclgn,bgrcpn,bgrcl->bgrclp", C_c, entering, torch.exp(cum))

        y = y.permute(0, 3, 4, 1, 2, 5).reshape(batch, total, heads, head_dim)[:, :length]
        y = _finish(y, x, D, z)
    return y.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------
# Triton backend: mamba-ssm's kernel, loaded without running mamba_ssm/__init__.py when that fails.
# ----------------------------------------------------------------------------------------------------------
def _install_namespace_stubs(package_dir: str) -> None:
    """Register bare package objects for mamba_ssm, mamba_ssm.ops and mamba_ssm.ops.triton.

    Only called after ``import mamba_ssm`` failed; it lets the absolute imports inside the Triton modules
    resolve without executing the package ``__init__`` that imports the missing CUDA extension.
    """
    for name, rel in (("mamba_ssm", ""), ("mamba_ssm.ops", "ops"), ("mamba_ssm.ops.triton", "ops/triton")):
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = [f"{package_dir}/{rel}".rstrip("/")]
        module.__package__ = name
        sys.modules[name] = module


# Autotuning narrowed to measured winners. mamba-ssm autotunes ~14 SSD kernels over 6-11 configurations each;
# on a fresh machine compiling and timing all of them made the first training step take 110-138 s (H100/H200,
# docs/PERF.md). These are the configurations the full autotuner chose on an H100 (torch 2.11, Triton 3.6,
# bf16, chunk 256, head dim 32, state 32: every preset of this project) -- where it chose differently for
# different head counts or dtypes, both are kept and the autotuner picks between the two. Any shape still runs
# correctly with them (the kernels mask their tiles). THESIS_SSD_AUTOTUNE=full restores the full search.
PINNED_SSD_CONFIGS: dict[str, tuple[tuple[dict[str, int], int, int], ...]] = {
    # kernel name: ((block sizes, num_warps, num_stages), ...)
    "_bmm_chunk_fwd_kernel": (({"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32}, 4, 4),),
    "_bmm_chunk_bwd_kernel": (({"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_CS": 32}, 4, 4),),
    "_chunk_cumsum_fwd_kernel": (({"BLOCK_SIZE_H": 8}, 4, 3), ({"BLOCK_SIZE_H": 4}, 4, 3)),
    "_chunk_cumsum_bwd_kernel": (({"BLOCK_SIZE_H": 2}, 4, 3), ({"BLOCK_SIZE_H": 4}, 4, 3)),
    "_chunk_state_fwd_kernel": (({"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32}, 2, 5),),
    "_chunk_state_bwd_db_kernel": (({"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32}, 4, 3),),
    "_state_passing_fwd_kernel": (({"BLOCK_SIZE": 128}, 4, 3), ({"BLOCK_SIZE": 1024}, 4, 3)),
    "_state_passing_bwd_kernel": (({"BLOCK_SIZE": 1024}, 4, 3),),
    "_chunk_scan_fwd_kernel": (({"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32}, 2, 5),),
    "_chunk_scan_bwd_dstates_kernel": (({"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32}, 2, 5),),
    "_chunk_scan_bwd_dc_kernel": (({"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32}, 4, 3),),
    "_chunk_scan_bwd_dcb_kernel": (({"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32}, 4, 3),),
    "_chunk_scan_bwd_ddAcs_stable_kernel": (({"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32}, 4, 3),),
    "_chunk_scan_chunk_state_bwd_dx_kernel": (({"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32}, 4, 5),),
}
SSD_KERNEL_MODULES = ("ssd_bmm", "ssd_chunk_state", "ssd_state_passing", "ssd_chunk_scan", "ssd_combined")


def pin_autotune_configs(modules, table=PINNED_SSD_CONFIGS) -> tuple[int, int]:
    """Restrict each autotuned kernel named in ``table`` to the listed configurations, in place.

    ``modules``: the imported mamba-ssm Triton modules. A kernel is left untouched when none of its
    configurations matches the table (another mamba-ssm version), so pinning can narrow the search but never
    break a kernel. Returns (kernels pinned, autotuned kernels seen).
    """
    pinned = seen = 0
    for module in modules:
        for name, kernel in vars(module).items():
            configs = getattr(kernel, "configs", None)
            if not isinstance(configs, list) or not hasattr(kernel, "cache") or not configs:
                continue
            seen += 1
            wanted = table.get(name, ())
            chosen = [c for c in configs
                      if any(c.kwargs == kwargs and c.num_warps == warps and c.num_stages == stages
                             for kwargs, warps, stages in wanted)]
            if chosen:
                kernel.configs = chosen
                pinned += 1
    return pinned, seen


def _narrow_autotuning() -> str:
    """Pin the loaded SSD kernels' autotuning (see PINNED_SSD_CONFIGS); returns a note for the backend log line."""
    if os.environ.get("THESIS_SSD_AUTOTUNE", "").lower() == "full":
        return "; full autotuning (THESIS_SSD_AUTOTUNE=full)"
    modules = [sys.modules[f"mamba_ssm.ops.triton.{name}"] for name in SSD_KERNEL_MODULES
               if f"mamba_ssm.ops.triton.{name}" in sys.modules]
    pinned, seen = pin_autotune_configs(modules)
    return f"; autotuning pinned for {pinned} of {seen} kernels (THESIS_SSD_AUTOTUNE=full searches all)"


@functools.lru_cache(maxsize=None)
def load_triton_ssd() -> tuple[Callable | None, str]:
    """Return (mamba_chunk_scan_combined or None, a one-line note on how it loaded or why not). Cached."""
    try:
        import triton  # noqa: F401  (the kernels need it; absent on CPU-only installs of some platforms)
    except Exception as error:                                   # pragma: no cover - depends on the install
        return None, f"triton not importable ({type(error).__name__}: {error})"
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        return None, "mamba-ssm is not installed"
    try:
        module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        return module.mamba_chunk_scan_combined, "mamba-ssm imported normally" + _narrow_autotuning()
    except Exception as error:
        first_error = f"{type(error).__name__}: {error}"
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        del sys.modules[name]                                    # drop the half-initialised package
    try:
        _install_namespace_stubs(list(spec.submodule_search_locations)[0])
        module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        return module.mamba_chunk_scan_combined, (f"mamba-ssm Triton kernels loaded bypassing its __init__ "
                                                  f"({first_error})" + _narrow_autotuning())
    except Exception as error:
        return None, f"mamba-ssm Triton SSD failed to load: {type(error).__name__}: {error}"


@functools.lru_cache(maxsize=None)
def _log_backend_once(backend: str, reason: str) -> None:
    logger.info("SSD scan backend: %s (%s)", backend, reason)


@torch.compiler.assume_constant_result
def _triton_kernel_loads() -> bool:
    """Whether mamba-ssm's Triton SSD loads; torch.compile bakes the answer in instead of tracing the import."""
    return load_triton_ssd()[0] is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to the backend that will run on ``device``; validate explicit names.

    Safe under ``torch.compile``: the availability check is a traced constant and the log line is skipped while
    compiling (a logger call would break the graph), so the dispatch costs no graph break.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown SSD backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        return "torch"
    available = device.type == "cuda" and _triton_kernel_loads()
    if backend == "triton":
        if device.type != "cuda":
            raise RuntimeError("SSD backend 'triton' needs CUDA tensors")
        if not available:
            raise RuntimeError(f"SSD backend 'triton' unavailable: {load_triton_ssd()[1]}")
        return "triton"
    chosen = "triton" if available else "torch"
    if not torch.compiler.is_compiling():
        _log_backend_once(chosen, load_triton_ssd()[1] if device.type == "cuda" else "tensors are not on CUDA")
    return chosen


def _run_triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus) -> torch.Tensor:
    kernel, _ = load_triton_ssd()
    return kernel(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


@torch.compiler.disable
def _triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus) -> torch.Tensor:
    """mamba-ssm's fused kernel with its own autograd, kept out of torch.compile graphs (Dynamo cannot trace its
    Triton launches and autotuner). Used in eager code and wherever gradients are recorded; a compiled graph
    breaks here, so under ``torch.compile`` without gradients :func:`_triton_ssd_inference` is used instead."""
    return _run_triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus)


# The same kernel as an opaque custom operator, for compiled inference. Why: a graph break inside a loop (the
# LGS blocks of a stage, the stages of the backbone) makes Dynamo run that whole frame eagerly, so with the
# disabled function above the full-resolution convolution stages of a compiled model ran uncompiled (found in a
# 4K kernel profile: eager PReLU, NCHW<->NHWC transposes). As a custom operator the kernel is one node of a
# single graph; its fake implementation only states the output (x's shape and dtype, contiguous, as mamba-ssm
# allocates it). No autograd formula is registered: training keeps the disabled function and mamba-ssm's own
# backward.
@torch.library.custom_op("thesis_vfi::triton_ssd_inference", mutates_args=(),
                         schema="(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, int chunk_size, Tensor? D, "
                                "Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor")
def _triton_ssd_inference(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus):
    # contiguous() is free for mamba-ssm's output and makes any other kernel honour the fake's layout.
    return _run_triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus).contiguous()


@_triton_ssd_inference.register_fake
def _(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus):
    return x.new_empty(x.shape)          # contiguous


# Chunk length for the Triton kernel where no gradient is recorded (inference; InterleavedMamba2 applies it,
# model/mamba_branch.py). The chunk length is a parameter of the algorithm, not of the model: every length computes
# the same scan (tests/test_ops.py checks each against the naive recurrence). Why 128 and not the training presets'
# 256: at inference the scans are long (1080p: 65,280 tokens at 1/8, 16,320 at 1/16) and the chunk-local quadratic
# part (chunk scan, C·Bᵀ) halves while the sequential pass over chunks doubles; forward alone on an H100, bf16
# (benchmark/check_kernels.py --ssd_chunks, docs/PERF.md 10.17), 128 was the fastest or within 2% of it at every
# 720p, 1080p and 4K shape: 1080p 0.752 -> 0.737 ms (1/8), 0.473 -> 0.419 ms (1/16), 3-14% per call; 64 loses at 1/8
# (0.924 ms). Output vs chunk 256: relative 1.5e-4 to 4e-4, a tenth of bf16's own error against float32 (2.3e-3).
# Training keeps its configured length (the backward kernels were tuned at 256).
INFERENCE_TRITON_CHUNK = 128


def ssd_scan(x, dt, A, B, C, *, chunk_size: int = 256, D=None, z=None, dt_bias=None, dt_softplus: bool = False,
             backend: str = "auto") -> torch.Tensor:
    """SSD scan; see the module docstring for the recurrence and layouts.

    Args:
        x: (b, l, h, p) inputs.  dt: (b, l, h) raw step sizes.  A: (h,) negative decay rates.
        B, C: (b, l, g, n) with g dividing h.  D: optional (h,) or (h, p).  z: optional gate (b, l, h, p).
        dt_bias: optional (h,).  dt_softplus: apply softplus after adding dt_bias.
        chunk_size: chunk length Q of the chunked algorithm.  backend: "auto" | "torch" | "triton".
    Returns:
        (b, l, h, p) in x's dtype.
    """
    if x.dim() != 4 or dt.shape != x.shape[:3] or A.shape != (x.shape[2],) or B.dim() != 4 or B.shape != C.shape \
            or B.shape[:2] != x.shape[:2] or x.shape[2] % B.shape[2]:
        raise ValueError("ssd_scan layouts: x (b,l,h,p), dt (b,l,h), A (h,), B/C (b,l,g,n) with g | h; got "
                         f"x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, "
                         f"C {tuple(C.shape)}")
    if resolve_backend(backend, x.device) == "triton":
        if torch.compiler.is_compiling() and not torch.is_grad_enabled():
            return _triton_ssd_inference(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus)
        return _triton_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus)
    return _ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus)
