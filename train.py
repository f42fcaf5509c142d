"""Train Thesis-VFI.

One launch path, any scale: ``python train.py ...`` on one device, ``torchrun --nproc_per_node=N train.py ...`` on
several (multi-node through torchrun's rendezvous). Rank 0 alone prints, writes TensorBoard (``log/<exp_name>/``)
and saves ``ckpt/<exp_name>_last.pt`` / ``_best.pt``; validation PSNR is all-reduced across ranks first.
Ctrl-C or SIGTERM stops every rank after the same optimizer step; rank 0 prints one line (where, the last checkpoint,
the ``--resume`` command) and the exit status is 130.

    python train.py --phase 1 --data_path /data/vimeo_triplet --batch_size 4 --exp_name phase1_hybrid
    python train.py --phase 2 --data_path ... --resume phase1_hybrid_best --freeze_backbone 50 --exp_name p2
    python train.py --help                      # every flag, with the phase preset defaults
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from checkpoint import CheckpointError, atomic_write_text, resolve_checkpoint, run_checkpoint_path, run_name, \
    seed_everything
from config import ConfigError, ExperimentConfig, parse_train_argv
from dataset import DatasetError
from distributed import DistributedContext, init_distributed, shutdown_distributed
from loaders import STOP_SIGNALS, build_datasets, curriculum_max_gap, make_loaders
from measures.visualize import sample_grid
from model.loss import LOSS_LOG_KEYS
from Trainer import Trainer, TrainingDiverged



class NullWriter:
    """Stand-in for SummaryWriter on ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what a scheduler sends) ask training to stop at the next optimizer-step
    boundary. The handler only records the signal; the loop calls :meth:`agreed` at each boundary, a one-integer
    all-reduce (MAX) so every rank stops after the same step even when only some of them got the signal. On CUDA
    the all-reduce goes through a gloo group on the CPU, so it never waits for the GPU.

    A second signal is ignored when it comes within ``REPEAT_GRACE_S`` of the first (torchrun passes the terminal's
    Ctrl-C on to its workers, which got it already); a later one stops at once (KeyboardInterrupt).
    Use as a context manager around :func:`run` (the previous handlers come back on exit); until :meth:`arm` (the
    training loop) a signal raises KeyboardInterrupt at once, as by default, so start-up stops without waiting.
    """

    SIGNALS = STOP_SIGNALS
    REPEAT_GRACE_S = 2.0

    def __init__(self, ctx: DistributedContext):
        self.ctx = ctx
        self.armed = False                     # before arm() (start-up) a signal interrupts at once
        self.received: int = 0                 # signal number this process got (0: none)
        self.received_at = 0.0
        self.stop_signal: int = 0              # the largest signal number any rank got, once agreed
        self.previous: dict[int, object] = {}
        self.group = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self.record)
        if self.ctx.enabled and self.ctx.device.type == "cuda":
            self.group = dist.new_group(backend="gloo")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is KeyboardInterrupt:
            # The process is stopping: a repeated signal (torchrun passes Ctrl-C on a second time) must not raise
            # again while the caller prints its line; it calls restore() when done.
            for number in self.previous:
                signal.signal(number, signal.SIG_IGN)
        else:
            self.restore()

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()

    def arm(self) -> None:
        """From now on a signal is only recorded, to be acted on at the next step boundary (the training loop)."""
        self.armed = True

    def record(self, number: int, frame=None) -> None:
        if not self.armed:
            raise KeyboardInterrupt            # start-up: nothing to finish, stop now (main prints one line)
        if not self.received:
            self.received, self.received_at = number, time.monotonic()
        elif time.monotonic() - self.received_at > self.REPEAT_GRACE_S:
            raise KeyboardInterrupt

    def agreed(self) -> bool:
        """True on every rank when any rank has received a stop signal (a collective: call it on all ranks)."""
        if self.ctx.enabled:
            flag = torch.tensor([self.received], dtype=torch.int64)
            if self.group is None:
                flag = flag.to(self.ctx.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            self.stop_signal = int(flag.item())
        else:
            self.stop_signal = self.received
        return self.stop_signal != 0


class Progress:
    """Training progress of rank 0: a tqdm bar on a terminal; a plain line every ``--log_every`` steps when standard
    output is a file or a pipe (no carriage returns in logs); nothing with ``--no_progress``."""

    def __init__(self, enabled: bool, total_steps: int, log):
        self.mode = "off" if not enabled else "bar" if sys.stdout.isatty() and sys.stderr.isatty() else "lines"
        self.total_steps, self.log, self.bar = total_steps, log, None

    def start_epoch(self, epoch: int, total_epochs: int, steps: int) -> None:
        self.epoch_text = f"epoch {epoch + 1}/{total_epochs}"
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc=self.epoch_text, dynamic_ncols=True, leave=False)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, step: int, epoch_step: int, epoch_steps: int, loss: float, lr: float,
               samples_per_sec: float) -> None:
        """At each logging step (--log_every): the bar's postfix, or one plain line."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        elif self.mode == "lines":
            self.log(f"{self.epoch_text} step {epoch_step}/{epoch_steps} (total {step}/{self.total_steps}): "
                     f"loss {loss:.4f}, lr {lr:.2e}, {samples_per_sec:.1f} samples/s", flush=True)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def resume_command(argv: list[str], resume_name: str, ctx: DistributedContext) -> str:
    """The command that continues this run: the same flags with ``--resume <resume_name>`` (replacing any
    ``--resume`` or ``--init_from_attn``), launched as this process was (python or torchrun)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in ("--resume", "--init_from_attn"):
            skip = True
        elif not item.startswith(("--resume=", "--init_from_attn=")):
            kept.append(item)
    script = Path(__file__).resolve()
    try:
        script_text = str(script.relative_to(Path.cwd()))
    except ValueError:
        script_text = str(script)
    flags = [script_text, *kept, "--resume", resume_name]
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return shlex.join(["python", *flags])
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    launcher = ["torchrun", "--standalone"] if nodes == 1 else ["torchrun", f"--nnodes={nodes}"]
    launcher.append(f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', ctx.world_size)}")
    if nodes == 1:
        return shlex.join([*launcher, *flags])
    return f"{shlex.join(launcher)} <your --rdzv flags, as before> {shlex.join(flags)}"


def one_line(error: BaseException) -> str:
    """A DataLoader worker wraps errors with its traceback; keep only the original message."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.rsplit(f"{type(error).__name__}: ", 1)[-1]
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def image_grid(img0: torch.Tensor, gt: torch.Tensor, img1: torch.Tensor, output) -> torch.Tensor:
    """TensorBoard grid I0 | prediction | GT | I1 [| flow t->0 | flow t->1 | mask] (3, H', W'). Flow and mask
    panels only where the model has a flow pipeline (Phase 2/3): Phase 1's blend mask is no flow mask."""
    has_flow = output.flow is not None
    return sample_grid(img0, output.pred.detach(), gt, img1,
                       flow=output.flow.detach() if has_flow else None,
                       mask=output.mask.detach() if has_flow else None)


