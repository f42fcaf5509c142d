"""GPU parity and speed check of the fast paths against their references (run on a CUDA machine).

1. SSD: ``ssd_scan(backend="triton")`` (mamba-ssm's kernel) vs ``backend="torch"`` (chunked PyTorch) vs the
   float64 naive recurrence on a small case; forward and gradients, fp32 and bf16, relative error
   ``||out - ref|| / ||ref||``; median time and peak memory of forward+backward at the shapes the Phase-1 model
   uses, with the speed-up as a ratio measured in this process.
2. Attention: the LGS gated window attention under ``sdpa_kernel(SDPBackend.FLASH_ATTENTION)`` in bf16
   (raises if the call is not flash-eligible), its output vs the math backend, and timings of both.
3. SSD chunk size at inference (``--ssd_chunks``): the forward scan alone, bf16, at the shapes a Phase-2 model's
   LGS stages scan for one 2x pair (the four scan directions on the batch axis), for each chunk size, with its
   output's distance to the chunk-256 output. The chunk size is an algorithm parameter, not a weight: every size
   computes the same scan (docs/DESIGN.md 2.2), so inference may use whichever is fastest at its sequence length.

Usage: python benchmark/check_kernels.py [--json out.json] [--only parity speed attention ssd_chunks]
       [--ssd_chunks 64 128 256]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.timing import measure  # noqa: E402
from model.attention import GatedWindowAttention  # noqa: E402
from model.ops.ssd import load_triton_ssd, ssd_scan, ssd_scan_reference  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def bench(fn, reps: int = 20) -> tuple[float, float]:
    """Median ms and peak GiB of ``fn`` (see benchmark.timing.measure)."""
    timing = measure(fn, "cuda", warmup=3, reps=reps)
    return timing.median_ms, timing.peak_gib


def ssd_inputs(batch, length, heads, head_dim, groups, state, dtype, seed, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    return dict(x=r(batch, length, heads, head_dim).to(dtype), dt=(r(batch, length, heads) * 0.5).to(dtype),
                A=-(torch.rand(heads, generator=g, device=device) * 3 + 0.1),
                B=r(batch, length, groups, state).to(dtype), C=r(batch, length, groups, state).to(dtype),
                D=r(heads), dt_bias=r(heads) * 0.5)


def ssd_parity(rows: list[dict]) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for (b, l, h, p, g, n) in ((2, 300, 4, 32, 1, 32), (4, 2048, 8, 32, 1, 64), (2, 777, 8, 32, 8, 32)):
            inputs = ssd_inputs(b, l, h, p, g, n, dtype, seed=l)
            leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
            outs, grads = {}, {}
            weight = torch.randn(b, l, h, p, device="cuda")
            for backend in ("torch", "triton"):
                for v in leaves.values():
                    v.grad = None
                out = ssd_scan(**leaves, chunk_size=256, dt_softplus=True, backend=backend)
                (out.float() * weight).sum().backward()
                outs[backend] = out.detach()
                grads[backend] = {k: v.grad.detach().clone() for k, v in leaves.items()}
            row = {"check": "ssd triton vs torch", "dtype": str(dtype).split(".")[1], "shape": f"b{b} l{l} h{h} p{p} g{g} n{n}",
                   "out_rel_err": rel_err(outs["triton"], outs["torch"])}
            row["grad_rel_err_max"] = max(rel_err(grads["triton"][k], grads["torch"][k]) for k in leaves)
            row["worst_grad"] = max(leaves, key=lambda k: rel_err(grads["triton"][k], grads["torch"][k]))
            if l <= 300:   # the naive float64 recurrence is the ground truth for both
                ref = ssd_scan_reference(**{k: v.double() for k, v in inputs.items()}, dt_softplus=True)
                row["torch_vs_fp64"] = rel_err(outs["torch"], ref)
                row["triton_vs_fp64"] = rel_err(outs["triton"], ref)
            rows.append(row)


def ssd_speed(rows: list[dict]) -> None:
    # Phase-1 shapes at batch 4, 256x256: 1/8 map 32x32 -> L=2048, 4 pairs x 4 directions on the batch axis.
    cases = [("phase1 1/8 stage", 16, 2048, 4, 32, 1, 32), ("phase1 1/16 stage", 16, 512, 8, 32, 1, 32),
             ("1080p 1/8 stage, 1 pair", 4, 2 * 135 * 240, 4, 32, 1, 32), ("4K 1/8 stage, 1 pair", 4, 2 * 270 * 480, 4, 32, 1, 32)]
    for name, b, l, h, p, g, n in cases:
        inputs = ssd_inputs(b, l, h, p, g, n, torch.bfloat16, seed=1)
        leaves = {k: v.requires_grad_() for k, v in inputs.items()}
        result = {"check": "ssd fwd+bwd speed", "case": name, "shape": f"b{b} l{l} h{h} p{p} n{n}", "dtype": "bfloat16"}
        for backend in ("torch", "triton"):
            def step():
                out = ssd_scan(**leaves, chunk_size=256, dt_softplus=True, backend=backend)
                out.sum().backward()
            try:
                ms, gib = bench(step, reps=10)
                result[f"{backend}_ms"], result[f"{backend}_peak_gib"] = round(ms, 3), round(gib, 3)
            except torch.OutOfMemoryError:
                result[f"{backend}_ms"] = "OOM"
            torch.cuda.empty_cache()
        if isinstance(result.get("torch_ms"), float) and isinstance(result.get("triton_ms"), float):
            result["speedup"] = round(result["torch_ms"] / result["triton_ms"], 2)
            result["memory_ratio"] = round(result["torch_peak_gib"] / max(result["triton_peak_gib"], 1e-6), 2)
        rows.append(result)


# (name, batch = 4 scan directions, sequence length = 2 frames x the stage's tokens, heads, head dim, groups, state)
# of a Phase-2 small model's two LGS stages (64 and 128 channels, expand 2, head dim 32) at each frame size; 1080p
# is padded to 1088 rows (a multiple of 32).
SSD_INFERENCE_CASES = (
    ("720p 1/8 stage", 4, 2 * 90 * 160, 4, 32, 1, 32), ("720p 1/16 stage", 4, 2 * 45 * 80, 8, 32, 1, 32),
    ("1080p 1/8 stage", 4, 2 * 136 * 240, 4, 32, 1, 32), ("1080p 1/16 stage", 4, 2 * 68 * 120, 8, 32, 1, 32),
    ("4K@0.25 1/8 stage", 4, 2 * 68 * 120, 4, 32, 1, 32),
)


def ssd_chunk_sizes(rows: list[dict], chunk_sizes: list[int]) -> None:
    """Forward-only Triton SSD at inference shapes for each chunk size: median ms, and the output's relative
    distance to the chunk-256 output (both bf16; the float32 PyTorch reference at chunk 256 beside them)."""
    for name, b, l, h, p, g, n in SSD_INFERENCE_CASES:
        inputs = ssd_inputs(b, l, h, p, g, n, torch.bfloat16, seed=2)
        with torch.no_grad():
            base = ssd_scan(**inputs, chunk_size=256, dt_softplus=True, backend="triton")
            reference = ssd_scan(**{k: v.float() for k, v in inputs.items()}, chunk_size=256, dt_softplus=True,
                                 backend="torch")
            row = {"check": "ssd forward by chunk size", "case": name, "shape": f"b{b} l{l} h{h} p{p} n{n}",
                   "dtype": "bfloat16", "chunk256_vs_fp32_ref": rel_err(base, reference)}
            del reference
            for chunk in chunk_sizes:
                out = ssd_scan(**inputs, chunk_size=chunk, dt_softplus=True, backend="triton")
                row[f"chunk{chunk}_vs_chunk256"] = rel_err(out, base)
                del out
                ms, _ = bench(lambda: ssd_scan(**inputs, chunk_size=chunk, dt_softplus=True, backend="triton"),
                              reps=20)
                row[f"chunk{chunk}_ms"] = round(ms, 4)
        fastest = min(chunk_sizes, key=lambda c: row[f"chunk{c}_ms"])
        row["fastest"] = fastest
        if 256 in chunk_sizes:
            row["speedup_vs_256"] = round(row["chunk256_ms"] / row[f"chunk{fastest}_ms"], 3)
        rows.append(row)
        torch.cuda.empty_cache()


SECTIONS = ("parity", "speed", "attention", "ssd_chunks")
SCIENTIFIC_SUFFIXES = ("err", "fp64", "err_max", "_ref", "_vs_chunk256")      # row keys printed as 1.23e-04


def attention_check(rows: list[dict]) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    for dim, heads, size in ((64, 2, 32), (128, 4, 16), (64, 2, 270)):
        attn = GatedWindowAttention(dim, heads, window=8).cuda()
        u = torch.randn(8, size, size if size != 270 else 480, dim, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                flash = attn(u)                       # raises if the call is not flash-eligible
                flash.float().sum().backward()
            with sdpa_kernel(SDPBackend.MATH):
                math = attn(u)
            row = {"check": "gated window attention", "shape": f"2B=8 {u.shape[1]}x{u.shape[2]} C{dim} h{heads}",
                   "flash_eligible": True, "flash_vs_math_rel_err": rel_err(flash, math)}
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
                def step():
                    with sdpa_kernel(backend):
                        attn(u).float().sum().backward()
                ms, gib = bench(step, reps=10)
                row[f"{name}_ms"], row[f"{name}_peak_gib"] = round(ms, 3), round(gib, 3)
            row["speedup_vs_math"] = round(row["math_ms"] / row["flash_ms"], 2)
        rows.append(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=str, default=None, help="also write the rows as JSON here")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                        help="run these sections only (default: parity, speed and attention; ssd_chunks runs when "
                             "named here or when --ssd_chunks is given)")
    parser.add_argument("--ssd_chunks", type=int, nargs="+", default=None, metavar="N",
                        help="section ssd_chunks: the chunk sizes to time (e.g. 64 128 256)")
    args = parser.parse_args()
    sections = set(args.only or ("parity", "speed", "attention") + (("ssd_chunks",) if args.ssd_chunks else ()))
    chunk_sizes = args.ssd_chunks or [64, 128, 256]
    if any(c < 16 or c & (c - 1) for c in chunk_sizes):
        parser.error(f"--ssd_chunks {' '.join(map(str, chunk_sizes))}: each a power of two, at least 16")
    if not torch.cuda.is_available():
        raise SystemExit("check_kernels.py needs a CUDA device")
    kernel, note = load_triton_ssd()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  SSD kernel: {note}")
    if kernel is None:
        raise SystemExit("mamba-ssm Triton SSD not importable: install the wheel (see README, GPU extras)")
    rows: list[dict] = []
    if "parity" in sections:
        ssd_parity(rows)
    if "speed" in sections:
        ssd_speed(rows)
    if "attention" in sections:
        attention_check(rows)
    if "ssd_chunks" in sections:
        ssd_chunk_sizes(rows, chunk_sizes)
    for row in rows:
        print(" | ".join(f"{k}={v:.2e}" if isinstance(v, float) and k.endswith(SCIENTIFIC_SUFFIXES) else f"{k}={v}"
                         for k, v in row.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
