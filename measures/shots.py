"""Shot boundaries and duplicate frames: the one frame-difference measure of the repository.

Used by ``interpolate.py`` (never blend two shots, never interpolate between a frame and its repeat) and by
``tools/video_to_vimeo.py`` (no training triplet across a cut or over a frozen frame).

Two questions about a pair of consecutive frames (pair ``i`` = frames ``i`` and ``i + 1``), two measures:

* **Cut** (a new shot starts at frame ``i + 1``). The pair's *content change* is
  ``(structure + histogram) / 2`` in [0, 1]:

  - structure = ``(1 - r) / 2`` with ``r`` the correlation coefficient of the two frames' grey copies
    (channel mean), area-downscaled to at most ``CUT_SIZE`` px on the longer side, after undoing the pair's global
    shift (the larger of the correlation as is and after aligning by the phase-correlation peak, on the overlap).
    Correlation does not change when a shot gets brighter or darker (gain and offset), so a cut between two dark
    shots scores as high as one between two bright shots, and a flash scores low; the alignment makes a camera
    pan score low too, so a cut between two pans still stands out;
  - histogram = the mean over channels of half the L1 distance of the two frames' ``HISTOGRAM_BINS``-bin colour
    histograms: motion within a shot keeps the histogram, a new shot usually changes it.

  Motion changes a frame too, and by how much depends on the footage (a fast textured pan decorrelates every
  pair), so no single level separates cuts from motion. A pair is a cut when its content change stands out from
  its neighbours' (the idea of PySceneDetect's adaptive detector, written here with a median):
  ``change >= cut_ratio * max(baseline, BASELINE_FLOOR)`` and ``change >= min_cut_change``, with ``baseline``
  the median change of the up to ``2 * window`` pairs around it (``window`` on each side, duplicates left out).
  A median, not a mean, so a second cut nearby does not hide the first. Without any neighbour (a two-frame clip)
  only ``lone_cut_change`` decides.

* **Duplicate** (frame ``i + 1`` repeats frame ``i``). The *largest block difference*: the two frames are
  area-downscaled to at most ``BLOCK_SIZE`` px on the longer side, and the mean absolute difference (0-255 scale,
  over channels) is taken in each ``BLOCK`` x ``BLOCK`` block; the pair is a duplicate when the largest block's is
  at most ``duplicate_block``. The largest block, not the mean over the frame: a small object moving on a still
  background changes a few blocks a lot and the frame mean hardly at all (an 80x80 object moving 24 px in 1080p:
  frame mean 0.19, its block 16.6 levels). Block size and threshold are measured: in the Big Buck Bunny sample
  (1280x720, H.264) the frames repeated by 24 -> 25 fps conversion reach at most 0.74 levels (codec noise sits in a
  few blocks: with 8 px blocks they reach 2.4) and its smallest real motion 3.4, so 1.5 sits a factor two from each.

Frames are (H, W, 3) or (H, W) uint8 arrays; channel order does not matter (every score treats the channels
alike), so OpenCV's BGR frames and RGB frames score the same. Both frames of a pair must have one size.

API::

    signature = frame_signature(frame)            # FrameSignature: the small copies the scores need (~1.3 MB)
    score = pair_score(signature0, signature1)    # PairScore(change, largest_block)

    verdicts = classify_frames(frames)            # whole list: one PairVerdict per pair, len(frames) - 1 of them

    detector = ShotDetector(ShotSettings())       # streaming, bounded look-ahead
    for frame in frames:
        for verdict in detector.push_frame(frame):   # verdicts come in pair order, each pair once;
            ...                                      # pair i is decided once frame i + 1 + window has arrived
    for verdict in detector.finish():                # the last ``window`` pairs
        ...

``ShotDetector.push_score`` takes a :class:`PairScore` computed elsewhere (e.g. in a decoding thread) instead of a
frame. A caller holds at most ``detector.lookahead`` (= ``window``) frames beyond a pair before its verdict comes.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

CUT_SIZE = 64                # longer side of the grey copy the correlation runs on (px)
HISTOGRAM_BINS = 16          # per channel
BLOCK_SIZE = 448             # longer side of the copy the block differences run on (px)
BLOCK = 16                   # block side on that copy (px): ~69 px of a 1080p frame (the module docstring says why)
BASELINE_FLOOR = 0.02        # a still shot's neighbours change by ~0; codec noise alone must not make a cut
MAX_SHIFT = 0.25             # largest global shift (share of the copy's size) the structure measure undoes
FLAT_STD = 0.5               # grey standard deviation (0-255) below which a frame counts as flat
KINDS = ("motion", "cut", "duplicate")


@dataclass(frozen=True)
class ShotSettings:
    """Thresholds of the cut and duplicate rules (see the module docstring).

    cut_ratio: how far above its neighbours' median change a pair must be to be a cut (PySceneDetect's adaptive
        detector defaults to 3 against a rolling mean); math.inf: no cuts at all.
    min_cut_change: a cut changes at least this much content (0-1), whatever its neighbours.
    lone_cut_change: the content change that makes a cut when a pair has no neighbour to compare with.
    duplicate_block: largest block mean absolute difference (0-255) at or below which a pair is a duplicate;
        a negative value turns duplicate detection off.
    window: neighbours on each side that form the baseline; also the look-ahead, in frames, of the stream.
    """

    cut_ratio: float = 3.0
    min_cut_change: float = 0.15
    lone_cut_change: float = 0.25
    duplicate_block: float = 1.5
    window: int = 2

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.cut_ratio <= 1:
            raise ValueError(f"cut_ratio must be above 1, got {self.cut_ratio}")


def cut_ratio_argument(text: str) -> float:
    """argparse type of ``--cut_ratio``: a number above 1, or inf (no cuts)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 1:
        raise argparse.ArgumentTypeError(f"must be a number above 1 (or inf: no cuts), got {text}")
    return value


