"""The training step replayed as CUDA graphs (two; three on several processes) instead of ~3,000 kernel launches.

Why: at the batch sizes a 32 GB card trains with, the eager step is launch-bound. Phase 1 at batch 4 and at batch 16
took about the same 60 ms on an H100, and bf16 was no faster than fp32 (docs/PERF.md, section 2): the GPU waited
for Python to queue ~1,100 kernels per forward pass and twice that for backward and the update.
``torch.compile`` bought 1.11x for 198 s of compilation; capturing the step costs one extra step.

What is captured (measured in docs/PERF.md, section 2)::

    forward graph  uint8 batch (static buffers) -> float -> model -> CompositeLoss -> backward -> grad clip
                   -> static loss terms, grad norm, outputs
    host           reads loss and grad norm (one synchronisation, as the eager step's finiteness check does);
                   a non-finite value skips the update with the eager step's message and counters
    update graph   fused AdamW (capturable; its learning rate read from a device tensor the host fills each
                   step) -> EMA

The arithmetic is the eager step's: same kernels, same order. The first :data:`WARMUP_STEPS` optimizer steps of
each capture run eagerly on the capture stream (Triton autotuning, cuBLAS workspaces, optimizer state); a batch
of another shape or a change of the trainable parameters (``--freeze_backbone`` releasing the backbone) drops
the graphs and captures again.

Several processes (``torchrun``): DDP all-reduces gradients in hooks that fire bucket by bucket during backward,
which a graph cannot contain around host-side logic; and the gradient-accumulation nodes DDP keeps alive stay bound
to the stream they were built on, so a backward captured on another stream fails (measured: "operation would make
the legacy stream depend on a capturing blocking stream"). A graphed run on several processes therefore has no DDP
wrapper (``Trainer.averages_gradients``): rank 0's weights are broadcast at the start, the eager warm-up steps average
their gradients with one flat all-reduce (``Trainer.average_gradients``), and the captured step does the same with
one collective between two graphs::

    forward graph  ... -> backward -> [loss ; every gradient] packed into one flat float32 buffer
    host           one all-reduce (sum) of the flat buffer: a single NCCL launch for the whole model
    reduce graph   divide by the world size, copy back into the gradients, clip -> loss and grad norm
    host           the check above; the averaged loss and the gradient norm are equal on every rank, so every
                   rank makes the same skip decision without another collective
    update graph   as above

The all-reduce does not overlap backward as DDP's buckets do; it moves the model's gradients once (tens of MB, under a
millisecond over NVLink), while the eager DDP step it replaces is bound by the launch of thousands of kernels and
by DDP's per-bucket bookkeeping on every rank (docs/PERF.md, section 6).

When it applies (:func:`graph_eligibility`): CUDA, no fp16 GradScaler, ``--grad_accum 1``. Everywhere else the eager
step in ``Trainer.py`` runs, which is also the reference the GPU parity tests (``tests/test_step_graph.py``) compare
against.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from distributed import pack_flat, unpack_flat

if TYPE_CHECKING:   # pragma: no cover
    from Trainer import Trainer

WARMUP_STEPS = 3
GRAPH_CHOICES = ("auto", "on", "off")


def graph_eligibility(choice: str, device: torch.device, distributed: bool, uses_grad_scaler: bool,
                      grad_accum: int) -> tuple[bool, str]:
    """(capture the step?, the reason in words) for ``--cuda_graph choice``. ``on`` with a reason not to is the
    caller's error to report; ``auto`` falls back to the eager step quietly."""
    if choice not in GRAPH_CHOICES:
        return False, f"--cuda_graph must be one of {', '.join(GRAPH_CHOICES)}, got {choice!r}"
    if choice == "off":
        return False, "eager (--cuda_graph off)"
    if device.type != "cuda":
        return False, f"eager (CUDA graphs need a CUDA device, this run is on {device.type})"
    if uses_grad_scaler:
        return False, "eager (fp16 loss scaling: the GradScaler decides on the host whether to step)"
    if grad_accum != 1:
        return False, f"eager (--grad_accum {grad_accum}: several backward passes per optimizer step)"
    reduce = ", gradients all-reduced between the graphs" if distributed else ""
    return True, f"CUDA graphs (captured after {WARMUP_STEPS} eager warm-up steps{reduce})"


def batch_signature(batch: dict[str, torch.Tensor]) -> tuple:
    return tuple((key, tuple(value.shape), value.dtype) for key, value in sorted(batch.items())
                 if torch.is_tensor(value))


