"""Training and evaluation datasets for video frame interpolation, and their augmentation.

Every dataset returns one dict per sample::

    {
        "img0": uint8 tensor (3, h, w),   # first input frame, RGB, time 0
        "gt":   uint8 tensor (3, h, w),   # target frame, RGB, time t
        "img1": uint8 tensor (3, h, w),   # second input frame, RGB, time 1
        "t":    float32 tensor (),        # time of gt between img0 (0) and img1 (1)
    }

With ``teacher_flow`` set (``--flow_teacher``) an item also carries ``"flow_teacher"``, and with ``flow_prior`` set
(``--flow_prior dis``) ``"flow_prior"``: float32 (4, h, w) each, DIS flows of the augmented frames (see
:class:`_TripletDataset`). Vimeo90K test items also carry ``"name": str`` (e.g. ``"00001/0001"``); the default
collate turns it into a list of strings. Frames stay uint8 so DataLoader transfers are small; the trainer converts them
to float on the device.

Datasets:
    VimeoDataset  Vimeo90K triplets (``tri_trainlist.txt`` / ``tri_testlist.txt``, ``sequences/``).
    X4KDataset    X4K1000FPS training clips (``train/<type>/<clip>/0000.png ..``), arbitrary t.
    MixedDataset  Deterministic A:B interleaving of a Vimeo and an X4K dataset (Phase 3).

The training data path is in ``loaders.py`` (decoded frames held in memory, samplers, worker seeding, the loaders
``train.py`` iterates over).

Randomness only comes from torch's default generator (``torch.randint`` / ``torch.randperm``). In the main
process it is the caller's (``torch.manual_seed``); in DataLoader workers it is seeded per worker, by the
DataLoader or, for persistent workers, by ``loaders.EpochSeededDataset`` at each epoch.

Bad input raises :class:`DatasetError` with a one-line message naming the file or folder at fault.
Cheap checks (folders, list files, every frame's size against the crop, read from the PNG headers) happen
in ``__init__``; unreadable images are found when loaded or when the frame cache is filled.
"""

from __future__ import annotations

import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from measures.motion import prior_pair_flows, teacher_flows

