"""Worker for tests/test_step_graph.py, launched on two ranks with ``python -m torch.distributed.run``.

``flat`` (gloo, CPU): one backward of a tiny model through DDP, and the same backward through the plain module
followed by what the graphed step does under DDP (step_graph.py: pack loss and gradients into one buffer,
all-reduce the sum, divide by the world size, unpack). Rank 0 writes the largest gradient difference.

``graph`` (NCCL, one CUDA device per rank): Phase 2 trained for a few steps eagerly twice (DDP) and once with the
graphed step, on batches that differ per rank. Rank 0 writes the drift between them and whether every rank ends with
the same weights.

Usage: ``ddp_step_worker.py {flat,graph} OUT.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import preset                                      # noqa: E402
from distributed import init_distributed, shutdown_distributed  # noqa: E402
from model import build_model                                   # noqa: E402
from step_graph import WARMUP_STEPS, pack_flat, unpack_flat     # noqa: E402


def flat_against_ddp(ctx, out: Path) -> None:
    torch.manual_seed(0)
    model = build_model(preset(2, "tiny"))
    ddp = DistributedDataParallel(model, broadcast_buffers=False)       # broadcasts rank 0's weights
    generator = torch.Generator().manual_seed(100 + ctx.rank)            # each rank its own data
    img0, img1 = (torch.rand(2, 3, 32, 32, generator=generator) for _ in range(2))

    def loss_of(module):
        return module(img0, img1, 0.5).pred.square().mean()
    loss_of(ddp).backward()
    reference = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    loss = loss_of(model)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = pack_flat([loss.detach().reshape(1)] + grads)
    ctx.all_reduce_sum(flat)
    flat.div_(ctx.world_size)
    unpack_flat(flat[1:], grads)
    losses = ctx.all_gather_object(float(loss))
    if ctx.is_main:
        out.write_text(json.dumps({
            "gradients": len(grads),
            "max_grad_difference": max(float((a - b).abs().max()) for a, b in zip(grads, reference)),
            "max_grad": max(float(a.abs().max()) for a in reference),
            "mean_loss": float(flat[0]), "expected_mean_loss": sum(losses) / len(losses)}))


def graph_against_eager(ctx, out: Path) -> None:
    import test_step_graph as helpers
    steps = WARMUP_STEPS + 6
    batches = helpers.cuda_batches(steps, seed=10 + ctx.rank)
    eager_a, eager_b, graphed = (helpers.cuda_trainer(2, mode, ctx=ctx) for mode in ("off", "off", "on"))
    assert graphed.graph_mode and not eager_a.graph_mode
    losses = [helpers.run_steps(trainer, batches) for trainer in (eager_a, eager_b, graphed)]
    checksum = [float(sum(p.detach().double().sum() for p in graphed.model.parameters()))]
    checksums = ctx.all_gather_object(checksum)
    if ctx.is_main:
        out.write_text(json.dumps({
            "captures": graphed._graphed.captures, "steps": graphed.step, "expected_steps": steps,
            "identical_across_ranks": all(c == checksums[0] for c in checksums),
            "noise": helpers.relative_difference(eager_a, eager_b),
            "drift": helpers.relative_difference(eager_a, graphed),
            "loss_noise": max(abs(x - y) for x, y in zip(losses[0], losses[1])),
            "loss_drift": max(abs(x - y) for x, y in zip(losses[0], losses[2]))}))


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    ctx = init_distributed(prefer_cuda=mode == "graph")
    try:
        (flat_against_ddp if mode == "flat" else graph_against_eager)(ctx, out)
        dist.barrier()
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
