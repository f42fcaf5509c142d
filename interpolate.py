"""Apply a trained Thesis-VFI checkpoint to footage: a video or a folder of frames in, N times the frames out.

    python interpolate.py --model phase2_hybrid_best --input clip.mp4 --output clip_4x.mp4 --multi 4
    python interpolate.py --model ckpt/p3.pt --input clip.mp4 --output clip_60.mp4 --fps 60
    python interpolate.py --model p3 --input frames/ --output frames_2x/             # PNG folder in and out

Output times. Input frame i sits at time i (in input frames); with ``ratio`` = input frames per output frame
(1/N for ``--multi N``, input rate / F for ``--fps F``), output frame k sits at time k * ratio. The output frames
between input frames i and i+1 get t = k * ratio - i in [0, 1); t = 0 is input frame i itself. The last input frame
is an output frame when it falls on the output grid, so ``--multi N`` gives (n - 1) * N + 1 frames, ``--fps F``
floor((n - 1) * F / rate) + 1, and the output spans exactly the input's first to last frame.

Which model calls. A Phase-3 checkpoint was trained at arbitrary t and gets each t directly (one pass per output
frame). Phases 1 and 2 were trained only at t = 0.5: when every needed t is k / 2^d (``--multi`` a power of two,
or ``--fps`` a power-of-two multiple of the input rate), t = k / 2^d is the t = 0.5 interpolation of (k-1) / 2^d and
(k+1) / 2^d, computed depth by depth ("recursive halving"); any other t is given directly, with a warning that the
model never saw it (``--strict_t`` refuses instead).

Scene cuts and duplicates: a frame between two shots must never be a blend of both. The measure is the mean
absolute difference (MAD) of two consecutive input frames, on the 0-255 scale, averaged over pixels and colour
channels, on copies area-downscaled to at most 448 px on the longer side (the measure ``tools/video_to_vimeo.py``
filters training data with). Above
``--scene_threshold`` (default 30) the pair is a cut; at or below ``--dup_threshold`` (default 0.2) it is a duplicate.
Either way every output frame between the two is a copy of the earlier input frame.

Streaming (memory depends on the frame size, never on the video's length)::

    reader thread: decode -> MAD to previous -> (pinned) --queue--> main: upload, batch pairs, model (bf16 on CUDA)
        --queue of uint8 frames (async GPU->pinned copies)--> writer thread: ffmpeg / PNG encoders

so decoding, the model and encoding overlap. Output goes to a hidden temporary name and is renamed at the end.
Errors a user can fix (a missing input, a bad flag, a checkpoint that is not ours, an unwritable output) end with one
line on stderr and exit status 2; Ctrl-C removes what was written and exits with 130.
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmark.eval_core import (AMP_DTYPES, BenchmarkError, Evaluator, ModelClock, Protocol, describe_run,
                                 frame_to_tensor, positive_float, positive_int, resolve_device)
from benchmark.metrics import to_uint8
from checkpoint import CheckpointError, model_from_checkpoint, resolve_checkpoint
from config import ConfigError, OneLineErrorParser
from model.inference import GraphUnavailable, InferenceRunner, add_graph_argument
from video_io import (FfmpegSink, FolderSink, FrameSink, FrameSource, OpenCVSink, SourceInfo,
                      VideoIOError, find_ffmpeg, open_source, prepare_output, snap_rate)

PROGRAM = "interpolate.py"
MOTION_MEASURE_SIZE = 448          # longer side of the copy the cut/duplicate measure runs on
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Auto batch: about one 1080p frame's worth of pixels per model call; small frames are batched up to this many.
BATCH_PIXELS = 1920 * 1088
MAX_AUTO_BATCH = 8


class InterpolateError(RuntimeError):
    """A request that cannot be carried out as given (e.g. --strict_t with a t the model never saw); one line."""


# OSError too: a full disk or a vanished folder is the user's to fix, and its message names the file.
USER_ERRORS = (InterpolateError, VideoIOError, BenchmarkError, CheckpointError, ConfigError, OSError)


# --------------------------------------------------------------------------------------------------------
# Output times
# --------------------------------------------------------------------------------------------------------
def pair_times(pair: int, ratio: Fraction) -> list[Fraction]:
    """Times t in [0, 1) of the output frames from input frame ``pair`` up to (not including) ``pair + 1``.

    ratio: input frames per output frame (1/N for --multi N). Output frame k is at input time k * ratio.
    """
    times, k = [], math.ceil(pair / ratio)
    while k * ratio < pair + 1:
        times.append(k * ratio - pair)
        k += 1
    return times


def output_frame_count(frames_in: int, ratio: Fraction) -> int:
    """Output frames for ``frames_in`` input frames: every k with k * ratio <= frames_in - 1."""
    return math.floor((frames_in - 1) / ratio) + 1


def last_frame_on_grid(frames_in: int, ratio: Fraction) -> bool:
    """Whether the last input frame is itself an output frame (always for --multi)."""
    return ((frames_in - 1) / ratio).denominator == 1


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def halving_rounds(times: Iterable[Fraction]) -> list[list[Fraction]]:
    """Dyadic times in (0, 1) -> the midpoints to compute at depth 1, 2, ... (one list per depth, sorted).

    t = k / 2^d with k odd is the t = 0.5 interpolation of (k-1) / 2^d and (k+1) / 2^d, which have smaller
    denominators: they come from earlier depths, or are the input frames (0 and 1). Only the ancestors the requested
    times need are listed, so --fps 24 -> 48 costs one call per pair, not a whole tree.
    """
    needed: set[Fraction] = set()
    stack = [Fraction(t) for t in times]
    while stack:
        t = stack.pop()
        if t <= 0 or t >= 1 or t in needed:
            continue
        if not is_power_of_two(t.denominator):
            raise ValueError(f"t = {t} is not a dyadic fraction: it cannot be reached by halving")
        needed.add(t)
        step = Fraction(1, t.denominator)
        stack += [t - step, t + step]
    depth = max((t.denominator.bit_length() - 1 for t in needed), default=0)
    return [sorted(t for t in needed if t.denominator == 2 ** d) for d in range(1, depth + 1)]


def describe_times(values: Sequence[Fraction], limit: int = 4) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


# --------------------------------------------------------------------------------------------------------
# Settings chosen from the frame size and the device
# --------------------------------------------------------------------------------------------------------
def default_flow_scale(height: int, width: int) -> float:
    """1.0 up to 1080p, 0.5 up to 2K / 1440p, 0.25 above (4K): flow is estimated on downscaled frames so its
    search range keeps up with the motion (in pixels) of large frames, at a fraction of the cost."""
    pixels = height * width
    if pixels <= 1920 * 1088:
        return 1.0
    if pixels <= 2560 * 1440:
        return 0.5
    return 0.25


def default_batch(height: int, width: int, device: torch.device) -> int:
    """Model calls (pair, t) per forward pass: 1 on the CPU (no gain there); on a GPU as many as fill about one
    1080p frame, since small frames leave a GPU launch-bound (docs/PERF.md)."""
    if device.type != "cuda":
        return 1
    return max(1, min(MAX_AUTO_BATCH, BATCH_PIXELS // (height * width)))


def resolve_amp(amp: str, device: torch.device) -> str:
    """"auto" -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on the CPU; anything else as given."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


