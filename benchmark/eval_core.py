"""The one evaluation core: reading, protocol geometry, padding, inference, metrics, averaging and reporting.

Every benchmark script only says *which* frames form a sample and *which* protocol applies (docs/DESIGN.md 12);
everything else lives here, once::

    path -> read (cv2, BGR -> RGB) -> FrameGeometry (2K resize / 4K crop) -> [0, 1] tensor (1, 3, H, W)
         -> centred replicate padding to the protocol's multiple
         -> model.inference(img0, img1, t, flow_scale, tta[, flow_prior: the pair's DIS flows, padded alike])
         -> crop back, clamp to [0, 1] -> metrics (quantized or not; ssim_matlab or skimage-style uint8)
         -> per-sample records -> mean (or mean per group, then over groups) -> printed summary + JSON report

Beside the model, every sample is also scored for two baselines through the same geometry, quantization, metric
and averaging: the frame average ``(1 - t) I0 + t I1`` (the plain ``(I0 + I1) / 2`` at t = 0.5) and classical
optical flow (OpenCV DIS both ways, warped to t, occlusion-aware blend: ``measures.motion.interpolate_dis``), so a
report always says whether the model beat blending and whether it beat classical flow. Each sample's motion (95th
percentile of |DIS flow I0->I1| in px at the evaluated resolution) goes into its record, and the report gives
PSNR/SSIM per motion bucket (< 4, 4-16, 16-32, 32-64, > 64 px) with counts (``--no_motion`` skips DIS).

A model with a classical flow prior (``--flow_prior dis``, ``model.needs_flow_prior``) gets each pair's DIS flows
both ways (``measures.motion``): the motion statistic's flows where they are the same computation
(``prior_from_pair``: frames up to 1024 px), else ``prior_pair_flows`` of the frames as the model sees them (after
the protocol's geometry; also under ``--no_motion``); once per input pair (X-TEST's seven targets share one),
padded like the images, flipped with them under TTA. Its DIS runs on the CPU before the model call, timed on one
OpenCV thread: the runtime record gives it per pair (``prior_ms_per_pair``) beside the model's ms per frame.
A run on anything but the official test set says so, and ``--save_images DIR`` writes a labelled
I0 | prediction | ground truth | I1 [| flow | mask] image per sample (docs/DESIGN.md 12).

A script builds its parser with :func:`benchmark_parser`, then calls :func:`run_benchmark` with a function
that turns the dataset root into a list of :class:`Subset` (name, protocol, samples). User errors (missing
folder, list file, frame or checkpoint) end the program with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, model_from_checkpoint, resolve_checkpoint
from config import AMP_DTYPES, ConfigError, positive_float, positive_int, resolve_device, unit_fraction
from benchmark.timing import timed_on_one_core
from measures.motion import (
    LARGE_MOTION_PX, MOTION_STATISTIC, ClassicalFrame, FlowPair, classical_frame, flow_pair, format_bucket_table,
    motion_flow_scale, pick_by_warp_agreement, prior_from_pair, prior_pair_flows, summarize_by_motion,
)
from measures.quality import (difference_stats, psnr, psnr_uint8, quantize, ssim_matlab, ssim_skimage_uint8,
                              to_uint8)
from measures.visualize import sample_grid
from model.frames import crop_padding, frame_to_tensor, pad_centred, read_rgb_uint8
from model.inference import (INDUCTOR_MODES, GraphUnavailable, InferenceRunner, ModelClock, add_graph_argument,
                             compile_mode_problem, compile_report, describe_compile_report, describe_run,
                             describe_runtime, runtime_record)
from model.ops.prior import flip_flows
from model.reduced import WORK_SCALE_HELP, describe_work_scale, reduce_resolution, work_scale_of

BASELINE_KEYS = ("psnr_frame_average", "psnr_dis")
# --components: PSNR of the model's own stages (Evaluator.component_psnrs), averaged like the baselines.
COMPONENT_KEYS = ("psnr_blend", "psnr_prior_warps", "psnr_with_dis_mean", "psnr_agreement_pick")
BUCKET_KEYS = ("psnr", "ssim", *BASELINE_KEYS, *COMPONENT_KEYS)     # averaged per motion bucket (when present)
METRICS = ("matlab", "skimage_uint8")


class BenchmarkError(RuntimeError):
    """Something the user can fix (a missing folder, list file or frame, a bad option); one line naming it."""


# --------------------------------------------------------------------------------------------------------
# Reading frames and protocol geometry
# --------------------------------------------------------------------------------------------------------
def read_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1]; :class:`BenchmarkError` naming the file when it cannot be read."""
    return frame_to_tensor(read_rgb_uint8(path, BenchmarkError))[0]


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.INTER_AREA resize of an (H, W, C) array to ``size`` = (width, height), keeping its dtype."""
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def centre_crop(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Remove ``rows`` from the top and bottom and ``cols`` from each side: Xiph 4K is [540:-540, 1024:-1024]."""
    height, width = image.shape[:2]
    if 2 * rows >= height or 2 * cols >= width:
        raise BenchmarkError(f"cannot crop {rows} rows and {cols} columns from each side of a {width}x{height} "
                             f"frame (the 4K protocol expects 4096x2160)")
    return image[rows:height - rows, cols:width - cols]


