"""From data sets to batches: the training and validation loaders and the samplers behind them.

    build_datasets / make_loaders    what ``train.py`` (and ``benchmark/bench_loader.py``) iterate over.
    curriculum_max_gap               the Phase-3 X4K frame gap allowed at each epoch.
    EpochSeededSampler + EpochSeededDataset   persistent workers whose random streams restart every epoch
                  from (seed, rank, epoch), so a run resumed at an epoch boundary draws what it would have.
    default_num_workers              the default worker count, capped at the CPU cores of one rank.
    ShardSampler, SameSizeBatchSampler + item_frame_sizes   validation: every sample once over all ranks, in
                  batches of one frame size each (full frames of mixed sizes stack, on any number of ranks).
    ignore_stop_signals              DataLoader workers leave Ctrl-C / SIGTERM to the main process.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, get_worker_info

from config import DEFAULT_NUM_WORKERS, ConfigError, ExperimentConfig
from dataset import MixedDataset, VimeoDataset, X4KDataset, image_size
from distributed import DistributedContext
from frame_cache import enable_frame_cache, frame_cache_budget

__all__ = [
    "CURRICULUM_GAPS",
    "curriculum_max_gap",
    "ShardSampler",
    "SameSizeBatchSampler",
    "item_frame_sizes",
    "EpochSeededSampler",
    "EpochSeededDataset",
    "default_num_workers",
    "STOP_SIGNALS",
    "ignore_stop_signals",
    "build_datasets",
    "make_loaders",
]

# The signals train.py turns into a clean stop after the current step (train.StopSignals); workers ignore them.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# --------------------------------------------------------------------------------------------------------
# Phase-3 curriculum: the X4K frame gap the training loop allows at each epoch (set_max_gap above applies it)
# --------------------------------------------------------------------------------------------------------
CURRICULUM_GAPS = (2, 4, 8, 16, 32)


def curriculum_max_gap(epoch: int, transition_epoch: int, enabled: bool, gaps: tuple[int, ...] = CURRICULUM_GAPS) -> int:
    """Largest X4K frame gap allowed at ``epoch`` (0-based).

    VFIMamba's curriculum (docs/DESIGN.md 1.6): keep Vimeo90K throughout and add X-TRAIN with growing motion. The
    exact published schedule is unverified; ours raises the cap through ``gaps`` in equal steps of
    ``transition_epoch / (len(gaps) - 1)`` epochs, so the full range is reached at ``transition_epoch``
    (``--curriculum_T``). Without the curriculum: the full range from the start.
    """
    if not enabled:
        return gaps[-1]
    stage = min(len(gaps) - 1, (epoch * (len(gaps) - 1)) // max(1, transition_epoch))
    return gaps[stage]


def item_frame_sizes(dataset: Dataset) -> list[tuple[int, int]]:
    """(height, width) of every item's frames, read from the first frame's header (a Vimeo-layout set, or a Subset
    of one): what :class:`SameSizeBatchSampler` groups by. The frames of one item share a size (checked on load)."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    if not hasattr(dataset, "frame_path"):
        raise TypeError(f"{type(dataset).__name__} has no frame_path(index, frame): cannot read its frame sizes")
    return [image_size(dataset.frame_path(index, 0)) for index in indices]


