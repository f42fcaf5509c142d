"""How frames reach the model: the decoded-frame cache, the samplers, the training and validation loaders.

    build_datasets / make_loaders    what ``train.py`` (and ``benchmark/bench_loader.py``) iterate over.
    curriculum_max_gap               the Phase-3 X4K frame gap allowed at each epoch.
    EpochSeededSampler + EpochSeededDataset   persistent workers whose random streams restart every epoch
                  from (seed, rank, epoch), so a run resumed at an epoch boundary draws what it would have.
    default_num_workers              the default worker count, capped at the CPU cores of one rank.
    ShardSampler, SameSizeBatchSampler + item_frame_sizes   validation: every sample once over all ranks, in
                  batches of one frame size each (full frames of mixed sizes stack, on any number of ranks).
    start_worker                     worker start: Ctrl-C / SIGTERM are left to the main process.
    FrameCache            one flat read-only uint8 buffer of BGR frames, looked up by file path.
    enable_frame_cache    fill one cache from every Vimeo/X4K part of a training set and attach it to them.
    frame_cache_budget    how many bytes one rank may cache (a share of the available memory, capped).

A dataset with a cache yields the same samples, bit for bit, as one without (:func:`make_loaders` builds it).
"""

from __future__ import annotations

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, get_worker_info

from config import DEFAULT_NUM_WORKERS, ConfigError, ExperimentConfig, usable_cpus
from dataset import (DatasetError, MixedDataset, VimeoDataset, X4KDataset, image_size, png_header_size, read_bgr,
                     triplet_parts)

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
    "start_worker",
    "build_datasets",
    "make_loaders",
    "FrameCache",
    "enable_frame_cache",
    "frame_cache_budget",
]

