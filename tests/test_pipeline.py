"""The footage pipeline's parallel decoding and encoding (footage/pipeline.py, footage/video_io.py): order kept,
nothing lost, outputs identical to the serial layout (--io_workers 1), every failure surfaced with its file named and
nothing half-written left, queues and pools bounded. No test measures a speed (benchmark/bench_pipeline.py does)."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from footage import video_io
from footage.interpolator import FrameInterpolator
from footage.pipeline import StageWaits, StreamSettings, ordered_map, run_stream
from footage.timeplan import TimePlan

from conftest import counting_dis

RATE = Fraction(24)


class LinearBlend(nn.Module):
    """The 'model': (1 - t) * img0 + t * img1."""

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        t = torch.as_tensor(t, dtype=img0.dtype).reshape(-1, 1, 1, 1)
        return (1 - t) * img0 + t * img1


def moving_frames(count: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """Textured frames shifting 2 px per frame: every pair is motion (no cut, no duplicate)."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (height, width + 2 * count, 3), dtype=np.uint8), (5, 5), 0)
    return [np.ascontiguousarray(texture[:, 2 * i:2 * i + width]) for i in range(count)]


def save_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir()
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"f{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def run(source: video_io.FrameSource, sink: video_io.FrameSink, workers: int | None):
    engine = FrameInterpolator(LinearBlend(), torch.device("cpu"), None, False, 1.0, batch_size=2, halving=False)
    plan = TimePlan(Fraction(1, 2) / (source.info.rate or 1))
    return run_stream(source, sink, engine, StreamSettings(plan, progress=False, io_workers=workers))


def read_folder(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(folder.iterdir())]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------------------
# ordered_map
# --------------------------------------------------------------------------------------------------------
def test_ordered_map_keeps_order_when_later_items_finish_first():
    def slow_first(item: int) -> int:
        time.sleep(0.02 if item % 3 == 0 else 0.0)        # items 0, 3, 6, ... finish after their successors
        return item * item

    with ThreadPoolExecutor(4) as pool:
        assert list(ordered_map(pool, slow_first, range(20), window=6)) == [i * i for i in range(20)]


def test_ordered_map_never_runs_more_than_window_ahead():
    submitted, consumed, ahead = [0], [0], []

    def items():
        for index in range(40):
            submitted[0] += 1
            ahead.append(submitted[0] - consumed[0])
            yield index

    with ThreadPoolExecutor(4) as pool:
        for _ in ordered_map(pool, lambda item: item, items(), window=5):
            time.sleep(0.002)                              # a slow consumer: the pool could run far ahead
            consumed[0] += 1
    assert max(ahead) <= 5 + 1 and submitted[0] == 40     # the window, plus the item being fetched


def test_ordered_map_raises_at_the_failing_item_after_the_ones_before_it():
    started = []

    def fail_at_five(item: int) -> int:
        started.append(item)
        if item == 5:
            raise ValueError("item 5 is bad")
        time.sleep(0.01)
        return item

    got = []
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ValueError, match="item 5 is bad"):
            for value in ordered_map(pool, fail_at_five, range(100), window=4):
                got.append(value)
    assert got == [0, 1, 2, 3, 4]
    assert max(started) < 5 + 4 + 1                        # nothing submitted beyond the window; the rest cancelled


# --------------------------------------------------------------------------------------------------------
# Same output whatever the number of threads
# --------------------------------------------------------------------------------------------------------
def test_png_folder_output_is_identical_to_the_serial_layout(tmp_path):
    frames = moving_frames(13)
    folder = save_folder(tmp_path / "in", frames)
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        stats = run(video_io.open_source(folder, True, RATE), video_io.FolderSink(out, workers=workers), workers)
        assert stats.frames_out == 25
        outputs[workers] = read_folder(out)
        assert leftovers(out) == [f"{k:08d}.png" for k in range(25)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs[1], outputs[3], strict=True))
    for index, frame in enumerate(frames):                 # inputs at even indices, exactly, in order
        assert np.array_equal(outputs[3][2 * index][..., ::-1], frame), index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out1", "out3"]


