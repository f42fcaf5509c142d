"""SNU-FILM: 1,240 triplets of about 1280x720 in four motion levels (docs/DESIGN.md 12).

Layout under --path: test-easy.txt, test-medium.txt, test-hard.txt, test-extreme.txt, each line "img0 gt img1".
The published lists write paths as data/SNU-FILM/test/<clip>/<frame>.png, joined to --path as written; when that
file does not exist the path is also tried without its "data/SNU-FILM/" prefix, so --path may be either the
folder that holds data/SNU-FILM/ or the SNU-FILM folder itself.

Protocol (VFIMamba / EMA-VFI): prediction not quantized, PSNR and ssim_matlab on [0, 1], centred padding to 32,
flow estimated at 0.5 scale on every level. Phase-1 models have no flow estimator and ignore --flow_scale.

    python benchmark/SNU_FILM.py --model exp2c_feature_warp_best --path /data/SNU-FILM --split hard
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from benchmark.eval_core import Protocol, Sample, Subset, benchmark_main, read_list_file  # noqa: E402

PROTOCOL = Protocol("SNU-FILM", pad_multiple=32, flow_scale=0.5, quantize=False,
                    official_samples=310)   # per split: 4 x 310 = 1,240
SPLITS = ("easy", "medium", "hard", "extreme")
LIST_PREFIX = Path("data/SNU-FILM")


def resolve_entry(root: Path, entry: str) -> Path:
    """A list entry joined to ``root`` as written, else without the data/SNU-FILM/ prefix when that exists."""
    as_written = root / entry
    relative = Path(entry)
    if not as_written.is_file() and relative.parts[:len(LIST_PREFIX.parts)] == LIST_PREFIX.parts:
        stripped = root / relative.relative_to(LIST_PREFIX)
        if stripped.is_file():
            return stripped
    return as_written


def enumerate_split(root: Path, split: str) -> list[Sample]:
    """Triplets of test-<split>.txt, in file order; the sample name is the ground-truth entry."""
    samples = []
    for img0, gt, img1 in read_list_file(root / f"test-{split}.txt", fields=3):
        samples.append(Sample(gt, resolve_entry(root, img0), resolve_entry(root, gt), resolve_entry(root, img1)))
    return samples


def main(argv: list[str] | None = None) -> dict:
    return benchmark_main(argv, __doc__, "SNU-FILM",
                          lambda root, split: Subset(split, PROTOCOL, tuple(enumerate_split(root, split))),
                          choice_flag="--split", choices=SPLITS)


if __name__ == "__main__":
    main()