# The signals train.py turns into a clean stop after the current step (train.StopSignals); workers ignore them.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# --------------------------------------------------------------------------------------------------------
# The decoded-frame cache: training frames decoded once, before the DataLoader's workers fork
# --------------------------------------------------------------------------------------------------------
class FrameCache:
    """Decoded frames in memory: one flat read-only uint8 buffer, looked up by file path.

    Frames are kept exactly as :func:`cv2.imread` returns them (BGR, (H, W, 3)), so a dataset that reads from
    the cache yields the same samples, bit for bit, as one that decodes the files. Fill it in the main process
    before DataLoader workers start: forked workers share its pages copy-on-write and never write to them
    (the buffer is read-only), so N workers cost one copy. With the "spawn"/"forkserver" start methods every
    worker would receive its own copy instead, so :func:`make_loaders` forks the training loader's workers when
    it builds a cache (also where the default start method is another, as from Python 3.14 on Linux).

    Args:
        index: path -> (offset into buffer, height, width).
        buffer: the frames, flat, uint8.
        candidates: distinct frames the cache was asked to hold (the ones that fit are in ``index``).
        fill_seconds: wall time spent decoding.
    """

    def __init__(self, index: dict[str, tuple[int, int, int]], buffer: np.ndarray, candidates: int,
                 fill_seconds: float = 0.0):
        self._index = index
        self._buffer = buffer
        self._buffer.flags.writeable = False  # a stray in-place edit would corrupt every later sample
        self.candidates = candidates
        self.fill_seconds = fill_seconds

    @classmethod
    def fill(cls, paths: Sequence[str], budget_bytes: int, threads: int = 1) -> "FrameCache":
        """Decode ``paths`` (each distinct path once, in order) until the next frame would exceed the budget.

        Sizes come from the PNG headers, so the buffer is allocated once; files that are not PNGs are left
        out (they are decoded when loaded). Decoding runs on ``threads`` threads (cv2 releases the GIL).
        Hard links to one file (tools/make_corpus.py links every triplet's frames to one copy of each frame) are
        decoded and stored once and found under each of their paths.
        An unreadable file raises :class:`DatasetError` naming it, before any training starts.
        """
        started = time.perf_counter()
        unique = list(dict.fromkeys(os.fspath(p) for p in paths))
        chosen: list[tuple[str, int, int, int]] = []
        aliases: dict[str, str] = {}                       # a hard link -> the path its frame is stored under
        by_inode: dict[tuple[int, int], str] = {}
        total = 0
        for path in unique if budget_bytes > 0 else ():
            try:
                status = os.stat(path)
            except OSError:
                status = None                              # missing: png_header_size names it
            if status is not None and status.st_nlink > 1:
                first = by_inode.setdefault((status.st_dev, status.st_ino), path)
                if first != path:
                    aliases[path] = first
                    continue
            size = png_header_size(path)
            if size is None:
                continue
            nbytes = size[0] * size[1] * 3
            if total + nbytes > budget_bytes:
                break
            chosen.append((path, total, size[0], size[1]))
            total += nbytes
        buffer = np.empty(total, dtype=np.uint8)

        def decode(entry: tuple[str, int, int, int]) -> None:
            path, offset, height, width = entry
            bgr = read_bgr(path)
            if bgr.shape != (height, width, 3):
                raise DatasetError(f"decoded size {bgr.shape[1]}x{bgr.shape[0]} differs from the PNG header's "
                                   f"{width}x{height}: {path}")
            buffer[offset : offset + bgr.size] = bgr.reshape(-1)

        if len(chosen) > 1 and threads > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for _ in pool.map(decode, chosen):  # re-raises the first failure
                    pass
        else:
            for entry in chosen:
                decode(entry)
        index = {path: (offset, height, width) for path, offset, height, width in chosen}
        index.update({alias: index[first] for alias, first in aliases.items() if first in index})
        return cls(index, buffer, candidates=len(unique), fill_seconds=time.perf_counter() - started)

    def get(self, path: str) -> np.ndarray | None:
        """The cached BGR frame (H, W, 3) of ``path`` (a read-only view), or None if it is not cached."""
        entry = self._index.get(path)
        if entry is None:
            return None
        offset, height, width = entry
        return self._buffer[offset : offset + height * width * 3].reshape(height, width, 3)

    def __len__(self) -> int:
        """Paths served from memory (hard links to one stored frame count once each)."""
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return int(self._buffer.nbytes)

    def describe(self) -> str:
        return (f"{len(self)} of {self.candidates} frames, {self.nbytes / 2**30:.2f} GiB, "
                f"decoded in {self.fill_seconds:.1f} s")


def enable_frame_cache(dataset: Dataset, budget_bytes: int, threads: int = 1) -> FrameCache:
    """Decode the frames of every Vimeo/X4K part of ``dataset`` into one :class:`FrameCache` and attach it.

    Frames are taken in the parts' order (Vimeo before X4K in a MixedDataset) until ``budget_bytes`` is
    reached; the rest are decoded when loaded, as without a cache. Samples are identical either way.
    Call it in the main process before the DataLoader's workers start.
    """
    parts = triplet_parts(dataset)
    cache = FrameCache.fill([path for part in parts for path in part.frame_paths()], budget_bytes, threads)
    for part in parts:
        part.frame_cache = cache if len(cache) else None
    return cache