def detached_copy(result: dict) -> dict:
    """What the training grid reads from a step's result (inputs, prediction, flow, mask), copied."""
    from dataclasses import replace as replace_fields
    output = result["output"]
    copy = lambda x: None if x is None else x.detach().clone()   # noqa: E731
    return {"inputs": tuple(copy(x) for x in result["inputs"]),
            "output": replace_fields(output, pred=copy(output.pred), mask=copy(output.mask), residual=None,
                                     flow=copy(output.flow), warped0=None, warped1=None, intermediate=[])}


def fingerprint(tensors) -> str:
    """SHA-256 of the tensors' bytes, in order: equal on two ranks exactly when every value is bit-identical."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def run_summary(cfg: ExperimentConfig, trainer: Trainer, params: int, train_samples: int, train_seconds: float,
                peak_gpu_bytes: int | None, wall_seconds: float, first_step_seconds: float | None = None,
                steady_samples_per_sec: float | None = None) -> dict:
    """What ``log/<run>/summary.json`` holds (benchmark/ablation.py reads these keys): the run's outcome, its
    throughput over the training time of this process (evaluation and saving excluded), the seconds from start to
    the first optimizer step and the rate after it (the start-up cost and the steady rate), and its config."""
    def finite_or_none(value: float) -> float | None:
        return value if math.isfinite(value) else None
    last = trainer.last_val
    val_keys = ("psnr", "ssim", "psnr_frame_average", "count")
    return {
        "experiment": cfg.experiment_name,
        "phase": cfg.train.phase,
        "params": params,
        "steps": trainer.step,
        "epochs": trainer.epoch,
        "best_psnr": finite_or_none(trainer.best_metric),
        "last_val": None if last is None else {k: last.get(k) for k in val_keys},
        "train_samples_per_sec": train_samples / train_seconds if train_seconds > 0 else None,
        "peak_gpu_mem_gib": None if peak_gpu_bytes is None else peak_gpu_bytes / 2**30,
        "wall_seconds": wall_seconds,
        "first_step_seconds": first_step_seconds,
        "steady_samples_per_sec": steady_samples_per_sec,
        "config": cfg.to_dict(),
    }


def check_device_flags(cfg: ExperimentConfig, ctx: DistributedContext) -> None:
    """Flags that depend on the device, refused before any data or model is built."""
    if cfg.train.amp == "fp16" and ctx.device.type != "cuda":
        # fp16 autocast on a CPU is many times slower than fp32 and the GradScaler buys nothing there.
        raise ConfigError(f"--amp fp16 needs a CUDA device (this run is on {ctx.device.type}, which trains in fp32): "
                          "use --amp fp32 or auto")


def run(cfg: ExperimentConfig, ctx: DistributedContext, argv: list[str] | None = None,
        progress_enabled: bool = True, stop: StopSignals | None = None) -> int:
    """Train as ``cfg`` says; returns the exit status: 0, or 130 when a signal recorded by ``stop`` stopped the run
    (rank 0 then printed where it stopped and the command that continues it). ``argv`` is the command line, for that
    command; without ``stop`` (handlers not installed) the run is not stopped by signals."""
    run_started = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    stop = StopSignals(ctx) if stop is None else stop
    check_device_flags(cfg, ctx)
    log = print if ctx.is_main else (lambda *a, **k: None)
    # Library notes (e.g. which SSD backend runs) from rank 0 only.
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING, format="%(message)s", stream=sys.stdout)
    train = cfg.train
    seed_everything(train.seed + ctx.rank)
    # cudnn.benchmark stays off: on an H200 its per-shape autotuning added about a minute to the first epoch of
    # a fresh process (docs/PERF.md) and no step-time gain was measured for this model.
    train_set, val_set, x4k = build_datasets(cfg)
    train_loader, sampler, val_loader = make_loaders(cfg, train_set, val_set, ctx.device, ctx.rank, ctx.world_size,
                                                     log=log)
    micro_per_epoch = len(train_loader)
    if micro_per_epoch < train.grad_accum:
        # Refused rather than stepping on the partial window: its gradient would be the sum of fewer micro-batches
        # each divided by --grad_accum (too small), and an effective batch larger than the epoch is a mistake.
        raise ConfigError(f"--grad_accum {train.grad_accum} needs at least {train.grad_accum} micro-batches per epoch, "
                          f"but {len(sampler)} training samples per rank at --batch_size {cfg.data.batch_size} give "
                          f"{micro_per_epoch} micro-batches: lower --grad_accum or --batch_size")
    steps_per_epoch = max(1, micro_per_epoch // train.grad_accum)
    if train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.steps_per_epoch)
    total_epochs = train.epochs
    if train.dry_run:
        steps_per_epoch, total_epochs = min(steps_per_epoch, train.dry_run_steps), 1
    trainer = Trainer(cfg, ctx, steps_per_epoch, total_epochs, log=log)
    trainer.start()

    from measures.quality import ssim_matlab      # the benchmark's exact SSIM, so validation matches it
    if trainer.matvlm_source is not None:
        # The MaTVLM start is function-preserving: the initialised hybrid must score what its source scores.
        source_psnr = trainer.evaluate(val_loader, model=trainer.matvlm_source)["psnr"]
        hybrid_psnr = trainer.evaluate(val_loader)["psnr"]
        trainer.matvlm_source = None
        log(f"MaTVLM start: val PSNR source {source_psnr:.3f} dB, initialised hybrid {hybrid_psnr:.3f} dB")
    writer = NullWriter()
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter
        log_dir = Path(train.log_dir) / run_name(cfg)
        log_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(log_dir / "config.json", cfg.to_json())
        writer = SummaryWriter(str(log_dir))
    params = sum(p.numel() for p in trainer.model.parameters())
    log(f"Thesis-VFI phase {train.phase} | {cfg.model.backbone_mode} | {params / 1e6:.2f}M params | "
        f"{ctx.world_size} x {ctx.device.type} | batch {cfg.data.batch_size}/rank x accum {train.grad_accum} | "
        f"{len(train_set)} train / {len(val_set)} val samples | {steps_per_epoch} steps/epoch x {total_epochs} epochs | "
        f"amp {trainer.amp_dtype or 'fp32'} | VGG term {'on' if trainer.loss_fn.vgg_enabled else 'off'}")
    if ctx.device.type == "cuda":
        log(f"training step: {trainer.step_mode}")

    progress = Progress(progress_enabled and ctx.is_main, steps_per_epoch * total_epochs, log)
    last_path = run_checkpoint_path(cfg, "last")
    saved = None                                 # (epoch, step) of the newest checkpoint of this run, where known
    if train.resume and last_path.exists() and \
            resolve_checkpoint(train.resume, train.ckpt_dir).resolve() == last_path.resolve():
        saved = (trainer.epoch, trainer.step)
    interrupted = None                           # (epoch index, steps into it) where a stop signal ended the run
    stop.arm()                                   # from here a signal stops at the next step boundary
    train_samples, train_seconds = 0, 0.0        # over this process's training loops, for summary.json
    # The first optimizer step of a process pays for kernel compilation (Triton SSD, cuDNN); the steady rate
    # (samples/s after it) is what a long run sees. Both go into summary.json.
    first_step_at, steady_samples, steady_seconds = None, 0, 0.0
    last_train_grid = -1                          # step of the latest training image grid
    for epoch in range(trainer.epoch, total_epochs):
        if stop.agreed():                      # a signal during the last evaluation or save
            interrupted = (epoch, 0)
            break
        if train.stop_after_epoch is not None and epoch >= train.stop_after_epoch:
            log(f"stopping after epoch {epoch} (--stop_after_epoch)")
            break
        trainer.set_backbone_frozen(epoch < train.freeze_backbone)
        if x4k is not None:
            gap = curriculum_max_gap(epoch, train.curriculum_T, train.curriculum)
            x4k.set_max_gap(gap)
            writer.add_scalar("curriculum/max_gap", gap, trainer.step)
        sampler.set_epoch(epoch)
        trainer.train_mode()
        sums = torch.zeros(len(LOSS_LOG_KEYS) + 1, dtype=torch.float64, device=ctx.device)   # loss terms, count
        progress.start_epoch(epoch, total_epochs, steps_per_epoch)
        started, samples, last_train, epoch_step = time.perf_counter(), 0, None, 0
        for micro, batch in enumerate(train_loader):
            if micro >= steps_per_epoch * train.grad_accum:
                break
            result = trainer.train_step(batch)
            samples += batch["img0"].shape[0]
            if first_step_at is not None:
                steady_samples += batch["img0"].shape[0] * ctx.world_size
            elif result["stepped"]:
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)   # once per process: the time must include the GPU work
                first_step_at = time.perf_counter()
                log(f"first optimizer step {first_step_at - run_started:.1f} s after start (data set, model, "
                    "kernel compilation and autotuning included)")
            if not result["skipped"]:
                sums += torch.stack([result["logs"][k].double().to(ctx.device) for k in LOSS_LOG_KEYS]
                                    + [torch.ones((), dtype=torch.float64, device=ctx.device)])
            if not result["stepped"]:
                continue
            progress.step()
            step, epoch_step = trainer.step, epoch_step + 1
            if step % train.log_every == 0 or step == 1:
                reduced = ctx.all_reduce_sum(sums.clone())
                count = max(1.0, reduced[-1].item())
                for tag, value in zip(LOSS_LOG_KEYS, reduced[:-1].tolist()):
                    writer.add_scalar(f"loss/{tag}", value / count, step)
                elapsed = time.perf_counter() - started
                writer.add_scalar("train/lr", trainer.current_lr(), step)
                writer.add_scalar("train/grad_norm", trainer.last_grad_norm, step)
                writer.add_scalar("train/samples_per_sec", samples * ctx.world_size / max(elapsed, 1e-9), step)
                progress.report(step, epoch_step, steps_per_epoch, reduced[-2].item() / count, trainer.current_lr(),
                                samples * ctx.world_size / max(elapsed, 1e-9))
                sums.zero_()
            # The captured step's tensors are overwritten by the next replay: keep a copy for the epoch-end grid.
            last_train = detached_copy(result) if trainer.graph_mode else result
            if ctx.is_main and (step % train.image_every == 0 or step == 1):
                img0, gt, img1 = result["inputs"][:3]
                writer.add_image("train/I0_pred_gt_I1", image_grid(img0, gt, img1, result["output"]), step)
                last_train_grid = step
            if stop.agreed():                  # Ctrl-C / SIGTERM on any rank: every rank stops after this step
                break
        progress.end_epoch()
        if stop.stop_signal and epoch_step < steps_per_epoch:
            interrupted = (epoch, epoch_step)  # part-way through an epoch: no evaluation, nothing saved
            break
        trainer.epoch = epoch + 1
        epoch_seconds = time.perf_counter() - started
        train_samples, train_seconds = train_samples + samples * ctx.world_size, train_seconds + epoch_seconds
        if first_step_at is not None:
            steady_seconds += time.perf_counter() - max(started, first_step_at)
        metrics = {}
        if trainer.epoch % train.eval_interval == 0 or trainer.epoch == total_epochs or train.dry_run:
            result = trainer.evaluate(val_loader, ssim_matlab)
            metrics = {k: result[k] for k in ("psnr", "ssim", "psnr_frame_average", "count")}
            improved = trainer.record_validation(metrics)
            for name in ("psnr", "ssim", "psnr_frame_average"):
                writer.add_scalar(f"val/{name}", metrics[name], trainer.step)
            if ctx.is_main and result["sample"] is not None:
                img0, gt, img1, out = result["sample"]
                writer.add_image("val/I0_pred_gt_I1", image_grid(img0, gt, img1, out), trainer.step)
            if ctx.is_main and last_train is not None and last_train_grid != trainer.step:
                # The training grid at each evaluation too, beside the validation grid of the same step.
                img0, gt, img1 = last_train["inputs"][:3]
                writer.add_image("train/I0_pred_gt_I1", image_grid(img0, gt, img1, last_train["output"]), trainer.step)
                last_train_grid = trainer.step
            log(f"epoch {trainer.epoch}: val PSNR {result['psnr']:.3f} dB (frame average {result['psnr_frame_average']:.3f}), "
                f"SSIM {result['ssim']:.4f} on {result['count']} samples{' | new best' if improved else ''} "
                f"| {samples * ctx.world_size / max(epoch_seconds, 1e-9):.1f} samples/s")
        else:
            improved = False
        trainer.save(improved, metrics)
        saved = (trainer.epoch, trainer.step)
    if interrupted is not None:
        writer.close() if hasattr(writer, "close") else None
        if ctx.is_main:
            sys.stderr.write(stop_line(cfg, trainer, stop.stop_signal, interrupted, steps_per_epoch, total_epochs,
                                       saved, last_path, argv, ctx) + "\n")
        return 130
    writer.close() if hasattr(writer, "close") else None
    if ctx.enabled:   # gradient averaging keeps ranks in lock-step: same steps, identical weights and EMA everywhere
        weights = ctx.all_gather_object(fingerprint(p for p in trainer.model.parameters()))
        line = (f"optimizer steps per rank: {ctx.all_gather_object(trainer.step)}; weights identical on all ranks: "
                f"{'yes' if len(set(weights)) == 1 else 'NO ' + str(weights)}")
        if trainer.ema is not None:
            shadows = ctx.all_gather_object(fingerprint(trainer.ema.state_dict().values()))
            line += f"; EMA identical on all ranks: {'yes' if len(set(shadows)) == 1 else 'NO ' + str(shadows)}"
        log(line)
    peak = torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else None
    peak = max(ctx.all_gather_object(peak)) if peak is not None else None      # the fullest rank
    if ctx.is_main:
        summary = run_summary(cfg, trainer, params, train_samples, train_seconds, peak,
                              time.perf_counter() - run_started,
                              None if first_step_at is None else first_step_at - run_started,
                              steady_samples / steady_seconds if steady_seconds > 0 else None)
        summary_path = Path(train.log_dir) / run_name(cfg) / "summary.json"
        try:
            atomic_write_text(summary_path, json.dumps(summary, indent=2))
        except OSError as error:   # a report, not the run's work (checkpoints are written); the ranks still meet below
            sys.stderr.write(f"train.py: warning: could not write {summary_path}: {error}\n")
    log(f"done: {trainer.step} steps, best val PSNR {trainer.best_metric:.3f} dB; checkpoints in {train.ckpt_dir}/"
        f"{run_name(cfg)}_{{last,best}}.pt, TensorBoard in {train.log_dir}/{run_name(cfg)}")
    # Every rank leaves together: without this the other ranks tore their process group down while rank 0 still
    # wrote the summary, and once in a full CPU suite rank 0 (gloo) then died of SIGABRT ("terminate called without
    # an active exception") after its work was done, failing the run (not reproduced in 8 runs alone or under load).
    # It struck again after this barrier (rank 1, stop 40): the wrapper outliving the run in reference cycles kept the
    # process group alive past destroy_process_group; shutdown_distributed now collects them first.
    # Nothing between the last collective and here may raise on rank 0 alone (the summary's write is guarded above),
    # or the other ranks would wait here for it.
    ctx.barrier()
    return 0


def stop_line(cfg: ExperimentConfig, trainer: Trainer, signal_number: int, interrupted: tuple[int, int],
              steps_per_epoch: int, total_epochs: int, saved: tuple[int, int] | None, last_path: Path,
              argv: list[str], ctx: DistributedContext) -> str:
    """The one line rank 0 prints when a signal stopped the run: where, the newest checkpoint, how to continue."""
    epoch, epoch_step = interrupted
    try:
        name = signal.Signals(signal_number).name
    except ValueError:
        name = f"signal {signal_number}"
    where = (f"epoch {epoch + 1}/{total_epochs}, step {trainer.step} ({epoch_step} of {steps_per_epoch} steps into "
             f"the epoch)" if epoch_step else f"the end of epoch {epoch}/{total_epochs}, step {trainer.step}")
    if not last_path.exists():
        return (f"train.py: stopped by {name} at {where}; no checkpoint yet (the first is written at the end of "
                f"epoch {trainer.epoch + 1}): run the same command to start again")
    if saved is None:
        newest = f"last checkpoint {last_path}"
    else:
        lost = trainer.step - saved[1]
        newest = (f"last checkpoint {last_path} (end of epoch {saved[0]}, step {saved[1]}"
                  + (f"; the {lost} steps since are not saved and will be trained again)" if lost else ")"))
    return f"train.py: stopped by {name} at {where}; {newest}; continue with: " \
           f"{resume_command(argv, last_path.stem, ctx)}"


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when training ends, 2 for an error the user can fix (one line on stderr), 130 when Ctrl-C or
    SIGTERM stopped it (one line on stderr saying where, and how to continue)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = parse_train_argv(argv)              # bad flags: one line on stderr, exit status 2
    ctx = init_distributed()
    stop = StopSignals(ctx)
    try:
        with stop:
            return run(cfg, ctx, argv, progress_enabled=not args.no_progress, stop=stop)
    except KeyboardInterrupt:                       # during start-up, or a second Ctrl-C in the training loop
        if ctx.is_main:
            last = run_checkpoint_path(cfg, "last")
            where = (f"last checkpoint {last}; continue with: {resume_command(argv, last.stem, ctx)}" if last.exists()
                     else "no checkpoint was written: run the same command to start again")
            sys.stderr.write(f"train.py: interrupted during start-up; {where}\n" if not stop.armed
                             else f"train.py: stopped at once by a second signal; {where}\n")
        return 130
    except (ConfigError, DatasetError, CheckpointError, TrainingDiverged, FileNotFoundError) as error:
        if ctx.is_main:
            sys.stderr.write(f"train.py: error: {one_line(error)}\n")
        return 2
    finally:
        shutdown_distributed()
        stop.restore()


if __name__ == "__main__":
    sys.exit(main())
