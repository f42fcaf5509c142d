"""The one timing helper of the benchmark scripts (timings are measured here, never asserted in tests)."""

from __future__ import annotations

import argparse
import contextlib
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from measures.motion import prior_pair_flows

PRIOR_TIMING_CALLS = 3         # DIS prior computations timed per resolution by TimeTest and bench_model (median)

# The named frame sizes of the timing scripts (TimeTest, bench_model, bench_peer_alternate) as (height, width), and
# each one's protocol flow scale (the flow estimator's downscale where a script is not told one).
RESOLUTIONS = {"256": (256, 256), "720p": (720, 1280), "1080p": (1080, 1920), "2k": (1080, 2048), "4k": (2160, 3840)}
FLOW_SCALES = {"256": 1.0, "720p": 1.0, "1080p": 0.5, "2k": 0.5, "4k": 0.25}


def parse_resolution(text: str) -> tuple[int, int]:
    """A named resolution or "HEIGHTxWIDTH" -> (height, width); an argparse type (ArgumentTypeError otherwise)."""
    if text in RESOLUTIONS:
        return RESOLUTIONS[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(RESOLUTIONS)} or HEIGHTxWIDTH, got {text!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Timing:
    times_ms: list[float]
    peak_gib: float | None      # peak allocated CUDA memory during the timed calls; None on CPU

    @property
    def median_ms(self) -> float:
        return sorted(self.times_ms)[len(self.times_ms) // 2]


def measure(call: Callable[[], object], device: torch.device | str, warmup: int = 3, reps: int = 20) -> Timing:
    """Time ``reps`` calls after ``warmup`` untimed ones: CUDA events on a GPU (after a synchronize, so queued work
    from earlier does not leak in), perf_counter on a CPU. Peak memory: over the timed calls."""
    return measure_alternating({"call": call}, device, warmup, reps)["call"]


def measure_alternating(calls: dict[str, Callable[[], object]], device: torch.device | str, warmup: int = 3,
                        reps: int = 20) -> dict[str, Timing]:
    """:func:`measure` for several calls taken in turn, one of each per round (``warmup`` untimed rounds, then
    ``reps`` timed ones): a drift of the host or the card over the rounds falls on every call alike, where calls
    timed one after the other would each get their own stretch of it (an eager call, bound by its ~1,100 launches,
    moved 25.9-39.0 ms between rows of one harness: docs/PERF.md 10.20). Each call's peak memory is its own (reset
    before each timed call). Returns a :class:`Timing` per name."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    peaks = dict.fromkeys(calls, 0.0)
    for _ in range(reps):
        for name, call in calls.items():
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                torch.cuda.synchronize(device)   # elapsed_time needs both events completed
                times[name].append(start.elapsed_time(end))
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**30)
            else:
                began = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - began) * 1000)
    return {name: Timing(times[name], peaks[name] if cuda else None) for name in calls}


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV's thread pool limited to one thread inside the block, restored after it.

    Why: a flow prior's DIS cost is reported per pair on one CPU core, the unit in which a pipeline that runs DIS on
    other cores beside the GPU (interpolate.py) needs it; OpenCV would otherwise spread one DIS call over every core
    (about 1.4x faster on two cores at 256x448, hardly faster at 720p, here). The flows are the same either way
    (checked at 256x448 and 720p: identical arrays)."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def timed_on_one_core(call: Callable[[], object]) -> tuple[object, float]:
    """(``call()``, its wall milliseconds) with OpenCV on one thread (:func:`one_opencv_thread`)."""
    with one_opencv_thread():
        began = time.perf_counter()
        result = call()
        return result, (time.perf_counter() - began) * 1000


def prior_of_tensors(img0: torch.Tensor, img1: torch.Tensor,
                     calls: int = PRIOR_TIMING_CALLS) -> tuple[torch.Tensor, list[float]]:
    """The DIS flow prior of a (1, 3, H, W) pair in [0, 1] on any device, and what it costs on the CPU.

    Returns ((1, 4, H, W) float32 ``measures.motion.prior_pair_flows`` on the frames' device, the wall milliseconds of
    each of ``calls`` computations on one core). For the timing tools (TimeTest, bench_model), whose frames are
    random: DIS does the same work per patch and pyramid level whatever the content (146 ms on uniform noise, 147 on a
    textured shift, one core at 720p here), so the cost is a real pair's; the flows themselves mean nothing, and the
    model's time does not depend on their values. The frames' copy to the host is not timed.
    """
    if img0.dim() != 4 or img0.shape[0] != 1 or img0.shape != img1.shape:
        raise ValueError(f"expected two (1, 3, H, W) frames, got {tuple(img0.shape)} and {tuple(img1.shape)}")
    frames = [image[0].detach().float().permute(1, 2, 0).cpu().numpy() for image in (img0, img1)]
    times, prior = [], None
    for _ in range(max(1, calls)):
        prior, ms = timed_on_one_core(lambda: prior_pair_flows(*frames))
        times.append(ms)
    return torch.from_numpy(np.ascontiguousarray(prior))[None].to(img0.device), times


# Kernel families of a profile, first match wins (names lower-cased): every kernel falls in exactly one, so the
# families add up to the whole call. Why: a list of the slowest names leaves half of a compiled call unexplained
# (docs/PERF.md 10.12: ~477 kernels, "the rest"); families say how much is scan, warps, convolutions, matrix products,
# Inductor's fused kernels and copies.
KERNEL_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ssd scan (mamba-ssm)", ("chunk_scan", "chunk_state", "state_passing", "bmm_chunk", "chunk_cumsum")),
    ("warps", ("grid_sampler", "border_warp")),
    ("cudnn layout and padding", ("addpadding", "nchwtonhwc", "nhwctonchw")),
    ("convolutions", ("conv", "fprop", "implicit_gemm", "cudnn", "xmma_fprop", "dgrad", "wgrad")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("matrix products", ("gemm", "cublas", "cutlass", "matmul", "aten::mm", "aten::addmm", "aten::linear", "bmm")),
    ("inductor fused kernels", ("triton_",)),
    ("copies and fills", ("memcpy", "memset", "copy", "fill")),
)


# Inductor's generated pointwise, reduction and persistent-reduction kernels: named after every operator they fused
# (``triton_poi_fused__prelu_kernel_..._border_warp_half_inference_..._convolution_...``), so their names hold other
# families' words without being those kernels.
INDUCTOR_FUSED_PREFIXES = ("triton_poi_", "triton_red_", "triton_per_")


def kernel_family(name: str) -> str:
    """The :data:`KERNEL_FAMILIES` entry a kernel name falls in ("other" when none matches); Inductor's fused kernels
    (:data:`INDUCTOR_FUSED_PREFIXES`) by their prefix alone, its templates (``triton_tem_``) by what they compute."""
    lowered = name.lower()
    if lowered.startswith(INDUCTOR_FUSED_PREFIXES):
        return "inductor fused kernels"
    for family, needles in KERNEL_FAMILIES:
        if any(needle in lowered for needle in needles):
            return family
    return "other"


def kernel_profile(call: Callable[[], object], device: torch.device | str, patterns: Sequence[str], calls: int = 3,
                   top: int = 12) -> dict:
    """What ``calls`` calls run, under ``torch.profiler``, per call: the GPU activities (kernels, copies) and their
    device ms, in all and for those whose name contains each of ``patterns`` (case-insensitive), plus the ``top``
    names by time. One untimed call first (compilation, autotuning and caches stay outside).

    Why: a timing says how much a change saved, a kernel list says what: e.g. whether cuDNN's channel-padding pass
    (``nhwcAddPaddingKernel``) still runs before a convolution. Run it on a call that is not a CUDA-graph replay,
    whose kernels the profiler may not list one by one. On a CPU it lists operators instead (nested: an
    ``aten::conv2d`` holds the calls it makes, so "all" counts some time twice): a smoke test of the script only.
    Returns ``{"calls", "all": {"per_call", "ms_per_call"}, "matching": {pattern: {"per_call", "ms_per_call",
    "names"}}, "families": {family: {"per_call", "ms_per_call"}} (:data:`KERNEL_FAMILIES`, adding up to "all"),
    "top": [{"name", "per_call", "ms_per_call"}, ...]}``.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    device = torch.device(device)
    cuda = device.type == "cuda"
    call()
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            call()
        if cuda:
            torch.cuda.synchronize(device)
    wanted = DeviceType.CUDA if cuda else DeviceType.CPU
    per_name: dict[str, list[float]] = {}
    for event in profiler.events():
        if event.device_type == wanted:
            per_name.setdefault(event.name, []).append(event.time_range.elapsed_us() / 1000)

    def summary(names: list[str]) -> dict:
        return {"per_call": round(sum(len(per_name[name]) for name in names) / calls, 2),
                "ms_per_call": round(sum(sum(per_name[name]) for name in names) / calls, 4)}
    matching = {}
    for pattern in patterns:
        names = sorted(name for name in per_name if pattern.lower() in name.lower())
        matching[pattern] = dict(summary(names), names=[name[:160] for name in names])
    by_family: dict[str, list[str]] = {}
    for name in per_name:
        by_family.setdefault(kernel_family(name), []).append(name)
    families = {family: summary(names) for family, names in
                sorted(by_family.items(), key=lambda item: -sum(sum(per_name[name]) for name in item[1]))}
    slowest = sorted(per_name, key=lambda name: -sum(per_name[name]))[:top]
    return {"calls": calls, "all": summary(list(per_name)), "matching": matching, "families": families,
            "top": [dict(summary([name]), name=name[:160]) for name in slowest]}


def count_gflop(call: Callable[[], object], model: torch.nn.Module, parts: Sequence[str]) -> dict:
    """Arithmetic of one ``call`` of ``model``: ``{"total": GFLOP, "parts": {name: GFLOP}}`` for each child module
    named in ``parts`` (``torch.utils.flop_counter``: matrix products and convolutions, 2 FLOP per multiply-add).

    The Mamba2 branches run their SSD scan with the PyTorch chunked reference while counting (the fused Triton
    kernel is opaque to the counter), so a model counts the same on every device; the result is a property of the
    model and the frame size, reported beside the time as VFI papers do (and as docs/PERF.md 10.2 uses it: GFLOP over
    milliseconds is the rate a change of kernels moves). Restores each branch's backend afterwards.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from model.mamba_branch import InterleavedMamba2
    branches = [module for module in model.modules() if isinstance(module, InterleavedMamba2)]
    saved = [branch.backend for branch in branches]
    counter = FlopCounterMode(display=False)
    try:
        for branch in branches:
            branch.backend = "torch"
        with torch.no_grad(), counter:
            call()
    finally:
        for branch, backend in zip(branches, saved):
            branch.backend = backend
    counts = counter.get_flop_counts()
    root = type(model).__name__
    return {"total": counter.get_total_flops() / 1e9,
            "parts": {part: sum(counts.get(f"{root}.{part}", {}).values()) / 1e9 for part in parts}}