__all__ = [
    "DatasetError",
    "AugmentationParams",
    "draw_augmentation",
    "center_crop_params",
    "apply_augmentation",
    "augmented_sample",
    "augmented_pair_flows",
    "context_prior",
    "PRIOR_CONTEXT_PX",
    "sample_indices",
    "VimeoDataset",
    "X4KDataset",
    "MixedDataset",
    "image_size",
    "read_bgr",
    "png_header_size",
    "triplet_parts",
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


def _augmented_view(frame: np.ndarray, params: AugmentationParams) -> np.ndarray:
    """Crop window, flips and rotation of one (H, W, C) array, as a view (no copy); channels untouched."""
    bottom = params.top + params.crop_height
    right = params.left + params.crop_width
    if params.top < 0 or params.left < 0 or bottom > frame.shape[0] or right > frame.shape[1]:
        raise ValueError(f"crop window {params} does not fit a frame of shape {frame.shape}")
    view = frame[params.top : bottom, params.left : right]
    if params.flip_horizontal:
        view = view[:, ::-1]
    if params.flip_vertical:
        view = view[::-1]
    if params.rot90:
        view = np.rot90(view, k=params.rot90, axes=(0, 1))
    return view


def _augmented_views(frames: Sequence[np.ndarray], params: AugmentationParams) -> list[np.ndarray]:
    """:func:`_augmented_view` of each of the three (H, W, C) frames (img0, gt, img1)."""
    if len(frames) != 3:
        raise ValueError(f"expected 3 frames (img0, gt, img1), got {len(frames)}")
    return [_augmented_view(frame, params) for frame in frames]


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
    order = list(params.channel_order)
    # Fancy indexing on the channel axis copies, which also makes the result contiguous.
    out = [np.ascontiguousarray(view[..., order]) for view in _augmented_views(frames, params)]
    if params.swap_time:
        out.reverse()
        t = 1.0 - t
    return out, t


def augmented_sample(frames: Sequence[np.ndarray], t: float, params: AugmentationParams) -> dict[str, torch.Tensor]:
    """:func:`apply_augmentation` then the (h, w, 3) -> (3, h, w) tensor conversion, in one pass.

    Same bytes as the two steps, several times faster: each output channel is one strided copy straight
    into the tensor (fancy indexing on the channel axis and the transposing copy cost ~10x more per frame).

    Returns:
        {"img0", "gt", "img1"}: (3, h, w) tensors of the frames' dtype, "t": float32 ().
    """
    order = params.channel_order
    tensors = []
    for view in _augmented_views(frames, params):
        target = np.empty((3, view.shape[0], view.shape[1]), dtype=view.dtype)
        for channel, source in enumerate(order):
            target[channel] = view[..., source]
        tensors.append(torch.from_numpy(target))
    if params.swap_time:
        tensors.reverse()
        t = 1.0 - t
    return {"img0": tensors[0], "gt": tensors[1], "img1": tensors[2], "t": torch.tensor(t, dtype=torch.float32)}


PRIOR_CONTEXT_PX = 64     # --prior_from context: DIS sees this much of the frame around each side of the crop


def context_prior(frame0: np.ndarray, frame1: np.ndarray, params: AugmentationParams,
                  margin: int = PRIOR_CONTEXT_PX) -> np.ndarray:
    """The flow prior of a training sample with context: (H, W, 3) RGB frames of the pair as stored, the sample's
    augmentation -> (4, h, w) float32, DIS both ways on the crop window grown by ``margin`` px each side (within the
    frame), cut to the window and carried through the augmentation (:func:`augmented_pair_flows`).

    Why: on the 256 crop alone DIS loses what moves in or out of it and its coarse levels see less of the motion;
    test time runs DIS on the whole frame. Measured on the corpus's training clips (docs/LARGE_MOTION.md, eleventh
    round; the prior's averaged warps against the middle frame on the same crops, 60 per stride): the whole frame
    adds 0.09 / 0.29 / 0.53 / 0.42 dB at strides 1-4, 64 px of context 0.08 / 0.31 / 0.58 / 0.55, at about 2.3 times
    the crop's DIS time (384 x 384 against 256 x 256) instead of 5 times (640 x 480: 77 against 14 ms on one core).
    """
    height, width = frame0.shape[:2]
    top, left = max(0, params.top - margin), max(0, params.left - margin)
    bottom = min(height, params.top + params.crop_height + margin)
    right = min(width, params.left + params.crop_width + margin)
    region = prior_pair_flows(frame0[top:bottom, left:right], frame1[top:bottom, left:right])
    return augmented_pair_flows(region, replace(params, top=params.top - top, left=params.left - left))


def augmented_pair_flows(pair_flows: np.ndarray, params: AugmentationParams) -> np.ndarray:
    """The flows of a whole frame pair carried through the augmentation of its sample: (4, H, W) float32
    [F_0->1 (x, y), F_1->0 (x, y)] of the original frames -> (4, h, w) float32 of the augmented ones.

    The field is cropped, flipped and rotated as the frames are (:func:`_augmented_view`), each vector with it: a
    horizontal flip negates x, a vertical one y, each counter-clockwise quarter turn of ``np.rot90`` maps
    (x, y) to (y, -x) (its output pixel (i, j) is the input's (j, W-1-i), so x' = y and y' = W-1-x); the temporal
    swap exchanges the two directions. The channel permutation moves no pixel. So warping the augmented frame 1 by
    the augmented F_0->1 gives the augmented warp of frame 1 by F_0->1 (tests/test_dataset.py checks it).
    """
    if pair_flows.ndim != 3 or pair_flows.shape[0] != 4:
        raise ValueError(f"pair flows must be (4, H, W) = [F_0->1, F_1->0], got shape {pair_flows.shape}")
    planes = np.moveaxis(pair_flows, 0, -1)                              # (H, W, 4): views move pixels
    view = _augmented_view(planes, params)
    x = view[..., 0::2] * (-1.0 if params.flip_horizontal else 1.0)        # (h, w, 2): x of F_0->1 and F_1->0
    y = view[..., 1::2] * (-1.0 if params.flip_vertical else 1.0)
    for _ in range(params.rot90 % 4):
        x, y = y, -x
    forward, backward = (0, 1) if not params.swap_time else (1, 0)
    stacked = [x[..., forward], y[..., forward], x[..., backward], y[..., backward]]
    return np.ascontiguousarray(np.stack(stacked), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Shared loading / sample assembly
# --------------------------------------------------------------------------------------------------
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_bgr(path: str) -> np.ndarray:
    """Decode an image file as cv2 does: BGR uint8 of shape (H, W, 3)."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        if not os.path.isfile(path):
            raise DatasetError(f"image file missing: {path}")
        raise DatasetError(f"cannot read image: {path}")
    return bgr


def png_header_size(path: str) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk (its first 24 bytes), or None when the file is not a PNG."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except FileNotFoundError:
        raise DatasetError(f"image file missing: {path}") from None
    except OSError as error:
        raise DatasetError(f"cannot read image: {path} ({error.strerror or error})") from None
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file: read from the header of a PNG (no decoding), else by decoding it."""
    size = png_header_size(path)
    return size if size is not None else read_bgr(path).shape[:2]


def _validate_crop_size(crop_size: int | None) -> int | None:
    if crop_size is None:
        return None
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer or None, got {crop_size!r}")
    return int(crop_size)


class _TripletDataset(Dataset):
    """Common tail of every dataset: size checks, augmentation, conversion to tensors.

    ``frame_cache`` (None by default) serves decoded frames from memory: a ``loaders.FrameCache``, attached by
    ``loaders.enable_frame_cache`` (anything with ``get(path) -> BGR (H, W, 3) uint8 or None``).

    ``teacher_flow`` (False by default; the training loader sets it for ``--flow_teacher``): each item also holds
    ``"flow_teacher"``, float32 (4, h, w), the DIS flows from the augmented middle frame to both augmented inputs
    (:func:`measures.motion.teacher_flows`). Computed after the augmentation, so crops, flips, rotations and the
    temporal swap need no vector bookkeeping.

    ``flow_prior`` (False by default; ``loaders.build_datasets`` sets it on the training and validation sets for
    ``--flow_prior dis``): each item also holds ``"flow_prior"``, float32 (4, h, w) = [F_0->1, F_1->0], the DIS flows
    both ways between the augmented inputs (:func:`measures.motion.prior_pair_flows`), where a prior model's flow
    estimator starts. Also computed after the augmentation, for the same reason; it reads no middle frame, so the
    validation items (full frames) get it exactly as a benchmark computes it. With ``prior_from_context``
    (``--prior_from context``) it is computed on the crop window and :data:`PRIOR_CONTEXT_PX` around it instead and
    carried through the augmentation (:func:`context_prior`), closer to what test time gives the model, where DIS sees
    the whole frame.
    """

    crop_size: int | None
    augment: bool
    frame_cache = None
    teacher_flow = False
    flow_prior = False
    prior_from_context = False

    def frame_paths(self) -> list[str]:
        """Every frame file a sample may read, in a stable order (what a frame cache should hold)."""
        raise NotImplementedError

    def _check_crop_fits(self, paths: Sequence[str]) -> None:
        """Refuse a crop larger than any frame now, before the first step: every PNG's size from its header (its
        first 24 bytes), naming the first offending file and how many there are. A missing file is refused here too;
        a file that is no PNG is not decoded here (it is checked when it is loaded)."""
        if self.crop_size is None:
            return
        # Threads: on a cold or network disk the open() calls, not the 24-byte reads, take the time.
        chunks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]
        with ThreadPoolExecutor(max_workers=min(8, len(chunks) or 1)) as pool:
            sizes = [size for chunk in pool.map(lambda part: [png_header_size(p) for p in part], chunks)
                     for size in chunk]
        too_small = [(path, size) for path, size in zip(paths, sizes)
                     if size is not None and min(size) < self.crop_size]
        if too_small:
            (path, (height, width)), count = too_small[0], len(too_small)
            largest = min(min(size) for _, size in too_small)
            others = f" ({count} of {len(paths)} frames are smaller)" if count > 1 else ""
            raise DatasetError(
                f"crop size {self.crop_size} is larger than the frames: {path} is {width}x{height}{others} "
                f"(--crop_size at most {largest}, or remove those frames)"
            )

    def _read_rgb(self, path: str) -> np.ndarray:
        """RGB uint8 (H, W, 3) of one frame, from the cache when it holds it (a view; never written to)."""
        bgr = self.frame_cache.get(path) if self.frame_cache is not None else None
        if bgr is None:
            bgr = read_bgr(path)
        return bgr[..., ::-1]  # a view; the copy happens once, in augmented_sample

    def _load_sample(self, paths: Sequence[str], t: float, folder: str) -> dict[str, torch.Tensor]:
        """Read img0/gt/img1 from ``paths`` and turn them into one augmented sample."""
        frames = [self._read_rgb(p) for p in paths]
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
        sample = augmented_sample(frames, t, params)
        if self.teacher_flow or self.flow_prior:
            img0, gt, img1 = (sample[key].permute(1, 2, 0).numpy() for key in ("img0", "gt", "img1"))
            if self.teacher_flow:
                sample["flow_teacher"] = torch.from_numpy(teacher_flows(img0, gt, img1))
            if self.flow_prior and self.prior_from_context:
                sample["flow_prior"] = torch.from_numpy(context_prior(frames[0], frames[2], params))
            elif self.flow_prior:
                sample["flow_prior"] = torch.from_numpy(prior_pair_flows(img0, img1))
        return sample


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
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise DatasetError(
                f"--data_path {self.root} is a file, not a Vimeo90K triplet folder: tools/video_to_vimeo.py turns "
                f"a video into a training set (python tools/video_to_vimeo.py VIDEO OUT_DIR)"
            )
        if not os.path.isdir(self.root):
            raise DatasetError(
                f"Vimeo90K folder not found: {self.root} (--data_path; tools/video_to_vimeo.py turns a video into "
                f"a training set)"
            )
        self.sequences_dir = os.path.join(self.root, "sequences")
        if not os.path.isdir(self.sequences_dir):
            raise DatasetError(
                f"Vimeo90K sequences folder not found: {self.sequences_dir} (expected the Vimeo90K triplet layout, "
                f"which tools/video_to_vimeo.py writes from a video)"
            )
        list_name = VIMEO_TRAIN_LIST if split == "train" else VIMEO_TEST_LIST
        self.list_path = os.path.join(self.root, list_name)
        self.names = _read_vimeo_list(self.list_path, self.sequences_dir)
        self._check_crop_fits(self.frame_paths())

    def __len__(self) -> int:
        return len(self.names)

    def sequence_folder(self, index: int) -> str:
        return os.path.join(self.sequences_dir, *self.names[index].split("/"))

    def frame_path(self, index: int, frame: int) -> str:
        """Path of frame 0, 1 or 2 (im1/im2/im3.png) of item ``index``."""
        return os.path.join(self.sequence_folder(index), VIMEO_FRAME_NAMES[frame])

    def frame_paths(self) -> list[str]:
        """im1/im2/im3 of every listed triplet, in list order (a triplet listed twice appears twice)."""
        return [self.frame_path(index, frame) for index in range(len(self)) for frame in range(3)]

    def __getitem__(self, index: int) -> dict:
        folder = self.sequence_folder(index)
        paths = [self.frame_path(index, frame) for frame in range(3)]
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
            ``set_max_gap`` (or by assigning ``max_gap``) for the curriculum. The value lives in a
            shared-memory tensor, so DataLoader workers, persistent ones included, see a change made in
            the main process from their next sample on.
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
        # One int64 in shared memory: forked (or spawned) DataLoader workers map the same page, so the
        # curriculum's change between epochs reaches persistent workers without restarting them.
        self._shared_max_gap = torch.zeros((), dtype=torch.int64).share_memory_()
        self.max_gap = max_gap  # validated by the property setter
        if not os.path.isdir(self.root):
            raise DatasetError(f"X4K1000FPS folder not found: {self.root} (--x4k_path)")
        self.train_dir = os.path.join(self.root, "train")
        if not os.path.isdir(self.train_dir):
            raise DatasetError(f"X4K1000FPS train folder not found: {self.train_dir} (--x4k_path)")
        self.clips = _discover_x4k_clips(self.train_dir, min_frames=max(3, self.min_gap + 1))
        self._check_crop_fits(self.frame_paths())

    @property
    def max_gap(self) -> int:
        return int(self._shared_max_gap.item())

    @max_gap.setter
    def max_gap(self, gap: int) -> None:
        if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)):
            raise ValueError(f"max_gap must be an integer, got {gap!r}")
        if gap < self.min_gap:
            raise ValueError(f"max_gap must be >= min_gap={self.min_gap}, got {gap}")
        self._shared_max_gap.fill_(int(gap))

    def set_max_gap(self, gap: int) -> None:
        """Curriculum hook: allow input gaps up to ``gap`` frames from the next iterator on."""
        self.max_gap = gap

    def __len__(self) -> int:
        return len(self.clips)

    def frame_paths(self) -> list[str]:
        """Every frame of every clip, clip by clip."""
        return [os.path.join(clip.folder, name) for clip in self.clips for name in clip.frame_names]

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        i0, it, i1 = sample_indices(len(clip.frame_names), self.min_gap, self.max_gap)
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


# --------------------------------------------------------------------------------------------------
# The Vimeo/X4K parts of a (mixed, subset) dataset: what a frame cache fills from
# --------------------------------------------------------------------------------------------------
def triplet_parts(dataset: Dataset) -> list[_TripletDataset]:
    """The Vimeo/X4K datasets inside ``dataset`` (through MixedDataset and Subset wrappers)."""
    dataset = _unwrap(dataset)
    if isinstance(dataset, MixedDataset):
        return triplet_parts(dataset.vimeo) + triplet_parts(dataset.x4k)
    return [dataset] if isinstance(dataset, _TripletDataset) else []
