"""The streaming pipeline: a reader thread classifies frame pairs while a pool of decode threads decodes the frames
ahead of it (in order), the main thread batches pairs through the :class:`~footage.interpolator.FrameInterpolator`, a
writer thread hands frames to the sink, which encodes on its own threads (memory depends on the frame size, never on
the video's length: every queue and pool is bounded).

    decode pool (io_workers: PNG decode or swscale, frame signature, pinning) --in order--> reader: cut verdicts
        --queue--> main: upload, model --queue (async GPU->pinned copies)--> writer --> sink's encode threads

A model with a flow prior (``--flow_prior dis``) also needs each interpolated pair's DIS flows
(``measures.motion.prior_pair_flows``, about 100 ms of a core at 1080p): the reader submits them to a prior pool of
io_workers threads as soon as a pair's verdict says it is motion (cuts and duplicates need none), the future rides
with the frame through the read queue, and the main thread takes the finished (pinned) prior and uploads it with the
frames. At most :func:`prior_window` priors are in flight, so the DIS runs ahead of the model, in parallel with it,
within a bounded amount of memory; a model without a prior gets no pool and no DIS.
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from footage.interpolator import FrameInterpolator
from footage.timeplan import TimePlan
from footage.video_io import FrameSink, FrameSource, VideoIOError, default_io_workers
from measures.motion import prior_pair_flows
from measures.shots import FrameSignature, PairVerdict, ShotDetector, ShotSettings, frame_signature, pair_score
from model.frames import frame_to_tensor


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

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered_map(pool: ThreadPoolExecutor, function: Callable[[Item], Result], items: Iterable[Item],
                window: int) -> Iterator[Result]:
    """``map(function, items)`` on the pool's threads, in the items' order, with at most ``window`` items submitted
    and not yet yielded (so memory stays bounded however far ahead the pool could run). ``items`` is advanced on the
    calling thread. A failure is raised where its item's result would have been yielded: the items before it come
    out first, exactly as a serial loop would. Closing the iterator early cancels what has not started."""
    pending: deque[Future] = deque()
    iterator = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.submit(function, item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


@dataclass
class InputFrame:
    """One decoded frame. rgb: (H, W, 3) uint8; time: seconds since the first frame (FrameSource); pinned: the
    same in page-locked memory (CUDA only, for an asynchronous upload); verdict: what the pair (previous frame, this
    one) is (None for the first frame); prior: for a prior model and a motion pair, the pair's
    :class:`PriorResult` being computed on the prior pool."""

    index: int
    time: Fraction
    rgb: np.ndarray
    pinned: torch.Tensor | None
    verdict: PairVerdict | None
    prior: Future | None = None


@dataclass
class PriorResult:
    """A pair's flow prior as the prior pool hands it over: flows (1, 4, H, W) float32 (pinned on CUDA), and the
    DIS call's wall milliseconds on its thread and the CPU milliseconds that thread spent in it (OpenCV may add a
    few of its own threads, so this is a lower bound of the CPU cost)."""

    flows: torch.Tensor
    milliseconds: float
    cpu_milliseconds: float


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
    prior: torch.Tensor | None = None   # (1, 4, H, W) on the model's device: a prior model's motion pairs only


@dataclass
class StageWaits:
    """Where the pipeline's two Python threads waited, in seconds, from the first written frame on (start-up, with
    its capture or compile, is left out). The stage the others wait for sets the pace (:meth:`pace`).

    main_*: the main thread (uploads, batches, calls the model): waiting for the next decoded frame from the reader
        (decoding, the cut measure), for a pair's DIS prior, for room in the write queue (the writer is behind).
        ``main_model`` is its time inside the model's calls (on the CPU the model's arithmetic, on a GPU the
        queueing of its work, and waits for the GPU where a call must have a result); ``main_seconds`` its steady
        span (first written frame to its last frame handed to the writer). The rest is the main thread's own work:
        uploads, batching, output copies, and waiting for Python's lock while other threads hold it.
    writer_*: the writer thread: waiting for a frame from the main thread, for a frame's device-to-host copy (the
        GPU still working on it or on what was queued before it) and inside the sink's ``write`` (waiting for a free
        PNG writer, or for Y'CbCr conversion and libx264).
    finish: the sink's ``finish`` after the last frame (libx264 encoding the frames its threads still hold, a few
        dozen, and the file closed; the last PNGs written). Part of the run's seconds and of the rate after start-up,
        not of the steady span: on a clip of seconds it weighs on that rate as it would not on a video of minutes.
    """

    main_input: float = 0.0
    main_prior: float = 0.0
    main_output: float = 0.0
    main_model: float = 0.0
    main_seconds: float = 0.0
    writer_frames: float = 0.0
    writer_device: float = 0.0
    writer_encoder: float = 0.0
    writer_seconds: float = 0.0
    finish: float = 0.0

    def shares(self) -> dict[str, float] | None:
        """Each stage's share of the steady span (the writer's: first to last written frame), 0..1: ``reading`` (the
        main thread waited for input), ``prior``, ``model`` (the larger of the main thread's time in model calls and
        the writer's wait for the GPU), ``main thread`` (its own work besides the model) and ``encoding`` (the writer
        inside the sink). A main thread that handed over its last frame early (the writer behind) was idle for the
        rest of the span. None when the run was too short to have a steady part."""
        span = self.writer_seconds
        if span <= 0:
            return None
        own = max(0.0, self.main_seconds - self.main_input - self.main_prior - self.main_output - self.main_model)
        return {"reading": self.main_input / span, "prior": self.main_prior / span,
                "model": max(self.main_model, self.writer_device) / span, "main thread": own / span,
                "encoding": self.writer_encoder / span}

    def slowest(self) -> str | None:
        """The stage with the largest share (the one that set the pace); None without a steady part."""
        shares = self.shares()
        return None if shares is None else max(shares, key=shares.get)

    def pace(self) -> str:
        """Which stage set the pace and each stage's share, e.g. 'pace: encoding (encoding 93%, model 41%, reading
        2%, prior 0% of 3.4 s)'; 'pace: n/a' for a run without a steady part."""
        shares = self.shares()
        if shares is None:
            return "pace: n/a (too short a run)"
        parts = ", ".join(f"{name} {100 * share:.0f}%" for name, share in sorted(shares.items(), key=lambda i: -i[1]))
        return f"pace: {self.slowest()} ({parts} of {self.writer_seconds:.1f} s)"

    def as_dict(self) -> dict:
        shares = self.shares()
        return {"seconds": {name: round(value, 4) for name, value in vars(self).items()},
                "shares": None if shares is None else {name: round(v, 4) for name, v in shares.items()},
                "pace": self.slowest()}


