"""Variants of the classical interpolation rule, scored per motion bucket on a corpus's *training* triplets.

Usage::

    python tools/classical_variants.py [--corpus data/corpus] [--count 120] [--seed 0]
        [--variants today plain ensemble6 ...] [--json OUT.json]

The model with ``--flow_prior dis`` starts as the classical interpolation (``measures.motion.interpolate_dis``) and,
trained on the corpus, stays there on the held-out clip (docs/LARGE_MOTION.md, fourteenth round). A better classical
start would lift it with nothing learned, so candidate rules are compared here first, on the CPU. They are chosen on
triplets drawn from ``tri_trainlist.txt`` (``random.Random(seed).sample``), never on the held-out clip the issue's
targets are measured on. Each triplet's middle frame is the target at t = 0.5; PSNR on [0, 1] RGB.

Variants (``--variants``; all by default):

* ``today``: :func:`measures.motion.interpolate_dis` as every benchmark runs it (DIS medium both ways, linear-motion
  flows at t, bilinear warps, occlusion-aware blend);
* ``cubic``, ``lanczos``: the same with the two image warps bicubic / Lanczos (the consistency masks stay bilinear);
* ``median5``: both DIS flows median-filtered 5x5 first;
* ``plain``: no occlusion weighting: ``(1 - t) warped0 + t warped1``;
* ``ensemble6`` / ``ensemble6_plain``: the mean of the frames that ``today`` / ``plain`` make from six DIS flows (the
  medium, fast and ultrafast presets on the full frame, medium on 480 and 320 px, fast on 320 px);
* ``meanflow6``: ``today`` on the mean of those six flows.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from measures.motion import (  # noqa: E402
    DIS_WORK_MAX_SIDE, ClassicalFrame, FlowPair, classical_frame, dis_flow, flow_pair, format_bucket_table,
    summarize_by_motion, to_gray_uint8,
)
from model.frames import read_rgb_uint8  # noqa: E402

MIDDLE_T = 0.5
# (preset, longest side DIS works on or None for the benchmarks' limit): the six flows of the ensembles
ENSEMBLE_FLOWS: tuple[tuple[int, int | None], ...] = (
    (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, None), (cv2.DISOPTICAL_FLOW_PRESET_FAST, None),
    (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, None), (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 480),
    (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 320), (cv2.DISOPTICAL_FLOW_PRESET_FAST, 320),
)


@dataclass
class Pair:
    """One triplet's inputs and what several variants share, each computed once: the frames (H, W, 3) uint8 RGB,
    their DIS medium flows, the classical frames of those flows and of the ensemble's six."""

    frame0: np.ndarray
    frame1: np.ndarray
    flows: FlowPair

    @cached_property
    def ensemble(self) -> list[FlowPair]:
        """The six :data:`ENSEMBLE_FLOWS` pairs (the first is ``flows``)."""
        return [self.flows] + [dis_pair(self.frame0, self.frame1, preset, side) for preset, side in ENSEMBLE_FLOWS[1:]]

    @cached_property
    def classical(self) -> ClassicalFrame:
        """The rule on ``flows``, at t = 0.5: the frame and the two warps it blended."""
        return self.classical_with(self.flows)

    @cached_property
    def ensemble_classical(self) -> list[ClassicalFrame]:
        """The rule on each of the six ensemble flows (the first is :attr:`classical`)."""
        return [self.classical] + [self.classical_with(flows) for flows in self.ensemble[1:]]

    def classical_with(self, flows: FlowPair, interpolation: int = cv2.INTER_LINEAR) -> ClassicalFrame:
        return classical_frame(self.frame0, self.frame1, MIDDLE_T, flows, interpolation)


def dis_pair(frame0: np.ndarray, frame1: np.ndarray, preset: int, max_side: int | None) -> FlowPair:
    """DIS flow both ways with ``preset`` on at most ``max_side`` px (None: the benchmarks' limit)."""
    gray0, gray1 = to_gray_uint8(frame0), to_gray_uint8(frame1)
    side = DIS_WORK_MAX_SIDE if max_side is None else max_side
    return FlowPair(dis_flow(gray0, gray1, side, preset), dis_flow(gray1, gray0, side, preset))


