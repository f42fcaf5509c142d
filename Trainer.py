"""Trainer: owns the model, loss, optimizer, AMP, EMA and every piece of training state.

Reading path of a training step: ``dataset.py`` -> ``loaders.py`` -> :meth:`Trainer.train_step` -> an executor
(``step_graph.py``, eager or CUDA graphs) -> ``ThesisModel.forward`` -> ``CompositeLoss`` -> backward; the outcome comes
back to :meth:`Trainer._settle`, the one place that skips, counts, sets the learning rate and applies the update
(optimizer and EMA). The learning rate is a pure function of the optimizer step (:func:`lr_at_step`), so resuming has no
scheduler to restore. The Trainer owns the run's state from start to save: :meth:`Trainer.start` (exact resume, warm
start, MaTVLM init, refusal to overwrite another run) and :meth:`Trainer.save` (atomic ``_last`` / ``_best``, rank 0
only, every rank's RNG). :meth:`Trainer.state_payload` holds everything needed to continue bit for bit: model,
optimizer, GradScaler, EMA, step, epoch, best metric, config and the RNG states of every rank.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from checkpoint import CHECKPOINT_FORMAT, RUNTIME_MODEL_FIELDS, CheckpointError, atomic_save, capture_rng_state, \
    checkpoint_config, config_differences, describe_model_differences, load_checkpoint, load_matching_weights, \
    partial_start_problem, resolve_checkpoint, restore_rng_state, run_checkpoint_path, run_name, summarize_weight_report
from config import AMP_DTYPES, ConfigError, ExperimentConfig, resolve_amp
from distributed import DistributedContext, pack_flat, unpack_flat, wrap_ddp
from measures.quality import batch_psnr
from model import build_model
from model.loss import CompositeLoss, LossWeights
from model.ops.prior import flows_at_t
from step_graph import WARMUP_STEPS, EagerTrainStep, GraphedTrainStep, StepOutcome, StepParts, graph_eligibility


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses or gradients in a row."""


