"""Eager DDP training step with the Mamba branch's depthwise conv weight in its old (contiguous) and its new
(channels-last) strides, in one process on one device (issue 17, item 11; timings are never asserted in tests).

The conv reads a permuted view of ``in_proj``'s output, so its weight gradient comes back channels-last. With a
contiguous weight, DDP's bucket view (laid out like the parameter) differs from the gradient in strides: PyTorch
warns "Grad strides do not match bucket view strides" and copies through the mismatched view. The model now keeps
that weight channels-last (model/mamba_branch.py). This script puts the old layout back for the "before" rows.

DDP runs on a world of one (NCCL on CUDA, gloo on the CPU), so the bucket copies and hooks run as in a multi-GPU
step while no second device is needed. The two layouts alternate round by round (A B A B ...) so clock and thermal
drift fall on both; each row is the median of every timed step of its rounds.

    python benchmark/bench_ddp_layout.py --phase 2 --model_size small --batch 8 --size 256 --amp bf16
    python benchmark/bench_ddp_layout.py --device cpu --model_size tiny --batch 2 --size 64 --rounds 1 --steps 2
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.timing import measure  # noqa: E402
from config import preset  # noqa: E402
from distributed import shutdown_distributed, wrap_ddp  # noqa: E402
from model import build_model  # noqa: E402
from model.mamba_branch import InterleavedMamba2  # noqa: E402

AMP_DTYPES = {"bf16": torch.bfloat16, "fp32": None}
LAYOUTS = ("contiguous (before)", "channels-last (now)")


def set_conv_layout(model: nn.Module, channels_last: bool) -> None:
    """Re-create every Mamba-branch depthwise conv weight in the given strides (same values)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in model.modules():
        if isinstance(module, InterleavedMamba2):
            weight = module.conv.weight.detach()
            module.conv.weight = nn.Parameter(torch.empty_like(weight, memory_format=fmt).copy_(weight))


def mismatched_gradients(model: nn.Module) -> int:
    """Parameters whose gradient strides differ from their own (what DDP's bucket views are laid out like)."""
    return sum(1 for p in model.parameters() if p.grad is not None and p.grad.stride() != p.stride())


def build_step(layout: int, args, device: torch.device):
    """(a function running one eager DDP training step, the DDP-wrapped module)."""
    torch.manual_seed(0)
    model = build_model(preset(args.phase, args.model_size).model)
    set_conv_layout(model, channels_last=layout == 1)
    model = model.to(device)
    ddp = wrap_ddp(model, [device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(1)
    img0, gt, img1 = (torch.rand(args.batch, 3, args.size, args.size, device=device, generator=generator)
                      for _ in range(3))
    t = torch.full((args.batch,), 0.5, device=device)
    dtype = AMP_DTYPES[args.amp]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            pred = ddp(img0, img1, t).pred
        (pred.float() - gt).abs().mean().backward()
        step.mismatched = mismatched_gradients(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step.mismatched = 0
    return step, ddp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", type=int, default=2, choices=(1, 2, 3))
    p.add_argument("--model_size", default="small", choices=("tiny", "small", "base"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--amp", default="bf16", choices=tuple(AMP_DTYPES))
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per layout and round (default 20)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(probe.getsockname()[1]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"eager DDP step, world of 1 on {name}: phase {args.phase}, {args.model_size}, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.amp}, {args.rounds} rounds x {args.steps} steps per layout", flush=True)
    steps = [build_step(layout, args, device) for layout in range(2)]
    times: list[list[float]] = [[], []]
    for round_index in range(args.rounds):
        for layout, (step, _) in enumerate(steps):
            timing = measure(step, device, warmup=3 if round_index == 0 else 1, reps=args.steps)
            times[layout] += timing.times_ms
            print(f"round {round_index + 1} {LAYOUTS[layout]}: median {timing.median_ms:.2f} ms", flush=True)
    mismatched = [step.mismatched for step, _ in steps]
    del steps                       # the DDP wrappers hold the process group: freed first, it ends with the shutdown
    shutdown_distributed()
    medians = [statistics.median(t) for t in times]
    print("\n| conv weight layout | median step ms | grads with other strides than their param |")
    print("|---|---:|---:|")
    for layout in range(2):
        print(f"| {LAYOUTS[layout]} | {medians[layout]:.2f} | {mismatched[layout]} |")
    print(f"\nratio before/now: {medians[0] / medians[1]:.3f} ({name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
