"""The training step replayed as CUDA graphs (two; three on several processes) instead of ~3,000 kernel launches.

Why: at the batch sizes a 32 GB card trains with, the eager step is launch-bound. Phase 1 at batch 4 and at batch 16
took about the same 60 ms on an H100, and bf16 was no faster than fp32 (docs/PERF.md, section 2): the GPU waited
for Python to queue ~1,100 kernels per forward pass and twice that for backward and the update.
``torch.compile`` bought 1.11x for 198 s of compilation; capturing the step costs one extra step.

What is captured (measured in docs/PERF.md, section 2)::

    forward graph  uint8 batch (static buffers) -> float -> model -> CompositeLoss -> backward -> grad clip
                   -> static loss terms, grad norm, outputs
    host           reads loss and grad norm (one synchronisation, as the eager step's finiteness check does)
                   and returns them; the Trainer skips a non-finite step exactly as it skips an eager one
    update graph   fused AdamW (capturable; its learning rate read from a device tensor the Trainer fills each
                   step) -> EMA: the Trainer's own update function, captured

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

When it applies (:func:`graph_eligibility`): CUDA, no fp16 GradScaler, ``--grad_accum 1``. Everywhere else
:class:`EagerTrainStep` runs the Trainer's eager computation, which is also the reference the GPU parity tests
(``tests/test_step_graph.py``) compare against.

Who decides what: an executor (:class:`EagerTrainStep`, :class:`GraphedTrainStep`) computes a step and returns a
:class:`StepOutcome` (loss terms, whether the loss was finite, the gradient norm); the owner of the training state
(``Trainer._settle``) alone skips, counts, sets the learning rate, and asks the executor to apply the update it lent
it (:attr:`StepParts.update_weights`: the optimizer step and the EMA), which the graphed executor replays from a
graph. Nothing here reads or writes the owner's counters, and this module imports nothing of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from distributed import pack_flat, unpack_flat

WARMUP_STEPS = 3
GRAPH_CHOICES = ("auto", "on", "off")

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutcome:
    """What computing one micro-batch gave, before anything is decided about the weights.

    The graphed executor's tensors live in the graph's static buffers: valid until its next step.
    """
    logs: dict[str, torch.Tensor]          # loss terms, 0-dim tensors ("loss_total", ...)
    output: Any                            # the model's InterpolationOutput (pred (B, 3, H, W), ...)
    inputs: tuple[torch.Tensor, ...]       # the owner's float_inputs: (img0, gt, img1) float (B, 3, H, W) in
                                           # [0, 1], t (B,), then its optional extras (Trainer.StepInputs)
    loss_finite: bool                      # this micro-batch's loss was finite (on every rank)
    update_due: bool                       # it closes an accumulation window: apply or skip the update now
    window_finite: bool                    # every loss of that window was finite (meaningful when update_due)
    grad_norm: float | None = None         # global gradient norm before clipping; None when none was computed


@dataclass(frozen=True)
class StepParts:
    """What an executor borrows from the owner of the training state: the pieces of a step, none of which counts,
    skips or sets the learning rate."""
    model: nn.Module                       # the plain module (never a DDP wrapper): the captured step runs it
    optimizer: torch.optim.Optimizer       # its gradients are dropped and its state checked before a capture
    device: torch.device
    world_size: int                        # > 1: the captured step averages the gradients itself (module docstring)
    # uint8 batch -> (img0, gt, img1, t, extras...): every tensor the batch carries (a flow teacher, a flow prior) is
    # copied into a static buffer of its own, so what float_inputs reads from the batch a replay reads afresh.
    float_inputs: Callable[[Batch], tuple[torch.Tensor, ...]]
    forward_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor], Any]]   # -> (total, logs, output)
    clip_gradients: Callable[[], torch.Tensor]                          # -> norm before clipping (no sync)
    compute_eagerly: Callable[[Batch], StepOutcome]                     # the reference computation of a step
    update_weights: Callable[[], bool]     # optimizer step, then EMA; False when loss scaling skipped the step


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


def batch_signature(batch: Batch) -> tuple:
    return tuple((key, tuple(value.shape), value.dtype) for key, value in sorted(batch.items())
                 if torch.is_tensor(value))


class EagerTrainStep:
    """The reference executor: the owner's eager computation, and its update run as it is.

    ``compute(batch)`` -> :class:`StepOutcome`; then the owner calls ``apply_update()`` (True: the weights moved) or
    ``discard()`` (drop a skipped window's gradients).
    """

    def __init__(self, parts: StepParts):
        self.parts = parts

    def compute(self, batch: Batch) -> StepOutcome:
        return self.parts.compute_eagerly(batch)

    def apply_update(self) -> bool:
        applied = self.parts.update_weights()
        self.parts.optimizer.zero_grad(set_to_none=True)
        return applied

    def discard(self) -> None:
        self.parts.optimizer.zero_grad(set_to_none=True)

    def invalidate(self) -> None:
        """Nothing is kept between steps."""


class GraphedTrainStep:
    """Warm-up, capture and replay of the training step for one batch shape (see the module docstring).

    The same three calls as :class:`EagerTrainStep`. The first :data:`WARMUP_STEPS` applied steps of each capture
    run the eager executor on the capture stream; after them, ``compute`` replays the forward (and, on several
    processes, the reduce) graph and ``apply_update`` the update graph.
    """

    def __init__(self, parts: StepParts):
        self.parts = parts
        self.eager = EagerTrainStep(parts)
        self.stream = torch.cuda.Stream(device=parts.device)
        self.signature: tuple | None = None
        self.warmup_left = WARMUP_STEPS
        self.warming = False                   # the latest compute ran eagerly (a warm-up step)
        self.captures = 0                      # how many times the step was captured (tests, the log)
        self._drop()

    # ------------------------------------------------------------------------------------------- state
    def _drop(self) -> None:
        self.forward_graph = self.reduce_graph = self.update_graph = None
        self.flat: torch.Tensor | None = None   # [loss; gradients] of the captured step on several processes
        self.static_batch: Batch = {}
        self.static_out: dict[str, Any] = {}

    def invalidate(self) -> None:
        """Forget the graphs (the trainable set or the batch shape changed); the next steps warm up again."""
        if self.forward_graph is not None:
            self._drop()
            # The gradients live in the dropped graphs' memory pool: release them so the eager warm-up steps
            # allocate fresh ones and the next capture sees none (backward then records writes, not accumulation).
            self.parts.optimizer.zero_grad(set_to_none=True)
        self.warmup_left = WARMUP_STEPS
        self.signature = None

    # ------------------------------------------------------------------------------------------- step
    def compute(self, batch: Batch) -> StepOutcome:
        signature = batch_signature(batch)
        if signature != self.signature:
            self.invalidate()
            self.signature = signature
        self.warming = self.warmup_left > 0
        if not self.warming and self.forward_graph is None and not self._capture(batch):
            self.warmup_left, self.warming = 1, True
        if self.warming:
            return self._on_capture_stream(self.eager.compute, batch)
        return self._replay(batch)

    def apply_update(self) -> bool:
        if self.warming:
            applied = self._on_capture_stream(self.eager.apply_update)
            if applied:            # a skipped step neither ran backward nor built the optimizer's state
                self.warmup_left -= 1
            return applied
        self.update_graph.replay()
        return True

    def discard(self) -> None:
        if self.warming:
            self.eager.discard()
        # After a replay nothing to drop: the next replay's backward writes the gradients afresh.

    def _on_capture_stream(self, run: Callable[..., Any], *args: Any) -> Any:
        """Eager work on the capture stream, so that what it sets up lazily (cuBLAS workspaces, autotuning, the
        optimizer's state) belongs to the stream the graphs are captured on."""
        current = torch.cuda.current_stream(self.parts.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            result = run(*args)
        current.wait_stream(self.stream)
        return result

    def _capture(self, batch: Batch) -> bool:
        """Capture the graphs; False (nothing kept) when the optimizer is not ready for it yet."""
        parts = self.parts
        parts.optimizer.zero_grad(set_to_none=True)       # backward inside the capture allocates the gradients
        torch.cuda.synchronize(parts.device)
        torch.cuda.empty_cache()                          # the warm-up's cached blocks would sit beside the pool
        self.static_batch = {key: torch.empty_like(value, device=parts.device) for key, value in batch.items()
                             if torch.is_tensor(value)}
        pool = torch.cuda.graph_pool_handle()
        forward_graph, update_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        reduce_graph = torch.cuda.CUDAGraph() if parts.world_size > 1 else None
        # thread_local: the DataLoader's pin-memory thread keeps working while this thread captures.
        with torch.cuda.graph(forward_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
            inputs = parts.float_inputs(self.static_batch)
            # Under DDP the plain module: the graphs average the gradients themselves (module docstring).
            total, logs, output = parts.forward_loss(*inputs, cache_casts=False, module=parts.model)
            total.backward()
            if reduce_graph is None:
                norm = parts.clip_gradients()
                flags = torch.stack([total.detach().float(), norm.float()])
            else:
                grads = [p.grad for p in parts.model.parameters() if p.grad is not None]
                flat = pack_flat([total.detach().float().reshape(1)] + grads)
        if reduce_graph is not None:
            with torch.cuda.graph(reduce_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
                flat.div_(parts.world_size)
                unpack_flat(flat[1:], grads)
                norm = parts.clip_gradients()
                flags = torch.stack([flat[0], norm.float()])
        optimizer = parts.optimizer
        if any(p.grad is not None and not optimizer.state.get(p) for group in optimizer.param_groups
               for p in group["params"]):
            # A parameter with a gradient but no AdamW state yet (its warm-up steps were skipped) would have its
            # moments created, zeroed, inside the captured update, and zeroed again at every replay.
            del forward_graph
            optimizer.zero_grad(set_to_none=True)
            return False
        with torch.cuda.graph(update_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
            parts.update_weights()       # loss scaling is off here: optimizer.step(), then the EMA
        self.forward_graph, self.reduce_graph, self.update_graph = forward_graph, reduce_graph, update_graph
        self.flat = flat if reduce_graph is not None else None
        self.static_out = {"flags": flags, "logs": logs, "output": output, "inputs": inputs}
        self.captures += 1
        return True

    def _replay(self, batch: Batch) -> StepOutcome:
        for key, value in self.static_batch.items():
            value.copy_(batch[key], non_blocking=True)
        self.forward_graph.replay()
        if self.reduce_graph is not None:
            torch.distributed.all_reduce(self.flat)   # sum, in place; the current stream waits for it
            self.reduce_graph.replay()
        # One synchronisation, as the eager step's finiteness check; the averaged loss and the norm are equal on
        # every rank, so every rank's owner makes the same decision without another collective.
        total, norm = self.static_out["flags"].tolist()
        finite = math.isfinite(total)
        return StepOutcome(logs=self.static_out["logs"], output=self.static_out["output"],
                           inputs=self.static_out["inputs"], loss_finite=finite, update_due=True,
                           window_finite=finite, grad_norm=norm)
