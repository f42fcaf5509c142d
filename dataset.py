"""Training and evaluation datasets for video frame interpolation.

Every dataset returns one dict per sample::

    {
        "img0": uint8 tensor (3, h, w),   # first input frame, RGB, time 0
        "gt":   uint8 tensor (3, h, w),   # target frame, RGB, time t
        "img1": uint8 tensor (3, h, w),   # second input frame, RGB, time 1
        "t":    float32 tensor (),        # time of gt between img0 (0) and img1 (1)
    }

Vimeo90K test items also carry ``"name": str`` (e.g. ``"00001/0001"``); the default collate turns it
into a list of strings. Frames stay uint8 so DataLoader transfers are small; the trainer converts them
to float on the device.

Datasets:
    VimeoDataset  Vimeo90K triplets (``tri_trainlist.txt`` / ``tri_testlist.txt``, ``sequences/``).
    X4KDataset    X4K1000FPS training clips (``train/<type>/<clip>/0000.png ..``), arbitrary t.
    MixedDataset  Deterministic A:B interleaving of a Vimeo and an X4K dataset (Phase 3).

Randomness only comes from torch's default generator (``torch.randint`` / ``torch.randperm``), which
``torch.utils.data.DataLoader`` seeds differently in every worker, so results are reproducible with
``torch.manual_seed`` and never repeat across workers.

Bad input raises :class:`DatasetError` with a one-line message naming the file or folder at fault.
Cheap checks (folders, list files) happen in ``__init__``; unreadable images are found when loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

__all__ = [
    "DatasetError",
    "AugmentationParams",
    "draw_augmentation",
    "center_crop_params",
    "apply_augmentation",
    "sample_indices",
    "VimeoDataset",
    "X4KDataset",
    "MixedDataset",
    "VIMEO_TRAIN_LIST",
    "VIMEO_TEST_LIST",
    "VIMEO_FRAME_NAMES",
]

VIMEO_TRAIN_LIST = "tri_trainlist.txt"
VIMEO_TEST_LIST = "tri_testlist.txt"
VIMEO_FRAME_NAMES = ("im1.png", "im2.png", "im3.png")  # im2 is the middle frame (t = 0.5)
_VIMEO_LINE_PATTERN = re.compile(r"^\d{5}/\d{4}$")
_X4K_FRAME_PATTERN = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


class DatasetError(ValueError):
    """A data set on disk is missing, malformed or unreadable.

    The message is always a single line and names the file or folder at fault, so it reads well in
    a log line or a launcher's error summary.
    """

    def __init__(self, message: str):
        super().__init__(str(message).replace("\r", " ").replace("\n", " "))


# --------------------------------------------------------------------------------------------------
# Random draws (torch's default generator: seeded per DataLoader worker)
# --------------------------------------------------------------------------------------------------
def _random_int(low: int, high: int, generator: torch.Generator | None = None) -> int:
    """Uniform integer in the closed range [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _random_bool(generator: torch.Generator | None = None) -> bool:
    return _random_int(0, 1, generator) == 1


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentationParams:
    """One set of augmentation choices, applied identically to the three frames of a sample.

    Attributes:
        top, left:         top-left corner of the crop window in the original frame.
        crop_height/width: crop window size (the full frame size means no crop).
        flip_horizontal:   mirror left-right (after cropping).
        flip_vertical:     mirror top-bottom (after cropping).
        rot90:             number of counter-clockwise quarter turns, 0..3 (after flipping).
        swap_time:         exchange img0 and img1, which maps t to 1 - t.
        channel_order:     permutation of the RGB channels, e.g. (2, 1, 0) turns RGB into BGR.
    """

    top: int
    left: int
    crop_height: int
    crop_width: int
    flip_horizontal: bool = False
    flip_vertical: bool = False
    rot90: int = 0
    swap_time: bool = False
    channel_order: tuple[int, int, int] = (0, 1, 2)


def center_crop_params(height: int, width: int, crop_size: int | None) -> AugmentationParams:
    """Deterministic choices: a centred crop (or the full frame if crop_size is None), nothing else."""
    if crop_size is None:
        return AugmentationParams(top=0, left=0, crop_height=height, crop_width=width)
    return AugmentationParams(
        top=(height - crop_size) // 2,
        left=(width - crop_size) // 2,
        crop_height=crop_size,
        crop_width=crop_size,
    )


def draw_augmentation(
    height: int, width: int, crop_size: int | None, generator: torch.Generator | None = None
) -> AugmentationParams:
    """Draw random training augmentation choices for frames of size (height, width).

    Random square crop of crop_size (full frame if None), independent 50% horizontal and vertical
    flips, a random multiple of 90 degrees (only 0/180 when the output is not square, so every
    sample in a batch keeps the same shape), 50% temporal swap and a uniformly random RGB
    permutation.
    """
    if crop_size is None:
        top, left, crop_height, crop_width = 0, 0, height, width
    else:
        top = _random_int(0, height - crop_size, generator)
        left = _random_int(0, width - crop_size, generator)
        crop_height = crop_width = crop_size
    flip_horizontal = _random_bool(generator)
    flip_vertical = _random_bool(generator)
    if crop_height == crop_width:
        rot90 = _random_int(0, 3, generator)
    else:
        rot90 = 2 * _random_int(0, 1, generator)
    swap_time = _random_bool(generator)
    channel_order = tuple(int(c) for c in torch.randperm(3, generator=generator).tolist())
    return AugmentationParams(
        top=top,
        left=left,
        crop_height=crop_height,
        crop_width=crop_width,
        flip_horizontal=flip_horizontal,
        flip_vertical=flip_vertical,
        rot90=rot90,
        swap_time=swap_time,
        channel_order=channel_order,  # type: ignore[arg-type]
    )


def apply_augmentation(
    frames: Sequence[np.ndarray], t: float, params: AugmentationParams
) -> tuple[list[np.ndarray], float]:
    """Apply one set of choices to (img0, gt, img1).

    Args:
        frames: three arrays of shape (H, W, 3), same size, any dtype.
        t: time of gt between img0 (0) and img1 (1).
        params: the choices; the crop window must lie inside the frames.

    Returns:
        ([img0, gt, img1] as C-contiguous arrays of shape (h, w, 3), t'), with t' = 1 - t when
        params.swap_time, else t.
    """
    if len(frames) != 3:
        raise ValueError(f"expected 3 frames (img0, gt, img1), got {len(frames)}")
    bottom = params.top + params.crop_height
    right = params.left + params.crop_width
    order = list(params.channel_order)
    out = []
    for frame in frames:
        if params.top < 0 or params.left < 0 or bottom > frame.shape[0] or right > frame.shape[1]:
            raise ValueError(f"crop window {params} does not fit a frame of shape {frame.shape}")
        view = frame[params.top : bottom, params.left : right]
        if params.flip_horizontal:
            view = view[:, ::-1]
        if params.flip_vertical:
            view = view[::-1]
        if params.rot90:
            view = np.rot90(view, k=params.rot90, axes=(0, 1))
        # Fancy indexing on the channel axis copies, which also makes the result contiguous.
        out.append(np.ascontiguousarray(view[..., order]))
    if params.swap_time:
        out.reverse()
        t = 1.0 - t
    return out, t


# --------------------------------------------------------------------------------------------------
# Shared loading / sample assembly
# --------------------------------------------------------------------------------------------------
def _read_rgb(path: str) -> np.ndarray:
    """Read an image file as RGB uint8 of shape (H, W, 3)."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        if not os.path.isfile(path):
            raise DatasetError(f"image file missing: {path}")
        raise DatasetError(f"cannot read image: {path}")
    return bgr[..., ::-1]  # a view; the copy happens once, in apply_augmentation


def _as_sample(frames: Sequence[np.ndarray], t: float) -> dict[str, torch.Tensor]:
    """(H, W, 3) uint8 arrays -> dict of (3, H, W) uint8 tensors plus a float32 scalar t."""
    img0, gt, img1 = (torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))) for f in frames)
    return {"img0": img0, "gt": gt, "img1": img1, "t": torch.tensor(t, dtype=torch.float32)}


def _validate_crop_size(crop_size: int | None) -> int | None:
    if crop_size is None:
        return None
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer or None, got {crop_size!r}")
    return int(crop_size)


class _TripletDataset(Dataset):
    """Common tail of every dataset: size checks, augmentation, conversion to tensors."""

    crop_size: int | None
    augment: bool

    def _load_sample(self, paths: Sequence[str], t: float, folder: str) -> dict[str, torch.Tensor]:
        """Read img0/gt/img1 from ``paths`` and turn them into one augmented sample."""
        frames = [_read_rgb(p) for p in paths]
        height, width = frames[0].shape[:2]
        for path, frame in zip(paths[1:], frames[1:], strict=True):
            if frame.shape[:2] != (height, width):
                raise DatasetError(
                    f"frame sizes differ in {folder}: {os.path.basename(paths[0])} is "
                    f"{width}x{height} but {os.path.basename(path)} is {frame.shape[1]}x{frame.shape[0]}"
                )
        if self.crop_size is not None and (height < self.crop_size or width < self.crop_size):
            raise DatasetError(
                f"image smaller than crop size {self.crop_size}: {paths[0]} is {width}x{height}"
            )
        if self.augment:
            params = draw_augmentation(height, width, self.crop_size)
        else:
            params = center_crop_params(height, width, self.crop_size)
        frames, t = apply_augmentation(frames, t, params)
        return _as_sample(frames, t)


# --------------------------------------------------------------------------------------------------
# Vimeo90K
# --------------------------------------------------------------------------------------------------
def _read_vimeo_list(list_path: str, sequences_dir: str) -> list[str]:
    """Parse a Vimeo90K list file and check that every listed sequence folder exists."""
    if not os.path.isfile(list_path):
        raise DatasetError(f"list file not found: {list_path}")
    list_name = os.path.basename(list_path)
    names: list[str] = []
    with open(list_path, "r", encoding="utf-8", errors="replace") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            line = raw_line.strip()
            if not line:
                continue
            if not _VIMEO_LINE_PATTERN.match(line):
                raise DatasetError(
                    f"malformed line {line_number} in {list_path}: {line[:80]!r} (expected '00001/0001')"
                )
            folder = os.path.join(sequences_dir, *line.split("/"))
            if not os.path.isdir(folder):
                raise DatasetError(
                    f"sequence folder missing: {folder} (listed in line {line_number} of {list_name})"
                )
            names.append(line)
    if not names:
        raise DatasetError(f"list file is empty: {list_path}")
    return names


class VimeoDataset(_TripletDataset):
    """Vimeo90K triplets: ``root/sequences/xxxxx/xxxx/im{1,2,3}.png``, im2 at t = 0.5.

    Args:
        root: the ``vimeo_triplet`` folder holding ``tri_trainlist.txt``, ``tri_testlist.txt`` and
            ``sequences/``.
        split: "train" or "test".
        crop_size: training crop (square); None keeps full 448x256 frames (then rotations are
            limited to 0/180 degrees so the shape is kept).
        augment: random crop, flips, 90-degree rotations, temporal swap, channel permutation.
            Without it a training item is a deterministic centre crop.

    The test split ignores crop_size and augment: items are full, un-augmented frames, identical to
    the files on disk (RGB), plus ``"name"`` (e.g. ``"00001/0001"``).

    Items: ``{"img0", "gt", "img1"}`` uint8 (3, h, w), ``"t"`` float32 () = 0.5 (or 0.5 after a swap).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        crop_size: int | None = 256,
        augment: bool = True,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = os.path.abspath(os.fspath(root))
        self.split = split
        if split == "test":
            crop_size, augment = None, False
        self.crop_size = _validate_crop_size(crop_size)
        self.augment = bool(augment)
        if not os.path.isdir(self.root):
            raise DatasetError(f"Vimeo90K folder not found: {self.root} (--data_path)")
        self.sequences_dir = os.path.join(self.root, "sequences")
        if not os.path.isdir(self.sequences_dir):
            raise DatasetError(f"Vimeo90K sequences folder not found: {self.sequences_dir}")
        list_name = VIMEO_TRAIN_LIST if split == "train" else VIMEO_TEST_LIST
        self.list_path = os.path.join(self.root, list_name)
        self.names = _read_vimeo_list(self.list_path, self.sequences_dir)

    def __len__(self) -> int:
        return len(self.names)

    def sequence_folder(self, index: int) -> str:
        return os.path.join(self.sequences_dir, *self.names[index].split("/"))

    def __getitem__(self, index: int) -> dict:
        folder = self.sequence_folder(index)
        paths = [os.path.join(folder, name) for name in VIMEO_FRAME_NAMES]
        sample = self._load_sample(paths, 0.5, folder)
        if self.split == "test":
            sample["name"] = self.names[index]
        return sample

    def __repr__(self) -> str:
        return (
            f"VimeoDataset(root={self.root!r}, split={self.split!r}, crop_size={self.crop_size}, "
            f"augment={self.augment}, len={len(self)})"
        )


# --------------------------------------------------------------------------------------------------
# X4K1000FPS
# --------------------------------------------------------------------------------------------------
def sample_indices(
    num_frames: int, min_gap: int, max_gap: int, generator: torch.Generator | None = None
) -> tuple[int, int, int]:
    """Choose (i0, it, i1) inside a clip of num_frames frames.

    The gap g = i1 - i0 is uniform in [min_gap, min(max_gap, num_frames - 1)], i0 is uniform so that
    i1 stays in the clip, and it is uniform in [i0 + 1, i1 - 1]. The target time is
    t = (it - i0) / (i1 - i0).
    """
    if num_frames < 3:
        raise ValueError(f"a clip needs at least 3 frames, got {num_frames}")
    if min_gap < 2:
        raise ValueError(f"min_gap must be >= 2 (a target frame lies between the inputs), got {min_gap}")
    largest_gap = min(max_gap, num_frames - 1)
    if largest_gap < min_gap:
        raise ValueError(
            f"no gap fits: min_gap={min_gap}, max_gap={max_gap}, clip of {num_frames} frames"
        )
    gap = _random_int(min_gap, largest_gap, generator)
    i0 = _random_int(0, num_frames - 1 - gap, generator)
    it = _random_int(i0 + 1, i0 + gap - 1, generator)
    return i0, it, i0 + gap


class _Clip(NamedTuple):
    folder: str
    frame_names: tuple[str, ...]  # sorted by frame number, contiguous numbering


def _numbered_pngs(folder: str) -> list[tuple[int, str]]:
    """(frame number, file name) of the ``<digits>.png`` files in folder, sorted by number."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _X4K_FRAME_PATTERN.match(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry.name))
    found.sort()
    return found


def _discover_x4k_clips(train_dir: str, min_frames: int) -> list[_Clip]:
    """Find clips exactly two levels below train_dir: ``train/<type>/<clip>/<number>.png``."""
    if any(_X4K_FRAME_PATTERN.match(name) for name in os.listdir(train_dir)):
        raise DatasetError(
            f"PNG frames found directly in {train_dir}: expected train/<type>/<clip>/0000.png"
        )
    clips: list[_Clip] = []
    for type_dir in sorted(e.path for e in os.scandir(train_dir) if e.is_dir()):
        clip_dirs = sorted(e.path for e in os.scandir(type_dir) if e.is_dir())
        if not clip_dirs and any(_X4K_FRAME_PATTERN.match(name) for name in os.listdir(type_dir)):
            raise DatasetError(
                f"PNG frames found in {type_dir}, one level below train/: "
                f"expected train/<type>/<clip>/0000.png"
            )
        for clip_dir in clip_dirs:
            frames = _numbered_pngs(clip_dir)
            if len(frames) < min_frames:
                raise DatasetError(
                    f"clip has {len(frames)} numbered PNG frames, need at least {min_frames}: {clip_dir}"
                )
            numbers = [number for number, _ in frames]
            expected = list(range(numbers[0], numbers[0] + len(numbers)))
            if numbers != expected:
                missing = sorted(set(expected) - set(numbers))
                detail = f"first missing number {missing[0]}" if missing else "duplicate numbers"
                raise DatasetError(f"frame numbers not contiguous ({detail}) in clip: {clip_dir}")
            clips.append(_Clip(clip_dir, tuple(name for _, name in frames)))
    if not clips:
        raise DatasetError(f"no clips found in {train_dir}: expected train/<type>/<clip>/0000.png")
    return clips


class X4KDataset(_TripletDataset):
    """X4K1000FPS training clips at arbitrary t: ``root/train/<type>/<clip>/0000.png .. 0064.png``.

    One item per clip and epoch: a random gap g in [min_gap, min(max_gap, frames - 1)], random
    inputs (i0, i1 = i0 + g) and a random target between them, t = (it - i0) / g (see
    :func:`sample_indices`), then the same augmentations as VimeoDataset.

    Args:
        root: the X4K1000FPS folder that contains ``train/``.
        crop_size: square training crop (None keeps the 768x768 frames).
        augment: random crop/flips/rotations/temporal swap/channel permutation; without it a
            deterministic centre crop (frame indices are still drawn at random).
        max_gap: largest frame gap between the inputs; change it between epochs with
            ``set_max_gap`` (or by assigning ``max_gap``) for the curriculum. Non-persistent
            DataLoader workers pick up the value current when the epoch's iterator is created.
        min_gap: smallest gap, >= 2.

    Items: ``{"img0", "gt", "img1"}`` uint8 (3, h, w), ``"t"`` float32 () in (0, 1).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        crop_size: int | None = 256,
        augment: bool = True,
        max_gap: int = 32,
        min_gap: int = 2,
    ):
        self.root = os.path.abspath(os.fspath(root))
        self.crop_size = _validate_crop_size(crop_size)
        self.augment = bool(augment)
        if isinstance(min_gap, bool) or not isinstance(min_gap, (int, np.integer)) or min_gap < 2:
            raise ValueError(f"min_gap must be an integer >= 2, got {min_gap!r}")
        self.min_gap = int(min_gap)
        self.max_gap = max_gap  # validated by the property setter
        if not os.path.isdir(self.root):
            raise DatasetError(f"X4K1000FPS folder not found: {self.root} (--x4k_path)")
        self.train_dir = os.path.join(self.root, "train")
        if not os.path.isdir(self.train_dir):
            raise DatasetError(f"X4K1000FPS train folder not found: {self.train_dir} (--x4k_path)")
        self.clips = _discover_x4k_clips(self.train_dir, min_frames=max(3, self.min_gap + 1))

    @property
    def max_gap(self) -> int:
        return self._max_gap

    @max_gap.setter
    def max_gap(self, gap: int) -> None:
        if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)):
            raise ValueError(f"max_gap must be an integer, got {gap!r}")
        if gap < self.min_gap:
            raise ValueError(f"max_gap must be >= min_gap={self.min_gap}, got {gap}")
        self._max_gap = int(gap)

    def set_max_gap(self, gap: int) -> None:
        """Curriculum hook: allow input gaps up to ``gap`` frames from the next iterator on."""
        self.max_gap = gap

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        i0, it, i1 = sample_indices(len(clip.frame_names), self.min_gap, self._max_gap)
        paths = [os.path.join(clip.folder, clip.frame_names[i]) for i in (i0, it, i1)]
        return self._load_sample(paths, (it - i0) / (i1 - i0), clip.folder)

    def __repr__(self) -> str:
        return (
            f"X4KDataset(root={self.root!r}, crop_size={self.crop_size}, augment={self.augment}, "
            f"min_gap={self.min_gap}, max_gap={self.max_gap}, clips={len(self)})"
        )