# ----------------------------------------------------------------------------------------------------------
# Pure schedule functions
# ----------------------------------------------------------------------------------------------------------
def lr_at_step(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to ``base_lr * min_lr_ratio`` at
    ``total_steps`` (EMA-VFI's recipe: 2e-4 -> 2e-5). Constant at the floor beyond ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------------
# Optimizer, AMP, EMA
# ----------------------------------------------------------------------------------------------------------
def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, PReLU slopes and the SSM's A_log, D, dt_bias (flagged
    ``_no_weight_decay`` by the modules, as Mamba does), nor on mHC biases/gains."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or getattr(param, "_no_weight_decay", False) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def training_precision(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler) of ``--amp`` (:func:`config.resolve_amp`) for training on
    ``device``: fp32 on the CPU whatever the choice (CPU autocast is slower than fp32 here and gains nothing); a
    GradScaler with fp16, whose small range would otherwise flush small gradients to zero."""
    precision = resolve_amp(amp, device) if device.type == "cuda" else "fp32"
    return AMP_DTYPES[precision], precision == "fp16"


class ExponentialMovingAverage:
    """Float32 shadow copy of the model's parameters and buffers, ``shadow = lerp(shadow, current, 1 - decay)``."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        shadows, currents = [], []
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                shadows.append(self.shadow[key])
                currents.append(value.float())
            else:
                self.shadow[key].copy_(value)
        if shadows:   # one multi-tensor kernel instead of one lerp per tensor (same arithmetic)
            torch._foreach_lerp_(shadows, currents, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.shadow[key].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the EMA weights into ``model`` (for evaluation), restoring the live weights after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict({k: v.to(live[k].dtype) for k, v in self.shadow.items()})
        try:
            yield
        finally:
            model.load_state_dict(live)


def portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as the eager step keeps it: a float learning rate and ``capturable`` off, even
    while CUDA graphs (step_graph.py) hold the rate in a device tensor. Such a checkpoint loads anywhere, CPU
    included; a graphed run makes its optimizer capturable again after loading."""
    state = optimizer.state_dict()
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if torch.is_tensor(group.get("lr")):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False
        groups.append(group)
    return {**state, "param_groups": groups}


def to_float_images(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """uint8 (B, 3, H, W) frames -> float [0, 1] on ``device``; t -> (B,) float32."""
    def convert(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True).float().div_(255.0)
    return convert(batch["img0"]), convert(batch["gt"]), convert(batch["img1"]), \
        batch["t"].to(device, non_blocking=True).float().reshape(-1)


class StepInputs(NamedTuple):
    """A training batch on the device, as one step reads it (:meth:`Trainer.float_inputs`): the frames (B, 3, H, W)
    float in [0, 1], ``t`` (B,) float32, and the optional extras the loader adds, each (B, 4, H, W) float32 in pixels
    or None: ``flow_teacher`` (``--flow_teacher``: DIS flows from the middle frame, a loss target) and ``flow_prior``
    (``--flow_prior dis``: DIS flows between the inputs, a model input). Named, because two optional extras cannot be
    told apart by position; a tuple still, so ``forward_loss(*inputs)`` takes them in order."""
    img0: torch.Tensor
    gt: torch.Tensor
    img1: torch.Tensor
    t: torch.Tensor
    flow_teacher: torch.Tensor | None = None
    flow_prior: torch.Tensor | None = None


def prior_keyword(flow_prior: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``flow_prior=`` for a model call only when there is one: a model without a prior (and a stand-in) keeps the
    plain ``(img0, img1, t)`` signature."""
    return {} if flow_prior is None else {"flow_prior": flow_prior}


def batch_flow_prior(batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor | None:
    """The batch's (B, 4, H, W) float32 flow prior on ``device``, or None when the loader added none."""
    prior = batch.get("flow_prior")
    return None if prior is None else prior.to(device, non_blocking=True).float()


class Trainer:
    """Owns the training state. ``steps_per_epoch`` counts optimizer steps (micro-batches / grad_accum)."""

    @classmethod
    def single_process(cls, cfg: ExperimentConfig, device: torch.device | str, steps_per_epoch: int,
                       total_epochs: int | None = None, log=print) -> "Trainer":
        """The Trainer of a run of one process on ``device`` (what plain ``python train.py`` builds): for the
        benchmarks and tests that drive training steps themselves."""
        return cls(cfg, DistributedContext(0, 0, 1, torch.device(device)), steps_per_epoch, total_epochs, log=log)

    def __init__(self, cfg: ExperimentConfig, ctx: DistributedContext, steps_per_epoch: int,
                 total_epochs: int | None = None, log=print):
        """``ctx``: this process's place in the run (``train.py`` gets it from ``distributed.init_distributed``)."""
        self.cfg, self.ctx, self.log = cfg, ctx, log
        self.device = ctx.device
        self.model = build_model(cfg.model).to(self.device)
        with warnings.catch_warnings(record=True) as caught:   # say it once, through rank 0's log
            warnings.simplefilter("always")
            # Every weight by name from the run's LossConfig (a test keeps the two field lists and defaults equal).
            weights = LossWeights(**{field.name: getattr(cfg.loss, field.name) for field in fields(LossWeights)})
            self.loss_fn = CompositeLoss(cfg.train.phase, weights,
                                         vgg_weights_path=cfg.loss.vgg_weights).to(self.device)
        for warning in caught:
            log(f"warning: {warning.message}")
        self.amp_dtype, use_scaler = training_precision(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, (total_epochs or cfg.train.epochs) * steps_per_epoch)
        # A warm-up longer than a short run (demo, dry run) would never reach the base learning rate.
        self.warmup_steps = min(cfg.train.warmup_steps, max(1, self.total_steps // 10))
        if self.warmup_steps < cfg.train.warmup_steps:
            log(f"warm-up capped at {self.warmup_steps} of --warmup_steps {cfg.train.warmup_steps} steps (a tenth of "
                f"this run's {self.total_steps} optimizer steps)")
        self.step = 0                      # optimizer steps taken
        self.epoch = 0                     # epochs completed
        self.best_metric = float("-inf")   # best validation PSNR
        self.last_val: dict[str, float] | None = None   # the latest validation metrics (psnr, ssim, ..., count)
        self.nonfinite_streak = 0
        self.overflow_skips = 0            # fp16 steps the GradScaler skipped (gradients overflowed)
        self.last_grad_norm = 0.0
        self.matvlm_source: nn.Module | None = None   # set by a MaTVLM start, released once compared
        self.backbone_frozen = False       # derived from the epoch and --freeze_backbone, so not checkpointed
        self._micro_step = 0
        self._window_poisoned = False
        self.optimizer = self._build_optimizer()
        if cfg.train.freeze_flow:
            # After the optimizer (its parameter list stays that of every run: a frozen parameter gets no gradient and
            # AdamW skips it), before DDP wraps the model (it hooks only what requires grad), for the whole run: the
            # estimator's zero-initialised updates stay zero, so its flow is the prior's and only what follows learns.
            for param in self.model.flow_estimator.parameters():
                param.requires_grad_(False)
            log("flow estimator frozen: the flow is the classical prior's (--freeze_flow)")
        self.graph_mode, self.step_mode = graph_eligibility(cfg.train.cuda_graph, self.device, ctx.enabled,
                                                            use_scaler, cfg.train.grad_accum)
        if cfg.train.cuda_graph == "on" and not self.graph_mode:
            raise ConfigError(f"--cuda_graph on is not possible here: {self.step_mode}")
        self.steps_before_capture = WARMUP_STEPS   # eager steps a graphed run takes before it captures the step
        # Graphed steps on several processes average the gradients themselves (step_graph.py), without DDP: DDP keeps
        # every parameter's gradient-accumulation node alive, bound to the stream it was built on, and a backward
        # captured on another stream would then have to join the legacy default stream, which a capture forbids.
        self.averages_gradients = ctx.enabled and self.graph_mode
        if self.averages_gradients:
            ctx.broadcast_from_main([*self.model.parameters(), *self.model.buffers()])   # what DDP does at build
        self.wrapped = self._wrap()
        self._executor: EagerTrainStep | GraphedTrainStep | None = None   # built at the first step
        # After the broadcast (DDP's when it wraps, broadcast_from_main otherwise): every rank's shadow starts from the
        # same model (each rank's own random init would make the EMA-evaluated validation shards mix different models).
        self.ema = ExponentialMovingAverage(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

    # ---------------------------------------------------------------------------------------- setup
    def _build_optimizer(self) -> torch.optim.Optimizer:
        # All parameters go in (frozen ones simply get no gradient and are skipped by AdamW), so freezing and
        # unfreezing never changes the optimizer's parameter list and its state stays loadable.
        groups = parameter_groups(self.model, self.cfg.train.weight_decay)
        return torch.optim.AdamW(groups, lr=self.cfg.train.lr, betas=(0.9, 0.999), fused=self.device.type == "cuda")

    def _wrap(self) -> nn.Module:
        if not self.ctx.enabled or self.averages_gradients:
            return self.model
        device_ids = [self.ctx.local_rank] if self.device.type == "cuda" else None
        return wrap_ddp(self.model, device_ids)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (or release) the backbone. DDP registers gradient hooks for the parameters that require grad
        when it is built, so the wrapper is rebuilt whenever the set changes (at most twice per run)."""
        if frozen == self.backbone_frozen:
            return
        for param in self.model.backbone.parameters():
            param.requires_grad_(not frozen)
        self.backbone_frozen = frozen
        self.wrapped = self._wrap()
        if self._executor is not None:
            self._executor.invalidate()     # a captured backward wrote the old set's gradients
        first = self.epoch + 1       # the epoch about to run, counted from 1 as the progress bar does
        if frozen:
            self.log(f"backbone frozen for epochs {first}-{self.cfg.train.freeze_backbone} (--freeze_backbone)")
        else:
            self.log(f"backbone released at epoch {first}")

    def train_mode(self) -> None:
        self.wrapped.train()
        if self.backbone_frozen:
            self.model.backbone.eval()      # no DropPath noise in a frozen feature extractor

    def current_lr(self) -> float:
        t = self.cfg.train
        return lr_at_step(self.step, t.lr, self.warmup_steps, self.total_steps, t.min_lr_ratio)

    def autocast(self, cache_casts: bool = True):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache_casts)

    # ---------------------------------------------------------------------------------------- training
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One micro-batch: forward, loss, backward; every ``grad_accum`` micro-batches an optimizer step.

        Returns ``{"logs": {term: float tensor}, "stepped": bool, "skipped": bool, "output": InterpolationOutput,
        "inputs": StepInputs}``. An executor computes the step (step_graph.py): on CUDA (one process or
        several) it is replayed from CUDA graphs (same arithmetic, its tensors valid until the next call),
        elsewhere it runs eagerly (:meth:`compute_step_eagerly`). What follows from it is decided here alone
        (:meth:`_settle`), for both.
        """
        if self._executor is None:
            self._executor = self._build_executor()
        outcome = self._executor.compute(batch)
        stepped, skipped = self._settle(outcome)
        return {"logs": outcome.logs, "stepped": stepped, "skipped": skipped, "output": outcome.output,
                "inputs": outcome.inputs}

    def _build_executor(self) -> EagerTrainStep | GraphedTrainStep:
        parts = StepParts(model=self.model, optimizer=self.optimizer, device=self.device,
                          world_size=self.ctx.world_size, float_inputs=self.float_inputs,
                          forward_loss=self.forward_loss, clip_gradients=self.clip_gradients,
                          compute_eagerly=self.compute_step_eagerly, update_weights=self._update_weights)
        if not self.graph_mode:
            return EagerTrainStep(parts)
        self._prepare_optimizer_for_graphs()
        return GraphedTrainStep(parts)

    def _settle(self, outcome: StepOutcome) -> tuple[bool, bool]:
        """What a computed step leads to, for the eager and the graphed executor alike; returns (stepped, skipped).

        A non-finite loss is reported at once; the window it belongs to is skipped at its end (no update, its
        gradients dropped), as is one whose gradient norm is not finite; ``max_nonfinite_steps`` skips in a row
        raise :class:`TrainingDiverged`. Otherwise the learning rate of this step is set, the executor applies the
        update (optimizer step and EMA, :meth:`_update_weights`) and the step is counted.

        With fp16 the GradScaler skips ``optimizer.step`` itself when the scaled gradients overflowed and lowers its
        scale. Nothing was learned then, so the step counter (hence the learning rate, a function of the step) and
        the EMA stay where they are. Overflows are the scaler's normal search for its scale, not divergence, so they
        do not count towards ``--max_nonfinite_steps``; a scale that falls below 1 (the gradients overflow even
        unscaled) does stop the run.
        """
        if not outcome.loss_finite:
            self.warn_nonfinite("loss", outcome.logs)
        if not outcome.update_due:
            return False, False
        self.set_lr(self.current_lr())
        if outcome.grad_norm is not None:
            self.last_grad_norm = outcome.grad_norm
        skip = not outcome.window_finite
        if not skip and not math.isfinite(self.last_grad_norm) and not self.scaler.is_enabled():
            self.warn_nonfinite("gradient norm")
            skip = True
        if skip:
            # No scaler.update() here: no unscale_ ran in this window, so the scaler has no inf checks to act on
            # (update() would assert, and before the first scale() its scale does not even exist). The scale need
            # not change: a non-finite loss comes from the forward pass, which the loss scale does not touch.
            self._executor.discard()
            self.nonfinite_streak += 1
            if self.nonfinite_streak >= self.cfg.train.max_nonfinite_steps:
                raise TrainingDiverged(f"{self.nonfinite_streak} non-finite steps in a row at step {self.step}: "
                                       "training diverged (lower --lr, or use --amp bf16/fp32)")
            return False, True
        if not self._executor.apply_update():
            self.overflow_skips += 1
            if self.scaler.get_scale() < 1.0:
                raise TrainingDiverged(f"fp16 loss scale fell to {self.scaler.get_scale():g} at step {self.step}: "
                                       "the gradients overflow even unscaled (use --amp bf16/fp32, or lower --lr)")
            return False, False
        self.step += 1
        self.nonfinite_streak = 0
        return True, False

    def compute_step_eagerly(self, batch: dict[str, torch.Tensor]) -> StepOutcome:
        """The reference computation of a step: forward, loss, backward of one micro-batch; at the end of an
        accumulation window whose losses were all finite, its gradients made ready for the update (averaged over
        ranks where no DDP wrapper does it, unscaled, clipped). A non-finite loss on any rank skips the backward on
        every rank, so DDP stays in step, and marks the window. Counts nothing: :meth:`_settle` decides."""
        accum = self.cfg.train.grad_accum
        inputs = self.float_inputs(batch)
        last_micro = (self._micro_step + 1) % accum == 0
        wrapped_in_ddp = isinstance(self.wrapped, DistributedDataParallel)
        sync = self.wrapped.no_sync() if wrapped_in_ddp and not last_micro else nullcontext()
        with sync:
            total, logs, output = self.forward_loss(*inputs)
            finite = self.ctx.all_reduce_min(torch.isfinite(total.detach()).float().reshape(1)).item() > 0
            if finite:
                self.scaler.scale(total / accum).backward()
        self._micro_step += 1
        self._window_poisoned = self._window_poisoned or not finite
        window_finite, grad_norm = not self._window_poisoned, None
        if last_micro:
            self._window_poisoned = False           # the next window starts clean
            if window_finite:
                if self.averages_gradients:
                    self.average_gradients()
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(self.clip_gradients())
        return StepOutcome(logs=logs, output=output, inputs=inputs, loss_finite=finite, update_due=last_micro,
                           window_finite=window_finite, grad_norm=grad_norm)

    # The pieces of a step, lent to the executors (step_graph.StepParts): none of them counts or decides.
    def float_inputs(self, batch: dict[str, torch.Tensor]) -> StepInputs:
        """The batch on the device as :class:`StepInputs`: the teacher flow and the flow prior where the batch
        carries them (a graphed step passes its static buffers, so each replay reads the batch copied into them)."""
        teacher = batch.get("flow_teacher")
        return StepInputs(*to_float_images(batch, self.device),
                          flow_teacher=None if teacher is None else teacher.to(self.device, non_blocking=True).float(),
                          flow_prior=batch_flow_prior(batch, self.device))

    def forward_loss(self, img0: torch.Tensor, gt: torch.Tensor, img1: torch.Tensor, t: torch.Tensor,
                     flow_teacher: torch.Tensor | None = None, flow_prior: torch.Tensor | None = None,
                     cache_casts: bool = True, module: nn.Module | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """(total loss, {term: value}, InterpolationOutput) under the run's autocast; the arguments are
        :class:`StepInputs`' fields in order. ``cache_casts=False`` for CUDA-graph capture, where autocast's cache
        of casted weights must not outlive the captured region. ``module`` replaces ``self.wrapped`` (the graph
        capture passes the plain model)."""
        with self.autocast(cache_casts):
            output = (self.wrapped if module is None else module)(img0, img1, t, **prior_keyword(flow_prior))
            # The blends cost three full-size images per flow block: built only when the term reads them.
            blends = output.intermediate_blends() if self.loss_fn.deep_supervision_enabled else None
            # --prior_anchor: the flow the model started from (the prior at t), what the anchor holds it to.
            anchor = flows_at_t(flow_prior, t) if self.loss_fn.prior_anchor_enabled and flow_prior is not None else None
            total, logs = self.loss_fn(output.pred, gt, flow=output.flow, intermediate=blends,
                                       teacher_flow=flow_teacher, frames=(img0, img1),
                                       warped=(output.warped0, output.warped1) if output.flow is not None else None,
                                       prior_flow=anchor)
        return total, logs, output

    def clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm to ``--grad_clip``; returns the norm before clipping (a tensor, no sync)."""
        return torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                              self.cfg.train.grad_clip)

    def average_gradients(self) -> None:
        """Average the gradients over ranks in one all-reduce of one flat buffer: the eager warm-up steps of a graphed
        run on several processes, where no DDP wrapper does it (see ``__init__``)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = self.ctx.all_reduce_sum(pack_flat(grads))
        unpack_flat(flat.div_(self.ctx.world_size), grads)

    def set_lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(value)          # captured graphs read it from the device
            else:
                group["lr"] = value

    def warn_nonfinite(self, what: str, logs: dict[str, torch.Tensor] | None = None) -> None:
        terms = f" (terms: { {k: float(v) for k, v in logs.items()} })" if logs is not None else ""
        self.log(f"warning: non-finite {what} at step {self.step}{terms}; skipping this step")

    def _update_weights(self) -> bool:
        """The update: optimizer step, then the EMA; False when the fp16 GradScaler found an overflow and skipped
        the step (then nothing moved). Run as it is by the eager executor and captured into the update graph by the
        graphed one, where loss scaling is off and this is ``optimizer.step()`` followed by the EMA.

        The overflow is detected as the scale going down: ``GradScaler.update`` multiplies it by ``backoff_factor``
        < 1 exactly when an inf/NaN was found, and only then (public API, unlike the per-optimizer ``found_inf``
        record)."""
        scale_before = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale_before:
            return False
        if self.ema is not None:
            self.ema.update(self.model)
        return True

    def _prepare_optimizer_for_graphs(self) -> None:
        """Capturable AdamW whose learning rate is one device tensor, filled by :meth:`set_lr` before each
        replay (a Python float would be baked into the graph). Done after :meth:`start` has loaded any state."""
        lr = torch.tensor(self.current_lr(), dtype=torch.float32, device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"], group["capturable"] = lr, True

    # ---------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, loader, ssim_fn=None, model: nn.Module | None = None) -> dict[str, Any]:
        """PSNR (and SSIM when ``ssim_fn`` is given) over this rank's shard, all-reduced over ranks.

        Also the frame-average baseline ``(I0 + I1) / 2``, the reference a VFI model has to beat. Uses the EMA
        weights when EMA is on; ``model`` evaluates another module instead (as it is, e.g. a MaTVLM source).
        Returns means plus one sample batch for the image grid (rank-local).
        """
        target = self.model if model is None else model
        was_training = target.training
        target.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)    # psnr, ssim, baseline psnr, count
        sample = None
        use_ema = model is None and self.ema is not None
        with (self.ema.applied(self.model) if use_ema else nullcontext()):
            for batch in loader:
                img0, gt, img1, t = to_float_images(batch, self.device)
                with self.autocast():
                    output = target(img0, img1, t, **prior_keyword(batch_flow_prior(batch, self.device)))
                pred = output.pred.float()
                sums[0] += batch_psnr(pred, gt).sum().double()
                if ssim_fn is not None:
                    sums[1] += sum(float(ssim_fn(p, g)) for p, g in zip(pred, gt))
                sums[2] += batch_psnr((img0 + img1) / 2, gt).sum().double()
                sums[3] += pred.shape[0]
                if sample is None:
                    sample = (img0[:2], gt[:2], img1[:2], output)
        sums = self.ctx.all_reduce_sum(sums)
        target.train(was_training)
        count = max(1.0, sums[3].item())
        return {"psnr": sums[0].item() / count, "ssim": sums[1].item() / count if ssim_fn else float("nan"),
                "psnr_frame_average": sums[2].item() / count, "count": int(sums[3].item()), "sample": sample}

    # ---------------------------------------------------------------------------------------- run state
    def start(self) -> None:
        """Set the starting state from ``--resume`` / ``--init_from_attn``, and refuse to overwrite another run.

        * ``--resume`` of this run (same run name and phase): continue exactly, every rank's RNG included.
        * ``--resume`` of another run or phase: warm start (matching tensors; see :meth:`warm_start`).
        * ``--init_from_attn``: MaTVLM init of the hybrid from a ``gated_attn_only`` checkpoint.
        * otherwise a fresh start.
        Anything but an exact continuation is refused while ``<run>_last.pt`` or ``_best.pt`` exists. Call it on
        every rank, after construction (rank 0's initial weights have been broadcast) and before training.
        """
        train = self.cfg.train
        if train.resume:
            path = resolve_checkpoint(train.resume, train.ckpt_dir)
            payload = load_checkpoint(path)
            if self.is_same_run(payload):
                self.resume(payload, str(path))
                self.log(f"resumed {path} after epoch {self.epoch}: step {self.step}, "
                         f"best PSNR {self.best_metric:.3f}")
                return
            self.refuse_to_clobber()
            saved = checkpoint_config(payload, path)
            report = self.warm_start(payload, str(path))
            self.log(f"warm start from {path} (experiment {saved.experiment_name!r}, phase {saved.train.phase}): "
                     f"{summarize_weight_report(report)}")
        elif train.init_from_attn:
            self.refuse_to_clobber()
            self.init_from_attention(train.init_from_attn)
        else:
            self.refuse_to_clobber()

    def refuse_to_clobber(self) -> None:
        """A run that does not continue ``<run>_last``/``_best`` must not overwrite them. A dry run writes only its
        own ``_dryrun`` files, which are disposable, so it is never refused."""
        if self.cfg.train.dry_run:
            return
        for kind in ("last", "best"):
            path = run_checkpoint_path(self.cfg, kind)
            if path.exists():
                raise ConfigError(f"{path} exists: continue that run with --resume {path.stem}, or choose another "
                                  "--exp_name")

    def save(self, improved: bool, metrics: dict[str, float] | None = None) -> None:
        """Write ``<run>_last.pt`` (and ``_best.pt`` when ``improved``) atomically. Every rank calls it: the RNG
        states of all ranks are gathered into the checkpoint; rank 0 alone writes; all ranks wait for it."""
        rng_states = self.ctx.all_gather_object(capture_rng_state())
        if self.ctx.is_main:
            payload = self.state_payload(rng_states, metrics)
            atomic_save(payload, run_checkpoint_path(self.cfg, "last"))
            if improved:
                atomic_save(payload, run_checkpoint_path(self.cfg, "best"))
        self.ctx.barrier()

    def record_validation(self, metrics: dict[str, float]) -> bool:
        """Keep the latest validation metrics; True when the PSNR beats the best so far (which it then becomes)."""
        self.last_val = dict(metrics)
        improved = metrics["psnr"] > self.best_metric
        if improved:
            self.best_metric = metrics["psnr"]
        return improved

    def state_payload(self, rng_states: list[dict[str, Any]], metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """The checkpoint (format in checkpoint.py): everything an exact continuation needs."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.cpu() for k, v in self.ema.state_dict().items()} if self.ema is not None else None,
            "optimizer": portable_optimizer_state(self.optimizer),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best_metric": self.best_metric,
            "rng": rng_states,
            "metrics": metrics or {},
        }

    def is_same_run(self, payload: dict[str, Any]) -> bool:
        """A checkpoint continues this run when it belongs to the same run name (experiment name, and a dry run
        only to a dry run) and phase."""
        saved = checkpoint_config(payload)
        return run_name(saved) == run_name(self.cfg) and saved.train.phase == self.cfg.train.phase

    def resume(self, payload: dict[str, Any], path: str) -> None:
        """Continue exactly: weights, optimizer, scaler, EMA, counters, and this rank's RNG streams."""
        self.release_graphs()
        saved = checkpoint_config(payload, path)
        differences = config_differences(saved.model, self.cfg.model, ignore=RUNTIME_MODEL_FIELDS)
        if differences:
            raise CheckpointError(f"{path} was trained with another model config (differs in: "
                                  f"{describe_model_differences(saved.model, self.cfg.model, differences)}); resume "
                                  "it with the same flags, or start a new --exp_name to warm-start from it")
        self.model.load_state_dict(payload["model"])
        if self.ema is not None and payload.get("ema"):
            self.ema.load_state_dict(payload["ema"])
        elif self.ema is not None:
            self.reset_ema()
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.step, self.epoch = int(payload["step"]), int(payload["epoch"])
        self.best_metric = float(payload["best_metric"])
        self.last_val = dict(payload["metrics"]) if payload.get("metrics") else None
        rng = payload.get("rng") or []
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        else:
            self.log(f"warning: {path} was saved by {len(rng)} rank(s), this run has {self.ctx.world_size}: "
                     "random streams are reseeded, so the continuation is not bit-identical")

    def warm_start(self, payload: dict[str, Any], path: str) -> dict[str, list[str]]:
        """Load the weights that fit (another phase or experiment): name and shape must match; report the rest.

        A start that loads almost nothing (see :func:`checkpoint.partial_start_problem`) is refused with a
        :class:`CheckpointError` unless ``--allow_partial_init`` says it is intended.
        """
        self.release_graphs()
        state = payload.get("ema") or payload["model"]
        report = load_matching_weights(self.model, state)
        problem = partial_start_problem(report, checkpoint_config(payload, path).model, self.cfg.model)
        if problem and not self.cfg.train.allow_partial_init:
            raise CheckpointError(f"warm start from {path} refused: {problem}. Use the checkpoint's model flags, "
                                  "or pass --allow_partial_init if a partial start is intended")
        if problem:
            self.log(f"warning: partial warm start from {path} (--allow_partial_init): {problem}")
        saved_model = checkpoint_config(payload, path).model
        saved_prior = saved_model.flow_prior
        if saved_prior != self.cfg.model.flow_prior and saved_model.use_flow and self.cfg.model.use_flow:
            # The one expected reshape: a prior adds the flow and the warps to the first flow block's input.
            fresh = [name.split(" ")[0] for name in report["skipped"] if name.startswith("flow_estimator.blocks.0.")]
            self.log(f"warm start from {path}: it was trained with --flow_prior {saved_prior}, this run has "
                     f"--flow_prior {self.cfg.model.flow_prior}, so the first flow block's input layer "
                     f"({', '.join(fresh) or 'none'}) starts fresh (its input channels differ); the rest loads")
        self.reset_ema()
        return report

    def init_from_attention(self, name_or_path: str) -> None:
        """MaTVLM start (docs/DESIGN.md 6): copy a trained ``gated_attn_only`` checkpoint into the hybrid, its
        attention projections mapped onto the Mamba2 branch (model/matvlm.py). A checkpoint or model the copy does not
        fit is refused with a :class:`CheckpointError` naming it."""
        self.release_graphs()
        from model.matvlm import MaTVLMIncompatible, init_hybrid_from_attention, load_attention_source
        path = resolve_checkpoint(name_or_path, self.cfg.train.ckpt_dir)
        payload = load_checkpoint(path)
        source_cfg = checkpoint_config(payload, path)
        if source_cfg.model.flow_prior != self.cfg.model.flow_prior:
            # The start must reproduce its source's output, and the two would not read the same inputs.
            raise CheckpointError(f"--init_from_attn {path} was trained with --flow_prior "
                                  f"{source_cfg.model.flow_prior}, this run has --flow_prior "
                                  f"{self.cfg.model.flow_prior}: use the same --flow_prior")
        try:
            source = load_attention_source(source_cfg.model, payload.get("ema") or payload["model"], str(path))
            report = init_hybrid_from_attention(self.model, source)
        except MaTVLMIncompatible as error:
            raise CheckpointError(str(error)) from None
        # Kept until the caller has compared its validation PSNR with the initialised hybrid's (they must agree).
        self.matvlm_source = source.to(self.device)
        self.reset_ema()
        self.log(f"MaTVLM init from {path}: copied {len(report['copied'])} tensors, mapped {len(report['mapped'])} "
                 f"attention->Mamba2 branches, {len(report['new'])} new tensors")

    def reset_ema(self) -> None:
        """Restart the EMA shadow from the current weights (after loading a start that is not this run's). In place:
        a captured update graph (step_graph.py) keeps writing the tensors it was captured with."""
        if self.ema is not None:
            self.ema.load_state_dict({k: v.detach().float() for k, v in self.model.state_dict().items()})

    def release_graphs(self) -> None:
        """Forget the captured step before the weights' or optimizer's tensors are replaced (resume, warm start):
        the next step warms up and captures again, with the optimizer made capturable once more."""
        if self._executor is not None:
            self._executor.invalidate()
            self._executor = None
