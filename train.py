"""Train Thesis-VFI.

One launch path (STYLE.md): ``python train.py ...`` on one device, ``torchrun --nproc_per_node=N train.py ...`` on
several (multi-node through torchrun's rendezvous). Rank 0 alone prints, writes TensorBoard (``log/<exp_name>/``)
and saves ``ckpt/<exp_name>_last.pt`` / ``_best.pt``; validation PSNR is all-reduced across ranks first.

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
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from checkpoint import CheckpointError, atomic_write_text, run_name
from config import DEFAULT_NUM_WORKERS, ConfigError, ExperimentConfig, config_from_argv
from dataset import DatasetError, EpochSeededDataset, EpochSeededSampler, MixedDataset, SameSizeBatchSampler, \
    VimeoDataset, X4KDataset, curriculum_max_gap, default_num_workers, enable_frame_cache, frame_cache_budget, \
    item_frame_sizes
from distributed import DistributedContext, init_distributed, shutdown_distributed
from model.matvlm import MaTVLMIncompatible
from Trainer import Trainer, TrainingDiverged, seed_everything
from visualize import sample_grid

LOSS_TAGS = ("loss_lap", "loss_ter", "loss_vgg", "loss_flow_smooth", "loss_inter", "loss_total")   # total last


class ShardSampler(Sampler[int]):
    """Rank r evaluates indices r, r + W, r + 2W, ...: every sample exactly once over all ranks (unlike
    DistributedSampler, which pads with duplicates and would bias the averaged metric)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class NullWriter:
    """Stand-in for SummaryWriter on ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def build_datasets(cfg: ExperimentConfig):
    """(train set, validation set, the X4K part or None). Raises DatasetError before any training starts."""
    data, train = cfg.data, cfg.train
    vimeo = VimeoDataset(data.data_path, "train", crop_size=data.crop_size, augment=True)
    val = VimeoDataset(data.data_path, "test")
    x4k = None
    if train.phase == 3:
        x4k = X4KDataset(data.x4k_path, crop_size=data.crop_size, augment=True,
                         max_gap=curriculum_max_gap(0, train.curriculum_T, train.curriculum))
        train_set = MixedDataset(vimeo, x4k, data.mixed_ratio)
    else:
        train_set = vimeo
    if train.dry_run:
        val = Subset(val, range(min(len(val), 8)))
    return train_set, val, x4k


def make_loaders(cfg: ExperimentConfig, ctx: DistributedContext, train_set, val_set, cache_bytes: int | None = None):
    """(train loader, its DistributedSampler for set_epoch, validation loader).

    Training workers are persistent (no re-fork and re-prime every epoch): the Phase-3 gap reaches them through
    shared memory (X4KDataset.max_gap) and their random streams restart each epoch from (seed, rank, epoch)
    (EpochSeededSampler/EpochSeededDataset), so resuming at an epoch boundary draws the same samples. Frames of
    the training set are decoded once into an in-memory cache up to ``cache_bytes`` per rank (default:
    dataset.frame_cache_budget; none in dry runs); batches are the same with or without it.
    """
    data = cfg.data
    log = print if ctx.is_main else (lambda *a, **k: None)
    pin = ctx.device.type == "cuda"
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    capped, cores_per_rank = default_num_workers(DEFAULT_NUM_WORKERS, local_world_size)
    if cfg.train.dry_run and ctx.device.type == "cpu":
        workers = 0
    elif data.num_workers is None:
        workers = capped
        if capped < DEFAULT_NUM_WORKERS:
            log(f"DataLoader: {capped} workers per process (the default {DEFAULT_NUM_WORKERS}, capped at the "
                f"{cores_per_rank} CPU cores available per process; --num_workers overrides)")
    else:
        workers = data.num_workers
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    if len(sampler) < data.batch_size:
        raise ConfigError(f"--batch_size {data.batch_size} is larger than the {len(sampler)} training samples per "
                          f"rank in {data.data_path}")
    if cache_bytes is None:
        cache_bytes = 0 if cfg.train.dry_run else frame_cache_budget(local_world_size)
    # Workers share the cache copy-on-write only when forked; spawned ones would each unpickle a copy. Python 3.14
    # starts workers with "forkserver" by default on Linux, so the training loader asks for "fork" where it exists.
    fork = "fork" in torch.multiprocessing.get_all_start_methods()
    cached = cache_bytes > 0 and (workers == 0 or fork)
    if cached:
        cache = enable_frame_cache(train_set, cache_bytes, threads=cores_per_rank)
        if len(cache):
            log(f"decoded-frame cache: {cache.describe()}")
    elif cache_bytes > 0:
        log("decoded-frame cache: off (this platform cannot fork DataLoader workers, and only forked workers share "
            "one copy); frames are decoded per sample")
    if workers > 0:
        context = "fork" if cached and torch.multiprocessing.get_start_method() != "fork" else None
        train_loader = DataLoader(EpochSeededDataset(train_set), batch_size=data.batch_size,
                                  sampler=EpochSeededSampler(sampler, cfg.train.seed, ctx.rank), num_workers=workers,
                                  pin_memory=pin, drop_last=True, persistent_workers=True,
                                  multiprocessing_context=context)
    else:
        train_loader = DataLoader(train_set, batch_size=data.batch_size, sampler=sampler, pin_memory=pin,
                                  drop_last=True)
    # Validation frames keep their size (no crop): a batch holds one size only, so a list mixing sizes stacks.
    val_batches = SameSizeBatchSampler(ShardSampler(len(val_set), ctx.rank, ctx.world_size).indices,
                                       item_frame_sizes(val_set), max(1, min(data.batch_size, 4)))
    val_loader = DataLoader(val_set, batch_sampler=val_batches, num_workers=workers, pin_memory=pin)
    return train_loader, sampler, val_loader


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


def run(cfg: ExperimentConfig, ctx: DistributedContext) -> None:
    run_started = time.perf_counter()
    check_device_flags(cfg, ctx)
    log = print if ctx.is_main else (lambda *a, **k: None)
    # Library notes (e.g. which SSD backend runs) from rank 0 only.
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING, format="%(message)s", stream=sys.stdout)
    train = cfg.train
    seed_everything(train.seed + ctx.rank)
    # cudnn.benchmark stays off: on an H200 its per-shape autotuning added about a minute to the first epoch of
    # a fresh process (docs/PERF.md) and no step-time gain was measured for this model.
    train_set, val_set, x4k = build_datasets(cfg)
    train_loader, sampler, val_loader = make_loaders(cfg, ctx, train_set, val_set)
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

    from benchmark.metrics import ssim_matlab      # the benchmark's exact SSIM, so validation matches it
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

    from tqdm import tqdm
    train_samples, train_seconds = 0, 0.0        # over this process's training loops, for summary.json
    # The first optimizer step of a process pays for kernel compilation (Triton SSD, cuDNN); the steady rate
    # (samples/s after it) is what a long run sees. Both go into summary.json.
    first_step_at, steady_samples, steady_seconds = None, 0, 0.0
    last_train_grid = -1                          # step of the latest training image grid
    for epoch in range(trainer.epoch, total_epochs):
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
        sums = torch.zeros(len(LOSS_TAGS) + 1, dtype=torch.float64, device=ctx.device)   # loss terms, count
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{total_epochs}", disable=not ctx.is_main,
                   dynamic_ncols=True, leave=False)
        started, samples, last_train = time.perf_counter(), 0, None
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
                sums += torch.stack([result["logs"][k].double().to(ctx.device) for k in LOSS_TAGS]
                                    + [torch.ones((), dtype=torch.float64, device=ctx.device)])
            if not result["stepped"]:
                continue
            bar.update(1)
            step = trainer.step
            if step % train.log_every == 0 or step == 1:
                reduced = ctx.all_reduce_sum(sums.clone())
                count = max(1.0, reduced[-1].item())
                for tag, value in zip(LOSS_TAGS, reduced[:-1].tolist()):
                    writer.add_scalar(f"loss/{tag}", value / count, step)
                elapsed = time.perf_counter() - started
                writer.add_scalar("train/lr", trainer.current_lr(), step)
                writer.add_scalar("train/grad_norm", trainer.last_grad_norm, step)
                writer.add_scalar("train/samples_per_sec", samples * ctx.world_size / max(elapsed, 1e-9), step)
                bar.set_postfix(loss=f"{reduced[-2].item() / count:.4f}", lr=f"{trainer.current_lr():.2e}")
                sums.zero_()
            # The captured step's tensors are overwritten by the next replay: keep a copy for the epoch-end grid.
            last_train = detached_copy(result) if trainer.graph_mode else result
            if ctx.is_main and (step % train.image_every == 0 or step == 1):
                img0, gt, img1, _ = result["inputs"]
                writer.add_image("train/I0_pred_gt_I1", image_grid(img0, gt, img1, result["output"]), step)
                last_train_grid = step
        bar.close()
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
                img0, gt, img1, _ = last_train["inputs"]
                writer.add_image("train/I0_pred_gt_I1", image_grid(img0, gt, img1, last_train["output"]), trainer.step)
                last_train_grid = trainer.step
            log(f"epoch {trainer.epoch}: val PSNR {result['psnr']:.3f} dB (frame average {result['psnr_frame_average']:.3f}), "
                f"SSIM {result['ssim']:.4f} on {result['count']} samples{' | new best' if improved else ''} "
                f"| {samples * ctx.world_size / max(epoch_seconds, 1e-9):.1f} samples/s")
        else:
            improved = False
        trainer.save(improved, metrics)
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
        atomic_write_text(Path(train.log_dir) / run_name(cfg) / "summary.json", json.dumps(summary, indent=2))
    log(f"done: {trainer.step} steps, best val PSNR {trainer.best_metric:.3f} dB; checkpoints in {train.ckpt_dir}/"
        f"{run_name(cfg)}_{{last,best}}.pt, TensorBoard in {train.log_dir}/{run_name(cfg)}")


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_argv(argv)                    # bad flags: one line on stderr, exit status 2
    ctx = init_distributed()
    try:
        run(cfg, ctx)
        return 0
    except (ConfigError, DatasetError, CheckpointError, MaTVLMIncompatible, TrainingDiverged, FileNotFoundError) as error:
        if ctx.is_main:
            sys.stderr.write(f"train.py: error: {one_line(error)}\n")
        return 2
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