# --------------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------------
def _unwrap(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


class MixedDataset(Dataset):
    """Deterministic interleaving of Vimeo and X4K samples in the exact ratio A:B.

    Index i falls in block i // (A + B) at position r = i % (A + B); r < A takes
    vimeo[(block * A + r) % len(vimeo)], otherwise x4k[(block * B + r - A) % len(x4k)].
    The length, ceil(len(vimeo) * (A + B) / A), visits every Vimeo item once per epoch. A sampler
    (e.g. DistributedSampler with shuffle) permutes the indices, so the mix holds for any order.
    Both sub-datasets must crop to the same crop_size so samples can be batched together.
    """

    def __init__(self, vimeo: Dataset, x4k: Dataset, ratio: tuple[int, int] = (2, 1)):
        if len(ratio) != 2 or any(
            isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in ratio
        ):
            raise ValueError(f"ratio must be two positive integers, got {ratio!r}")
        self.vimeo = vimeo
        self.x4k = x4k
        self.ratio = (int(ratio[0]), int(ratio[1]))
        vimeo_base, x4k_base = _unwrap(vimeo), _unwrap(x4k)
        vimeo_crop = getattr(vimeo_base, "crop_size", None)
        x4k_crop = getattr(x4k_base, "crop_size", None)
        if vimeo_crop is None or vimeo_crop != x4k_crop:
            raise DatasetError(
                f"mixed training needs one crop size: {getattr(vimeo_base, 'root', 'vimeo')} crops to "
                f"{vimeo_crop}, {getattr(x4k_base, 'root', 'x4k')} crops to {x4k_crop}"
            )
        for part in (vimeo, x4k):
            if len(part) == 0:
                raise DatasetError(f"empty dataset: {getattr(_unwrap(part), 'root', part)!r}")
        block = sum(self.ratio)
        self._length = -(-len(vimeo) * block // self.ratio[0])  # integer ceil

    @property
    def crop_size(self) -> int:
        return _unwrap(self.vimeo).crop_size

    def set_max_gap(self, gap: int) -> None:
        """Forward the curriculum's gap to the X4K part."""
        _unwrap(self.x4k).set_max_gap(gap)

    def __len__(self) -> int:
        return self._length

    def locate(self, index: int) -> tuple[str, int]:
        """Map a mixed index to ("vimeo" | "x4k", index into that dataset)."""
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for MixedDataset of length {self._length}")
        vimeo_share, x4k_share = self.ratio
        block, position = divmod(index, vimeo_share + x4k_share)
        if position < vimeo_share:
            return "vimeo", (block * vimeo_share + position) % len(self.vimeo)
        return "x4k", (block * x4k_share + position - vimeo_share) % len(self.x4k)

    def __getitem__(self, index: int) -> dict:
        source, inner = self.locate(index)
        return self.vimeo[inner] if source == "vimeo" else self.x4k[inner]

    def __repr__(self) -> str:
        return f"MixedDataset(ratio={self.ratio[0]}:{self.ratio[1]}, len={len(self)}, {self.vimeo!r}, {self.x4k!r})"


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
