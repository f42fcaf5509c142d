"""Turn any video OpenCV can read into a Vimeo90K-style triplet data set.

Usage::

    python tools/video_to_vimeo.py VIDEO OUT_DIR [--size 448x256] [--fit crop] [--stride 1] [--test_fraction 0.1]
        [--max_triplets N] [--cut_ratio 3] [--duplicate_block 1] [--step 1] [--overwrite]

Output (the layout ``dataset.VimeoDataset`` reads)::

    OUT_DIR/sequences/<5-digit group>/<4-digit index>/im1.png im2.png im3.png
    OUT_DIR/tri_trainlist.txt, OUT_DIR/tri_testlist.txt     lines like "00001/0001"
    OUT_DIR/video_to_vimeo.json                              parameters and counts (written last)

A triplet is source frames (k, k + stride, k + 2 * stride), each brought to ``--size`` with cv2.INTER_AREA;
im2 is the true middle frame (t = 0.5). By default (``--fit crop``) a frame keeps its aspect ratio: it is resized
to cover ``--size`` and centre-cropped to it (a 640x272 clip at 448x256 becomes 602x256, cropped to the middle
448 columns); ``--fit stretch`` resizes to ``--size`` directly, squeezing any other aspect ratio. The command
says which it did. Start frames k advance by ``step`` (default 1: every frame starts a
triplet).

Filtering rules, on every pair of consecutive *source* frames j and j + 1, with the repository's one
frame-difference measure (``measures/shots.py``, which explains it), on the source frames:

* scene cut: the pair's content change stands out from its neighbours' (``--cut_ratio``, default 3
  times their median). A triplet whose span k .. k + 2 * stride contains a cut is skipped, because
  its middle frame cannot be interpolated.
* static / duplicated frame: no 16x16 block of the pair (on a <= 448 px copy) differs by more than
  ``--duplicate_block`` levels on average (default 1.5, 0..255 scale). A triplet whose span contains
  such a pair is skipped: a frozen shot teaches nothing, and a frame repeated by frame-rate
  conversion moves the real time of im2 away from 0.5.

A pair's verdict needs the next ``ShotSettings.window`` frames too, so a few more frames than a
triplet spans are held in memory.

Train/test split by contiguous blocks, never by random triplets (neighbouring triplets are near
duplicates): with N frames processed and test_position "end", frames [0, B) form the training block
and [B, N) the test block, B = N - round(N * test_fraction); with "start" the test block is
[0, round(N * test_fraction)) instead (pick the part of the video whose motion you want to score).
Triplets with frames on both sides of B are dropped, so no source frame appears in both splits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script (python tools/video_to_vimeo.py): make `measures` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoint import atomic_write_text  # noqa: E402  (the project's one atomic writer: temp file, fsync, rename)
from measures.shots import PairVerdict, ShotDetector, ShotSettings, add_shot_arguments  # noqa: E402

__all__ = ["ConversionError", "video_to_vimeo", "parse_size", "main"]

TRAIN_LIST = "tri_trainlist.txt"
TEST_LIST = "tri_testlist.txt"
FRAME_NAMES = ("im1.png", "im2.png", "im3.png")
INFO_FILE = "video_to_vimeo.json"
SEQUENCES_PER_GROUP = 1000  # Vimeo90K groups hold up to 1000 sequences (0001 .. 1000)


class ConversionError(RuntimeError):
    """The video cannot be converted; the message is one line and names the path at fault."""

    def __init__(self, message: str):
        super().__init__(str(message).replace("\r", " ").replace("\n", " "))


def parse_size(text: str) -> tuple[int, int]:
    """"448x256" -> (448, 256) as (width, height)."""
    parts = text.lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1])
    raise ValueError(f"invalid size {text!r}: expected WIDTHxHEIGHT, e.g. 448x256")


FITS = ("crop", "stretch")


def fit_frame(frame: np.ndarray, width: int, height: int, fit: str = "crop") -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3): "crop" resizes to cover (aspect ratio kept) and centre-crops,
    "stretch" resizes to (width, height) directly. cv2.INTER_AREA either way."""
    source_height, source_width = frame.shape[:2]
    if fit == "stretch" or (source_width, source_height) == (width, height):
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    cover_width, cover_height = cover_size(source_width, source_height, width, height)
    covered = cv2.resize(frame, (cover_width, cover_height), interpolation=cv2.INTER_AREA)
    top, left = (cover_height - height) // 2, (cover_width - width) // 2
    return np.ascontiguousarray(covered[top:top + height, left:left + width])