# --------------------------------------------------------------------------------------------------------
# Cuts and duplicates
# --------------------------------------------------------------------------------------------------------
def motion_thumbnail(frame: np.ndarray, size: int = MOTION_MEASURE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> float32 copy, area-downscaled so its longer side is at most ``size`` (never upscaled)."""
    height, width = frame.shape[:2]
    scale = size / max(height, width)
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    return frame.astype(np.float32)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference, 0-255 scale, over pixels and channels."""
    return float(np.abs(a - b).mean())


def classify_pair(mad: float, scene_threshold: float, dup_threshold: float) -> str:
    """"cut" (MAD > scene_threshold), "duplicate" (MAD <= dup_threshold) or "motion" (interpolate)."""
    if mad > scene_threshold:
        return "cut"
    if mad <= dup_threshold:
        return "duplicate"
    return "motion"


# --------------------------------------------------------------------------------------------------------
# The model side: batched, halving for t = 0.5-only checkpoints
# --------------------------------------------------------------------------------------------------------
class FrameInterpolator:
    """Predicts the frames at given times between many frame pairs, a batch of model calls at a time.

    model: anything with ``inference(img0, img1, t, flow_scale, tta)`` (ThesisModel); it runs through the
        benchmarks' :class:`Evaluator` (centred padding to 32, autocast, crop, clamp), so a video frame is
        predicted exactly as a benchmark frame is.
    batch_size: model calls (pair, t) per forward pass.
    halving: reach every t by repeated t = 0.5 calls (:func:`halving_rounds`) instead of passing t.
    runner: how the model runs (:class:`model.inference.InferenceRunner`: CUDA graphs, compiled); default eager.
    """

    def __init__(self, model: nn.Module, device: torch.device, amp: str, tta: bool, flow_scale: float,
                 batch_size: int, halving: bool, fixed_batch: bool = False, runner: InferenceRunner | None = None):
        protocol = Protocol("video", flow_scale=flow_scale)
        runner = runner or InferenceRunner(model, "off")
        self.evaluator = Evaluator(model, protocol, device, amp, tta, flow_scale, progress=False, runner=runner)
        self.runner = runner
        self.device, self.batch_size, self.halving = device, batch_size, halving
        # A compiled model or a CUDA graph is specialised to one batch size: a short last batch would compile (minutes
        # at 4K) or capture again, so it is filled up with copies of its last request, whose predictions are dropped.
        self.fixed_batch = fixed_batch or runner.graphs_enabled or runner.compiled
        self.model_calls = 0
        self.clock = ModelClock(device)     # the model's own time per forward pass (GPU time on CUDA)

    def model_rate(self, frames_out: int) -> str:
        """The output frames/s the model alone would allow: median forward-pass time (the first pass, which
        captures or compiles, is left out) spread over the output frames it serves."""
        times = sorted(self.clock.times_ms[1:] or self.clock.times_ms)
        if not times or not self.model_calls or not frames_out:
            return "model-only n/a"
        ms_per_call = times[len(times) // 2] / self.batch_size
        rate = frames_out / (self.model_calls * ms_per_call / 1000)
        return f"model-only {rate:.2f} out-frames/s ({ms_per_call:.1f} ms per model call, {self.runner.mode})"

    def calls_needed(self, times: Sequence[Fraction]) -> int:
        """Model calls (batch entries) that one pair with these output times costs."""
        inner = [t for t in times if t > 0]
        return sum(len(r) for r in halving_rounds(inner)) if self.halving else len(inner)

    def interpolate(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor, Sequence[Fraction]]]
                    ) -> list[dict[Fraction, torch.Tensor]]:
        """[(img0, img1, times)] with images (1, 3, H, W) in [0, 1] -> per pair {t: (1, 3, H, W) prediction} for
        every t in (0, 1) of ``times`` (halving also leaves its intermediate times in the dict)."""
        values: list[dict[Fraction, torch.Tensor]] = [{Fraction(0): a, Fraction(1): b} for a, b, _ in pairs]
        if self.halving:
            per_pair = [halving_rounds(t for t in times if t > 0) for _, _, times in pairs]
            for depth in range(max((len(r) for r in per_pair), default=0)):
                requests = []
                for index, rounds in enumerate(per_pair):
                    if depth < len(rounds):
                        step = Fraction(1, 2 ** (depth + 1))
                        requests += [(index, t, values[index][t - step], values[index][t + step], Fraction(1, 2))
                                     for t in rounds[depth]]
                self._run(requests, values)
        else:
            self._run([(index, t, a, b, t) for index, (a, b, times) in enumerate(pairs) for t in times if t > 0],
                      values)
        return values

    def _run(self, requests: list[tuple[int, Fraction, torch.Tensor, torch.Tensor, Fraction]],
             values: list[dict[Fraction, torch.Tensor]]) -> None:
        """requests: (pair index, output time, left image, right image, t given to the model)."""
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            filled = chunk + chunk[-1:] * (self.batch_size - len(chunk)) if self.fixed_batch else chunk
            img0 = torch.cat([r[2] for r in filled])
            img1 = torch.cat([r[3] for r in filled])
            t = torch.tensor([float(r[4]) for r in filled], dtype=torch.float32)
            if self.device.type == "cuda":
                # From pageable memory a copy waits for the GPU to finish everything queued before it; pinned and
                # non-blocking, the main thread keeps queueing work instead.
                t = t.pin_memory()
            t = t.to(self.device, non_blocking=True)
            with self.clock:
                predictions = self.evaluator.predict(img0, img1, t)
            self.model_calls += len(chunk)
            for (index, time_, *_), prediction in zip(chunk, predictions.split(1)):
                values[index][time_] = prediction