@dataclass
class RunStats:
    """What a run did: the counts of the final line, and notes from the sink (e.g. why audio was not copied)."""

    frames_in: int = 0
    frames_out: int = 0
    cuts: list[PairVerdict] = field(default_factory=list)          # in pair order
    duplicates: list[PairVerdict] = field(default_factory=list)
    model_calls: int = 0
    seconds: float = 0.0
    first_frame_seconds: float | None = None   # start-up: first batch, cuDNN autotuning, encoder start
    first_call_seconds: float | None = None    # the first batch's model call returned (capture or compile included)
    # The process's age when the stream began (imports, checkpoint, model, input probe; None where the OS does not
    # say): with first_frame_seconds, how long a fresh process takes to its first written frame.
    process_seconds_at_start: float | None = None
    notes: list[str] = field(default_factory=list)
    prior_workers: int = 0                      # threads computing flow priors (0: the model takes none)
    prior_ms: list[float] = field(default_factory=list)       # per prior: wall ms of its DIS call on its thread
    prior_cpu_ms: list[float] = field(default_factory=list)   # per prior: CPU ms of that thread in the call
    waits: StageWaits = field(default_factory=StageWaits)      # which stage set the pace

    def prior_rate(self) -> str:
        """For a prior model: the output frames/s the prior alone would allow (the median wall milliseconds of a
        pair's DIS on its thread, spread over the prior threads and the output frames) and its CPU cost per pair;
        '' for a model without a prior. Beside the model-only rate it says which of the two sets the pace. The wall
        time is taken on a thread that shares the CPUs with decoding and encoding, so on a busy machine it includes
        their competition (and is then above the CPU time)."""
        if not self.prior_workers:
            return ""
        if not self.prior_ms or not self.frames_out:
            return f"prior-only n/a (no pair needed a prior; {self.prior_workers} threads)"
        wall_ms = statistics.median(self.prior_ms)
        rate = self.frames_out / (len(self.prior_ms) * wall_ms / 1000 / self.prior_workers)
        return (f"prior-only {rate:.2f} out-frames/s (DIS per pair {statistics.median(self.prior_cpu_ms):.1f} ms CPU, "
                f"{wall_ms:.1f} ms wall, on each of {self.prior_workers} threads; {len(self.prior_ms)} pairs)")

    @property
    def first_frame_after_process_start(self) -> float | None:
        """Seconds from the process's start to its first written frame (None when either part is unknown)."""
        if self.first_frame_seconds is None or self.process_seconds_at_start is None:
            return None
        return self.process_seconds_at_start + self.first_frame_seconds

    def startup_ages(self) -> dict[str, float | None]:
        """The stream's start-up milestones as the process's age in seconds (None where unknown): the stream began,
        the first model call returned (on a GPU: queued, after any capture or compile), the first frame was
        written. Earlier ones (imports, checkpoint) are the caller's to add."""
        began = self.process_seconds_at_start

        def age(seconds: float | None) -> float | None:
            return None if began is None or seconds is None else began + seconds

        return {"stream began": began, "first model call returned": age(self.first_call_seconds),
                "first frame written": age(self.first_frame_seconds)}

    def steady_rate(self) -> str:
        """Output frames/s after the first frame was written: the rate without the one-off start-up (and, where
        known, how long the process had run by then, and how much of the rest was the output's finish)."""
        if self.first_frame_seconds is None or self.frames_out < 2 or self.seconds <= self.first_frame_seconds:
            return "n/a"
        since_process = self.first_frame_after_process_start
        notes = ([f"first frame {since_process:.1f} s after the process started"] if since_process is not None else [])
        if self.waits.finish >= 0.05:
            notes.append(f"{self.waits.finish:.1f} s of it the output's finish after the last frame")
        return (f"{(self.frames_out - 1) / (self.seconds - self.first_frame_seconds):.2f} out-frames/s after "
                f"{self.first_frame_seconds:.1f} s of start-up" + (f" ({'; '.join(notes)})" if notes else ""))

    def summary(self) -> str:
        rate = self.frames_out / self.seconds if self.seconds > 0 else float("nan")
        return (f"frames in {self.frames_in}, frames out {self.frames_out}, cuts {len(self.cuts)}, "
                f"duplicates {len(self.duplicates)}, {self.seconds:.1f} s ({rate:.2f} out-frames/s)")


