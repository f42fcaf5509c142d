"""Train Thesis-VFI.

One launch path (STYLE.md): ``python train.py ...`` on one device, ``torchrun --nproc_per_node=N train.py ...`` on
several (multi-node through torchrun's rendezvous). Rank 0 alone prints, writes TensorBoard (``log/<exp_name>/``)
and saves ``ckpt/<exp_name>_last.pt`` / ``_best.pt``; validation PSNR is all-reduced across ranks first.

    python train.py --phase 1 --data_path /data/vimeo_triplet --batch_size 4 --exp_name phase1_hybrid
    python train.py --phase 2 --data_path ... --resume phase1_hybrid_best --freeze_backbone 50 --exp_name p2
    python train.py --help                      # every flag, with the phase preset defaults
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from checkpoint import CheckpointError, atomic_save, checkpoint_config, load_checkpoint, resolve_checkpoint, \
    summarize_weight_report
from config import ConfigError, ExperimentConfig, config_from_argv
from dataset import DatasetError, MixedDataset, VimeoDataset, X4KDataset
from distributed import DistributedContext, init_distributed, shutdown_distributed
from model.matvlm import MaTVLMIncompatible
from Trainer import Trainer, TrainingDiverged, capture_rng_state, curriculum_max_gap, restore_rng_state, seed_everything
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


def make_loaders(cfg: ExperimentConfig, ctx: DistributedContext, train_set, val_set):
    data = cfg.data
    pin = ctx.device.type == "cuda"
    workers = 0 if cfg.train.dry_run and ctx.device.type == "cpu" else data.num_workers
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    if len(sampler) < data.batch_size:
        raise ConfigError(f"--batch_size {data.batch_size} is larger than the {len(sampler)} training samples per "
                          f"rank in {data.data_path}")
    # Workers are not persistent: the Phase-3 curriculum changes the X4K gap between epochs.
    train_loader = DataLoader(train_set, batch_size=data.batch_size, sampler=sampler, num_workers=workers,
                              pin_memory=pin, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=max(1, min(data.batch_size, 4)),
                            sampler=ShardSampler(len(val_set), ctx.rank, ctx.world_size), num_workers=workers,
                            pin_memory=pin)
    return train_loader, sampler, val_loader


def one_line(error: BaseException) -> str:
    """A DataLoader worker wraps errors with its traceback; keep only the original message."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.rsplit(f"{type(error).__name__}: ", 1)[-1]
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def start_state(cfg: ExperimentConfig, trainer: Trainer, ctx: DistributedContext, log) -> None:
    """Apply --resume (exact continuation or warm start) or --init_from_attn; refuse to clobber a run."""
    train = cfg.train
    last_path = Path(train.ckpt_dir) / f"{cfg.experiment_name}_last.pt"
    if train.resume:
        path = resolve_checkpoint(train.resume, train.ckpt_dir)
        payload = load_checkpoint(path)
        if trainer.is_same_run(payload):
            trainer.resume(payload, str(path))
            rng = payload.get("rng") or []
            if len(rng) == ctx.world_size:
                restore_rng_state(rng[ctx.rank])
            else:
                log(f"warning: {path} was saved by {len(rng)} rank(s), this run has {ctx.world_size}: "
                    "random streams are reseeded, so the continuation is not bit-identical")
            log(f"resumed {path}: epoch {trainer.epoch}, step {trainer.step}, best PSNR {trainer.best_metric:.3f}")
        else:
            saved = checkpoint_config(payload, path)
            report = trainer.warm_start(payload)
            log(f"warm start from {path} (experiment {saved.experiment_name!r}, phase {saved.train.phase}): "
                f"{summarize_weight_report(report)}")
    elif train.init_from_attn:
        from model import build_model
        from model.matvlm import init_hybrid_from_attention
        path = resolve_checkpoint(train.init_from_attn, train.ckpt_dir)
        payload = load_checkpoint(path)
        source_cfg = checkpoint_config(payload, path)
        if source_cfg.model.backbone_mode != "gated_attn_only":
            raise MaTVLMIncompatible(f"--init_from_attn needs a gated_attn_only checkpoint; {path} is "
                                     f"{source_cfg.model.backbone_mode}")
        source = build_model(source_cfg.model)
        source.load_state_dict(payload.get("ema") or payload["model"])
        report = init_hybrid_from_attention(trainer.model, source)
        log(f"MaTVLM init from {path}: copied {len(report['copied'])} tensors, mapped {len(report['mapped'])} "
            f"attention->Mamba2 branches, {len(report['new'])} new tensors")
    elif last_path.exists() and not train.dry_run:
        raise ConfigError(f"{last_path} exists: continue it with --resume {cfg.experiment_name}_last, or choose "
                          "another --exp_name")