# --------------------------------------------------------------------------------------------------------
# The streaming pipeline
# --------------------------------------------------------------------------------------------------------
class Stopped(Exception):
    """The main thread asked the workers to stop (an error or Ctrl-C elsewhere)."""


class Worker(threading.Thread):
    """A daemon thread that keeps what its function raised, for the main thread to re-raise."""

    def __init__(self, name: str, function: Callable[[], None]):
        super().__init__(name=name, daemon=True)
        self.function = function
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.function()
        except BaseException as error:   # noqa: BLE001 - handed to the main thread, which decides
            self.error = error


def put(channel: queue.Queue, item: object, stop: threading.Event, peer: Worker | None = None) -> None:
    """Blocking put that gives up when told to stop or when the consuming thread has failed."""
    while True:
        if stop.is_set():
            raise Stopped
        if peer is not None and peer.error is not None:
            raise peer.error
        try:
            channel.put(item, timeout=0.05)
            return
        except queue.Full:
            pass


def get(channel: queue.Queue, stop: threading.Event, peer: Worker | None = None) -> object:
    """Blocking get that gives up when told to stop or when the producing thread has failed."""
    while True:
        try:
            return channel.get(timeout=0.05)
        except queue.Empty:
            pass
        if stop.is_set():
            raise Stopped
        if peer is not None and peer.error is not None:
            raise peer.error


