"""Samples/s of the training DataLoader exactly as ``train.py`` builds it (CPU only; no model runs).

The data sets come from ``loaders.build_datasets`` and the loaders from ``loaders.make_loaders``, so the numbers
include worker start-up, the decoded-frame cache, augmentation, collation and (on a CUDA machine) pinned
memory and the copy to the GPU. Epochs roll over as in training (``set_epoch``, the Phase-3 curriculum gap),
so persistent-worker and epoch-boundary costs are counted. Prints one line; ``--json`` writes it as well.

Compare the printed rate with the model's synthetic step rate (``benchmark/bench_model.py``): the loader keeps
the GPU fed when its samples/s is comfortably above the model's.

Examples:
    python benchmark/bench_loader.py --data_path data/sample_vimeo --batch_size 16
    python benchmark/bench_loader.py --data_path /data/bbb720 --batch_size 16 --num_workers 8 --cache_gib 0
    python benchmark/bench_loader.py --make_x4k /tmp/x4k_768 --clips 4 --frames 33 --size 768   # a fixture
    python benchmark/bench_loader.py --phase 3 --data_path data/sample_vimeo --x4k_path /tmp/x4k_768
    python benchmark/bench_loader.py --data_path data/corpus --flow_teacher     # what --flow_teacher costs
    python benchmark/bench_loader.py --data_path data/corpus --flow_prior       # what --flow_prior dis costs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint import atomic_write_text  # noqa: E402
from config import ConfigError, config_from_argv, usable_cpus  # noqa: E402
from dataset import DatasetError  # noqa: E402
from loaders import build_datasets, curriculum_max_gap, make_loaders  # noqa: E402


def write_synthetic_x4k(root: str, clips: int, frames: int, size: int, seed: int = 0) -> None:
    """An X4K1000FPS-layout fixture ``root/train/<type>/<clip>/NNNN.png``: a detailed texture panning diagonally.

    Fine detail and mild noise keep the PNGs about as costly to decode as camera footage of the same size.
    """
    rng = np.random.default_rng(seed)
    for clip in range(clips):
        folder = Path(root) / "train" / f"Type{clip % 2 + 1}" / f"clip_{clip:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        margin = 2 * frames + 8
        coarse = rng.random((size // 16 + 8, size // 16 + 8, 3)).astype(np.float32)
        texture = cv2.resize(coarse, (size + margin, size + margin), interpolation=cv2.INTER_CUBIC)
        texture += 0.15 * rng.random(texture.shape, dtype=np.float32)
        for number in range(frames):
            view = texture[number: number + size, 2 * number: 2 * number + size]
            grain = rng.normal(0.0, 0.01, view.shape).astype(np.float32)
            image = (np.clip(view + grain, 0, 1.15) / 1.15 * 255).astype(np.uint8)
            if not cv2.imwrite(str(folder / f"{number:04d}.png"), image):
                raise OSError(f"cannot write {folder / f'{number:04d}.png'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Samples/s of train.py's DataLoader (no model).")
    p.add_argument("--data_path", help="Vimeo90K-layout folder (as train.py --data_path)")
    p.add_argument("--x4k_path", default=None, help="X4K1000FPS folder (with --phase 3)")
    p.add_argument("--phase", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--crop_size", type=int, default=256)
    p.add_argument("--num_workers", type=int, default=None, help="default: train.py's default")
    p.add_argument("--cache_gib", type=float, default=None,
                   help="decoded-frame cache budget in GiB (0 disables; default: train.py's automatic budget)")
    p.add_argument("--batches", type=int, default=60, help="batches timed")
    p.add_argument("--warmup", type=int, default=10, help="batches before timing starts")
    p.add_argument("--curriculum", action="store_true", help="phase 3: change the X4K gap every epoch")
    p.add_argument("--flow_teacher", action="store_true",
                   help="items also carry DIS teacher flows, as for train.py --flow_teacher (phases 2/3)")
    p.add_argument("--flow_prior", action="store_true",
                   help="items also carry the DIS pair flows of a prior model, as for train.py --flow_prior dis "
                        "(phases 2/3)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--make_x4k", default=None, metavar="DIR", help="write a synthetic X4K fixture and exit")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=768)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_x4k:
        write_synthetic_x4k(args.make_x4k, args.clips, args.frames, args.size)
        print(f"wrote {args.clips} clips x {args.frames} frames of {args.size}x{args.size} to {args.make_x4k}")
        return 0
    if not args.data_path:
        print("bench_loader.py: error: --data_path is required", file=sys.stderr)
        return 2
    train_argv = ["--phase", str(args.phase), "--data_path", args.data_path, "--batch_size", str(args.batch_size),
                  "--crop_size", str(args.crop_size), "--model_size", "tiny", "--epochs", "1000"]
    if args.num_workers is not None:
        train_argv += ["--num_workers", str(args.num_workers)]
    if args.flow_teacher:
        train_argv += ["--flow_teacher", "0.01"]          # any weight > 0: the loader only asks whether it is on
    if args.flow_prior:
        train_argv += ["--flow_prior", "dis"]
    if args.x4k_path:
        train_argv += ["--x4k_path", args.x4k_path]
        if args.curriculum:
            train_argv += ["--curriculum", "--curriculum_T", "8"]
    cfg = config_from_argv(train_argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        started = time.perf_counter()
        train_set, val_set, x4k = build_datasets(cfg)
        extra = {} if args.cache_gib is None else {"cache_bytes": int(args.cache_gib * 2**30)}
        loader, sampler, _ = make_loaders(cfg, train_set, val_set, device, **extra)
        setup_s = time.perf_counter() - started

        total = args.warmup + args.batches
        seen, epoch, timed_from, first_batch_s = 0, 0, None, None
        while seen < total:
            sampler.set_epoch(epoch)
            if x4k is not None:
                x4k.set_max_gap(curriculum_max_gap(epoch, cfg.train.curriculum_T, cfg.train.curriculum))
            for batch in loader:
                if device.type == "cuda":   # what the trainer does first: the copy to the GPU
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                seen += 1
                if first_batch_s is None:
                    first_batch_s = time.perf_counter() - started
                if seen == args.warmup:
                    timed_from = time.perf_counter()
                if seen >= total:
                    break
            epoch += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if timed_from is None:   # --warmup 0
            timed_from = started + setup_s
        rate = args.batches * args.batch_size / (time.perf_counter() - timed_from)
    except (ConfigError, DatasetError) as error:
        print(f"bench_loader.py: error: {error}", file=sys.stderr)
        return 2
    workers = loader.num_workers
    result = {
        "data_path": os.path.abspath(args.data_path), "x4k_path": args.x4k_path, "phase": args.phase,
        "batch_size": args.batch_size, "crop_size": args.crop_size, "num_workers": workers,
        "flow_teacher": args.flow_teacher, "flow_prior": args.flow_prior,
        "persistent_workers": bool(getattr(loader, "persistent_workers", False)),
        "cache_gib": args.cache_gib, "cpu_cores": usable_cpus(), "device": device.type,
        "setup_s": round(setup_s, 2), "first_batch_s": round(first_batch_s or 0.0, 2), "epochs_begun": epoch,
        "samples_per_s": round(rate, 1), "batches": args.batches,
    }
    print(f"bench_loader: {Path(args.data_path).name}{' + ' + Path(args.x4k_path).name if args.x4k_path else ''} "
          f"| phase {args.phase} | batch {args.batch_size} | crop {args.crop_size}"
          f"{' | DIS teacher flows' if args.flow_teacher else ''}{' | DIS prior flows' if args.flow_prior else ''} "
          f"| {workers} workers"
          f"{' (persistent)' if result['persistent_workers'] else ''} | {result['cpu_cores']} cores | "
          f"setup {setup_s:.1f} s, first batch {result['first_batch_s']:.1f} s | "
          f"{rate:.1f} samples/s over {args.batches} batches ({epoch} epochs begun)", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