class GraphedTrainStep:
    """Warm-up, capture and replay of :meth:`Trainer.train_step` for one batch shape (see the module docstring).

    ``step(batch)`` returns what the eager step returns: ``{"logs", "stepped", "skipped", "output", "inputs"}``.
    The tensors in it live in the graph's static buffers: valid until the next call, as train.py uses them.
    """

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.world_size = trainer.ctx.world_size
        self.stream = torch.cuda.Stream(device=trainer.device)
        self.signature: tuple | None = None
        self.warmup_left = WARMUP_STEPS
        self.captures = 0                      # how many times the step was captured (tests, the log)
        self._drop()

    # ------------------------------------------------------------------------------------------- state
    def _drop(self) -> None:
        self.forward_graph = self.reduce_graph = self.update_graph = None
        self.flat: torch.Tensor | None = None   # [loss; gradients] of the captured step on several processes
        self.static_batch: dict[str, torch.Tensor] = {}
        self.static_out: dict[str, Any] = {}

    def invalidate(self) -> None:
        """Forget the graphs (the trainable set or the batch shape changed); the next steps warm up again."""
        if self.forward_graph is not None:
            self._drop()
            # The gradients live in the dropped graphs' memory pool: release them so the eager warm-up steps
            # allocate fresh ones and the next capture sees none (backward then records writes, not accumulation).
            self.trainer.optimizer.zero_grad(set_to_none=True)
        self.warmup_left = WARMUP_STEPS
        self.signature = None

    # ------------------------------------------------------------------------------------------- step
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        signature = batch_signature(batch)
        if signature != self.signature:
            self.invalidate()
            self.signature = signature
        if self.warmup_left > 0:
            return self._eager_on_capture_stream(batch)
        if self.forward_graph is None and not self._capture(batch):
            self.warmup_left = 1
            return self._eager_on_capture_stream(batch)
        return self._replay(batch)

    def _eager_on_capture_stream(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        current = torch.cuda.current_stream(self.trainer.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            result = self.trainer.eager_train_step(batch)
        current.wait_stream(self.stream)
        if result["stepped"]:      # a skipped step neither ran backward nor built the optimizer's state
            self.warmup_left -= 1
        return result

    def _capture(self, batch: dict[str, torch.Tensor]) -> bool:
        """Capture the graphs; False (nothing kept) when the optimizer is not ready for it yet."""
        trainer = self.trainer
        trainer.optimizer.zero_grad(set_to_none=True)     # backward inside the capture allocates the gradients
        torch.cuda.synchronize(trainer.device)
        torch.cuda.empty_cache()                          # the warm-up's cached blocks would sit beside the pool
        self.static_batch = {key: torch.empty_like(value, device=trainer.device) for key, value in batch.items()
                             if torch.is_tensor(value)}
        pool = torch.cuda.graph_pool_handle()
        forward_graph, update_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        reduce_graph = torch.cuda.CUDAGraph() if self.world_size > 1 else None
        # thread_local: the DataLoader's pin-memory thread keeps working while this thread captures.
        with torch.cuda.graph(forward_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
            inputs = trainer.float_inputs(self.static_batch)
            # Under DDP the plain module: the graphs average the gradients themselves (module docstring).
            total, logs, output = trainer.forward_loss(*inputs, cache_casts=False, module=trainer.model)
            total.backward()
            if reduce_graph is None:
                norm = trainer.clip_gradients()
                flags = torch.stack([total.detach().float(), norm.float()])
            else:
                grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
                flat = pack_flat([total.detach().float().reshape(1)] + grads)
        if reduce_graph is not None:
            with torch.cuda.graph(reduce_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
                flat.div_(self.world_size)
                unpack_flat(flat[1:], grads)
                norm = trainer.clip_gradients()
                flags = torch.stack([flat[0], norm.float()])
        optimizer = trainer.optimizer
        if any(p.grad is not None and not optimizer.state.get(p) for group in optimizer.param_groups
               for p in group["params"]):
            # A parameter with a gradient but no AdamW state yet (its warm-up steps were skipped) would have its
            # moments created, zeroed, inside the captured update, and zeroed again at every replay.
            del forward_graph
            trainer.optimizer.zero_grad(set_to_none=True)
            return False
        with torch.cuda.graph(update_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
            trainer.optimizer.step()
            if trainer.ema is not None:
                trainer.ema.update(trainer.model)
        self.forward_graph, self.reduce_graph, self.update_graph = forward_graph, reduce_graph, update_graph
        self.flat = flat if reduce_graph is not None else None
        self.static_out = {"flags": flags, "logs": logs, "output": output, "inputs": inputs}
        self.captures += 1
        return True

    def _replay(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        trainer = self.trainer
        for key, value in self.static_batch.items():
            value.copy_(batch[key], non_blocking=True)
        self.forward_graph.replay()
        if self.reduce_graph is not None:
            torch.distributed.all_reduce(self.flat)   # sum, in place; the current stream waits for it
            self.reduce_graph.replay()
        total, norm = self.static_out["flags"].tolist()
        logs = self.static_out["logs"]
        trainer.last_grad_norm = norm
        if not math.isfinite(total):
            trainer.warn_nonfinite("loss", logs)
            trainer.count_skipped_step()
            stepped, skipped = False, True
        elif not math.isfinite(norm):
            trainer.warn_nonfinite("gradient norm")
            trainer.count_skipped_step()
            stepped, skipped = False, True
        else:
            trainer.set_lr(trainer.current_lr())
            self.update_graph.replay()
            trainer.count_step(ema_updated=True)
            stepped, skipped = True, False
        return {"logs": logs, "stepped": stepped, "skipped": skipped, "output": self.static_out["output"],
                "inputs": self.static_out["inputs"]}
