"""Worker for tests/test_step_graph.py, launched on two ranks with ``python -m torch.distributed.run``.

``flat`` (gloo, CPU): rank 0's weights broadcast by ``DistributedContext.broadcast_from_main``; one backward of a
tiny model through DDP, and the same backward through the plain module followed by what a graphed run does without
DDP: ``Trainer.average_gradients`` (its eager warm-up steps) and the captured step's sequence (step_graph.py: pack
loss and gradients into one buffer, all-reduce the sum, divide by the world size, unpack). Rank 0 writes the largest
gradient differences.

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
from distributed import init_distributed, pack_flat, shutdown_distributed, unpack_flat  # noqa: E402
from step_graph import WARMUP_STEPS                            # noqa: E402
from Trainer import Trainer                                     # noqa: E402


def flat_against_ddp(ctx, out: Path) -> None:
    torch.manual_seed(ctx.rank)                                          # each rank its own initial weights
    trainer = Trainer(preset(2, "tiny"), ctx, steps_per_epoch=4, log=lambda *a: None)
    assert isinstance(trainer.wrapped, DistributedDataParallel)          # the CPU run: eager step under DDP
    model = trainer.model
    # What a graphed run does instead of building DDP: rank 0's values everywhere, parameters and buffers.
    torch.manual_seed(100 + ctx.rank)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.copy_(torch.randn(tensor.shape).to(tensor.dtype) if tensor.is_floating_point() else tensor)
    rank0_values = ctx.all_gather_object([t.detach().clone() for t in model.parameters()])[0]
    ctx.broadcast_from_main(list(model.parameters()) + list(model.buffers()))
    broadcast_exact = all(ctx.all_gather_object(      # on every rank, rank 1 being the one that had other values
        all(torch.equal(a, b) for a, b in zip(model.parameters(), rank0_values))))

    generator = torch.Generator().manual_seed(100 + ctx.rank)            # each rank its own data
    img0, img1 = (torch.rand(2, 3, 32, 32, generator=generator) for _ in range(2))

    def loss_of(module):
        return module(img0, img1, 0.5).pred.square().mean()
    loss_of(trainer.wrapped).backward()                                 # DDP's hooks average the gradients
    reference = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    loss = loss_of(model)
    loss.backward()
    trainer.average_gradients()                                          # the eager warm-up steps of a graphed run
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # And the captured step's sequence: [loss; gradients] packed, summed over ranks, divided, unpacked.
    model.zero_grad(set_to_none=True)
    loss = loss_of(model)
    loss.backward()
    packed_grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = pack_flat([loss.detach().reshape(1)] + packed_grads)
    dist.all_reduce(flat)
    flat.div_(ctx.world_size)
    unpack_flat(flat[1:], packed_grads)
    losses = ctx.all_gather_object(float(loss))
    if ctx.is_main:
        out.write_text(json.dumps({
            "broadcast_exact": broadcast_exact,
            "gradients": len(grads),
            "max_grad_difference": max(float((a - b).abs().max()) for a, b in zip(grads, reference)),
            "max_packed_difference": max(float((a - b).abs().max()) for a, b in zip(packed_grads, reference)),
            "max_grad": max(float(a.abs().max()) for a in reference),
            "mean_loss": float(flat[0]), "expected_mean_loss": sum(losses) / len(losses)}))


def graph_against_eager(ctx, out: Path) -> None:
    import test_step_graph as helpers
    steps = WARMUP_STEPS + 6
    batches = helpers.cuda_batches(steps, seed=10 + ctx.rank)
    # Each rank seeds its own initial weights: only the start-up broadcast (DDP's or the graphed run's) aligns them.
    eager_a, eager_b, graphed = (helpers.cuda_trainer(2, mode, seed=ctx.rank, ctx=ctx) for mode in ("off", "off", "on"))
    assert graphed.graph_mode and not eager_a.graph_mode
    losses = [helpers.run_steps(trainer, batches) for trainer in (eager_a, eager_b, graphed)]
    checksum = [float(sum(p.detach().double().sum() for p in graphed.model.parameters()))]
    checksums = ctx.all_gather_object(checksum)
    if ctx.is_main:
        out.write_text(json.dumps({
            "captures": graphed._executor.captures, "steps": graphed.step, "expected_steps": steps,
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