END = object()   # end-of-stream marker on both queues


@dataclass
class InputFrame:
    """One decoded frame. rgb: (H, W, 3) uint8; pinned: the same in page-locked memory (CUDA only, for an
    asynchronous upload); mad: the cut/duplicate measure against the previous frame (None for the first)."""

    index: int
    rgb: np.ndarray
    pinned: torch.Tensor | None
    mad: float | None


@dataclass
class OutputFrame:
    """A frame on its way to the writer: a ready array, or a pinned tensor whose GPU->host copy is complete once
    ``event`` has completed (the writer waits for it, so the main thread never does)."""

    array: np.ndarray | None = None
    host: torch.Tensor | None = None
    event: torch.cuda.Event | None = None

    def numpy(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.array if self.array is not None else self.host.numpy()


@dataclass
class PairJob:
    """Input frames i and i+1 and what to output between them."""

    index: int
    frame0: InputFrame
    img0: torch.Tensor                  # (1, 3, H, W) float in [0, 1] on the model's device
    img1: torch.Tensor
    times: list[Fraction]
    kind: str                           # "motion", "cut" or "duplicate"


@dataclass
class RunStats:
    """What a run did: the counts of the final line, and notes from the sink (e.g. why audio was not copied)."""

    frames_in: int = 0
    frames_out: int = 0
    cuts: int = 0
    duplicates: int = 0
    model_calls: int = 0
    seconds: float = 0.0
    first_frame_seconds: float | None = None   # start-up: first batch, cuDNN autotuning, encoder start
    notes: list[str] = field(default_factory=list)

    def steady_rate(self) -> str:
        """Output frames/s after the first frame was written: the rate without the one-off start-up."""
        if self.first_frame_seconds is None or self.frames_out < 2 or self.seconds <= self.first_frame_seconds:
            return "n/a"
        return (f"{(self.frames_out - 1) / (self.seconds - self.first_frame_seconds):.2f} out-frames/s after "
                f"{self.first_frame_seconds:.1f} s of start-up")

    def summary(self) -> str:
        rate = self.frames_out / self.seconds if self.seconds > 0 else float("nan")
        return (f"frames in {self.frames_in}, frames out {self.frames_out}, cuts {self.cuts}, "
                f"duplicates {self.duplicates}, {self.seconds:.1f} s ({rate:.2f} out-frames/s)")


@dataclass(frozen=True)
class StreamSettings:
    """Everything :func:`run_stream` needs besides the source, sink and model; thresholds on the MAD 0-255 scale."""

    ratio: Fraction                     # input frames per output frame
    scene_threshold: float = 30.0
    dup_threshold: float = 0.2
    progress: bool = True
    expected_frames: int | None = None  # progress bar total


def upload(frame: InputFrame, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] on ``device``. From pinned memory the copy is asynchronous, so the main
    thread goes on queueing work while it runs (frame_to_tensor copies from pageable memory, synchronously)."""
    if frame.pinned is None:
        return frame_to_tensor(frame.rgb, device)
    image = frame.pinned.to(device, non_blocking=True)
    return image.permute(2, 0, 1)[None].float().div_(255).contiguous()


def to_output(prediction: torch.Tensor) -> OutputFrame:
    """(1, 3, H, W) float prediction -> an :class:`OutputFrame`; on CUDA the copy to the host is only queued."""
    image = to_uint8(prediction[0]).permute(1, 2, 0).contiguous()       # (H, W, 3) uint8, still on the device
    if image.device.type != "cuda":
        return OutputFrame(array=image.numpy())
    host = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(image, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return OutputFrame(host=host, event=event)


def run_stream(source: FrameSource, sink: FrameSink, interpolator: FrameInterpolator,
               settings: StreamSettings) -> RunStats:
    """Read, interpolate and write every frame; returns the counts. On any failure (or Ctrl-C) the source is
    stopped and the sink aborted before the error propagates, so nothing partial is left behind."""
    device = interpolator.device
    pin = device.type == "cuda"
    info = source.info
    frame_bytes = info.width * info.height * 3
    stop = threading.Event()
    read_queue: queue.Queue = queue.Queue(maxsize=8)
    # Enough finished frames to ride out encoder hiccups, bounded to about 512 MiB of (pinned) memory.
    write_queue: queue.Queue = queue.Queue(maxsize=max(4, min(32, (512 << 20) // frame_bytes)))
    stats = RunStats()
    bar = tqdm(total=settings.expected_frames, unit="frame", desc="interpolating", disable=not settings.progress,
               dynamic_ncols=True)

    def read_frames() -> None:
        previous = None
        for index, rgb in enumerate(source.frames()):
            thumbnail = motion_thumbnail(rgb)
            mad = None if previous is None else mean_abs_diff(thumbnail, previous)
            pinned = torch.from_numpy(rgb).pin_memory() if pin else None
            put(read_queue, InputFrame(index, rgb, pinned, mad), stop)
            previous = thumbnail
        put(read_queue, END, stop)

    def write_frames() -> None:
        while True:
            item = get(write_queue, stop)
            if item is END:
                return
            sink.write(item.numpy())
            if stats.first_frame_seconds is None:
                stats.first_frame_seconds = time.perf_counter() - start
            bar.update(1)

    reader, writer = Worker("reader", read_frames), Worker("writer", write_frames)
    start = time.perf_counter()
    reader.start()
    writer.start()

    def emit(frame: OutputFrame) -> None:
        put(write_queue, frame, stop, writer)
        stats.frames_out += 1

    def flush(jobs: list[PairJob]) -> None:
        motion = [job for job in jobs if job.kind == "motion"]
        predicted = iter(interpolator.interpolate([(job.img0, job.img1, job.times) for job in motion]))
        for job in jobs:
            values = next(predicted) if job.kind == "motion" else {}
            for t in job.times:
                # t = 0 is the input frame itself; across a cut or a duplicate every frame copies the earlier one.
                copy = t == 0 or job.kind != "motion"
                emit(OutputFrame(array=job.frame0.rgb) if copy else to_output(values[t]))
        jobs.clear()

    try:
        with torch.inference_mode():
            previous: tuple[InputFrame, torch.Tensor] | None = None
            pending: list[PairJob] = []
            pending_calls = 0
            while True:
                item = get(read_queue, stop, reader)
                if item is END:
                    break
                stats.frames_in += 1
                image = upload(item, device)
                if previous is not None:
                    kind = classify_pair(item.mad, settings.scene_threshold, settings.dup_threshold)
                    stats.cuts += kind == "cut"
                    stats.duplicates += kind == "duplicate"
                    times = pair_times(previous[0].index, settings.ratio)
                    pending.append(PairJob(previous[0].index, previous[0], previous[1], image, times, kind))
                    pending_calls += interpolator.calls_needed(times) if kind == "motion" else 0
                    # Batch consecutive pairs until a forward pass is full; a pair never waits for more than that.
                    # A compiled model's short batches are filled with copies (FrameInterpolator), so there pairs
                    # without model calls (cuts, duplicates) do not end a batch early; the cap bounds the frames held.
                    pair_cap = interpolator.batch_size * (4 if interpolator.fixed_batch else 1)
                    if pending_calls >= interpolator.batch_size or len(pending) >= pair_cap:
                        flush(pending)
                        pending_calls = 0
                previous = (item, image)
            flush(pending)
            if stats.frames_in < 2:
                raise VideoIOError(f"{info.path}: only {stats.frames_in} frame(s) decoded; interpolation needs 2")
            if last_frame_on_grid(stats.frames_in, settings.ratio):
                emit(OutputFrame(array=previous[0].rgb))
        put(write_queue, END, stop, writer)
        while writer.is_alive():
            writer.join(timeout=0.1)
        if writer.error is not None:
            raise writer.error
        stats.notes += sink.finish(stats.frames_out)
    except BaseException:
        stop.set()
        source.close()
        sink.abort()
        for worker in (reader, writer):
            worker.join(timeout=5)
        raise
    finally:
        bar.close()
    reader.join(timeout=5)
    stats.model_calls = interpolator.model_calls
    stats.seconds = time.perf_counter() - start
    return stats


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
def multi_factor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2 (N-1 new frames between each pair of input "
                                         f"frames), got {text}")
    return value


def frame_rate(text: str) -> Fraction:
    """'60', '60000/1001' or '59.94' (read as 60000/1001, the NTSC rate it stands for) -> a positive Fraction."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"must be a frame rate like 60, 60000/1001 or 59.94, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return snap_rate(float(value)) if "." in text else value


def crf_value(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else -1
    if not 0 <= value <= 51:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 (lossless) to 51, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROGRAM, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("--model", required=True, help="checkpoint name in --ckpt_dir (e.g. phase2_hybrid_best) or a "
                                                       "path to a .pt file")
    parser.add_argument("--input", required=True, type=Path,
                        help="a video file, or a folder of .png/.jpg frames (natural name order)")
    parser.add_argument("--output", required=True, type=Path,
                        help="a video (.mp4, .mkv, .mov, .avi: H.264) or a folder (no extension: numbered PNGs)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--multi", type=multi_factor, default=None,
                      help="N: N-1 new frames between each pair, output rate N x input (default 2)")
    rate.add_argument("--fps", type=frame_rate, default=None,
                      help="output frame rate F (e.g. 60, 60000/1001); each output frame at its exact time")
    parser.add_argument("--input_fps", type=frame_rate, default=None,
                        help="rate of a frame folder (needed for --fps or a video output); overrides a video's own")
    parser.add_argument("--flow_scale", type=positive_float, default=None,
                        help="flow downscale (default by frame size: 1.0 up to 1080p, 0.5 up to 2K, 0.25 above)")
    parser.add_argument("--scene_threshold", type=float, default=30.0,
                        help="pairs whose MAD (0-255) exceeds this are scene cuts: frames copied (default 30; "
                             "255 never)")
    parser.add_argument("--dup_threshold", type=float, default=0.2,
                        help="pairs whose MAD (0-255) is at most this are duplicates: frames copied (default 0.2; "
                             "-1 never)")
    parser.add_argument("--strict_t", action="store_true",
                        help="refuse times a Phase-1/2 checkpoint (trained at t=0.5) cannot reach by halving")
    parser.add_argument("--amp", choices=["auto", *AMP_DTYPES], default="auto",
                        help="model precision (default auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--tta", action="store_true", help="average with the prediction on flipped inputs (2x time)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (CUDA) before replaying it as a CUDA graph: minutes of "
                             "compilation once per frame size (kernels cached across runs), then faster at 4K; "
                             "see docs/PERF.md, inference section, for when it pays off")
    add_graph_argument(parser)
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="model calls per forward pass (default: 1 on the CPU; on a GPU about 1080p worth)")
    parser.add_argument("--crf", type=crf_value, default=18, help="H.264 quality, 0 lossless .. 51 (default 18)")
    parser.add_argument("--preset", choices=X264_PRESETS, default="medium", help="x264 speed preset (default medium)")
    parser.add_argument("--ckpt_dir", default="ckpt", help="folder searched for --model names (default ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def warn(message: str) -> None:
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr)


def output_ratio(args: argparse.Namespace, info: SourceInfo) -> tuple[Fraction, Fraction | None, str]:
    """(input frames per output frame, output rate or None, how it was chosen)."""
    if args.fps is not None:
        if info.rate is None:
            raise InterpolateError(f"--fps needs the input's frame rate: {info.path} is a frame folder, give "
                                   f"--input_fps")
        if args.fps <= info.rate:
            warn(f"--fps {float(args.fps):g} is not above the input's {float(info.rate):.6g} fps: frames are dropped "
                 f"or re-timed, not added")
        return info.rate / args.fps, args.fps, f"--fps {float(args.fps):.6g}"
    multi = args.multi or 2
    out_rate = info.rate * multi if info.rate is not None else None
    return Fraction(1, multi), out_rate, f"{multi} x input"


def choose_time_strategy(phase: int, ratio: Fraction, strict: bool) -> tuple[bool, str]:
    """(use halving, one line saying how the output times are reached) for a checkpoint of ``phase``."""
    steps = ratio.denominator     # every output time is a multiple of 1 / steps
    if steps == 1:
        return False, "every output frame falls on an input frame: no interpolation needed"
    if phase == 3:
        return False, f"Phase-3 checkpoint: each t = k/{steps} is given to the model directly"
    if is_power_of_two(steps):
        rounds = steps.bit_length() - 1
        how = "t = 0.5 only" if steps == 2 else f"t = k/{steps} by recursive halving ({rounds} rounds of t = 0.5)"
        return True, f"Phase-{phase} checkpoint (trained at t = 0.5 only): {how}"
    unseen = describe_times([Fraction(k, steps) for k in range(1, steps)])
    if strict:
        raise InterpolateError(f"--strict_t: this Phase-{phase} checkpoint was trained only at t = 0.5, and the output "
                               f"times need t = {unseen}; use a power-of-two --multi, an --fps that is the input rate "
                               f"times a power of two, or a Phase-3 checkpoint")
    warn(f"this Phase-{phase} checkpoint was trained only at t = 0.5 and never saw t = {unseen}; frames at those "
         f"times may be poor (a power-of-two --multi avoids this; --strict_t refuses)")
    return False, f"Phase-{phase} checkpoint: t = k/{steps} given directly (outside its training)"


def make_sink(path: Path, kind: str, info: SourceInfo, rate: Fraction | None, args: argparse.Namespace,
              ffmpeg: str | None) -> FrameSink:
    """A PNG folder, or a video through ffmpeg (audio from a video source) or, without imageio-ffmpeg, OpenCV."""
    if kind == "folder":
        return FolderSink(path)
    if ffmpeg is None:
        return OpenCVSink(path, info.width, info.height, rate)
    audio = info if info.kind == "video" and info.has_audio else None
    return FfmpegSink(path, ffmpeg, info.width, info.height, rate, args.crf, args.preset, audio)


def run(args: argparse.Namespace) -> RunStats:
    """Checks (cheap ones first: input, checkpoint name, output), model, then the stream; prints the final line.
    Raises one of USER_ERRORS for anything the user can fix."""
    ffmpeg = find_ffmpeg()
    input_path, output_path = args.input, args.output
    if output_path.resolve() == input_path.resolve():
        raise InterpolateError(f"--output {output_path} is the --input; choose another path")
    output_is_video = output_path.suffix.lower() != "" and not output_path.is_dir()
    if ffmpeg is None and (input_path.is_file() or output_is_video):
        warn("imageio-ffmpeg is not installed: video is read and written with OpenCV (MPEG-4 part 2, no audio, "
             "--crf ignored); pip install imageio-ffmpeg")
    source = open_source(input_path, ffmpeg, args.input_fps)
    info = source.info
    checkpoint_path = resolve_checkpoint(args.model, args.ckpt_dir)
    kind = prepare_output(output_path, args.overwrite)
    ratio, out_rate, rate_text = output_ratio(args, info)
    if kind == "video" and out_rate is None:
        raise InterpolateError(f"a video output needs a frame rate: {info.path} is a frame folder, give --input_fps")

    device = resolve_device(args.device)
    if args.compile and device.type != "cuda":
        raise InterpolateError(f"--compile needs a CUDA device (this run is on {device.type})")
    amp = resolve_amp(args.amp, device)
    model, cfg = model_from_checkpoint(str(checkpoint_path), device=device)
    halving, time_text = choose_time_strategy(cfg.train.phase, ratio, args.strict_t)
    flow_scale = args.flow_scale or default_flow_scale(info.height, info.width)
    batch = args.batch or default_batch(info.height, info.width, device)
    if device.type == "cuda":
        # One frame size for the whole run: cuDNN's per-shape autotuning is paid once and then pays off.
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)

    expected = output_frame_count(info.frame_count, ratio) if info.frame_count else None
    out_rate_text = f"{float(out_rate):.6g} fps = {rate_text}" if out_rate is not None else rate_text
    print(f"input:  {info.describe()}")
    print(f"output: {output_path} ({kind}, {out_rate_text}"
          + (f", ~{expected} frames)" if expected else ")"))
    flow_note = ("" if args.flow_scale or not cfg.model.use_flow
                 else f" (default for {info.width}x{info.height}; --flow_scale to change)")
    print(f"model:  {describe_run(args.model, cfg.model.use_flow, device, amp, args.tta, flow_scale)}{flow_note} | "
          f"batch {batch}")
    print(f"times:  {time_text}")
    print(f"cuts:   MAD > {args.scene_threshold:g} copies the earlier frame; MAD <= {args.dup_threshold:g} is a "
          f"duplicate (copied)")

    try:
        runner = InferenceRunner(model, args.cuda_graph, compile=args.compile)
    except GraphUnavailable as error:
        raise InterpolateError(str(error)) from None
    if args.compile:
        print("compile: torch.compile, the first batch compiles the model (minutes at 1080p and 4K)")
    print(f"run:    {'CUDA graph per frame size' if runner.graphs_enabled else 'eager'}"
          f"{' of the compiled model' if args.compile else ''} (--cuda_graph {args.cuda_graph})")
    interpolator = FrameInterpolator(model, device, amp, args.tta, flow_scale, batch, halving, runner=runner)
    sink = make_sink(output_path, kind, info, out_rate, args, ffmpeg)
    settings = StreamSettings(ratio, args.scene_threshold, args.dup_threshold, not args.no_progress, expected)
    try:
        stats = run_stream(source, sink, interpolator, settings)
    finally:
        source.close()
    for note in stats.notes:
        print(f"note: {note}")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB (allocated)")
    print(f"wrote {output_path} ({stats.model_calls} model calls; {stats.steady_rate()}; "
          f"{interpolator.model_rate(stats.frames_out)})")
    print(stats.summary())
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 on success, 2 for an error the user can fix (one line on stderr), 130 after Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as error:
        print(f"{PROGRAM}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted; nothing was written to {args.output}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