@pytest.mark.skipif(not video_io.pyav_available(), reason="needs PyAV")
def test_h264_output_is_identical_to_the_serial_layout(tmp_path):
    """Lossless H.264 (crf 0): the decoded frames of a 1-thread and a 3-thread run match exactly, so the
    conversion pool hands frames to the encoder in order and x264's frame threads change nothing visible."""
    folder = save_folder(tmp_path / "in", moving_frames(11))
    decoded = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}.mp4"
        sink = video_io.AvSink(out, 64, 48, 2 * RATE, 0, "ultrafast", None, workers=workers, encoder_threads=workers)
        run(video_io.open_source(folder, True, RATE), sink, workers)
        decoded[workers] = [frame for frame, _ in video_io.open_source(out, True, None).frames()]
    assert len(decoded[1]) == len(decoded[3]) == 21
    assert all(np.array_equal(a, b) for a, b in zip(decoded[1], decoded[3]))
    # Order: the frames drift left, so consecutive outputs differ and input k sits at output 2k.
    assert not np.array_equal(decoded[3][0], decoded[3][2])


@pytest.mark.skipif(not video_io.pyav_available(), reason="needs PyAV")
def test_video_input_decodes_in_order_on_several_threads(tmp_path):
    folder = save_folder(tmp_path / "in", moving_frames(9))
    clip = tmp_path / "clip.mp4"
    sink = video_io.AvSink(clip, 64, 48, RATE, 0, "ultrafast", None, workers=1, encoder_threads=1)
    run(video_io.open_source(folder, True, RATE), sink, 1)           # 17 frames, lossless
    serial = [frame for frame, _ in video_io.open_source(clip, True, None).frames()]
    results = {}
    for workers in (1, 4):
        out = tmp_path / f"out{workers}"
        run(video_io.open_source(clip, True, None), video_io.FolderSink(out, workers=workers), workers)
        results[workers] = read_folder(out)
    assert all(np.array_equal(a, b) for a, b in zip(results[1], results[4], strict=True))
    for index, frame in enumerate(serial):
        assert np.array_equal(results[4][2 * index][..., ::-1], frame), index


# --------------------------------------------------------------------------------------------------------
# Failures surface, nothing half-written stays
# --------------------------------------------------------------------------------------------------------
def test_a_failing_png_writer_surfaces_and_leaves_nothing(tmp_path, monkeypatch):
    folder = save_folder(tmp_path / "in", moving_frames(12))
    original = video_io.FolderSink._write_png

    def fail_on_frame_7(path, frame):
        if path.name == "00000007.png":
            raise video_io.VideoIOError(f"cannot write {path} (disk full)")
        original(path, frame)

    monkeypatch.setattr(video_io.FolderSink, "_write_png", staticmethod(fail_on_frame_7))
    out_parent = tmp_path / "outs"
    out_parent.mkdir()
    with pytest.raises(video_io.VideoIOError, match=r"00000007\.png \(disk full\)"):
        run(video_io.open_source(folder, True, RATE), video_io.FolderSink(out_parent / "out", workers=3), 3)
    assert leftovers(out_parent) == []                      # no output, no hidden temporary folder


def test_a_failing_png_write_is_raised_by_the_next_write_not_lost(tmp_path, monkeypatch):
    """The failure of a write that is not the oldest in flight must not wait for the queue to drain to it."""
    gate = threading.Event()
    original = video_io.FolderSink._write_png

    def slow_first_bad_second(path, frame):
        if path.name == "00000000.png":
            gate.wait(5)                                    # the oldest write hangs until the test lets it go
        if path.name == "00000001.png":
            raise video_io.VideoIOError(f"cannot write {path}")
        original(path, frame)

    monkeypatch.setattr(video_io.FolderSink, "_write_png", staticmethod(slow_first_bad_second))
    sink = video_io.FolderSink(tmp_path / "out", workers=2)
    frame = moving_frames(1)[0]
    sink.write(frame)
    sink.write(frame)
    time.sleep(0.2)                                         # frame 1 has failed by now; frame 0 still hangs
    try:
        with pytest.raises(video_io.VideoIOError, match="00000001.png"):
            sink.write(frame)
    finally:
        gate.set()
        sink.abort()
    assert leftovers(tmp_path) == []


