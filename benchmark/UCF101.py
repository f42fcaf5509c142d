"""UCF101 interpolation test set (ucf101_interp_ours): 379 triplets at 256x256 (docs/DESIGN.md 12).

Layout under --path: one folder per triplet, <id>/frame_00.png, frame_01_gt.png, frame_02.png; every sub-folder
holding all three files is a sample (in sorted order, so --limit is reproducible).

Protocol (VFIMamba / EMA-VFI): prediction rounded to 8 bit (round(x * 255) / 255) before PSNR and ssim_matlab,
flow at full scale. The reference does not pad (256 is already a multiple of 32); centred padding to 32 is the
same no-op here.

    python benchmark/UCF101.py --model phase1_hybrid_v2_best --path /data/UCF101/ucf101_interp_ours
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from benchmark.eval_core import BenchmarkError, Protocol, Sample, Subset, benchmark_main  # noqa: E402

PROTOCOL = Protocol("UCF101", pad_multiple=32, flow_scale=1.0, quantize=True, official_samples=379)
FRAME_NAMES = ("frame_00.png", "frame_01_gt.png", "frame_02.png")   # img0, ground truth, img1


def enumerate_samples(root: Path) -> list[Sample]:
    """One sample per sub-folder that has all three frames, sorted by folder name."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and all((p / f).is_file() for f in FRAME_NAMES))
    if not folders:
        raise BenchmarkError(f"no UCF101 triplets (<id>/{', '.join(FRAME_NAMES)}) under {root}")
    return [Sample(folder.name, *(folder / f for f in FRAME_NAMES)) for folder in folders]


def main(argv: list[str] | None = None) -> dict:
    return benchmark_main(argv, __doc__, "UCF101",
                          lambda root, name: Subset(name, PROTOCOL, tuple(enumerate_samples(root))))


if __name__ == "__main__":
    main()
