"""Decoded training frames held in memory, filled once before the DataLoader's workers fork.

    FrameCache            one flat read-only uint8 buffer of BGR frames, looked up by file path.
    enable_frame_cache    fill one cache from every Vimeo/X4K part of a training set and attach it to them.
    frame_cache_budget    how many bytes one rank may cache (a share of the available memory, capped).

A dataset with a cache yields the same samples, bit for bit, as one without (``loaders.make_loaders`` builds it).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from dataset import DatasetError, png_header_size, read_bgr, triplet_parts

__all__ = ["FrameCache", "enable_frame_cache", "frame_cache_budget"]


class FrameCache:
    """Decoded frames in memory: one flat read-only uint8 buffer, looked up by file path.

    Frames are kept exactly as :func:`cv2.imread` returns them (BGR, (H, W, 3)), so a dataset that reads from
    the cache yields the same samples, bit for bit, as one that decodes the files. Fill it in the main process
    before DataLoader workers start: forked workers share its pages copy-on-write and never write to them
    (the buffer is read-only), so N workers cost one copy. With the "spawn"/"forkserver" start methods every
    worker would receive its own copy instead, so ``loaders.make_loaders`` forks the training loader's workers when
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