@dataclass(frozen=True)
class FrameGeometry:
    """How a protocol reshapes every frame (inputs and ground truth alike) before inference.

    resize_to: (width, height) for a cv2.INTER_AREA resize (the "2K" protocols: 2048x1080), or None.
    resize_float: resize the float32 [0, 1] image rather than the uint8 one. X-TEST does (its reference reads,
        divides by 255, then resizes, so its 2K ground truth is not 8-bit); Xiph resizes the uint8 frame.
    crop_margins: (rows, cols) removed from each side (Xiph "4K": (540, 1024) of 4096x2160), or None.
    """

    resize_to: tuple[int, int] | None = None
    resize_float: bool = False
    crop_margins: tuple[int, int] | None = None

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3): uint8, or float32 in [0, 1] when resized in float."""
        if self.crop_margins is not None:
            image = centre_crop(image, *self.crop_margins)
        if self.resize_to is not None:
            source = image.astype(np.float32) / 255 if self.resize_float else image
            image = resize_area(source, self.resize_to)
        return image

    def describe(self) -> str:
        parts = []
        if self.crop_margins is not None:
            parts.append(f"centre crop {self.crop_margins[0]} rows / {self.crop_margins[1]} cols per side")
        if self.resize_to is not None:
            parts.append(f"INTER_AREA resize to {self.resize_to[0]}x{self.resize_to[1]} "
                         f"({'float32' if self.resize_float else 'uint8'})")
        return ", ".join(parts) or "native"


# --------------------------------------------------------------------------------------------------------
# Protocols and samples
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """What docs/DESIGN.md 12 fixes for one published table.

    pad_multiple: centred replicate padding before inference (32; the Xiph scripts use 16).
    flow_scale: downscale for flow estimation (Phase 2/3 models; Phase-1 models have no flow and ignore it).
    quantize: round the prediction to 8 bit before PSNR/SSIM (UCF101, X-TEST); Vimeo90K and SNU-FILM do not.
    metric: "matlab" = psnr + ssim_matlab on [0, 1]; "skimage_uint8" = scikit-image PSNR/SSIM on uint8 (Xiph).
    geometry: 2K resize / 4K crop applied to every frame.
    average_per_group: mean per group (X-TEST scene), then over groups, instead of one mean over samples.
    official_samples: how many samples the published test set has (per subset); a run over another count is
        reported as "not the official test set". None: unknown, nothing is claimed either way.
    """

    name: str
    pad_multiple: int = 32
    flow_scale: float = 1.0
    quantize: bool = False
    metric: str = "matlab"
    geometry: FrameGeometry = field(default_factory=FrameGeometry)
    average_per_group: bool = False
    official_samples: int | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.metric == "skimage_uint8" and self.geometry.resize_float:
            raise ValueError("the uint8 metric needs 8-bit ground truth; do not resize in float")

    def settings(self) -> dict:
        return {"protocol": self.name, "pad_multiple": self.pad_multiple, "quantize": self.quantize,
                "metric": self.metric, "geometry": self.geometry.describe(),
                "average_per_group": self.average_per_group}


@dataclass(frozen=True)
class Sample:
    """One target frame: predict ``gt`` at time ``t`` from ``img0`` (t = 0) and ``img1`` (t = 1).

    group: the averaging unit of protocols that average per scene (X-TEST); empty otherwise.
    """

    name: str
    img0: Path
    gt: Path
    img1: Path
    t: float = 0.5
    group: str = ""


@dataclass(frozen=True)
class Subset:
    """Samples scored together under one protocol (a SNU-FILM split, Xiph-2K vs Xiph-4K, ...)."""

    name: str
    protocol: Protocol
    samples: tuple[Sample, ...]


def require_dir(path: str | Path, what: str = "dataset folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise BenchmarkError(f"{what} not found: {path}")
    return path


def read_list_file(path: Path, fields: int = 1) -> list[list[str]]:
    """Whitespace-separated rows of a list file (blank lines skipped); each must have ``fields`` entries."""
    if not path.is_file():
        raise BenchmarkError(f"list file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entries = line.split()
        if not entries:
            continue
        if len(entries) != fields:
            raise BenchmarkError(f"{path}:{number}: expected {fields} path(s) per line, got {len(entries)}")
        rows.append(entries)
    if not rows:
        raise BenchmarkError(f"list file is empty: {path}")
    return rows


def check_frames_exist(samples: Sequence[Sample]) -> None:
    """Fail before loading the model (and before an hour of evaluation) when any frame file is missing."""
    missing = list(dict.fromkeys(p for s in samples for p in (s.img0, s.gt, s.img1) if not p.is_file()))
    if missing:
        raise BenchmarkError(f"{len(missing)} frame file(s) missing, first: {missing[0]}")


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------
def mean_metrics(records: Sequence[dict], average_per_group: bool = False) -> dict:
    """{"psnr", "ssim", "count"[, "psnr_frame_average", "psnr_dis", "psnr_blend", "psnr_prior_warps"]} over records
    {"psnr", "ssim", "group", ...}.

    Each baseline ("psnr_frame_average", "psnr_dis") and component (``--components``) is averaged the same way when
    every record has it. With ``average_per_group`` the means are taken per group first, then over groups (equal
    weight per scene), and "groups" holds each group's means.
    """
    if not records:
        return {"psnr": math.nan, "ssim": math.nan, "count": 0}
    keys = ["psnr", "ssim"] + [key for key in (*BASELINE_KEYS, *COMPONENT_KEYS) if all(key in r for r in records)]
    if not average_per_group:
        return {**{key: float(np.mean([r[key] for r in records])) for key in keys}, "count": len(records)}
    by_group: dict[str, list[dict]] = {}
    for record in records:
        by_group.setdefault(record["group"], []).append(record)
    groups = {name: mean_metrics(members) for name, members in by_group.items()}
    return {**{key: float(np.mean([g[key] for g in groups.values()])) for key in keys}, "count": len(records),
            "groups": groups}


def safe_file_stem(text: str) -> str:
    """A sample name as one file-name component: "00001/0001" -> "00001_0001" (no folders, no odd characters)."""
    stem = re.sub(r"\.(png|jpg|jpeg)$", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "sample"


def write_png_atomically(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) float RGB in [0, 1] -> an 8-bit PNG at ``path``, written to a temporary file and renamed into place."""
    rgb = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise BenchmarkError(f"could not encode image {path}")
    atomic_write_bytes(path, encoded.tobytes())