def seconds_since_process_start() -> float | None:
    """How long this process has run, from the kernel's record of its start (Linux ``/proc``; clock ticks, 10 ms);
    None elsewhere. Why not a timestamp taken at import: imports (torch alone, seconds) are part of what a user
    waits for before the first frame."""
    try:
        # Field 22 of /proc/self/stat is the start time in ticks since boot; fields after the command name (which
        # may hold spaces, hence the split at its closing parenthesis) start at field 3.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass(frozen=True)
class StreamSettings:
    """Everything :func:`run_stream` needs besides the source, sink and model."""

    plan: TimePlan                      # where the output frames fall
    shots: ShotSettings = ShotSettings()
    progress: bool = True
    expected_frames: int | None = None  # progress bar total
    io_workers: int | None = None       # decode threads and prior threads (None: default_io_workers())


def decode_window(workers: int, frame_bytes: int) -> int:
    """Frames decoded ahead of the reader: two per decode thread (one being decoded, one ready), fewer for very large
    frames (about 256 MiB at most), never fewer than one per thread."""
    return max(workers, min(2 * workers, (256 << 20) // frame_bytes))


def prior_window(workers: int, prior_bytes: int) -> int:
    """Flow priors computed ahead of the main thread: as :func:`decode_window` (a 1080p prior is 33 MB of float32,
    about 256 MiB in flight at most unless that leaves a thread idle)."""
    return decode_window(workers, prior_bytes)


def compute_prior(frame0: np.ndarray, frame1: np.ndarray, pin: bool) -> PriorResult:
    """On a prior thread: (H, W, 3) uint8 RGB frames as the model gets them (before its padding) -> their
    ``prior_pair_flows``, (1, 4, H, W), pinned for an asynchronous upload on CUDA."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    flows = prior_pair_flows(frame0, frame1)
    milliseconds, cpu_milliseconds = 1000 * (time.perf_counter() - began), 1000 * (time.thread_time() - began_cpu)
    tensor = torch.from_numpy(flows)[None]
    return PriorResult(tensor.pin_memory() if pin else tensor, milliseconds, cpu_milliseconds)


def upload(frame: InputFrame, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] on ``device``. From pinned memory the copy is asynchronous, so the main
    thread goes on queueing work while it runs (frame_to_tensor copies from pageable memory, synchronously)."""
    if frame.pinned is None:
        return frame_to_tensor(frame.rgb, device)
    image = frame.pinned.to(device, non_blocking=True)
    return image.permute(2, 0, 1)[None].float().div_(255).contiguous()


def to_output(prediction: torch.Tensor) -> OutputFrame:
    """(1, 3, H, W) float prediction -> an :class:`OutputFrame`; on CUDA the copy to the host is only queued."""
    # (H, W, 3) uint8, still on the device; clamped then rounded (as the benchmarks' to_uint8), never truncated.
    image = torch.round(prediction[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).contiguous()
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

    workers = settings.io_workers or default_io_workers()
    # A prior model's DIS runs on a pool of its own (decoding keeps its threads), bounded by prior_slots.
    prior_pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prior")
                  if interpolator.needs_prior else None)
    prior_slots = threading.BoundedSemaphore(prior_window(workers, info.width * info.height * 16))
    stats.prior_workers = workers if prior_pool is not None else 0

    def submit_prior(frame0: InputFrame, frame1: InputFrame) -> Future:
        # On the reader thread; a slot is given back by the main thread once it has taken the result.
        while not prior_slots.acquire(timeout=0.05):
            if stop.is_set():
                raise Stopped
        return prior_pool.submit(compute_prior, frame0.rgb, frame1.rgb, pin)

    def decode(job: tuple[int, tuple[Callable[[], np.ndarray], Fraction]]) -> tuple[InputFrame, FrameSignature]:
        # On a decode thread: everything a frame needs that does not depend on its neighbours.
        index, (finish_decoding, time_) = job
        if stop.is_set():
            raise Stopped
        rgb = finish_decoding()
        pinned = torch.from_numpy(rgb).pin_memory() if pin else None
        return InputFrame(index, time_, rgb, pinned, None), frame_signature(rgb)

    def read_frames() -> None:
        # A frame goes on once the verdict of its pair with the previous frame is known: the detector looks
        # ``lookahead`` frames ahead, so that many frames wait here.
        detector = ShotDetector(settings.shots)
        waiting: deque[InputFrame] = deque()
        previous = None
        released: list[InputFrame] = []     # the last frame put on the queue: the left frame of the next pair

        def release(verdicts: list[PairVerdict]) -> None:
            for verdict in verdicts:
                frame = waiting.popleft()
                frame.verdict = verdict
                if prior_pool is not None and verdict.kind == "motion":
                    frame.prior = submit_prior(released[-1], frame)
                released[:] = [frame]
                put(read_queue, frame, stop)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            jobs = source.frame_jobs()
            decoded = ordered_map(pool, decode, enumerate(jobs), decode_window(workers, frame_bytes))
            try:
                for frame, signature in decoded:
                    if previous is None:
                        released[:] = [frame]
                        put(read_queue, frame, stop)
                    else:
                        waiting.append(frame)
                        release(detector.push_score(pair_score(previous, signature)))
                    previous = signature
            finally:
                decoded.close()             # cancels decodes not yet started when the run stops early
                # A video's decoder lets go of its file now, not at garbage collection.
                getattr(jobs, "close", lambda: None)()
        release(detector.finish())
        put(read_queue, END, stop)

    waits = stats.waits

    def steady() -> bool:
        # Set once, by the writer; read by the main thread (a plain attribute: a late read only skips one wait).
        return stats.first_frame_seconds is not None

    def write_frames() -> None:
        while True:
            began = time.perf_counter()
            item = get(write_queue, stop)
            fetched = time.perf_counter()
            if item is END:
                if steady():
                    waits.writer_frames += fetched - began
                    waits.writer_seconds = fetched - start - stats.first_frame_seconds
                return
            array = item.numpy()
            copied = time.perf_counter()
            sink.write(array)
            written = time.perf_counter()
            if steady():
                waits.writer_frames += fetched - began
                waits.writer_device += copied - fetched
                waits.writer_encoder += written - copied
            else:
                stats.first_frame_seconds = written - start
            bar.update(1)

    reader, writer = Worker("reader", read_frames), Worker("writer", write_frames)
    start = time.perf_counter()
    stats.process_seconds_at_start = seconds_since_process_start()
    reader.start()
    writer.start()

    def emit(frame: OutputFrame) -> None:
        began = time.perf_counter()
        put(write_queue, frame, stop, writer)
        if steady():
            waits.main_output += time.perf_counter() - began
        stats.frames_out += 1

    def flush(jobs: list[PairJob]) -> None:
        motion = [job for job in jobs if job.kind == "motion"]
        priors = [job.prior for job in motion] if interpolator.needs_prior else None
        began = time.perf_counter()
        predicted = iter(interpolator.interpolate([(job.img0, job.img1, job.times) for job in motion], priors))
        if steady():
            waits.main_model += time.perf_counter() - began
        elif stats.first_call_seconds is None and motion:
            stats.first_call_seconds = time.perf_counter() - start
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
                began = time.perf_counter()
                item = get(read_queue, stop, reader)
                if steady():
                    waits.main_input += time.perf_counter() - began
                if item is END:
                    break
                stats.frames_in += 1
                image = upload(item, device)
                if previous is not None:
                    kind = item.verdict.kind
                    if kind != "motion":
                        (stats.cuts if kind == "cut" else stats.duplicates).append(item.verdict)
                    times = settings.plan.times_between(previous[0].time, item.time)
                    prior = None
                    if item.prior is not None:
                        began = time.perf_counter()
                        result = item.prior.result()      # computed in order ahead of here; its error is raised
                        if steady():
                            waits.main_prior += time.perf_counter() - began
                        prior_slots.release()
                        stats.prior_ms.append(result.milliseconds)
                        stats.prior_cpu_ms.append(result.cpu_milliseconds)
                        prior = result.flows.to(device, non_blocking=True)
                    pending.append(PairJob(previous[0].index, previous[0], previous[1], image, times, kind, prior))
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
            for _ in range(settings.plan.tail(previous[0].time)):     # on the grid, or held (VFR)
                emit(OutputFrame(array=previous[0].rgb))
        began = time.perf_counter()
        put(write_queue, END, stop, writer)
        if steady():
            waits.main_output += time.perf_counter() - began
            waits.main_seconds = time.perf_counter() - start - stats.first_frame_seconds
        while writer.is_alive():
            writer.join(timeout=0.1)
        if writer.error is not None:
            raise writer.error
        began = time.perf_counter()
        stats.notes += sink.finish(stats.frames_out)
        waits.finish = time.perf_counter() - began
    except BaseException:
        stop.set()
        source.close()
        # The workers stop within a frame; the sink is aborted after the writer has left it, so no encoder call
        # runs while the encoder is being closed and no file is begun in a folder being deleted.
        for worker in (reader, writer):
            worker.join(timeout=5)
        sink.abort()
        raise
    finally:
        bar.close()
        if prior_pool is not None:
            prior_pool.shutdown(wait=True, cancel_futures=True)
    reader.join(timeout=5)
    stats.model_calls = interpolator.model_calls
    stats.seconds = time.perf_counter() - start
    return stats