def add_shot_arguments(parser: argparse.ArgumentParser, action: str) -> None:
    """``--cut_ratio`` and ``--duplicate_block``, as every command that finds cuts and duplicates takes them.

    action: what the command does with such a pair, for the help text (e.g. "frames copied")."""
    parser.add_argument("--cut_ratio", type=cut_ratio_argument, default=ShotSettings.cut_ratio,
                        help="a pair whose content change is this many times its neighbours' median is a scene cut: "
                             f"{action} (default %(default)g; inf: never)")
    parser.add_argument("--duplicate_block", type=float, default=ShotSettings.duplicate_block,
                        help=f"a pair whose largest {BLOCK}x{BLOCK} block difference (0-255, on a <= "
                             f"{BLOCK_SIZE} px copy) is at most this is a duplicate: {action} "
                             "(default %(default)g; -1: never)")


@dataclass(frozen=True)
class FrameSignature:
    """The small copies of one frame that the pair scores need.

    grey: (h, w) float32, channel mean, longer side <= CUT_SIZE, zero mean and unit norm (zeros for a flat frame,
        standard deviation < FLAT_STD).
    histogram: (C, HISTOGRAM_BINS) float32, each row sums to 1.
    blocks: (h', w', C) float32, longer side <= BLOCK_SIZE, 0-255.
    """

    grey: np.ndarray
    histogram: np.ndarray
    blocks: np.ndarray


@dataclass(frozen=True)
class PairScore:
    """change: content change of the pair, 0 (same picture) .. 1 (nothing in common), the cut measure.
    structure, histogram: its two halves (each 0-1). largest_block: 0-255, the duplicate measure."""

    change: float
    structure: float
    histogram: float
    largest_block: float


@dataclass(frozen=True)
class PairVerdict:
    """What pair ``pair`` (frames pair, pair + 1) is: kind "cut", "duplicate" or "motion", with its scores and the
    baseline (median change of its neighbours; None when it had none) that decided a cut."""

    pair: int
    kind: str
    score: PairScore
    baseline: float | None

    def as_dict(self) -> dict:
        """JSON-ready: frame indices, kind and scores rounded to 4 decimals."""
        return {"frames": [self.pair, self.pair + 1], "kind": self.kind,
                "change": round(self.score.change, 4), "structure": round(self.score.structure, 4),
                "histogram": round(self.score.histogram, 4), "largest_block": round(self.score.largest_block, 4),
                "baseline": None if self.baseline is None else round(self.baseline, 4)}