def run(cfg: ExperimentConfig, ctx: DistributedContext) -> None:
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
    steps_per_epoch = max(1, micro_per_epoch // train.grad_accum)
    if train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.steps_per_epoch)
    total_epochs = train.epochs
    if train.dry_run:
        steps_per_epoch, total_epochs = min(steps_per_epoch, train.dry_run_steps), 1
    trainer = Trainer(cfg, ctx, steps_per_epoch, total_epochs, log=log)
    start_state(cfg, trainer, ctx, log)

    from benchmark.metrics import ssim_matlab      # the benchmark's exact SSIM, so validation matches it
    writer = NullWriter()
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter
        log_dir = Path(train.log_dir) / cfg.experiment_name
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "config.json").write_text(cfg.to_json())
        writer = SummaryWriter(str(log_dir))
    params = sum(p.numel() for p in trainer.model.parameters())
    log(f"Thesis-VFI phase {train.phase} | {cfg.model.backbone_mode} | {params / 1e6:.2f}M params | "
        f"{ctx.world_size} x {ctx.device.type} | batch {cfg.data.batch_size}/rank x accum {train.grad_accum} | "
        f"{len(train_set)} train / {len(val_set)} val samples | {steps_per_epoch} steps/epoch x {total_epochs} epochs | "
        f"amp {trainer.amp_dtype or 'fp32'} | VGG term {'on' if trainer.loss_fn.vgg_enabled else 'off'}")

    from tqdm import tqdm
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
        started, samples = time.perf_counter(), 0
        for micro, batch in enumerate(train_loader):
            if micro >= steps_per_epoch * train.grad_accum:
                break
            result = trainer.train_step(batch)
            samples += batch["img0"].shape[0]
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
            if step % train.image_every == 0 or step == 1:
                img0, gt, img1, _ = result["inputs"]
                out = result["output"]
                writer.add_image("train/I0_pred_gt_I1", sample_grid(img0, out.pred.detach(), gt, img1,
                                                                     None if out.flow is None else out.flow.detach(),
                                                                     out.mask.detach()), step)
        bar.close()
        trainer.epoch = epoch + 1
        epoch_seconds = time.perf_counter() - started
        metrics = {}
        if trainer.epoch % train.eval_interval == 0 or trainer.epoch == total_epochs or train.dry_run:
            result = trainer.evaluate(val_loader, ssim_matlab)
            metrics = {k: result[k] for k in ("psnr", "ssim", "psnr_frame_average")}
            for name, value in metrics.items():
                writer.add_scalar(f"val/{name}", value, trainer.step)
            if result["sample"] is not None:
                img0, gt, img1, out = result["sample"]
                writer.add_image("val/I0_pred_gt_I1", sample_grid(img0, out.pred, gt, img1, out.flow, out.mask),
                                 trainer.step)
            improved = result["psnr"] > trainer.best_metric
            if improved:
                trainer.best_metric = result["psnr"]
            log(f"epoch {trainer.epoch}: val PSNR {result['psnr']:.3f} dB (frame average {result['psnr_frame_average']:.3f}), "
                f"SSIM {result['ssim']:.4f} on {result['count']} samples{' | new best' if improved else ''} "
                f"| {samples * ctx.world_size / max(epoch_seconds, 1e-9):.1f} samples/s")
        else:
            improved = False
        rng_states = ctx.all_gather_object(capture_rng_state())
        if ctx.is_main:
            payload = trainer.state_payload(rng_states, metrics)
            atomic_save(payload, Path(train.ckpt_dir) / f"{cfg.experiment_name}_last.pt")
            if improved:
                atomic_save(payload, Path(train.ckpt_dir) / f"{cfg.experiment_name}_best.pt")
        ctx.barrier()
    writer.close() if hasattr(writer, "close") else None
    if ctx.enabled:   # DDP keeps ranks in lock-step: same optimizer steps and identical weights on every rank
        checksum = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
        checksums = ctx.all_gather_object(checksum)
        log(f"optimizer steps per rank: {ctx.all_gather_object(trainer.step)}; weights identical on all ranks: "
            f"{'yes' if len(set(checksums)) == 1 else 'NO ' + str(checksums)}")
    log(f"done: {trainer.step} steps, best val PSNR {trainer.best_metric:.3f} dB; checkpoints in {train.ckpt_dir}/"
        f"{cfg.experiment_name}_{{last,best}}.pt, TensorBoard in {train.log_dir}/{cfg.experiment_name}")


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