def cover_size(source_width: int, source_height: int, width: int, height: int) -> tuple[int, int]:
    """The smallest (w, h) with the source's aspect ratio (rounded) that covers width x height."""
    scale = max(width / source_width, height / source_height)
    return max(width, round(source_width * scale)), max(height, round(source_height * scale))


def describe_fit(source_size: tuple[int, int], size: tuple[int, int], fit: str) -> str:
    """One sentence: what became of the frames' shape (printed by the command line)."""
    (source_width, source_height), (width, height) = source_size, size
    ratio = f"{source_width}x{source_height} ({source_width / source_height:.2f}:1)"
    if (source_width, source_height) == (width, height):
        return f"frames {ratio} kept at their size"
    if fit == "stretch":
        same = abs(source_width / source_height - width / height) < 0.01
        return (f"frames {ratio} resized to {width}x{height} ({width / height:.2f}:1)"
                + ("" if same else ", aspect ratio NOT kept (--fit stretch)"))
    cover = cover_size(source_width, source_height, width, height)
    if cover == (width, height):
        return f"frames {ratio} resized to {width}x{height} (same aspect ratio)"
    return (f"frames {ratio} resized to {cover[0]}x{cover[1]} and centre-cropped to {width}x{height}: aspect ratio "
            f"kept, {cover[0] - width} columns and {cover[1] - height} rows cut (--fit stretch squeezes instead)")


def _sequence_name(number: int) -> str:
    """0 -> "00001/0001", 999 -> "00001/1000", 1000 -> "00002/0001"."""
    group, index = divmod(number, SEQUENCES_PER_GROUP)
    return f"{group + 1:05d}/{index + 1:04d}"


def _prepare_output(out_dir: str, overwrite: bool) -> str:
    """Create out_dir; refuse (or with overwrite, remove) a data set already built there."""
    sequences_dir = os.path.join(out_dir, "sequences")
    ours = [os.path.join(out_dir, name) for name in (TRAIN_LIST, TEST_LIST, INFO_FILE)]
    existing = [p for p in [sequences_dir, *ours] if os.path.exists(p)]
    if existing and not overwrite:
        raise ConversionError(
            f"output already holds a data set: {existing[0]} (choose another OUT_DIR or pass --overwrite)"
        )
    for path in existing:  # only what this tool creates, never anything else in out_dir
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    os.makedirs(sequences_dir, exist_ok=True)
    return sequences_dir