def downscale(frame: np.ndarray, longer_side: int) -> np.ndarray:
    """Area-downscale so the longer side is at most ``longer_side`` (never upscaled); float32 copy."""
    height, width = frame.shape[:2]
    scale = longer_side / max(height, width)
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    return frame.astype(np.float32)


def frame_signature(frame: np.ndarray) -> FrameSignature:
    """(H, W, C) or (H, W) uint8 -> the :class:`FrameSignature` the pair scores compare."""
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise ValueError(f"a frame must be an (H, W) or (H, W, C) uint8 array, got {frame.dtype} {frame.shape}")
    channels = frame if frame.ndim == 3 else frame[..., None]
    # One area downscale from the full frame; the grey copy is taken from that (the same as from the full frame up
    # to rounding, at a fraction of the cost at 4K).
    blocks = downscale(channels, BLOCK_SIZE)
    blocks = blocks if blocks.ndim == 3 else blocks[..., None]
    grey = downscale(blocks.mean(axis=2), CUT_SIZE)
    grey = grey - grey.mean()
    norm = float(np.linalg.norm(grey))
    # A flat frame (black, a title card's background) has no structure to correlate: its codec noise would.
    flat = norm / np.sqrt(grey.size) < FLAT_STD
    grey = np.zeros_like(grey) if flat else grey / norm
    # On the downscaled copy too: the same distribution up to a little smoothing.
    histogram = np.stack([cv2.calcHist([np.ascontiguousarray(blocks[..., c])], [0], None, [HISTOGRAM_BINS],
                                       [0, 256]).ravel() for c in range(blocks.shape[2])])
    histogram = (histogram / histogram.sum(axis=1, keepdims=True)).astype(np.float32)
    return FrameSignature(grey, histogram, blocks)


def largest_block_difference(a: np.ndarray, b: np.ndarray, block: int = BLOCK) -> float:
    """Largest mean absolute difference over ``block`` x ``block`` blocks of two (h, w, C) float arrays (0-255).
    Edge blocks that do not fill a whole block are averaged over what they hold."""
    difference = np.abs(a - b).mean(axis=2)
    height, width = difference.shape
    rows, cols = -(-height // block), -(-width // block)
    padded = np.zeros((rows * block, cols * block), np.float32)
    padded[:height, :width] = difference
    counts = np.zeros_like(padded)
    counts[:height, :width] = 1
    sums = padded.reshape(rows, block, cols, block).sum(axis=(1, 3))
    return float((sums / counts.reshape(rows, block, cols, block).sum(axis=(1, 3))).max())


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation coefficient of two (h, w) grey copies after shifting ``b`` by the phase-correlation peak (the
    pair's global motion), on the overlap; -1 when the peak is beyond MAX_SHIFT of the size (no overlap to trust)."""
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float64), b.astype(np.float64))
    dx, dy = round(dx), round(dy)
    height, width = a.shape
    if abs(dx) > MAX_SHIFT * width or abs(dy) > MAX_SHIFT * height or (dx, dy) == (0, 0):
        return -1.0
    overlap_a = a[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
    overlap_b = b[max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)]
    overlap_a, overlap_b = overlap_a - overlap_a.mean(), overlap_b - overlap_b.mean()
    norm = float(np.linalg.norm(overlap_a) * np.linalg.norm(overlap_b))
    return float((overlap_a * overlap_b).sum()) / norm if norm > 0 else -1.0