def test_an_unreadable_input_frame_is_named_and_earlier_frames_are_not_lost(tmp_path):
    frames = moving_frames(12)
    folder = save_folder(tmp_path / "in", frames)
    (folder / "f6.png").write_bytes(b"not a png")
    (folder / "f9.png").write_bytes(b"not a png either")
    out_parent = tmp_path / "outs"
    out_parent.mkdir()
    with pytest.raises(video_io.VideoIOError, match=r"f6\.png"):        # the first bad file, as a serial read
        source = video_io.FolderSource.__new__(video_io.FolderSource)  # skip the header check: fail while decoding
        source.files = sorted(folder.iterdir(), key=lambda p: video_io.natural_key(p.name))
        source.info = video_io.SourceInfo(folder, "folder", 64, 48, RATE, 12)
        run(source, video_io.FolderSink(out_parent / "out", workers=4), 4)
    assert leftovers(out_parent) == []


@pytest.mark.skipif(not video_io.pyav_available(), reason="needs PyAV")
def test_a_failing_yuv_conversion_surfaces_and_leaves_no_video(tmp_path, monkeypatch):
    folder = save_folder(tmp_path / "in", moving_frames(12))
    original = video_io.AvSink._to_yuv

    def fail_on_frame_5(self, frame, pts):
        if pts == self.first_tick + 5 * video_io.TICKS_PER_FRAME:
            raise video_io.VideoIOError(f"cannot convert frame 5 of {self.final}")
        return original(self, frame, pts)

    monkeypatch.setattr(video_io.AvSink, "_to_yuv", fail_on_frame_5)
    out_parent = tmp_path / "outs"
    out_parent.mkdir()
    sink = video_io.AvSink(out_parent / "out.mp4", 64, 48, 2 * RATE, 18, "ultrafast", None, workers=3)
    with pytest.raises(video_io.VideoIOError, match="cannot convert frame 5"):
        run(video_io.open_source(folder, True, RATE), sink, 3)
    assert leftovers(out_parent) == []


# --------------------------------------------------------------------------------------------------------
# Bounded memory
# --------------------------------------------------------------------------------------------------------
class CountingSource(video_io.FrameSource):
    """In-memory frames that count how many have been handed out for decoding."""

    def __init__(self, frames: list[np.ndarray]):
        self.list, self.handed_out = frames, 0
        self.info = video_io.SourceInfo(Path("memory"), "folder", frames[0].shape[1], frames[0].shape[0], RATE,
                                        len(frames))

    def frame_jobs(self):
        for index, frame in enumerate(self.list):
            self.handed_out += 1
            yield (lambda frame=frame: frame.copy()), index / RATE


