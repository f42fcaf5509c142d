"""X-TEST (X4K1000FPS test split): 15 scenes at 4096x2160, 8x interpolation, 105 targets (docs/DESIGN.md 12).

Layout: <path>/test/<Type>/<scene>/0000.png .. 0032.png (--path may also be the test folder itself). Frames are
taken in sorted order; each window of 33 frames gives inputs 0 and 32 and targets 4, 8, ..., 28 at t = k / 8.

Protocol (VFIMamba / EMA-VFI XTEST): "2k" resizes inputs and ground truth to 2048x1080 with cv2.INTER_AREA on
the float32 [0, 1] image (as the reference does, so the 2K ground truth is not 8-bit), flow at 0.5; "4k" is
native, flow at 0.25. Centred padding to 32, prediction rounded to 8 bit, PSNR and ssim_matlab, averaged per
scene, then over scenes. Fixed-t models bisect there (t = 0.5, three levels); ours is asked for t = k / 8
directly (Phase-3 models are trained for arbitrary t; Phase-1/2 models accept t as well).

    python benchmark/XTest.py --model exp3d_curriculum_best --path /data/X4K1000FPS --resolution 4k
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from benchmark.eval_core import BenchmarkError, FrameGeometry, Protocol, Sample, resolution_main  # noqa: E402

WINDOW = 32          # frames between the two inputs
TARGETS = 8          # 8x interpolation: targets at t = 1/8 .. 7/8
PROTOCOLS = {
    "2k": Protocol("X-TEST-2K", pad_multiple=32, flow_scale=0.5, quantize=True, average_per_group=True,
                   official_samples=105, geometry=FrameGeometry(resize_to=(2048, 1080), resize_float=True)),
    "4k": Protocol("X-TEST-4K", pad_multiple=32, flow_scale=0.25, quantize=True, average_per_group=True,
                   official_samples=105),
}


def sorted_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def enumerate_samples(root: Path) -> list[Sample]:
    """Seven targets per 33-frame window, scene by scene; the group is the scene (``Type/scene``)."""
    test_root = root / "test" if (root / "test").is_dir() else root
    samples = []
    for type_folder in sorted_subfolders(test_root):
        for scene in sorted_subfolders(type_folder):
            frames = sorted(scene.glob("*.png"))
            if len(frames) <= WINDOW:
                raise BenchmarkError(f"X-TEST scene {scene} has {len(frames)} frames; expected at least "
                                     f"{WINDOW + 1} (0000.png .. {WINDOW:04d}.png)")
            scene_name = f"{type_folder.name}/{scene.name}"
            for start in range(0, len(frames) - WINDOW, WINDOW):
                group = scene_name if start == 0 else f"{scene_name}@{start}"
                for k in range(1, TARGETS):
                    target = frames[start + k * WINDOW // TARGETS]
                    samples.append(Sample(f"{scene_name}/{target.name}", frames[start], target,
                                          frames[start + WINDOW], t=k / TARGETS, group=group))
    if not samples:
        raise BenchmarkError(f"no X-TEST scenes (<Type>/<scene>/0000.png ..) under {test_root}")
    return samples


def main(argv: list[str] | None = None) -> dict:
    return resolution_main(argv, __doc__, "X-TEST", PROTOCOLS, enumerate_samples)


if __name__ == "__main__":
    main()
