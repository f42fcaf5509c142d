"""Xiph (Netflix 4K clips): 8 clips x 49 triplets, scored at "2K" and "4K" (docs/DESIGN.md 12).

Layout under --path: the first 100 frames of each clip, numbered from 001, either flat as the reference
download writes them (ffmpeg ... netflix/<clip>-%03d.png), i.e. <path>/<clip>-001.png, or one folder per clip,
<path>/<clip>/001.png. Clips: BoxingPractice, Crosswalk, DrivingPOV, FoodMarket, FoodMarket2, RitualDance,
SquareAndTimelapse, Tango. Ground truth is frame n = 2, 4, ..., 98 with inputs n - 1 and n + 1 (392 triplets).

Protocol (VFIMamba / EMA-VFI): "2k" resizes the 4096x2160 uint8 frames to 2048x1080 (cv2.INTER_AREA); "4k" is
the centre crop [540:-540, 1024:-1024] (2048x1080 pixels of the native frame). Centred padding to 16, flow at
0.5 scale on both, prediction clamped and rounded to uint8, then scikit-image-style PSNR and SSIM (7x7 uniform
window, data_range 255, per channel) on uint8 -- not ssim_matlab. Mean over all 392 triplets.

    python benchmark/Xiph.py --model exp3d_curriculum_best --path /data/xiph/netflix --resolution 2k
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from benchmark.eval_core import FrameGeometry, Protocol, Sample, resolution_main  # noqa: E402

CLIPS = ("BoxingPractice", "Crosswalk", "DrivingPOV", "FoodMarket", "FoodMarket2", "RitualDance",
         "SquareAndTimelapse", "Tango")
GROUND_TRUTH_FRAMES = range(2, 99, 2)   # frame numbers start at 001 (ffmpeg's %03d)
PROTOCOLS = {
    "2k": Protocol("Xiph-2K", pad_multiple=16, flow_scale=0.5, metric="skimage_uint8", official_samples=392,
                   geometry=FrameGeometry(resize_to=(2048, 1080))),
    "4k": Protocol("Xiph-4K", pad_multiple=16, flow_scale=0.5, metric="skimage_uint8", official_samples=392,
                   geometry=FrameGeometry(crop_margins=(540, 1024))),
}


def frame_path(root: Path, clip: str, number: int) -> Path:
    """<root>/<clip>-NNN.png (the reference layout), or <root>/<clip>/NNN.png when only that exists."""
    flat = root / f"{clip}-{number:03d}.png"
    per_clip = root / clip / f"{number:03d}.png"
    return per_clip if not flat.is_file() and per_clip.is_file() else flat


def enumerate_samples(root: Path) -> list[Sample]:
    """392 triplets (n - 1, n, n + 1), clip by clip, n = 2, 4, ..., 98."""
    return [Sample(f"{clip}-{n:03d}", frame_path(root, clip, n - 1), frame_path(root, clip, n),
                   frame_path(root, clip, n + 1)) for clip in CLIPS for n in GROUND_TRUTH_FRAMES]


def main(argv: list[str] | None = None) -> dict:
    return resolution_main(argv, __doc__, "Xiph", PROTOCOLS, enumerate_samples)


if __name__ == "__main__":
    main()