class SlowCountingSink(video_io.FrameSink):
    """Takes 3 ms per frame and records, at each frame, how many input frames the source had handed out."""

    final = Path("nowhere")

    def __init__(self, source: CountingSource):
        self.source, self.written, self.ahead = source, 0, []

    def write(self, frame: np.ndarray) -> None:
        time.sleep(0.003)
        self.written += 1
        self.ahead.append(self.source.handed_out - self.written // 2)     # 2x: two output frames per input frame

    def finish(self, frames_written: int) -> list[str]:
        return []


def test_a_slow_sink_holds_back_decoding(tmp_path):
    """Input frames decoded but not yet written stay under the sum of the queue and pool bounds, however long
    the video: here 200 frames, of which the reader may hold only a few dozen."""
    source = CountingSource(moving_frames(200, 32, 32))
    sink = SlowCountingSink(source)
    stats = run(source, sink, 4)
    assert stats.frames_out == 399 and sink.written == 399
    # read queue 8 + decode window 8 + shot look-ahead + pair batch + write queue 32 (tiny frames) / 2 per input
    assert max(sink.ahead) <= 8 + 8 + 4 + 4 + 32 // 2 + 2, max(sink.ahead)


# --------------------------------------------------------------------------------------------------------
# Which stage sets the pace (StageWaits)
# --------------------------------------------------------------------------------------------------------
class SlowSource(CountingSource):
    """Each frame takes ``seconds`` to decode (a sleep: the thread waits, as on a slow disk or codec)."""

    def __init__(self, frames: list[np.ndarray], seconds: float):
        super().__init__(frames)
        self.seconds = seconds

    def frame_jobs(self):
        for decode, time_ in super().frame_jobs():
            yield (lambda decode=decode: (time.sleep(self.seconds), decode())[1]), time_


class SleepingSink(video_io.FrameSink):
    final = Path("nowhere")

    def __init__(self, seconds: float):
        self.seconds = seconds

    def write(self, frame: np.ndarray) -> None:
        time.sleep(self.seconds)

    def finish(self, frames_written: int) -> list[str]:
        return []


class SleepingBlend(LinearBlend):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        time.sleep(self.seconds)
        return super().inference(img0, img1, t, flow_scale, tta)


@pytest.mark.parametrize("slow, expected", [("sink", "encoding"), ("model", "model"), ("source", "reading")])
def test_the_pace_names_the_stage_the_others_wait_for(slow, expected):
    """One stage made slow by a sleep of 40 ms per item, the others nearly free: the summary's pace names it, its
    share of the steady span is most of it, and the JSON record says the same."""
    frames = moving_frames(12, 32, 32)
    source = SlowSource(frames, 0.04 if slow == "source" else 0.0)
    sink = SleepingSink(0.04 if slow == "sink" else 0.0)
    model = SleepingBlend(0.04 if slow == "model" else 0.0)
    engine = FrameInterpolator(model, torch.device("cpu"), None, False, 1.0, batch_size=1, halving=False)
    plan = TimePlan(Fraction(1, 2) / RATE)
    stats = run_stream(source, sink, engine, StreamSettings(plan, progress=False, io_workers=1))
    shares = stats.waits.shares()
    assert stats.frames_out == 23
    assert max(shares, key=shares.get) == expected, stats.waits.pace()
    assert shares[expected] > 0.5, stats.waits.pace()
    assert stats.waits.pace().startswith(f"pace: {expected} (")
    assert stats.waits.as_dict()["pace"] == expected


def test_a_run_without_a_steady_part_has_no_pace():
    waits = StageWaits()
    assert waits.shares() is None and waits.pace() == "pace: n/a (too short a run)"
    assert waits.as_dict()["pace"] is None


def test_png_writes_in_flight_are_bounded(tmp_path, monkeypatch):
    running, peak = [0], [0]
    lock = threading.Lock()
    original = video_io.FolderSink._write_png

    def slow_write(path, frame):
        with lock:
            running[0] += 1
        time.sleep(0.005)
        original(path, frame)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(video_io.FolderSink, "_write_png", staticmethod(slow_write))
    sink = video_io.FolderSink(tmp_path / "out", workers=3)
    frame = moving_frames(1)[0]
    pending = []
    for _ in range(30):
        sink.write(frame)
        pending.append(len(sink.in_flight))
        with lock:
            peak[0] = max(peak[0], running[0])
    sink.finish(30)
    assert max(pending) <= 2 * 3 and peak[0] <= 3
    assert leftovers(tmp_path / "out") == [f"{k:08d}.png" for k in range(30)]


def test_io_workers_flag_reaches_the_sinks(tmp_path):
    import interpolate

    args = interpolate.build_parser().parse_args(["--model", "m", "--input", "i", "--output", "o", "--io_workers",
                                                  "3"])
    info = video_io.SourceInfo(Path("i"), "folder", 64, 48, RATE, 2)
    sink = interpolate.make_sink(tmp_path / "frames", "folder", info, RATE, args, True)
    try:
        assert sink.pool._max_workers == 3
    finally:
        sink.abort()
    with pytest.raises(SystemExit):
        interpolate.build_parser().parse_args(["--model", "m", "--input", "i", "--output", "o", "--io_workers", "0"])


@pytest.mark.parametrize("cpus,decoders,writers", [(2, 2, 2), (4, 2, 2), (8, 4, 6), (16, 8, 12), (64, 8, 16)])
def test_png_output_gets_more_writer_threads_than_decoding_by_default(tmp_path, monkeypatch, cpus, decoders, writers):
    """Without --io_workers, PNG output is written by all CPUs but a quarter (2 to 16): encoding a 1080p PNG costs
    several times decoding one, and half the CPUs (8 writers on the 16-core GPU host) held interpolate.py to 53% of the
    model-only rate (docs/PERF.md, section 10). Decoding keeps half the CPUs (2 to 8); writes in flight stay bounded
    at two per writer."""
    import interpolate

    monkeypatch.setattr(video_io.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert (video_io.default_io_workers(), video_io.default_png_writers()) == (decoders, writers)
    args = interpolate.build_parser().parse_args(["--model", "m", "--input", "i", "--output", "o"])
    info = video_io.SourceInfo(Path("i"), "folder", 64, 48, RATE, 2)
    sink = interpolate.make_sink(tmp_path / "frames", "folder", info, RATE, args, True)
    try:
        assert sink.pool._max_workers == writers and sink.max_in_flight == 2 * writers
    finally:
        sink.abort()


def test_a_failed_run_closes_the_source_generator(tmp_path, monkeypatch):
    """When decoding fails part-way, the source's generator (a video's open container) is closed at once."""
    closed = []

    class ClosingSource(CountingSource):
        def frame_jobs(self):
            try:
                for index, frame in enumerate(self.list):
                    if index == 6:
                        yield (lambda: (_ for _ in ()).throw(video_io.VideoIOError("frame 6 is corrupt"))), index / RATE
                    else:
                        yield (lambda frame=frame: frame.copy()), index / RATE
            finally:
                closed.append(True)

    out_parent = tmp_path / "outs"
    out_parent.mkdir()
    with pytest.raises(video_io.VideoIOError, match="frame 6 is corrupt"):
        run(ClosingSource(moving_frames(40)), video_io.FolderSink(out_parent / "out", workers=2), 2)
    assert closed == [True]
    assert leftovers(out_parent) == []


def test_opencv_fallback_keeps_the_channel_order(tmp_path):
    """Without PyAV: RGB frames written by OpenCVSink and read by OpenCVSource keep red red and blue blue."""
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = 200
    blue = np.zeros((48, 64, 3), np.uint8)
    blue[..., 2] = 200
    sink = video_io.OpenCVSink(tmp_path / "cv.mp4", 64, 48, RATE)
    for frame in (red, red, blue, blue):
        sink.write(frame)
    sink.finish(4)
    frames = [frame for frame, _ in video_io.OpenCVSource(tmp_path / "cv.mp4").frames()]
    assert len(frames) == 4
    assert frames[0][..., 0].mean() > 150 > 50 > frames[0][..., 2].mean()
    assert frames[3][..., 2].mean() > 150 > 50 > frames[3][..., 0].mean()


# --------------------------------------------------------------------------------------------------------
# The flow prior of a --flow_prior dis model: one DIS per interpolated pair, off the model's thread
# --------------------------------------------------------------------------------------------------------
class PriorRecorder(nn.Module):
    """Stand-in for a --flow_prior model: the blend plus the mean of the prior's x flows (so the output depends on
    the prior), recording each call's frames, t and prior."""

    needs_flow_prior = True

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.threads: set[str] = set()

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False, flow_prior=None):
        assert flow_prior is not None, "a prior model is always called with its prior"
        self.threads.add(threading.current_thread().name)
        t = torch.as_tensor(t, dtype=img0.dtype).reshape(-1, 1, 1, 1)
        self.calls += [(a[None], b[None], p[None], s.flatten()) for a, b, p, s in zip(img0, img1, flow_prior, t)]
        shift = flow_prior[:, 0:1].mean(dim=(2, 3), keepdim=True) / 64
        return ((1 - t) * img0 + t * img1 + shift).clamp(0, 1)


def frames_with_a_duplicate(count: int, width: int, height: int) -> list[np.ndarray]:
    """Moving frames with frame 3 shown twice: pair (3, 4) is a duplicate, every other pair motion."""
    frames = moving_frames(count - 1, width, height)
    return frames[:4] + [frames[3].copy()] + frames[4:]


def as_frame(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float tensor in [0, 1] -> (H, W, 3) float32 RGB, what prior_pair_flows reads."""
    return image[0].permute(1, 2, 0).numpy()


def run_prior(folder: Path, sink: video_io.FrameSink, workers: int, multi: int, halving: bool, model=None):
    model = model or PriorRecorder()
    engine = FrameInterpolator(model, torch.device("cpu"), None, False, 1.0, batch_size=2, halving=halving)
    plan = TimePlan(Fraction(1, multi) / RATE)
    stats = run_stream(video_io.open_source(folder, True, RATE), sink, engine,
                       StreamSettings(plan, progress=False, io_workers=workers))
    return stats, model


@pytest.mark.parametrize("width, height", [(64, 64), (70, 44)])       # 70x44: padded to 96x64 around the model
def test_each_call_gets_the_dis_prior_of_its_own_two_frames(tmp_path, monkeypatch, width, height):
    from measures.motion import prior_pair_flows
    from model.frames import centred_padding, crop_padding

    dis_calls = counting_dis(monkeypatch)
    folder = save_folder(tmp_path / "in", frames_with_a_duplicate(9, width, height))
    stats, model = run_prior(folder, video_io.FolderSink(tmp_path / "out", workers=2), 2, multi=2, halving=False)
    assert len(stats.duplicates) == 1 and not stats.cuts
    motion_pairs = 8 - 1
    assert len(dis_calls) == len(stats.prior_ms) == motion_pairs == len(model.calls)    # none for the duplicate
    assert all(name.startswith("prior") for name in dis_calls)      # on the prior pool, not the model's thread
    assert model.threads == {threading.current_thread().name}
    padding = centred_padding(height, width, 32)
    for img0, img1, prior, _ in model.calls:
        img0, img1, prior = (crop_padding(x, padding) for x in (img0, img1, prior))
        np.testing.assert_array_equal(prior[0].numpy(), prior_pair_flows(as_frame(img0), as_frame(img1)))
    assert "prior-only" in stats.prior_rate() and "on each of 2 threads; 7 pairs" in stats.prior_rate()


@pytest.mark.parametrize("halving", [False, True])
def test_multi_4_computes_one_dis_per_pair_and_halving_derives_the_sub_pair_priors(tmp_path, monkeypatch, halving):
    from measures.motion import prior_pair_flows
    from footage.interpolator import sub_pair_prior

    dis_calls = counting_dis(monkeypatch)
    frames = moving_frames(5, 64, 64)
    folder = save_folder(tmp_path / "in", frames)
    stats, model = run_prior(folder, video_io.FolderSink(tmp_path / "out", workers=2), 2, multi=4, halving=halving)
    assert len(dis_calls) == 4 and len(model.calls) == 4 * 3
    priors = [torch.from_numpy(prior_pair_flows(a, b))[None] for a, b in zip(frames, frames[1:])]
    if not halving:        # every t from the pair itself, with the pair's prior (the model converts it to t)
        for pair, prior in enumerate(priors):
            calls = [c for c in model.calls if torch.equal(c[2], prior)]
            assert sorted(round(float(c[3]), 4) for c in calls) == [0.25, 0.5, 0.75], pair
        return
    # Halving: depth 1 gets the pair's prior, depth 2 the sub-pairs' (0, 1/2) and (1/2, 1) derived from it.
    assert {round(float(c[3]), 4) for c in model.calls} == {0.5}
    expected = [sub_pair_prior(p, a, b) for p in priors
                for a, b in ((0, 1), (0, Fraction(1, 2)), (Fraction(1, 2), 1))]
    assert len(model.calls) == len(expected)
    for wanted in expected:
        assert sum(torch.equal(c[2], wanted) for c in model.calls) == 1


def test_sub_pair_priors_start_the_model_where_the_pair_prior_at_that_time_would():
    """flows_at_t of a halving sub-pair's prior at its midpoint (t = 0.5) = flows_at_t of the pair's prior at the
    midpoint's own time: the linear-motion model is consistent across depths; (0, 1) is the prior itself."""
    from footage.interpolator import sub_pair_prior
    from model.ops.prior import flows_at_t

    torch.manual_seed(0)
    prior = torch.randn(1, 4, 6, 8) * 5
    assert sub_pair_prior(prior, Fraction(0), Fraction(1)) is prior
    for start, stop in ((Fraction(0), Fraction(1, 2)), (Fraction(1, 2), Fraction(1)),
                        (Fraction(1, 4), Fraction(1, 2)), (Fraction(5, 8), Fraction(3, 4))):
        middle = (start + stop) / 2
        sub = sub_pair_prior(prior, start, stop)
        at_middle = flows_at_t(prior, float(middle))
        # At the midpoint the pair's flows are -m v to frame 0 and (1 - m) v to frame 1 (v: the motion per pair);
        # the sub-pair's ends lie (middle - start) behind and (stop - middle) ahead on the same path.
        velocity = at_middle[:, 2:] - at_middle[:, :2]
        torch.testing.assert_close(flows_at_t(sub, 0.5)[:, :2], -float(middle - start) * velocity)
        torch.testing.assert_close(flows_at_t(sub, 0.5)[:, 2:], float(stop - middle) * velocity)


def test_prior_outputs_are_identical_to_the_serial_layout(tmp_path):
    folder = save_folder(tmp_path / "in", frames_with_a_duplicate(11, 64, 48))
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        stats, _ = run_prior(folder, video_io.FolderSink(out, workers=workers), workers, multi=2, halving=False)
        assert stats.frames_out == 21 and stats.prior_workers == workers
        outputs[workers] = read_folder(out)
    assert all(np.array_equal(a, b) for a, b in zip(outputs[1], outputs[3], strict=True))


def test_a_model_without_a_prior_never_runs_dis(tmp_path, monkeypatch):
    from footage import pipeline

    def refuse(*_):
        raise AssertionError("DIS computed for a model without a flow prior")

    monkeypatch.setattr(pipeline, "prior_pair_flows", refuse)
    folder = save_folder(tmp_path / "in", moving_frames(6))
    stats = run(video_io.open_source(folder, True, RATE), video_io.FolderSink(tmp_path / "out", workers=2), 2)
    assert stats.frames_out == 11 and stats.prior_workers == 0 and stats.prior_rate() == ""
    assert not [t for t in threading.enumerate() if t.name.startswith("prior")]


def test_priors_run_ahead_of_the_model_only_within_their_window(tmp_path, monkeypatch):
    """A slow model: the prior threads may compute ahead of it, but at most prior_window pairs beyond those the
    main thread has taken (memory stays bounded however fast DIS is)."""
    from footage import pipeline

    dis_calls = counting_dis(monkeypatch)
    monkeypatch.setattr(pipeline, "prior_window", lambda workers, prior_bytes: 2)

    class SlowRecorder(PriorRecorder):
        def __init__(self):
            super().__init__()
            self.ahead: list[int] = []

        def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False, flow_prior=None):
            # Call j (batch 1, one t per pair) is pair j: the main thread has taken j + 1 priors.
            self.ahead.append(len(dis_calls) - (len(self.calls) + 1))
            time.sleep(0.03)
            return super().inference(img0, img1, t, flow_scale, tta, flow_prior)

    folder = save_folder(tmp_path / "in", moving_frames(14))
    model = SlowRecorder()
    engine = FrameInterpolator(model, torch.device("cpu"), None, False, 1.0, batch_size=1, halving=False)
    stats = run_stream(video_io.open_source(folder, True, RATE), video_io.FolderSink(tmp_path / "out", workers=3),
                       engine, StreamSettings(TimePlan(Fraction(1, 2) / RATE), progress=False, io_workers=3))
    assert stats.frames_out == 27 and len(model.ahead) == len(dis_calls) == 13
    assert max(model.ahead) <= 2


def test_bench_pipeline_runs_the_prior_stand_in(capsys):
    from benchmark import bench_pipeline

    assert bench_pipeline.main(["--size", "64x48", "--frames", "5", "--model_ms", "1", "--io_workers", "1",
                                "--prior", "off,on", "--outputs", "", "--no_stages"]) == 0
    out = capsys.readouterr().out
    assert "| model+prior | 1 | 9 |" in out and "prior-only" in out and "on each of 1 threads; 4 pairs" in out


class SlowFinishSink(SleepingSink):
    """Frames written at once; ``finish`` takes ``seconds`` (an encoder draining the frames its threads hold)."""

    def __init__(self, seconds: float):
        super().__init__(0.0)
        self.finish_seconds = seconds

    def finish(self, frames_written: int) -> list[str]:
        time.sleep(self.finish_seconds)
        return []


def test_the_outputs_finish_is_timed_apart_from_the_steady_span():
    """A sink whose finish takes 0.3 s (libx264 encoding what its frame threads still hold): the record and the rate
    line say how much of the run after start-up it was, and the steady span's shares do not count it."""
    frames = moving_frames(6, 32, 32)
    engine = FrameInterpolator(LinearBlend(), torch.device("cpu"), None, False, 1.0, batch_size=1, halving=False)
    plan = TimePlan(Fraction(1, 2) / RATE)
    stats = run_stream(CountingSource(frames), SlowFinishSink(0.3), engine,
                       StreamSettings(plan, progress=False, io_workers=1))
    assert 0.3 <= stats.waits.finish < stats.seconds - stats.first_frame_seconds
    assert stats.waits.as_dict()["seconds"]["finish"] == round(stats.waits.finish, 4)
    assert stats.waits.writer_seconds < stats.seconds - stats.first_frame_seconds - 0.3 + 0.05
    assert re.search(r"; 0\.3 s of it the output's finish after the last frame\)$", stats.steady_rate())
    quick = run_stream(CountingSource(frames), SleepingSink(0.0), engine,
                       StreamSettings(plan, progress=False, io_workers=1))
    assert quick.waits.finish < 0.05 and "finish" not in quick.steady_rate()
