"""How far things move between two frames, and what classical optical flow makes of the frame between them.

Everything here runs OpenCV's DIS optical flow (Kroeger et al., ECCV 2016; ``cv2.DISOpticalFlow``, medium preset)
on the frames as they are scored, on the CPU, and knows nothing of the model.

* :func:`motion_statistic`: **the 95th percentile of |F_0->1| in pixels at the evaluated resolution**. The mean is
  dominated by a static background, the maximum by a few bad matches; the 95th percentile is the motion of the
  fastest twentieth of the frame, which is where interpolation fails.
* :data:`MOTION_BUCKETS` / :func:`bucket_of` / :func:`summarize_by_motion`: quality per motion bucket
  (< 4, 4-16, 16-32, 32-64, > 64 px), the stratification the VFI literature asks for.
* :func:`teacher_flows`: DIS flows from the middle frame to both inputs, the pseudo-labels of the training loss's
  flow-teacher term (``--flow_teacher``, model/loss.py :class:`FlowTeacherLoss`).
* :func:`prior_pair_flows`: DIS flows both ways between the two inputs, where a ``--flow_prior dis`` model's flow
  estimator starts (model/ops/prior.py); no middle frame is needed, so they exist at test time too.
* :func:`interpolate_dis`: the classical baseline. DIS flow both ways, flows at t by the linear-motion
  approximation, both frames backward-warped to t, blended with occlusion-aware weights
  (:func:`occlusion_aware_weights`, the one rule).
* :func:`pick_by_warp_agreement`: per pixel, the candidate interpolation (a model's, the classical one) whose two
  warps agree best: a test-time rule measured by the benchmarks' ``--components``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import cv2
import numpy as np

# (label, lower bound inclusive, upper bound exclusive) in pixels of the evaluated frame.
MOTION_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<4", 0.0, 4.0),
    ("4-16", 4.0, 16.0),
    ("16-32", 16.0, 32.0),
    ("32-64", 32.0, 64.0),
    (">64", 64.0, math.inf),
)
MOTION_PERCENTILE = 95.0
MOTION_STATISTIC = "95th percentile of |DIS flow I0->I1| in px at the evaluated resolution"
DIS_WORK_MAX_SIDE = 2048      # larger frames are downscaled for DIS and the flow scaled back (4K: 2x)
# The flow prior's DIS runs on at most 1024 px (1080p at 960x540, 4K at 1024x576): two medium-preset calls then cost
# about 93 ms of one core for a 1080p pair instead of 390 (2-core CI machine), and the estimator refines the detail.
PRIOR_WORK_MAX_SIDE = 1024
# Forward-backward consistency (Sundaram et al. 2010): a flow vector is trusted where
# |F01(x) + F10(x + F01(x))|^2 <= ALPHA (|F01|^2 + |F10(x + F01)|^2) + BETA.
CONSISTENCY_ALPHA = 0.01
CONSISTENCY_BETA = 0.5
OCCLUDED_WEIGHT = 0.05        # what an inconsistent sample still counts (both inconsistent: the time weights rule)
AGREEMENT_WINDOW = 7          # px: the box over which two warps' disagreement is averaged (pick_by_warp_agreement)


def to_gray_uint8(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8, or float in [0, 1] -> (H, W) uint8 luma (what DIS reads)."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) frame, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def dis_flow(gray0: np.ndarray, gray1: np.ndarray, work_max_side: int = DIS_WORK_MAX_SIDE,
             preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> np.ndarray:
    """(H, W) uint8 pair -> (H, W, 2) float32 flow F with gray0(x) ~ gray1(x + F(x)), in pixels of the input.

    Frames whose longer side exceeds ``work_max_side`` are area-downscaled for DIS, and the flow is resized back
    and multiplied by the scale (DIS is coarse-to-fine already; this bounds the CPU time at 4K). ``preset``: one of
    OpenCV's DIS presets (medium everywhere in the repository; tools/classical_variants.py tries the others).
    """
    if gray0.shape != gray1.shape:
        raise ValueError(f"frames differ in size: {gray0.shape} vs {gray1.shape}")
    height, width = gray0.shape
    scale = min(1.0, work_max_side / max(height, width))
    if scale < 1.0:
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        gray0 = cv2.resize(gray0, size, interpolation=cv2.INTER_AREA)
        gray1 = cv2.resize(gray1, size, interpolation=cv2.INTER_AREA)
    dis = cv2.DISOpticalFlow_create(preset)
    flow = dis.calc(gray0, gray1, None)
    if scale < 1.0:
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= width / gray0.shape[1]
        flow[..., 1] *= height / gray0.shape[0]
    return flow.astype(np.float32, copy=False)


@dataclass(frozen=True)
class FlowPair:
    """DIS flow both ways between two frames: forward (H, W, 2) = F_0->1, backward (H, W, 2) = F_1->0."""

    forward: np.ndarray
    backward: np.ndarray

    @cached_property
    def motion(self) -> float:
        """:func:`motion_statistic` of the forward flow; computed once (a percentile over every pixel, read for each
        of X-TEST's seven targets of one pair)."""
        return motion_statistic(self.forward)


    def stacked(self) -> np.ndarray:
        """(4, H, W) float32 = [F_0->1 (x, y), F_1->0 (x, y)]: the layout of a model's ``flow_prior`` input.

        Plane by plane: a concatenation to (H, W, 4) then a transposed copy took 223 ms at 4K on one core here (more
        than the prior's two DIS calls), stacking the four planes 61 ms."""
        planes = [flow[..., channel] for flow in (self.forward, self.backward) for channel in (0, 1)]
        return np.stack(planes).astype(np.float32, copy=False)


def flow_pair(frame0: np.ndarray, frame1: np.ndarray, work_max_side: int = DIS_WORK_MAX_SIDE) -> FlowPair:
    """(H, W, 3) RGB frames (uint8 or float [0, 1]) -> DIS flow both ways (DIS on at most ``work_max_side`` px)."""
    gray0, gray1 = to_gray_uint8(frame0), to_gray_uint8(frame1)
    return FlowPair(dis_flow(gray0, gray1, work_max_side), dis_flow(gray1, gray0, work_max_side))


def prior_pair_flows(frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """The flow prior of a frame pair: (H, W, 3) RGB frames (uint8 or float [0, 1]) -> (4, H, W) float32
    [F_0->1, F_1->0] in pixels of the frames (DIS medium on at most :data:`PRIOR_WORK_MAX_SIDE` px).

    What a ``--flow_prior dis`` model takes as ``flow_prior`` (model/thesis.py); the data loader computes it on the
    augmented inputs of each training sample, the benchmarks and interpolate.py on every pair they interpolate.
    """
    return flow_pair(frame0, frame1, PRIOR_WORK_MAX_SIDE).stacked()


def prior_from_pair(flows: FlowPair, height: int, width: int) -> np.ndarray | None:
    """The prior of a pair whose :func:`flow_pair` (default work size) is already known, when it is the same
    computation (the frame fits in :data:`PRIOR_WORK_MAX_SIDE`, so neither was downscaled); else None."""
    return flows.stacked() if max(height, width) <= PRIOR_WORK_MAX_SIDE else None


def teacher_flows(frame0: np.ndarray, middle: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """DIS flows from the middle frame to both inputs: (4, H, W) float32 = [F_t->0 (x, y), F_t->1 (x, y)] in pixels.

    Frames are (H, W, 3) uint8 (or float in [0, 1]), the three of one training sample after augmentation. The
    layout is the model's (model/flow.py): ``middle(p) ~ frame0(p + F_t->0(p))``, so the flows are exactly what
    the model's estimator must predict to backward-warp the inputs to the middle frame. Two DIS calls (medium
    preset): with the grey conversions about 16 ms of one core per 256x256 sample (``benchmark/bench_loader.py
    --flow_teacher``), computed by the data loader's workers.
    """
    gray_middle = to_gray_uint8(middle)
    to0 = dis_flow(gray_middle, to_gray_uint8(frame0))
    to1 = dis_flow(gray_middle, to_gray_uint8(frame1))
    return np.ascontiguousarray(np.concatenate([to0, to1], axis=2).transpose(2, 0, 1))


def motion_statistic(flow: np.ndarray, percentile: float = MOTION_PERCENTILE) -> float:
    """(H, W, 2) flow -> the ``percentile`` of its per-pixel magnitude, in pixels (see the module docstring)."""
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    return float(np.percentile(magnitude, percentile))


def frame_motion(frame0: np.ndarray, frame1: np.ndarray) -> float:
    """The motion statistic of a frame pair (H, W, 3): 95th percentile of |DIS F_0->1| in px."""
    return motion_statistic(dis_flow(to_gray_uint8(frame0), to_gray_uint8(frame1)))


def bucket_of(motion: float) -> str:
    """The label of the bucket in :data:`MOTION_BUCKETS` that holds ``motion`` (px)."""
    for label, low, high in MOTION_BUCKETS:
        if low <= motion < high:
            return label
    return MOTION_BUCKETS[-1][0] if motion >= MOTION_BUCKETS[-1][1] else MOTION_BUCKETS[0][0]


def summarize_by_motion(records: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Per bucket: {"bucket", "low_px", "high_px", "count", <key>: mean of the records' values...}.

    records: dicts with a "motion" value (px) and the ``keys`` to average; keys missing from a bucket's records
    (a baseline not computed) are left out of that bucket. Every bucket is listed, empty ones with count 0.
    """
    rows = []
    for label, low, high in MOTION_BUCKETS:
        members = [r for r in records if r.get("motion") is not None and bucket_of(r["motion"]) == label]
        row: dict = {"bucket": label, "low_px": low, "high_px": None if math.isinf(high) else high,
                     "count": len(members)}
        for key in keys:
            values = [r[key] for r in members if r.get(key) is not None and math.isfinite(r[key])]
            if values and len(values) == len(members):
                row[key] = float(np.mean(values))
        rows.append(row)
    return rows


def format_bucket_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Rows of :func:`summarize_by_motion` as a plain-text table; columns: (key, heading) pairs."""
    heading = f"{'motion (px)':>12} {'count':>6}" + "".join(f" {title:>12}" for _, title in columns)
    lines = [heading]
    for row in rows:
        cells = "".join(f" {row[key]:12.4f}" if key in row else f" {'-':>12}" for key, _ in columns)
        lines.append(f"{row['bucket']:>12} {row['count']:6d}{cells}")
    return "\n".join(lines)


LARGE_MOTION_PX = 32.0       # motion from which motion_flow_scale halves the flow estimator's resolution


def motion_flow_scale(motion: float, base_scale: float = 1.0, large_motion: float = LARGE_MOTION_PX) -> float:
    """The flow estimator's downscale for a pair whose motion statistic is ``motion`` px: ``base_scale`` (the
    protocol's, chosen by resolution) below ``large_motion``, half of it from there on.

    Why: the estimator learns the motion its training crops hold (the corpus's: mostly below 32 px); on frames at
    half size a 64 px motion is 32 px, back in that range, at the cost of detail, which small motions need more.
    """
    return base_scale if motion < large_motion else base_scale / 2


# --------------------------------------------------------------------------------------------------------
# The classical baseline
# --------------------------------------------------------------------------------------------------------
def _identity_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return xs, ys


def backward_warp(image: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """image sampled at x + flow(x) (bilinear unless ``interpolation`` names another cv2 kernel, border replicated):
    (H, W, C) or (H, W), flow (H, W, 2)."""
    xs, ys = _identity_grid(*flow.shape[:2])
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], interpolation=interpolation,
                     borderMode=cv2.BORDER_REPLICATE)


def flow_consistency_error(flow: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(squared error, squared tolerance), both (H, W): of ``flow`` (H, W, 2) against the reverse flow ``other``.

    error = |flow(x) + other(x + flow(x))|^2, tolerance = ALPHA (|flow|^2 + |other(x + flow)|^2) + BETA: a
    vector whose round trip does not come back is either occluded in the other frame or wrong.
    """
    other_there = backward_warp(other, flow)
    error = np.sum((flow + other_there) ** 2, axis=-1)
    tolerance = CONSISTENCY_ALPHA * (np.sum(flow ** 2, axis=-1) + np.sum(other_there ** 2, axis=-1)) + CONSISTENCY_BETA
    return error, tolerance


def occlusion_aware_weights(t: float, trusted0: np.ndarray, trusted1: np.ndarray,
                            occluded_weight: float = OCCLUDED_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """The blend rule: per-pixel weights (w0, w1), each (H, W), w0 + w1 = 1.

    trusted0 / trusted1: (H, W) in [0, 1], whether the sample fetched from I0 / I1 for this pixel of I_t came
    through a forward-backward consistent flow vector. Each sample gets its time weight ((1 - t) for I0, t for I1)
    times 1 where trusted and ``occluded_weight`` where not, then the two are normalized. So an occluded (or
    mismatched) sample gives way to the other frame's, and where both are trusted, or neither, the weights are
    the frame average's (1 - t, t).
    """
    visible0 = occluded_weight + (1.0 - occluded_weight) * trusted0
    visible1 = occluded_weight + (1.0 - occluded_weight) * trusted1
    raw0, raw1 = (1.0 - t) * visible0, t * visible1
    total = raw0 + raw1
    neither = total < 1e-6                       # only with occluded_weight 0: fall back to the time weights
    weight0 = np.where(neither, 1.0 - t, raw0 / np.where(neither, 1.0, total))
    return weight0.astype(np.float32), (1.0 - weight0).astype(np.float32)


@dataclass(frozen=True)
class ClassicalFrame:
    """The classical baseline's frame at t and the two warps it blended, each (H, W, 3) float32 in [0, 1]-ish (the
    warps unclipped): what :func:`pick_by_warp_agreement` compares with a model's own warps."""

    frame: np.ndarray
    warped0: np.ndarray
    warped1: np.ndarray


def interpolate_dis(frame0: np.ndarray, frame1: np.ndarray, t: float = 0.5,
                    flows: FlowPair | None = None) -> np.ndarray:
    """The classical baseline: (H, W, 3) frames (uint8 or float [0, 1]) -> (H, W, 3) float32 frame at ``t`` in [0, 1].

    Flows at t under linear motion (Jiang et al., Super SloMo, eq. 4):
        F_t->0 = -(1 - t) t F_0->1 + t^2 F_1->0,   F_t->1 = (1 - t)^2 F_0->1 - t (1 - t) F_1->0;
    I0 and I1 are backward-warped along them, and blended by :func:`occlusion_aware_weights`, where a sample is
    trusted when the source pixel it was fetched from has a forward-backward consistent DIS vector.
    ``flows``: a :func:`flow_pair` of the same frames, to reuse (several t per pair).
    """
    return classical_frame(frame0, frame1, t, flows).frame


def classical_frame(frame0: np.ndarray, frame1: np.ndarray, t: float = 0.5,
                    flows: FlowPair | None = None, interpolation: int = cv2.INTER_LINEAR) -> ClassicalFrame:
    """:func:`interpolate_dis` with the two warps it blended (:class:`ClassicalFrame`). ``interpolation``: the cv2
    kernel of the two image warps (the consistency masks are always warped bilinearly); bilinear is the baseline's,
    tools/classical_variants.py tries others."""
    if frame0.shape != frame1.shape:
        raise ValueError(f"frames differ in size: {frame0.shape} vs {frame1.shape}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    flows = flows if flows is not None else flow_pair(frame0, frame1)
    image0 = frame0.astype(np.float32) / 255 if frame0.dtype == np.uint8 else frame0.astype(np.float32)
    image1 = frame1.astype(np.float32) / 255 if frame1.dtype == np.uint8 else frame1.astype(np.float32)
    f01, f10 = flows.forward, flows.backward
    flow_t0 = -(1 - t) * t * f01 + t * t * f10
    flow_t1 = (1 - t) ** 2 * f01 - t * (1 - t) * f10
    error0, tolerance0 = flow_consistency_error(f01, f10)
    error1, tolerance1 = flow_consistency_error(f10, f01)
    consistent0 = (error0 <= tolerance0).astype(np.float32)
    consistent1 = (error1 <= tolerance1).astype(np.float32)
    trusted0 = backward_warp(consistent0, flow_t0)
    trusted1 = backward_warp(consistent1, flow_t1)
    weight0, weight1 = occlusion_aware_weights(t, trusted0, trusted1)
    warped0 = backward_warp(image0, flow_t0, interpolation)
    warped1 = backward_warp(image1, flow_t1, interpolation)
    blended = weight0[..., None] * warped0 + weight1[..., None] * warped1
    return ClassicalFrame(np.clip(blended, 0.0, 1.0).astype(np.float32, copy=False), warped0, warped1)


def warp_disagreement(warped0: np.ndarray, warped1: np.ndarray, window: int = AGREEMENT_WINDOW) -> np.ndarray:
    """(H, W) mean over channels of |warped0 - warped1|, averaged over a ``window`` x ``window`` box: how badly two
    frames warped to t disagree around each pixel. Where a pair of flows is right, both warps show the same scene
    (except where one side is occluded); where one is wrong, they show different places. The box makes it a
    statement about a neighbourhood, not a single pixel's noise."""
    difference = np.abs(warped0.astype(np.float32) - warped1.astype(np.float32)).mean(axis=-1)
    return cv2.blur(difference, (window, window), borderType=cv2.BORDER_REPLICATE)


def pick_by_warp_agreement(candidates: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                           window: int = AGREEMENT_WINDOW) -> np.ndarray:
    """Per pixel, the frame of the candidate whose two warps agree best there.

    candidates: (frame, warped0, warped1) triples, each (H, W, 3) float: an interpolation at t and the two inputs it
    warped to t (a model's final warps, :class:`ClassicalFrame`'s). Returns (H, W, 3) float32: each pixel from the
    candidate with the lowest :func:`warp_disagreement` (the first on ties). No ground truth is needed, so the rule
    can run at test time; ``--components`` measures it (``psnr_agreement_pick``).
    """
    if not candidates:
        raise ValueError("pick_by_warp_agreement needs at least one candidate")
    shapes = {array.shape for triple in candidates for array in triple}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"every frame and warp must be the same (H, W, C), got {sorted(shapes)}")
    errors = np.stack([warp_disagreement(w0, w1, window) for _, w0, w1 in candidates])
    choice = np.argmin(errors, axis=0)[..., None]
    frames = np.stack([frame.astype(np.float32) for frame, _, _ in candidates])
    return np.take_along_axis(frames, choice[None], axis=0)[0]