def _available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); 0 where it cannot be read (then nothing is cached)."""
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def frame_cache_budget(local_world_size: int = 1, cap_bytes: int = 8 * 2**30, fraction: float = 0.25) -> int:
    """Bytes of decoded frames one rank may cache: min(cap, fraction of available memory), split over the ranks
    of this machine (each rank holds its own copy).

    The 8 GiB cap bounds the start-up cost: filling it takes about 5 s on 16 cores with 1280x720 PNGs
    (about 25 ms per frame per core) and holds a small set (a few hundred triplets at 720p, ~24k frames of
    448x256) whole; larger sets are cached in part.
    """
    budget = min(cap_bytes, int(fraction * _available_memory_bytes()))
    return max(0, budget // max(1, local_world_size))


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
    per_rank = max(1, usable_cpus() // max(1, local_world_size))
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


def start_worker(worker_id: int) -> None:
    """DataLoader worker start: Ctrl-C reaches the whole process group; the main process decides when to stop and
    shuts the workers down itself, so a worker must not die of the signal in the middle of a batch.

    It must not call ``cv2.setNumThreads``: in a forked worker that deadlocks when the parent's OpenCV thread pool
    had been running (the frame cache decodes with OpenCV before the workers fork); measured here, a worker that
    called it hung in its first DIS flow, while one that did not ran."""
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
    if cfg.loss.flow_teacher > 0:
        # DIS pseudo-labels for the flow-teacher loss term, computed by the workers (training items only).
        for dataset in (vimeo, x4k):
            if dataset is not None:
                dataset.teacher_flow = True
    if cfg.model.flow_prior == "dis":
        # The pair's DIS flows both ways, where the prior model's flow estimator starts: every training and validation
        # item needs them (the model refuses a call without), so every part of both sets computes them.
        # --prior_from context: the training items' DIS with the frame around the crop (validation items are whole frames)
        for dataset in (vimeo, x4k, val):
            if dataset is not None:
                dataset.flow_prior = True
                dataset.prior_from_context = dataset is not val and cfg.data.prior_from == "context"
    if train.dry_run:
        val = Subset(val, range(min(len(val), 8)))
    return train_set, val, x4k


def make_loaders(cfg: ExperimentConfig, train_set, val_set, device: torch.device, rank: int = 0, world_size: int = 1,
                 log: Callable[..., None] = print, cache_bytes: int | None = None):
    """(train loader, its DistributedSampler for set_epoch, validation loader) of process ``rank`` of ``world_size``,
    batches pinned for ``device`` when it is a GPU; ``log`` reports the worker count and the cache (pass a no-op on
    every rank but the first).

    Training workers are persistent (no re-fork and re-prime every epoch): the Phase-3 gap reaches them through
    shared memory (X4KDataset.max_gap) and their random streams restart each epoch from (seed, rank, epoch)
    (EpochSeededSampler/EpochSeededDataset), so resuming at an epoch boundary draws the same samples. Frames of
    the training set are decoded once into an in-memory cache up to ``cache_bytes`` per rank (default:
    :func:`frame_cache_budget`; none in dry runs); batches are the same with or without it.
    """
    data = cfg.data
    pin = device.type == "cuda"
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    capped, cores_per_rank = default_num_workers(DEFAULT_NUM_WORKERS, local_world_size)
    if cfg.train.dry_run and device.type == "cpu":
        workers = 0
    elif data.num_workers is None:
        workers = capped
        if capped < DEFAULT_NUM_WORKERS:
            log(f"DataLoader: {capped} workers per process (the default {DEFAULT_NUM_WORKERS}, capped at the "
                f"{cores_per_rank} CPU cores available per process; --num_workers overrides)")
    else:
        workers = data.num_workers
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
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
                                  sampler=EpochSeededSampler(sampler, cfg.train.seed, rank), num_workers=workers,
                                  pin_memory=pin, drop_last=True, persistent_workers=True,
                                  multiprocessing_context=context, worker_init_fn=start_worker)
    else:
        train_loader = DataLoader(train_set, batch_size=data.batch_size, sampler=sampler, pin_memory=pin,
                                  drop_last=True)
    # Validation frames keep their size (no crop): a batch holds one size only, so a list mixing sizes stacks.
    val_batches = SameSizeBatchSampler(ShardSampler(len(val_set), rank, world_size).indices,
                                       item_frame_sizes(val_set), max(1, min(data.batch_size, 4)))
    val_loader = DataLoader(val_set, batch_sampler=val_batches, num_workers=workers, pin_memory=pin,
                            worker_init_fn=start_worker if workers > 0 else None)
    return train_loader, sampler, val_loader