class Evaluator:
    """Runs a model over samples under one protocol.

    model: anything with ``inference(img0, img1, t, flow_scale, tta) -> (B, 3, H, W)`` in [0, 1] (ThesisModel); one
        whose ``needs_flow_prior`` is true also takes ``flow_prior=`` (B, 4, H, W), the pair's DIS flows (see the
        module docstring), and never runs without it.
    amp: "fp32" (default: the published numbers are fp32), "bf16" or "fp16" autocast for the model only;
        the metrics always run in float64.
    flow_scale: None keeps the protocol's.
    save_images: a folder; one labelled image per sample is written there (see :meth:`save_sample_image`).
    cuda_graph: "auto" | "on" | "off" (:class:`model.inference.InferenceRunner`): on CUDA, a frame size seen twice is
        replayed as a CUDA graph from then on; eager on the CPU. ``runner`` replaces the one built from it.
    motion: measure each sample's motion and score the classical DIS baseline (CPU, DIS on the scored frames).
    motion_flow_scale: choose the flow scale per sample from its DIS motion (``measures.motion.motion_flow_scale``:
        half the protocol's from 32 px on) instead of one scale for all; needs ``motion``.
    parity_vs_eager: also run every pair eagerly (the reference path) and report how far the runner's predictions
        (graphed or compiled) are from it: per sample the pixel differences and the eager PSNR, per subset
        "parity_vs_eager" (:meth:`parity_summary`). The scored prediction stays the runner's.
    """

    def __init__(self, model: nn.Module, protocol: Protocol, device: torch.device | str = "cpu", amp: str = "fp32",
                 tta: bool = False, flow_scale: float | None = None, progress: bool = True,
                 save_images: str | Path | None = None, cuda_graph: str = "off",
                 runner: InferenceRunner | None = None, motion: bool = True, motion_flow_scale: bool = False,
                 parity_vs_eager: bool = False, components: bool = False):
        if amp not in AMP_DTYPES:
            raise BenchmarkError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        try:
            self.runner = runner or InferenceRunner(model, cuda_graph, capture_after=2)
        except GraphUnavailable as error:
            raise BenchmarkError(str(error)) from None
        self.model = model
        self.protocol = protocol
        self.device = torch.device(device)
        self.amp_dtype = AMP_DTYPES[amp]
        self.tta = tta
        self.flow_scale = protocol.flow_scale if flow_scale is None else flow_scale
        self.progress = progress
        self.save_images = Path(save_images) if save_images is not None else None
        self.motion = motion
        if motion_flow_scale and not motion:
            raise BenchmarkError("--motion_flow_scale chooses the flow scale from the DIS motion: drop --no_motion")
        self.motion_flow_scale = motion_flow_scale
        self.needs_prior = bool(getattr(model, "needs_flow_prior", False))
        if parity_vs_eager and save_images is not None:
            # The image panels take the prediction from the model's forward (for its flow and mask), not from the
            # runner, so there would be no graphed prediction to compare.
            raise BenchmarkError("--parity_vs_eager compares the runner's predictions with eager ones: drop "
                                 "--save_images")
        self.eager_runner = InferenceRunner(model, "off") if parity_vs_eager else None
        if components and not self._shows_flow():
            raise BenchmarkError("--components splits a flow model's prediction into its stages: this model has no "
                                 "flow estimator (Phase 1)")
        self.components = components

    def load_frame(self, path: Path) -> np.ndarray:
        """(H, W, 3) RGB after the protocol's geometry: uint8, or float32 in [0, 1] (X-TEST 2K)."""
        return self.protocol.geometry.apply(read_rgb_uint8(path, BenchmarkError))

    def _shows_flow(self) -> bool:
        """Whether the model can hand out its flow and mask (a ThesisModel with a flow estimator)."""
        return bool(getattr(self.model, "use_flow", False)) and callable(self.model)

    def predict_with_panels(self, img0: torch.Tensor, img1: torch.Tensor, t: float, panels: bool = False,
                            flow_scale: float | None = None, flow_prior: torch.Tensor | None = None,
                            runner: InferenceRunner | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(prediction, flow or None, mask or None) for (1, 3, H, W) inputs in [0, 1].

        The prediction is (1, 3, H, W) float32 clamped to [0, 1]. With ``panels`` and a flow model, one forward pass
        also yields the flow (1, 4, H, W) and blend mask (1, 1, H, W) for :meth:`save_sample_image`; the prediction
        is then computed from the same calls ``model.inference`` makes (forward, plus the flipped pass with TTA),
        so saving images never changes a score. ``flow_scale``: None uses the evaluator's. ``flow_prior``: the
        pair's (1, 4, H, W) DIS flows for a model that needs them (:meth:`pair_prior`), padded like the images.
        ``runner``: None uses the evaluator's (``eager_runner`` gives the reference of ``parity_vs_eager``).
        """
        flow_scale = self.flow_scale if flow_scale is None else flow_scale
        if self.needs_prior and flow_prior is None:
            raise BenchmarkError("this model was trained with --flow_prior dis: every pair needs its DIS flows "
                                 "(Evaluator.pair_prior)")
        padded0, padding = pad_centred(img0, self.protocol.pad_multiple)
        padded1, _ = pad_centred(img1, self.protocol.pad_multiple)
        padded_prior = None if flow_prior is None else pad_centred(flow_prior, self.protocol.pad_multiple)[0]
        prior = {} if padded_prior is None else {"flow_prior": padded_prior}
        flow = mask = None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                    enabled=self.amp_dtype is not None):
            if panels and self._shows_flow():
                output = self.model(padded0, padded1, t, flow_scale, **prior)
                pred = output.pred
                if self.tta:       # the flipped pass of model.inference: frames and prior flipped alike
                    flipped_prior = {} if padded_prior is None else {"flow_prior": flip_flows(padded_prior)}
                    flipped = self.model.inference(padded0.flip(2, 3), padded1.flip(2, 3), t=t,
                                                   flow_scale=flow_scale, tta=False, **flipped_prior)
                    pred = (pred + flipped.flip(2, 3)) / 2
                flow = crop_padding(output.flow.float(), padding)
                mask = crop_padding(output.mask.float(), padding)
            else:
                runner = self.runner if runner is None else runner
                pred = runner(padded0, padded1, t, flow_scale=flow_scale, tta=self.tta, flow_prior=padded_prior)
        return crop_padding(pred.float(), padding).clamp(0, 1), flow, mask

    def component_psnrs(self, img0: torch.Tensor, img1: torch.Tensor, t: float, gt_frame: np.ndarray,
                        flow_scale: float | None = None, flow_prior: torch.Tensor | None = None,
                        classical: ClassicalFrame | None = None) -> dict:
        """Where a flow model's prediction gains or loses (``--components``): the PSNR of its own stages.

        {"psnr_blend": the blend M W0 + (1 - M) W1 of the frames warped by the model's final flows with its final
        mask, before RefineNet's residual; "psnr_prior_warps" (a ``--flow_prior`` model only): the two frames
        warped by the prior's flows at t and averaged, what the untrained model predicts}. One eager forward, no
        TTA, under the evaluator's autocast; scored like the prediction. Read beside "psnr" and "psnr_dis": blend
        minus prior warps is what the learned flow and mask did to the prior, prediction minus blend what RefineNet
        did to the blend.

        With the classical baseline's frame (``classical``, when the motion flows are on), two ways to combine the
        model with it that need no ground truth: "psnr_with_dis_mean", the plain average of the (single-pass)
        prediction and DIS's frame; "psnr_agreement_pick", per pixel the one of the two whose own warps agree best
        (:func:`measures.motion.pick_by_warp_agreement`, the model's final warps against DIS's).
        """
        flow_scale = self.flow_scale if flow_scale is None else flow_scale
        padded0, padding = pad_centred(img0, self.protocol.pad_multiple)
        padded1, _ = pad_centred(img1, self.protocol.pad_multiple)
        prior = {}
        if flow_prior is not None:
            prior = {"flow_prior": pad_centred(flow_prior, self.protocol.pad_multiple)[0]}
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                    enabled=self.amp_dtype is not None):
            output = self.model(padded0, padded1, t, flow_scale, **prior)
            stages = {"psnr_blend": output.mask * output.warped0 + (1 - output.mask) * output.warped1}
            if prior:
                warped0, warped1 = self.model.prior_warps(padded0, padded1, t, prior["flow_prior"])
                stages["psnr_prior_warps"] = (warped0 + warped1) / 2
        stages = {key: crop_padding(image.float(), padding).clamp(0, 1) for key, image in stages.items()}
        if classical is not None:
            pred, warped0, warped1 = (crop_padding(image.float(), padding)
                                      for image in (output.pred.clamp(0, 1), output.warped0, output.warped1))
            stages["psnr_with_dis_mean"] = (pred + frame_to_tensor(classical.frame, self.device)) / 2
            model_arrays = tuple(image[0].permute(1, 2, 0).cpu().numpy() for image in (pred, warped0, warped1))
            picked = pick_by_warp_agreement([model_arrays, (classical.frame, classical.warped0, classical.warped1)])
            stages["psnr_agreement_pick"] = frame_to_tensor(picked, self.device)
        return {key: self.score(image, gt_frame, with_ssim=False)[0] for key, image in stages.items()}

    def predict(self, img0: torch.Tensor, img1: torch.Tensor, t: float,
                flow_prior: torch.Tensor | None = None) -> torch.Tensor:
        """(1, 3, H, W) inputs in [0, 1] -> (1, 3, H, W) float32 prediction, clamped to [0, 1]."""
        return self.predict_with_panels(img0, img1, t, flow_prior=flow_prior)[0]

    def pair_flows(self, frame0: np.ndarray, frame1: np.ndarray
                   ) -> tuple[FlowPair | None, np.ndarray | None, float | None]:
        """(the motion statistic's DIS flows or None, the model's flow prior or None, the prior's ms or None) of one
        input pair, frames (H, W, 3) after the protocol's geometry.

        Flows when ``motion`` is on; a prior (4, H, W) only for a model that needs one: the motion flows themselves
        where ``measures.motion.prior_from_pair`` says they are the same computation, else ``prior_pair_flows``
        (frames over 1024 px, or ``--no_motion``). Its ms: the wall time of the DIS that produced it on one OpenCV
        thread (the reused motion flows' too: that DIS is then the prior's cost).
        """
        if not self.needs_prior:
            return (flow_pair(frame0, frame1) if self.motion else None), None, None
        height, width = frame0.shape[:2]
        flows, prior, prior_ms = None, None, None
        if self.motion:
            flows, prior_ms = timed_on_one_core(lambda: flow_pair(frame0, frame1))
            prior = prior_from_pair(flows, height, width)
        if prior is None:
            prior, prior_ms = timed_on_one_core(lambda: prior_pair_flows(frame0, frame1))
        return flows, prior, prior_ms

    def parity_summary(self, records: Sequence[dict], psnr_runner: float) -> dict:
        """The runner against eager over a subset: {"mode", "max_abs_diff", "p999_abs_diff", "mean_abs_diff",
        "psnr", "psnr_eager", "psnr_difference"}.

        "p999_abs_diff" is the largest per-sample 99.9th percentile (the worst sample's, not a pooled one: a
        bound that holds for every sample); "max_abs_diff" the largest single pixel; the PSNRs are averaged as the
        protocol averages its score (per group first where it does)."""
        eager_records = [{**record, "psnr": record["psnr_eager"]} for record in records]
        psnr_eager = mean_metrics(eager_records, self.protocol.average_per_group)["psnr"] if records else math.nan
        return {"mode": self.runner.mode,
                "max_abs_diff": max((r["max_abs_diff_vs_eager"] for r in records), default=math.nan),
                "p999_abs_diff": max((r["p999_abs_diff_vs_eager"] for r in records), default=math.nan),
                "mean_abs_diff": float(np.mean([r["mean_abs_diff_vs_eager"] for r in records])) if records
                else math.nan,
                "psnr": psnr_runner, "psnr_eager": psnr_eager, "psnr_difference": psnr_runner - psnr_eager}

    def score(self, pred: torch.Tensor, gt_frame: np.ndarray, with_ssim: bool = True) -> tuple[float, float]:
        """(PSNR, SSIM) of a (1, 3, H, W) prediction against the (H, W, 3) ground-truth frame (SSIM nan if skipped)."""
        if pred.shape[-2:] != gt_frame.shape[:2]:
            raise BenchmarkError(f"prediction is {tuple(pred.shape[-2:])} but ground truth is "
                                 f"{gt_frame.shape[:2]}: inputs and ground truth differ in size")
        if self.protocol.metric == "skimage_uint8":
            pred_u8 = to_uint8(pred[0]).permute(1, 2, 0)
            gt_u8 = torch.from_numpy(np.ascontiguousarray(gt_frame)).to(pred.device)
            return psnr_uint8(pred_u8, gt_u8), ssim_skimage_uint8(pred_u8, gt_u8) if with_ssim else math.nan
        gt = frame_to_tensor(gt_frame, pred.device)
        if self.protocol.quantize:
            pred = quantize(pred)
        return psnr(pred, gt), ssim_matlab(pred, gt) if with_ssim else math.nan

    def save_sample_image(self, index: int, sample: Sample, inputs: tuple[torch.Tensor, torch.Tensor],
                          pred: torch.Tensor, gt_frame: np.ndarray, flow: torch.Tensor | None,
                          mask: torch.Tensor | None, value_psnr: float, baseline_psnr: float) -> Path:
        """Write ``<save_images>/<index>_<sample name>.png``: I0 | prediction | ground truth | I1 [| flows | mask].

        The panels are the frames as scored (after the protocol's geometry); the prediction's label carries its
        PSNR and the frame average's. Returns the path written.
        """
        gt = frame_to_tensor(gt_frame, pred.device)
        names = ["I0", f"prediction {value_psnr:.2f} dB (frame avg {baseline_psnr:.2f})", "ground truth", "I1"]
        if flow is not None:
            names += ["flow t->0", "flow t->1", "mask"]
        grid = sample_grid(inputs[0], pred, gt, inputs[1], flow, mask, max_samples=1, labels=names)
        path = self.save_images / f"{index:04d}_{safe_file_stem(sample.name)}.png"
        write_png_atomically(grid, path)
        return path

    def evaluate(self, samples: Sequence[Sample], description: str = "") -> dict:
        """Per-sample records and their means.

        Returns {"psnr", "ssim", "psnr_frame_average", ["psnr_dis"], "count", ["groups"], "seconds", "samples",
        ["by_motion", "motion_statistic"]}; each record holds the sample's "psnr", "ssim", "psnr_frame_average" (the
        PSNR of ``(1 - t) I0 + t I1`` under the same protocol) and, with ``motion``, "motion" (px) and "psnr_dis" (the
        classical DIS baseline's PSNR). "by_motion" lists the buckets of :func:`measures.motion.summarize_by_motion`.
        """
        records = []
        start = time.perf_counter()
        clock = ModelClock(self.device)
        cached_paths, cached_inputs, cached_frames, flows, prior = None, None, None, None, None
        prior_ms: list[float] = []                 # the DIS prior's ms of each input pair (a prior model only)
        psnr_total = 0.0
        bar = tqdm(samples, desc=description or self.protocol.name, disable=not self.progress, dynamic_ncols=True)
        for index, sample in enumerate(bar):
            # X-TEST predicts seven targets from one input pair: read (and resize) that pair once.
            if cached_paths != (sample.img0, sample.img1):
                cached_paths = (sample.img0, sample.img1)
                cached_frames = tuple(self.load_frame(p) for p in cached_paths)
                cached_inputs = tuple(frame_to_tensor(frame, self.device) for frame in cached_frames)
                flows, pair_prior, ms = self.pair_flows(*cached_frames)
                prior = None if pair_prior is None else torch.from_numpy(pair_prior)[None].to(self.device)
                if ms is not None:
                    prior_ms.append(ms)
            flow_scale = motion_flow_scale(flows.motion, self.flow_scale) if self.motion_flow_scale else None
            with clock:
                pred, flow, mask = self.predict_with_panels(*cached_inputs, sample.t,
                                                            panels=self.save_images is not None, flow_scale=flow_scale,
                                                            flow_prior=prior)
            gt_frame = self.load_frame(sample.gt)
            value_psnr, value_ssim = self.score(pred, gt_frame)
            blend = ((1 - sample.t) * cached_inputs[0] + sample.t * cached_inputs[1]).clamp(0, 1)
            baseline_psnr, _ = self.score(blend, gt_frame, with_ssim=False)
            record = {"name": sample.name, "t": sample.t, "group": sample.group,
                      "psnr": value_psnr, "ssim": value_ssim, "psnr_frame_average": baseline_psnr}
            classical = None
            if flows is not None:
                classical = classical_frame(*cached_frames, sample.t, flows=flows)
                record["motion"] = round(flows.motion, 3)
                record["psnr_dis"] = self.score(frame_to_tensor(classical.frame, self.device), gt_frame,
                                                with_ssim=False)[0]
            if flow_scale is not None:
                record["flow_scale"] = flow_scale
            if self.components:
                record.update(self.component_psnrs(*cached_inputs, sample.t, gt_frame, flow_scale, prior, classical))
            if self.eager_runner is not None:
                eager = self.predict_with_panels(*cached_inputs, sample.t, flow_scale=flow_scale, flow_prior=prior,
                                                 runner=self.eager_runner)[0]
                record.update(difference_stats(pred, eager))
                record["psnr_eager"] = self.score(eager, gt_frame, with_ssim=False)[0]
            records.append(record)
            if self.save_images is not None:
                self.save_sample_image(index, sample, cached_inputs, pred, gt_frame, flow, mask, value_psnr,
                                       baseline_psnr)
            psnr_total += value_psnr
            bar.set_postfix(psnr=f"{psnr_total / len(records):.3f}")
        summary = mean_metrics(records, self.protocol.average_per_group)
        if self.eager_runner is not None:
            summary["parity_vs_eager"] = self.parity_summary(records, summary["psnr"])
        if self.motion:
            summary["motion_statistic"] = MOTION_STATISTIC
            summary["by_motion"] = summarize_by_motion(records, BUCKET_KEYS)
        height, width = cached_inputs[0].shape[-2:] if cached_inputs else (None, None)
        peak = clock.peak_gib()
        if peak is not None and self.runner.capture_peak_gib is not None:
            peak = max(peak, self.runner.capture_peak_gib)           # a replay allocates nothing: count the capture
        prior_cost = {}
        if prior_ms:
            prior_cost = {"prior_ms_per_pair": float(np.median(prior_ms)), "prior_pairs": len(prior_ms)}
        runtime = runtime_record(clock.median_ms(), self.runner.mode, self.device, peak, height, width,
                                 timed_calls=clock.calls, **prior_cost)
        return {**summary, "seconds": time.perf_counter() - start, "runtime": runtime, "samples": records}


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every entry point shares, benchmarks and TimeTest alike."""
    parser.add_argument("--ckpt_dir", default="ckpt", help="folder searched for --model names (default ckpt)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="fp32",
                        help="autocast dtype for the model (default fp32, as the published numbers)")
    parser.add_argument("--tta", action="store_true",
                        help="average with the prediction on H+W-flipped inputs (VFIMamba's TTA)")
    parser.add_argument("--flow_scale", type=positive_float, default=None,
                        help="override the protocol's flow downscale (Phase-1 models have no flow and ignore it)")
    parser.add_argument("--work_scale", type=unit_fraction, default=None, help=WORK_SCALE_HELP)
    add_graph_argument(parser)
    parser.add_argument("--out", default=None, help="write a JSON report to this file")


def with_work_scale(model: nn.Module, work_scale: float | None) -> nn.Module:
    """``model`` wrapped for ``--work_scale`` (:func:`model.reduced.reduce_resolution`); a Phase-1 model is refused
    naming the flag."""
    try:
        return reduce_resolution(model, work_scale)
    except ValueError as error:
        raise BenchmarkError(str(error)) from None


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The shared command line of the dataset benchmarks; scripts add their own --split/--resolution."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="checkpoint name in --ckpt_dir (e.g. phase1_hybrid_v2_best) or a path to a .pt file")
    parser.add_argument("--path", required=True, help="dataset root (layout in the description above)")
    add_runtime_arguments(parser)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile a copy of the model for inference (interpolate.py --compile) and score "
                             "its predictions (replayed as CUDA graphs per --cuda_graph); the first call of each "
                             "frame size compiles (a minute or more on a GPU). With --parity_vs_eager the eager "
                             "reference is the uncompiled model")
    parser.add_argument("--compile_mode", choices=INDUCTOR_MODES, default=None,
                        help="with --compile: Inductor's mode (default: its default; tune-kernels times block sizes "
                             "for each kernel it generates, docs/PERF.md 10.17; max-autotune-no-cudagraphs also "
                             "times Triton templates against cuDNN per convolution, 10.13)")
    parser.add_argument("--components", action="store_true",
                        help="flow models: also score the model's own stages per sample, the blend of its warps "
                             "before RefineNet's residual and, for a --flow_prior model, the prior's warps averaged "
                             "(one more eager forward per sample); the report and the motion table show where the "
                             "prediction gains or loses against them")
    parser.add_argument("--parity_vs_eager", action="store_true",
                        help="also run every pair eagerly and report how far the graphed (or compiled) predictions "
                             "are from it: max, 99.9th percentile and mean pixel difference, and the PSNR both ways")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="evaluate only the first N samples of each subset (smoke tests)")
    parser.add_argument("--save_images", default=None, metavar="DIR",
                        help="write one labelled image per sample to DIR: I0 | prediction | ground truth | I1, "
                             "plus flow t->0 | flow t->1 | mask for models with flow (a sub-folder per subset "
                             "when there are several)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--no_motion", action="store_true",
                        help="skip the per-sample DIS motion, the classical DIS baseline and the per-motion table "
                             "(DIS runs on the CPU: about 0.2 s a pair at 640x360, seconds at 4K)")
    parser.add_argument("--motion_flow_scale", action="store_true",
                        help=f"per sample, halve the flow scale where the DIS motion is at least "
                             f"{LARGE_MOTION_PX:g} px (measures.motion.motion_flow_scale)")
    return parser


@contextlib.contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and exit status 2 (no stack trace)."""
    try:
        yield
    # GraphUnavailable: --cuda_graph on and a capture failed mid-run (the message names the shape and the reason).
    except (BenchmarkError, CheckpointError, ConfigError, GraphUnavailable) as error:
        message = " ".join(str(error).split())
        print(f"{program}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def write_report(report: dict, path: str | Path) -> None:
    """The JSON report, written to a temporary file in the target folder and renamed into place."""
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def subset_label(subset: Subset) -> str:
    """"Vimeo90K", "SNU-FILM hard", "Xiph-2K": the protocol's name, plus the subset's where it adds something."""
    name = subset.protocol.name
    return name if subset.name == "test" or subset.name.lower() in name.lower() else f"{name} {subset.name}"


def describe_dataset(label: str, path_text: str, found: int, official_samples: int | None,
                     limit: int | None) -> tuple[bool | None, str]:
    """(official?, one line naming what was scored). "Official" means the published test set's sample count.

    found: samples the folder holds for this subset (before --limit); limit: --limit or None.
    """
    scored = found if limit is None else min(limit, found)
    partial = f"; the first {scored:,} scored" if scored < found else ""
    if official_samples is None:
        return None, f"{label} protocol on {path_text} ({found:,} samples{partial})"
    if found == official_samples:
        if scored < found:
            return True, (f"{label} protocol on the first {scored:,} of the {found:,} official test samples "
                          f"in {path_text}")
        return True, f"{label} official test set ({found:,} samples) in {path_text}"
    return False, (f"{label} protocol on {path_text} (not the official test set: {found:,} samples; "
                   f"the official set has {official_samples:,}{partial})")


MOTION_COLUMNS = (("psnr", "PSNR"), ("ssim", "SSIM"), ("psnr_frame_average", "frame avg"), ("psnr_dis", "DIS flow"),
                  ("psnr_blend", "blend"), ("psnr_prior_warps", "prior warps"),
                  ("psnr_with_dis_mean", "mean with DIS"), ("psnr_agreement_pick", "agreement pick"))


def present_columns(rows: Sequence[dict], columns: Sequence[tuple[str, str]] = MOTION_COLUMNS
                    ) -> list[tuple[str, str]]:
    """The columns some row has a value for: the component columns appear only with ``--components``."""
    return [(key, title) for key, title in columns if any(key in row for row in rows)]


def compare_to_baseline(model_psnr: float, baseline_psnr: float) -> str:
    """"0.31 dB above" / "0.01 dB below" / "equal to": how the model's PSNR relates to the frame average's."""
    difference = model_psnr - baseline_psnr
    if not math.isfinite(difference) or abs(difference) < 5e-5:
        return "equal to"
    return f"{abs(difference):.4f} dB {'above' if difference > 0 else 'below'}"


def run_benchmark(args: argparse.Namespace, benchmark: str, make_subsets: Callable[[Path], list[Subset]]) -> dict:
    """Enumerate, check, load the model, evaluate every subset, print a summary, write ``--out``.

    Cheap checks come first (dataset folder, checkpoint name, list files, frame files), so a typo fails in a
    second rather than after the model is loaded. Returns the report (also what ``--out`` receives).
    """
    with exit_on_user_error(benchmark):
        root = require_dir(args.path)
        checkpoint_path = resolve_checkpoint(args.model, args.ckpt_dir)
        device = resolve_device(args.device)
        subsets = make_subsets(root)
        found = {s.name: len(s.samples) for s in subsets}          # before --limit: is this the official set?
        if args.limit is not None:
            subsets = [Subset(s.name, s.protocol, s.samples[:args.limit]) for s in subsets]
        for subset in subsets:
            check_frames_exist(subset.samples)
        model, cfg = model_from_checkpoint(str(checkpoint_path), device=device, ckpt_dir=args.ckpt_dir)
        model = with_work_scale(model, getattr(args, "work_scale", None))
        work_note = describe_work_scale(model)

        report = {"benchmark": benchmark, "dataset": str(root), "model": args.model,
                  "checkpoint": str(checkpoint_path), "phase": cfg.train.phase, "uses_flow": cfg.model.use_flow,
                  "flow_prior": cfg.model.flow_prior,
                  "work_scale": work_scale_of(model),
                  "device": str(device), "amp": args.amp, "tta": args.tta, "limit": args.limit, "runtime": {},
                  "results": {}}
        save_root = getattr(args, "save_images", None)
        compiled_runner = None
        if problem := compile_mode_problem(getattr(args, "compile_mode", None), getattr(args, "compile", False)):
            raise BenchmarkError(problem)
        if getattr(args, "compile", False):
            if save_root is not None:
                # The panels come from the uncompiled model's forward (its flow and mask), not from the runner.
                raise BenchmarkError("--save_images draws the eager model's predictions: drop --compile or "
                                     "--save_images")
            # A copy: compile_for_inference changes the model in place (compiled forward, aligned flow channels),
            # and the eager reference of --parity_vs_eager must stay the checkpoint's own model.
            compiled_runner = InferenceRunner(copy.deepcopy(model), getattr(args, "cuda_graph", "off"), compile=True,
                                              capture_after=2, compile_mode=getattr(args, "compile_mode", None))
            print("compile: torch.compile on a copy of the model; each frame size's first call compiles it")
        for subset in subsets:
            label = subset_label(subset)
            official, note = describe_dataset(label, str(args.path), found[subset.name],
                                              subset.protocol.official_samples, args.limit)
            image_dir = None
            if save_root is not None:
                image_dir = Path(save_root) if len(subsets) == 1 else Path(save_root) / safe_file_stem(subset.name)
            evaluator = Evaluator(model, subset.protocol, device, args.amp, args.tta, args.flow_scale,
                                  progress=not args.no_progress, save_images=image_dir,
                                  cuda_graph=getattr(args, "cuda_graph", "off"), runner=compiled_runner,
                                  motion=not getattr(args, "no_motion", False),
                                  motion_flow_scale=getattr(args, "motion_flow_scale", False),
                                  parity_vs_eager=getattr(args, "parity_vs_eager", False),
                                  components=getattr(args, "components", False))
            print(note)
            print(f"{label}: {len(subset.samples)} samples | "
                  + describe_run(args.model, cfg.model.use_flow, device, args.amp, args.tta, evaluator.flow_scale)
                  + (f", halved where the DIS motion is >= {LARGE_MOTION_PX:g} px"
                     if evaluator.motion_flow_scale else "")
                  + (f" | {work_note}" if work_note else "")
                  + (" | flow prior: DIS of each pair on the CPU" if evaluator.needs_prior else ""))
            result = evaluator.evaluate(subset.samples, subset.name)
            report["results"][subset.name] = {**subset.protocol.settings(), "flow_scale": evaluator.flow_scale,
                                              "motion_flow_scale": evaluator.motion_flow_scale,
                                              "official": official, "dataset_note": note,
                                              "samples_found": found[subset.name], **result}
            print(f"{label}  PSNR {result['psnr']:.4f} dB  SSIM {result['ssim']:.5f}  "
                  f"({result['count']} samples, {result['seconds']:.1f} s)")
            print(f"{label}  {describe_runtime(result['runtime'])}")
            if "prior_ms_per_pair" in result["runtime"]:
                print(f"{label}  the flow prior's DIS ran here before each pair's model call, on the CPU "
                      f"({result['runtime']['prior_pairs']} pairs); interpolate.py runs it on other cores beside "
                      f"the GPU")
            report["runtime"][subset.name] = result["runtime"]
            baseline = "(1-t) I0 + t I1" if any(s.t != 0.5 for s in subset.samples) else "(I0+I1)/2"
            print(f"{label}  frame average {baseline}: PSNR {result['psnr_frame_average']:.4f} dB; the model is "
                  f"{compare_to_baseline(result['psnr'], result['psnr_frame_average'])} it")
            if "psnr_dis" in result:
                print(f"{label}  classical DIS flow (both ways, warped to t, occlusion-aware blend): PSNR "
                      f"{result['psnr_dis']:.4f} dB; the model is "
                      f"{compare_to_baseline(result['psnr'], result['psnr_dis'])} it")
            if "psnr_blend" in result:
                stages = (f"{label}  stages: the blend of the model's warps with its final mask {result['psnr_blend']:.4f}"
                          f" dB, RefineNet's residual {result['psnr'] - result['psnr_blend']:+.4f} dB")
                if "psnr_prior_warps" in result:
                    stages += (f"; the prior's warps averaged {result['psnr_prior_warps']:.4f} dB, the learned flow "
                               f"and mask {result['psnr_blend'] - result['psnr_prior_warps']:+.4f} dB")
                print(stages)
            if "psnr_with_dis_mean" in result:
                print(f"{label}  with DIS's frame: their mean {result['psnr_with_dis_mean']:.4f} dB, per pixel the one "
                      f"whose warps agree {result['psnr_agreement_pick']:.4f} dB (DIS alone {result['psnr_dis']:.4f})")
            if "by_motion" in result:
                print(f"{label}  by motion ({result['motion_statistic']}):")
                print(format_bucket_table(result["by_motion"], present_columns(result["by_motion"])))
            if "parity_vs_eager" in result:
                parity = result["parity_vs_eager"]
                print(f"{label}  {parity['mode']} vs eager: pixel difference max {parity['max_abs_diff'] * 255:.3f}/255,"
                      f" 99.9th percentile (worst sample) {parity['p999_abs_diff'] * 255:.3f}/255, mean "
                      f"{parity['mean_abs_diff'] * 255:.4f}/255; PSNR {parity['psnr']:.4f} vs eager "
                      f"{parity['psnr_eager']:.4f} dB ({parity['psnr_difference']:+.4f})")
            if image_dir is not None:
                print(f"{len(subset.samples)} images written to {image_dir}/")
        if compiled_runner is not None:         # what Inductor's caches did: a warm start shows hits only
            report["compile"] = compile_report()
            print(describe_compile_report(report["compile"]))
        if args.out:
            write_report(report, args.out)
            print(f"report written to {args.out}")
    return report


def benchmark_main(argv: Sequence[str] | None, description: str, benchmark: str,
                   make_subset: Callable[[Path, str], Subset], choice_flag: str | None = None,
                   choices: Sequence[str] = ("test",)) -> dict:
    """A benchmark script's whole ``main``: shared CLI, optional ``choice_flag`` (--split, --resolution), run.

    make_subset(root, choice) enumerates one subset. With ``choice_flag`` the user picks one of ``choices`` or
    "all" (the default, as the reference scripts report every level / resolution).
    """
    parser = benchmark_parser(description)
    if choice_flag is not None:
        parser.add_argument(choice_flag, choices=[*choices, "all"], default="all",
                            help=f"{', '.join(choices)} or all (default all)")
    args = parser.parse_args(argv)
    choice = getattr(args, choice_flag.lstrip("-")) if choice_flag is not None else "all"
    chosen = list(choices) if choice == "all" else [choice]
    return run_benchmark(args, benchmark, lambda root: [make_subset(root, name) for name in chosen])


def resolution_main(argv: Sequence[str] | None, description: str, benchmark: str, protocols: dict[str, Protocol],
                    enumerate_samples: Callable[[Path], list[Sample]]) -> dict:
    """``main`` of a benchmark that scores the same samples under several protocols (--resolution 2k|4k|all)."""
    return benchmark_main(argv, description, benchmark,
                          lambda root, name: Subset(name, protocols[name], tuple(enumerate_samples(root))),
                          choice_flag="--resolution", choices=list(protocols))