class SameSizeBatchSampler(Sampler[list[int]]):
    """Batches of at most ``batch_size`` of ``indices`` whose frames share one size, so the default collate can stack
    them whatever mix of sizes the set holds (a validation list of 176x144 and 640x272 clips). Sizes in order of first
    appearance, indices in their given order within a size; every index exactly once.

    Args:
        indices: the dataset indices to batch (a rank's shard), in order.
        sizes: (height, width) of every item of the dataset (:func:`item_frame_sizes`), indexed by dataset index.
        batch_size: the most items per batch.
    """

    def __init__(self, indices: Sequence[int], sizes: Sequence[tuple[int, int]], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        groups: dict[tuple[int, int], list[int]] = {}
        for index in indices:
            groups.setdefault(tuple(sizes[index]), []).append(int(index))
        self.batches = [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Wraps an index sampler and yields ``(epoch_seed, index)``; pair it with :class:`EpochSeededDataset`.

    ``epoch_seed`` is a pure function of (seed, rank, epoch), the epoch being the wrapped sampler's ``epoch``
    (``DistributedSampler.set_epoch``) or, for a sampler without one, the number of iterations begun. It rides
    with every index, so it reaches persistent workers in step with the indices themselves: samples of an
    abandoned epoch still queued in a worker keep their old seed.
    """

    def __init__(self, sampler: Sampler[int], seed: int, rank: int = 0):
        self.sampler = sampler
        self.seed = int(seed)
        self.rank = int(rank)
        self._iterations = 0

    def epoch_seed(self, epoch: int) -> int:
        """A seed below 2**62 (room to add a worker id) for ``epoch``."""
        words = np.random.SeedSequence([self.seed % 2**63, self.rank, int(epoch)]).generate_state(2, np.uint32)
        return (int(words[0]) << 30) ^ int(words[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = getattr(self.sampler, "epoch", self._iterations)
        self._iterations += 1
        seed = self.epoch_seed(epoch)
        for index in self.sampler:
            yield seed, int(index)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class EpochSeededDataset(Dataset):
    """Takes ``(epoch_seed, index)`` keys; in a DataLoader worker, reseeds torch's default generator (and
    Python's ``random``) with ``epoch_seed + worker_id`` at the first sample of each epoch.

    That restarts every worker's random stream at every epoch exactly as non-persistent workers would be
    seeded, but from (seed, rank, epoch) rather than from the main process's generator: persistent workers,
    a different worker count's start-up, or a run resumed at an epoch boundary all draw the same augmentations
    for the same (worker, epoch). Only for use inside DataLoader workers (in the main process it would reseed
    the caller's generator).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._current_seed: int | None = None  # per worker process: each holds its own copy of this object

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        seed, index = key
        if seed != self._current_seed:
            info = get_worker_info()
            if info is None:
                raise RuntimeError("EpochSeededDataset reseeds DataLoader workers; use the plain dataset with "
                                   "num_workers=0")
            torch.manual_seed(seed + info.id)
            random.seed(seed + info.id)
            self._current_seed = seed
        return self.dataset[index]


def default_num_workers(preferred: int, local_world_size: int = 1) -> tuple[int, int]:
    """``(workers, cores per rank)``: ``preferred`` capped at the CPU cores this process may run on, shared
    evenly by the ranks on this machine (more workers than cores only adds switching, and PyTorch warns)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_rank = max(1, cores // max(1, local_world_size))
    return min(preferred, per_rank), per_rank


# --------------------------------------------------------------------------------------------------
# Validation shards, worker start, and the loaders themselves
# --------------------------------------------------------------------------------------------------
class ShardSampler(Sampler[int]):
    """Rank r evaluates indices r, r + W, r + 2W, ...: every sample exactly once over all ranks (unlike
    DistributedSampler, which pads with duplicates and would bias the averaged metric)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: Ctrl-C reaches the whole process group; the main process decides when to stop and
    shuts the workers down itself, so a worker must not die of the signal in the middle of a batch."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


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
    frame_cache.frame_cache_budget; none in dry runs); batches are the same with or without it.
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
                                  multiprocessing_context=context, worker_init_fn=ignore_stop_signals)
    else:
        train_loader = DataLoader(train_set, batch_size=data.batch_size, sampler=sampler, pin_memory=pin,
                                  drop_last=True)
    # Validation frames keep their size (no crop): a batch holds one size only, so a list mixing sizes stacks.
    val_batches = SameSizeBatchSampler(ShardSampler(len(val_set), ctx.rank, ctx.world_size).indices,
                                       item_frame_sizes(val_set), max(1, min(data.batch_size, 4)))
    val_loader = DataLoader(val_set, batch_sampler=val_batches, num_workers=workers, pin_memory=pin,
                            worker_init_fn=ignore_stop_signals if workers > 0 else None)
    return train_loader, sampler, val_loader