def video_to_vimeo(
    video_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    size: tuple[int, int] = (448, 256),
    stride: int = 1,
    test_fraction: float = 0.1,
    max_triplets: int | None = None,
    cut_ratio: float = ShotSettings.cut_ratio,
    duplicate_block: float = ShotSettings.duplicate_block,
    step: int = 1,
    overwrite: bool = False,
    test_position: str = "end",
    fit: str = "crop",
) -> dict:
    """Convert a video into the Vimeo90K triplet layout (see the module docstring for the rules).

    Args:
        video_path: any file cv2.VideoCapture can decode.
        out_dir: output folder (created); must not already hold a data set unless overwrite.
        size: output (width, height) of every frame.
        stride: source-frame distance between im1, im2 and im3 (larger = more motion).
        test_fraction: share of the video (its last frames) used for the test split, 0 < f < 1.
        max_triplets: stop reading once this many triplets passed the filters (None: whole video);
            the split then applies to the frames read so far.
        cut_ratio: how far a pair's content change must exceed its neighbours' median to be a cut
            (measures.shots.ShotSettings.cut_ratio).
        duplicate_block: largest 16x16 block difference (0..255) at or below which a pair is a repeated
            frame (measures.shots.ShotSettings.duplicate_block; negative: never).
        step: distance between the start frames of consecutive candidate triplets.
        overwrite: replace a data set previously written to out_dir.
        test_position: "end" (the last frames are the test block) or "start" (the first frames are).
        fit: "crop" (keep the aspect ratio: resize to cover ``size``, centre-crop) or "stretch" (resize to ``size``).

    Returns:
        dict of counts: frames_read, scene_cuts, candidates, skipped_scene_cut, skipped_static,
        skipped_split_boundary, train, test, boundary_frame, and source_size [width, height].

    Raises:
        ConversionError: unreadable video, video too short, or an empty train or test split.
        ValueError: invalid arguments.
    """
    video_path = os.path.abspath(os.fspath(video_path))
    out_dir = os.path.abspath(os.fspath(out_dir))
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if stride < 1 or step < 1:
        raise ValueError(f"stride and step must be >= 1, got stride={stride}, step={step}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if test_position not in ("start", "end"):
        raise ValueError(f"test_position must be 'start' or 'end', got {test_position!r}")
    if max_triplets is not None and max_triplets < 2:
        raise ValueError(f"max_triplets must be >= 2 (one train and one test triplet), got {max_triplets}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if not os.path.isfile(video_path):
        raise ConversionError(f"video file not found: {video_path}")

    capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        raise ConversionError(f"cannot open video (unsupported or corrupt): {video_path}")

    span = 2 * stride  # number of consecutive-frame pairs inside one triplet
    detector = ShotDetector(ShotSettings(cut_ratio=cut_ratio, duplicate_block=duplicate_block))
    resized_frames: dict[int, np.ndarray] = {}  # frame index -> resized frame, while a triplet may still use it
    pair_kinds: dict[int, str] = {}  # pair j (frames j, j + 1) -> "cut", "duplicate" or "motion"
    counts = dict.fromkeys(
        ["frames_read", "scene_cuts", "candidates", "skipped_scene_cut", "skipped_static"], 0
    )
    written: list[tuple[str, int]] = []  # (sequence name, start frame)
    sequences_dir = None

    def take(verdicts: list[PairVerdict]) -> bool:
        """Record verdicts; write the triplets they complete. True once max_triplets are written."""
        nonlocal sequences_dir
        for verdict in verdicts:
            pair_kinds[verdict.pair] = verdict.kind
            counts["scene_cuts"] += verdict.kind == "cut"
            start = verdict.pair - span + 1  # the triplet whose last pair this is
            if start < 0 or start % step:
                continue
            counts["candidates"] += 1
            kinds = [pair_kinds[j] for j in range(start, start + span)]
            images = [resized_frames[start + k * stride] for k in range(3)]
            for held in (resized_frames, pair_kinds):  # forget what no later triplet (start > this) can use
                for index in [index for index in held if index <= start]:
                    del held[index]
            if "cut" in kinds:
                counts["skipped_scene_cut"] += 1
                continue
            if "duplicate" in kinds:
                counts["skipped_static"] += 1
                continue
            if sequences_dir is None:  # only touch out_dir once the video proved readable
                sequences_dir = _prepare_output(out_dir, overwrite)
            name = _sequence_name(len(written))
            folder = os.path.join(sequences_dir, *name.split("/"))
            os.makedirs(folder, exist_ok=True)
            for file_name, image in zip(FRAME_NAMES, images, strict=True):
                path = os.path.join(folder, file_name)
                if not cv2.imwrite(path, image):
                    raise ConversionError(f"cannot write image: {path}")
            written.append((name, start))
            if max_triplets is not None and len(written) >= max_triplets:
                return True
        return False

    try:
        frame_index = -1
        done = False
        while not done:
            ok, frame = capture.read()
            if not ok or frame is None:
                done = take(detector.finish())
                break
            frame_index += 1
            if frame_index == 0:
                source_size = [int(frame.shape[1]), int(frame.shape[0])]
            resized_frames[frame_index] = fit_frame(frame, width, height, fit)
            done = take(detector.push_frame(frame))
        counts["frames_read"] = frame_index + 1
    finally:
        capture.release()

    frames_read = counts["frames_read"]
    if frames_read == 0:
        raise ConversionError(f"cannot decode any frame from video: {video_path}")
    if frames_read < span + 1:
        raise ConversionError(
            f"video too short for stride {stride}: {frames_read} frames in {video_path}"
        )
    if not written:
        raise ConversionError(
            f"no usable triplets in {video_path}: {counts['skipped_scene_cut']} span scene cuts, "
            f"{counts['skipped_static']} are static (check --cut_ratio/--duplicate_block)"
        )

    test_frames = int(round(frames_read * test_fraction))
    boundary = frames_read - test_frames if test_position == "end" else test_frames
    before, after, dropped = [], [], []
    for name, start in written:
        if start + span < boundary:
            before.append(name)
        elif start >= boundary:
            after.append(name)
        else:
            dropped.append(name)
    train_names, test_names = (before, after) if test_position == "end" else (after, before)
    counts.update(
        skipped_split_boundary=len(dropped),
        train=len(train_names),
        test=len(test_names),
        boundary_frame=boundary,
        source_size=source_size,
    )
    assert sequences_dir is not None
    if not train_names or not test_names:
        shutil.rmtree(sequences_dir)  # leave no half-built data set behind
        empty = "train" if not train_names else "test"
        raise ConversionError(
            f"empty {empty} split for {video_path}: {len(train_names)} train / {len(test_names)} test "
            f"triplets from {frames_read} frames (adjust --test_fraction, --stride or the thresholds)"
        )
    for name in dropped:
        shutil.rmtree(os.path.join(sequences_dir, *name.split("/")))

    atomic_write_text(os.path.join(out_dir, TRAIN_LIST), "".join(name + "\n" for name in train_names))
    atomic_write_text(os.path.join(out_dir, TEST_LIST), "".join(name + "\n" for name in test_names))
    info = {
        "source_video": os.path.basename(video_path),
        "size": [width, height],
        "stride": stride,
        "step": step,
        "test_fraction": test_fraction,
        "test_position": test_position,
        "fit": fit,
        "max_triplets": max_triplets,
        "cut_ratio": cut_ratio,
        "duplicate_block": duplicate_block,
        "counts": counts,
    }
    atomic_write_text(os.path.join(out_dir, INFO_FILE), json.dumps(info, indent=2))  # marks the set as complete
    return counts


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a video into the Vimeo90K triplet layout (sequences/, tri_*list.txt)."
    )
    parser.add_argument("video", help="input video file (anything cv2.VideoCapture reads)")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--size", type=parse_size, default=(448, 256), help="WIDTHxHEIGHT (448x256)")
    parser.add_argument("--fit", choices=FITS, default="crop",
                        help="crop: keep the aspect ratio, resize to cover --size and centre-crop (default); "
                             "stretch: resize to --size, squeezing another aspect ratio")
    parser.add_argument("--stride", type=int, default=1, help="frames between im1, im2, im3 (1)")
    parser.add_argument("--test_fraction", type=float, default=0.1, help="share of the video used as test (0.1)")
    parser.add_argument("--test_position", choices=("start", "end"), default="end",
                        help="take the test block from the start or the end of the video (end)")
    parser.add_argument("--max_triplets", type=int, default=None, help="stop after N kept triplets")
    add_shot_arguments(parser, "triplets spanning it skipped")
    parser.add_argument("--step", type=int, default=1, help="start-frame distance between candidate triplets (1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in OUT_DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        counts = video_to_vimeo(
            args.video,
            args.out_dir,
            size=args.size,
            stride=args.stride,
            test_fraction=args.test_fraction,
            max_triplets=args.max_triplets,
            cut_ratio=args.cut_ratio,
            duplicate_block=args.duplicate_block,
            step=args.step,
            test_position=args.test_position,
            overwrite=args.overwrite,
            fit=args.fit,
        )
    except (ConversionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(describe_fit(tuple(counts["source_size"]), args.size, args.fit))
    print(
        f"{args.out_dir}: {counts['train']} train / {counts['test']} test triplets from "
        f"{counts['frames_read']} frames (skipped: {counts['skipped_scene_cut']} scene cut, "
        f"{counts['skipped_static']} static, {counts['skipped_split_boundary']} on the split boundary; "
        f"{counts['scene_cuts']} cuts detected)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