def pair_score(a: FrameSignature, b: FrameSignature) -> PairScore:
    """The cut and duplicate measures of two consecutive frames' signatures."""
    if a.blocks.shape != b.blocks.shape:
        raise ValueError(f"frames of different sizes cannot be compared: {a.blocks.shape} and {b.blocks.shape}")
    flat_a, flat_b = not a.grey.any(), not b.grey.any()
    if flat_a and flat_b:
        structure = 0.0                     # two flat frames: any change is in the histogram
    elif flat_a or flat_b:
        structure = 0.5                     # a flat frame is uncorrelated with a textured one
    else:
        structure = (1.0 - max(float((a.grey * b.grey).sum()), aligned_correlation(a.grey, b.grey))) / 2
        structure = float(np.clip(structure, 0.0, 1.0))
    histogram = float(np.abs(a.histogram - b.histogram).sum(axis=1).mean() / 2)
    return PairScore((structure + histogram) / 2, structure, histogram, largest_block_difference(a.blocks, b.blocks))


class ShotDetector:
    """Classifies pairs as they stream in, with a look-ahead of ``settings.window`` frames (module docstring).

    Feed frames with :meth:`push_frame` (or pair scores with :meth:`push_score`), then call :meth:`finish`; every
    call returns the verdicts that became certain, in pair order. Holds ``2 * window + 1`` scores, never frames.
    """

    def __init__(self, settings: ShotSettings | None = None):
        self.settings = settings or ShotSettings()
        self.scores: deque[PairScore] = deque()       # pairs first_pair, first_pair + 1, ... not yet decided or kept
        self.first_pair = 0                            # index of scores[0]
        self.next_pair = 0                             # the next pair to decide
        self.pushed = 0                                # pair scores received
        self.previous: FrameSignature | None = None
        self.finished = False

    @property
    def lookahead(self) -> int:
        """Frames after frame i + 1 that must arrive before pair i is decided."""
        return self.settings.window

    def push_frame(self, frame: np.ndarray) -> list[PairVerdict]:
        signature = frame_signature(frame)
        previous, self.previous = self.previous, signature
        return [] if previous is None else self.push_score(pair_score(previous, signature))

    def push_score(self, score: PairScore) -> list[PairVerdict]:
        if self.finished:
            raise RuntimeError("ShotDetector.push_* after finish()")
        self.scores.append(score)
        self.pushed += 1
        return self._decide(until=self.pushed - self.settings.window)

    def finish(self) -> list[PairVerdict]:
        """The verdicts of the last pairs (their right neighbours are all there are)."""
        self.finished = True
        return self._decide(until=self.pushed)

    def _is_duplicate(self, score: PairScore) -> bool:
        return score.largest_block <= self.settings.duplicate_block

    def _decide(self, until: int) -> list[PairVerdict]:
        """Decide pairs next_pair .. until - 1; then forget scores no later pair can look at."""
        verdicts = []
        window = self.settings.window
        while self.next_pair < until:
            pair = self.next_pair
            score = self.scores[pair - self.first_pair]
            neighbours = [self.scores[other - self.first_pair].change
                          for other in range(max(self.first_pair, pair - window), min(self.pushed, pair + window + 1))
                          if other != pair and not self._is_duplicate(self.scores[other - self.first_pair])]
            baseline = statistics.median(neighbours) if neighbours else None
            verdicts.append(PairVerdict(pair, self._kind(score, baseline), score, baseline))
            self.next_pair += 1
        while self.first_pair < self.next_pair - window:
            self.scores.popleft()
            self.first_pair += 1
        return verdicts

    def _kind(self, score: PairScore, baseline: float | None) -> str:
        settings = self.settings
        if self._is_duplicate(score):
            return "duplicate"
        if settings.cut_ratio == math.inf:
            return "motion"
        if baseline is None:
            return "cut" if score.change >= settings.lone_cut_change else "motion"
        if (score.change >= settings.min_cut_change
                and score.change >= settings.cut_ratio * max(baseline, BASELINE_FLOOR)):
            return "cut"
        return "motion"


def classify_frames(frames: Iterable[np.ndarray], settings: ShotSettings | None = None) -> list[PairVerdict]:
    """Every pair of a whole sequence of frames: ``len(frames) - 1`` verdicts, pair i = frames (i, i + 1)."""
    detector = ShotDetector(settings)
    verdicts = []
    for frame in frames:
        verdicts += detector.push_frame(frame)
    return verdicts + detector.finish()
