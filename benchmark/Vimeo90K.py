"""Vimeo90K triplet test set: 3,782 triplets at 448x256 (docs/DESIGN.md 12).

Layout under --path (the vimeo_triplet folder):
    tri_testlist.txt                      one "00001/0001" per line
    sequences/00001/0001/im1.png im2.png im3.png      im2 is the ground truth (t = 0.5)

Protocol (VFIMamba / EMA-VFI): prediction not quantized, PSNR and ssim_matlab on [0, 1], centred padding to 32
(a no-op at 448x256), flow at full scale. RIFE's own script rounds the prediction to 8 bit first; we do not.

    python benchmark/Vimeo90K.py --model phase1_hybrid_v2_best --path /data/vimeo_triplet [--tta] [--out r.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from benchmark.eval_core import Protocol, Sample, Subset, benchmark_main, read_list_file  # noqa: E402

PROTOCOL = Protocol("Vimeo90K", pad_multiple=32, flow_scale=1.0, quantize=False, official_samples=3782)


def enumerate_samples(root: Path) -> list[Sample]:
    """Triplets named in tri_testlist.txt, in file order."""
    samples = []
    for (name,) in read_list_file(root / "tri_testlist.txt"):
        folder = root / "sequences" / name
        samples.append(Sample(name, folder / "im1.png", folder / "im2.png", folder / "im3.png"))
    return samples


def main(argv: list[str] | None = None) -> dict:
    return benchmark_main(argv, __doc__, "Vimeo90K",
                          lambda root, name: Subset(name, PROTOCOL, tuple(enumerate_samples(root))))


if __name__ == "__main__":
    main()