def plain_blend(frame: ClassicalFrame, t: float = MIDDLE_T) -> np.ndarray:
    """The two warps of ``frame`` time-weighted, without the occlusion weights: ``(1 - t) warped0 + t warped1``."""
    return np.clip((1 - t) * frame.warped0 + t * frame.warped1, 0.0, 1.0)


def median_filtered(flows: FlowPair, size: int = 5) -> FlowPair:
    def filtered(flow: np.ndarray) -> np.ndarray:
        return np.stack([cv2.medianBlur(np.ascontiguousarray(flow[..., c]), size) for c in range(2)], axis=-1)
    return FlowPair(filtered(flows.forward), filtered(flows.backward))


def mean_flows(pairs: Sequence[FlowPair]) -> FlowPair:
    return FlowPair(np.mean([p.forward for p in pairs], axis=0), np.mean([p.backward for p in pairs], axis=0))


VARIANTS: dict[str, Callable[[Pair], np.ndarray]] = {
    "today": lambda p: p.classical.frame,
    "cubic": lambda p: p.classical_with(p.flows, cv2.INTER_CUBIC).frame,
    "lanczos": lambda p: p.classical_with(p.flows, cv2.INTER_LANCZOS4).frame,
    "median5": lambda p: p.classical_with(median_filtered(p.flows)).frame,
    "plain": lambda p: plain_blend(p.classical),
    "ensemble6": lambda p: np.mean([c.frame for c in p.ensemble_classical], axis=0),
    "ensemble6_plain": lambda p: np.mean([plain_blend(c) for c in p.ensemble_classical], axis=0),
    "meanflow6": lambda p: p.classical_with(mean_flows(p.ensemble)).frame,
}


def psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(-10.0 * np.log10(np.mean((prediction - target) ** 2) + 1e-12))


class VariantsError(SystemExit):
    """One line on stderr, the tool's name first, and exit status 1 (a missing or unreadable frame)."""

    def __init__(self, message: str):
        super().__init__(f"classical_variants.py: error: {message}")


def score(corpus: Path, names: Sequence[str], variants: Sequence[str]) -> list[dict]:
    """One record per triplet: its name, motion (px, the benchmarks' statistic) and each variant's PSNR (dB)."""
    records = []
    for name in names:
        frame0, middle, frame1 = (read_rgb_uint8(corpus / "sequences" / name / f"im{k}.png", VariantsError)
                                  for k in (1, 2, 3))
        pair = Pair(frame0, frame1, flow_pair(frame0, frame1))
        target = middle.astype(np.float32) / 255
        record = {"name": name, "motion": pair.flows.motion}
        record.update({variant: psnr(VARIANTS[variant](pair), target) for variant in variants})
        records.append(record)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score variants of the classical interpolation rule per motion "
                                                 "bucket on a corpus's training triplets.")
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "data" / "corpus",
                        help="a corpus tools/make_corpus.py built (default data/corpus)")
    parser.add_argument("--count", type=int, default=120, help="training triplets to draw (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="random.Random(seed).sample draws them (default 0)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="write the per-triplet records and the table here")
    args = parser.parse_args(argv)
    listing = args.corpus / "tri_trainlist.txt"
    if not listing.is_file():
        parser.error(f"--corpus {args.corpus} has no tri_trainlist.txt (build one with tools/make_corpus.py)")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not 1 <= args.count <= len(names):
        parser.error(f"--count must be between 1 and the {len(names)} training triplets of {listing}, got {args.count}")
    drawn = random.Random(args.seed).sample(names, args.count)
    records = score(args.corpus, drawn, args.variants)
    rows = summarize_by_motion(records, args.variants)
    overall = {"bucket": "all", "count": len(records),
               **{v: float(np.mean([r[v] for r in records])) for v in args.variants}}
    print(f"{len(records)} training triplets of {args.corpus} (random.Random({args.seed}).sample), PSNR dB at t = 0.5")
    print(format_bucket_table([*rows, overall], [(v, v[:12]) for v in args.variants]))
    if args.json is not None:
        args.json.write_text(json.dumps({"corpus": str(args.corpus), "seed": args.seed, "records": records,
                                         "buckets": rows, "overall": overall}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
