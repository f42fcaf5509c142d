"""One launch path for one or many devices.

``torchrun`` sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous address); plain ``python train.py`` sets
none of them and runs as a world of one. There is no ``--local_rank`` flag. Rank 0 alone logs and saves;
every metric is all-reduced before it is logged.
"""

from __future__ import annotations

import gc
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def pack_flat(tensors: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One vector of ``dtype`` holding every tensor's elements in order (one concatenation kernel): what a single
    collective moves for many tensors."""
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def unpack_flat(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy consecutive slices of ``flat`` back into ``tensors`` (in place; the inverse of :func:`pack_flat`)."""
    views, offset = [], 0
    for tensor in tensors:
        views.append(flat[offset:offset + tensor.numel()].view(tensor.shape))
        offset += tensor.numel()
    if offset != flat.numel():
        raise ValueError(f"flat buffer holds {flat.numel()} elements, the tensors {offset}")
    torch._foreach_copy_(tensors, views)


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (returns it unchanged on one rank)."""
        if self.enabled:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def all_reduce_min(self, values: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.MIN)
        return values

    def broadcast_from_main(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` on every rank with rank 0's values, in place (one coalesced broadcast; float64 holds
        float32/bf16 parameters and integer buffers exactly)."""
        if self.enabled and tensors:
            with torch.no_grad():
                tensors = [t.detach() for t in tensors]
                flat = pack_flat(tensors, torch.float64)
                dist.broadcast(flat, src=0)
                unpack_flat(flat, tensors)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.local_rank]) if self.device.type == "cuda" else dist.barrier()


def init_distributed(prefer_cuda: bool = True) -> DistributedContext:
    """Read the torchrun environment (or its absence) and set up the process group and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, device_id=device if use_cuda else None)
    return DistributedContext(rank, local_rank, world_size, device)


def shutdown_distributed() -> None:
    """Tear the process group down now, while the interpreter is whole.

    A training run's DDP wrapper outlives the run: reference cycles (module hooks, the trainer, captured graphs) keep
    it alive after ``run`` returns (measured: one DDP object per rank, freed only by the cyclic collector), and its
    reducer keeps the process group alive, so ``destroy_process_group`` alone only drops the registry's reference and
    gloo's worker threads are torn down whenever a later collection, or the interpreter's finalization, frees the
    wrapper. Two full CPU suites saw a rank of a finished two-rank gloo run die there of SIGABRT ("terminate called
    without an active exception"), failing a run whose work was done; PyTorch's own discussion of that abort names
    the same cause (gloo threads holding Python objects at finalization). Collecting first frees the wrapper here,
    so the process group ends inside ``destroy_process_group``."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, device_ids: list[int] | None) -> DistributedDataParallel:
    """``module`` in DistributedDataParallel without a buffer broadcast before every forward.

    The model has no buffers today (a broadcast would be an empty collective per step, and one more thing inside the
    graphed step to keep consistent), so no synchronisation is needed at any point. torch 2.14 renamed the switch:
    ``broadcast_buffers`` still works there but prints a FutureWarning at every DDP start, and torch 2.11 (the GPU
    machines) knows only that name. So: ``forward_sync_buffers=False`` where it exists, else ``broadcast_buffers=False``.
    """
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    option = {"forward_sync_buffers": False} if renamed else {"broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=device_ids, **option)
