"""The real-footage corpus's held-out clips (tools/make_corpus.py), scored per motion bucket.

Layout under --path (what tools/make_corpus.py builds): tri_testlist.txt, sequences/<5-digit>/<4-digit>/im1..3.png,
corpus.json (each triplet's clip, stride and start frame). Only the test split is scored; its clips were never
trained on (the split is by clip). A sample is named "<clip> s<stride> f<start>" and grouped by its clip.

Protocol: the frames as stored (longer side at most 640 px by default), centred padding to 32, flow at full scale
(--flow_scale, --motion_flow_scale to change it), prediction not quantized, PSNR and ssim_matlab on [0, 1], one
mean over samples. Every report holds each sample's DIS motion, PSNR/SSIM per motion bucket, the frame average and
the classical DIS baseline (benchmark/eval_core.py).

    python benchmark/Corpus.py --model corpus_phase2_last --path data/corpus --out corpus.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from benchmark.eval_core import BenchmarkError, Protocol, Sample, Subset, benchmark_main, read_list_file  # noqa: E402

PROTOCOL = Protocol("Corpus", pad_multiple=32, flow_scale=1.0, quantize=False)
INFO_FILE = "corpus.json"


def sample_name(clip: str, stride: int, start: int) -> str:
    """A corpus sample's name in every report: "<clip> s<stride> f<start>" (``stride_of`` reads it back)."""
    return f"{clip} s{stride} f{start}"


def stride_of(name: str) -> int | None:
    """The temporal stride in a corpus sample's name ("cityCC0 s3 f40" -> 3); None for a name of another form."""
    parts = name.rsplit(" ", 2)
    if len(parts) == 3 and parts[1][:1] == "s" and parts[1][1:].isdigit() and parts[2][:1] == "f":
        return int(parts[1][1:])
    return None


def enumerate_samples(root: Path) -> list[Sample]:
    """Triplets of tri_testlist.txt, in file order, named and grouped by their clip from corpus.json."""
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise BenchmarkError(f"{info_path} not found: --path must be a corpus built by tools/make_corpus.py")
    try:
        triplets = json.loads(info_path.read_text())["triplets"]
    except (ValueError, KeyError):
        raise BenchmarkError(f"{info_path} is not a corpus description (no 'triplets')") from None
    samples = []
    for (name,) in read_list_file(root / "tri_testlist.txt"):
        if name not in triplets:
            raise BenchmarkError(f"{name} is in tri_testlist.txt but not in {info_path}")
        clip, stride, start = triplets[name]
        folder = root / "sequences" / name
        samples.append(Sample(sample_name(clip, stride, start), folder / "im1.png", folder / "im2.png",
                              folder / "im3.png", group=clip))
    return samples


def main(argv: list[str] | None = None) -> dict:
    return benchmark_main(argv, __doc__, "Corpus",
                          lambda root, name: Subset(name, PROTOCOL, tuple(enumerate_samples(root))))


if __name__ == "__main__":
    main()
