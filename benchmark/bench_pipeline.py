"""Does the footage pipeline keep up with the model? A CPU benchmark of interpolate.py's stream without a GPU.

    python benchmark/bench_pipeline.py                               # 1080p, 2x, stand-in model 60 ms per call
    python benchmark/bench_pipeline.py --model_ms 30 --frames 64 --io_workers 1,4,8
    python benchmark/bench_pipeline.py --model_ms 13 --prior off,on --outputs folder   # a --flow_prior dis model

The model is a stand-in that takes a fixed time per call (a sleep, which holds no core, as a GPU's forward pass
holds none of the CPU) and returns its first input. Everything else is interpolate.py's own path
(footage.pipeline.run_stream: decoding, the cut measure, batching, the writer, the sinks). Generated 1080p frames
(smooth moving gradients, a moving disc and mild noise, so PNG sizes are like real footage's) go through:

    model-only   frames from memory, output dropped: the rate the model thread alone allows
    folder       a PNG folder in, a PNG folder out
    mp4          a PNG folder in, H.264 out (libx264, --preset, --crf)

``--prior on`` uses a stand-in that needs a flow prior (as a ``--flow_prior dis`` checkpoint does), so the pipeline
computes every pair's DIS flows on its prior threads (``measures.motion.prior_pair_flows``, real OpenCV work); a
"model+prior" run from memory then shows the rate the model and the prior allow without decoding or encoding, and
the stage table gets the DIS of one pair.

The runs go once per --io_workers value ("1" is the serial layout: one decode thread, one PNG or Y'CbCr thread,
libx264 on one thread; "auto" is interpolate.py's default: half the CPUs decoding, all but a quarter writing
PNGs). Then (unless --no_stages) each I/O stage alone: milliseconds per frame on one thread and on N threads, so the
cores a GPU's rate needs can be read off without a GPU. ``--outputs ""`` runs only the model-only pass and the
stages. The table gives output frames/s, the ratio to the model-only rate (interpolate.py's target: >= 0.9), the
stage that set the pace (footage.pipeline.StageWaits: which thread waited for which) and the CPU time the run spent
per output frame, which says how many cores a rate needs: at R output frames/s the pipeline needs about
R x (CPU ms per frame) / 1000 cores. Runs in one process, one after another; nothing is written outside a temporary
folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from footage.interpolator import FrameInterpolator  # noqa: E402
from footage.pipeline import StreamSettings, run_stream  # noqa: E402
from footage.timeplan import TimePlan  # noqa: E402
from footage.video_io import (AvSink, FolderSink, FrameSink, FrameSource, SourceInfo, default_io_workers,  # noqa: E402
                              default_png_writers, open_source, pyav_available)
from measures.motion import prior_pair_flows  # noqa: E402
from measures.shots import frame_signature  # noqa: E402
from model.frames import read_rgb_uint8  # noqa: E402

INPUT_RATE = Fraction(24)


class FixedTimeModel(nn.Module):
    """Stand-in for the model: sleeps ``seconds`` per call (no CPU held, like waiting for a GPU), returns img0."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        time.sleep(self.seconds)
        return img0


class FixedTimePriorModel(FixedTimeModel):
    """The stand-in of a --flow_prior dis model: the same sleep, and it needs each pair's flow prior."""

    needs_flow_prior = True

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False, flow_prior=None):
        if flow_prior is None or flow_prior.shape[1] != 4:
            raise ValueError("the prior stand-in needs a (B, 4, H, W) flow prior")
        return super().inference(img0, img1, t, flow_scale, tta)


class MemorySource(FrameSource):
    """Frames already decoded, for the model-only run."""

    def __init__(self, frames: list[np.ndarray]):
        self.list = frames
        height, width = frames[0].shape[:2]
        self.info = SourceInfo(Path("memory"), "folder", width, height, INPUT_RATE, len(frames))

    def frames(self):
        for index, frame in enumerate(self.list):
            yield frame, index / INPUT_RATE


class NullSink(FrameSink):
    """Drops every frame."""

    final = Path("nowhere")

    def write(self, frame: np.ndarray) -> None:
        pass

    def finish(self, frames_written: int) -> list[str]:
        return []


def make_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames of moving content: gradients drifting 6 px per frame, a disc crossing the frame,
    +-3 levels of noise (PNG then compresses about as well as a camera clip's frames)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for index in range(count):
        shift = 6.0 * index
        red = 127 + 100 * np.sin((x + shift) / 97.0) * np.cos(y / 131.0)
        green = 127 + 100 * np.sin((x - y + 2 * shift) / 173.0)
        blue = (x + y + shift) * 255 / (width + height + 6 * count)
        frame = np.stack([red, green, blue], axis=-1)
        centre = (int(width * (0.2 + 0.6 * index / max(1, count - 1))), height // 2)
        cv2.circle(frame, centre, height // 8, (240.0, 200.0, 40.0), -1, lineType=cv2.LINE_AA)
        frame += rng.integers(-3, 4, frame.shape).astype(np.float32)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def run_once(source: FrameSource, sink: FrameSink, model_seconds: float, workers: int | None,
             prior: bool = False) -> dict:
    """One pass through run_stream; wall seconds, CPU seconds of the process, output frames (and with ``prior`` the
    pipeline's own prior-only line)."""
    model = (FixedTimePriorModel if prior else FixedTimeModel)(model_seconds)
    interpolator = FrameInterpolator(model, torch.device("cpu"), None, False, 1.0, batch_size=1, halving=False)
    plan = TimePlan(Fraction(1, 2) / INPUT_RATE)
    cpu = time.process_time()
    stats = run_stream(source, sink, interpolator, StreamSettings(plan, progress=False, io_workers=workers))
    return {"frames": stats.frames_out, "seconds": stats.seconds, "cpu_seconds": time.process_time() - cpu,
            "calls": stats.model_calls, "prior": stats.prior_rate(), "pace": stats.waits.pace(),
            "pace_stage": stats.waits.slowest() or "n/a"}


def per_frame_ms(function, items: list, threads: int) -> float:
    """Wall milliseconds per item of ``function`` over ``items`` on ``threads`` threads (throughput, not latency)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(function, items[:threads]))               # warm-up: imports, first allocations
        start = time.perf_counter()
        list(pool.map(function, items))
        return 1000 * (time.perf_counter() - start) / len(items)


def stage_table(folder: Path, frames: list[np.ndarray], scratch: Path, threads: int, preset: str, crf: int,
                prior: bool = False) -> None:
    """Each I/O stage alone (and with ``prior`` the DIS prior of a pair), on 1 and on ``threads`` threads: ms per
    frame (per pair)."""
    files = sorted(folder.iterdir())
    height, width = frames[0].shape[:2]
    out = scratch / "stage_png"
    out.mkdir()
    stages = [("PNG decode (input)", read_rgb_uint8, files),
              ("cut measure signature", frame_signature, frames),
              ("PNG encode (output)", lambda item: FolderSink._write_png(out / f"{item[0]}.png", item[1]),
               list(enumerate(frames)))]
    if prior:
        stages.append(("DIS flow prior (one pair)", lambda i: prior_pair_flows(frames[i], frames[i + 1]),
                       list(range(len(frames) - 1))))
    if pyav_available():
        sink = AvSink(scratch / "stage.mp4", width, height, 2 * INPUT_RATE, crf, preset, None, workers=1)
        stages.append(("RGB -> Y'CbCr 4:2:0 (output)", lambda frame: sink._to_yuv(frame, 0), frames))
    print(f"\n| stage (one {width}x{height} frame) | ms per frame, 1 thread | ms per frame, {threads} threads |")
    print("|---|---:|---:|")
    for name, function, items in stages:
        print(f"| {name} | {per_frame_ms(function, items, 1):.1f} | {per_frame_ms(function, items, threads):.1f} |",
              flush=True)
    if pyav_available():
        yuv = [sink._to_yuv(frame, index) for index, frame in enumerate(frames)]
        sink.abort()
        for label, encoder_threads in (("1 thread", 1), ("x264 auto threads", 0)):
            encoder = AvSink(scratch / f"x264_{encoder_threads}.mp4", width, height, 2 * INPUT_RATE, crf, preset,
                             None, workers=1, encoder_threads=encoder_threads)
            start = time.perf_counter()
            for index, frame in enumerate(yuv):
                frame.pts = index * 100
                encoder._mux(encoder.stream.encode(frame))
            encoder._mux(encoder.stream.encode(None))
            elapsed = 1000 * (time.perf_counter() - start) / len(yuv)
            encoder.abort()
            print(f"| libx264 --preset {preset} --crf {crf}, {label} | {elapsed:.1f} | |", flush=True)


def switch_values(text: str) -> list[bool]:
    values = [part.strip() for part in text.split(",")]
    if not values or any(v not in ("on", "off") for v in values):
        raise argparse.ArgumentTypeError(f"--prior: comma-separated on / off, got {text!r}")
    return [v == "on" for v in values]


def worker_values(text: str) -> list[int | None]:
    values = []
    for part in text.split(","):
        part = part.strip()
        if part == "auto":
            values.append(None)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"--io_workers: comma-separated positive integers or 'auto', got {part!r}")
    return values


def frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT such as 1920x1080, got {text}") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"--size must be at least 32x32, got {text}")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48, help="input frames (default 48; 2x gives 2n-1 out)")
    parser.add_argument("--size", type=frame_size, default=(1920, 1080), help="WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--model_ms", type=float, default=60.0,
                        help="the stand-in model's milliseconds per call (default 60)")
    parser.add_argument("--io_workers", type=worker_values, default=[1, None],
                        help="comma-separated values to compare, 'auto' for the default (default 1,auto)")
    parser.add_argument("--outputs", default="folder,mp4", help="folder, mp4 or both (default folder,mp4)")
    parser.add_argument("--preset", default="medium", help="x264 preset for mp4 (default medium, interpolate.py's)")
    parser.add_argument("--crf", type=int, default=18, help="x264 crf for mp4 (default 18, interpolate.py's)")
    parser.add_argument("--prior", type=switch_values, default=[False],
                        help="off, on or off,on: a stand-in with a flow prior (DIS per pair on the prior threads) "
                             "(default off)")
    parser.add_argument("--no_stages", action="store_true", help="leave out the per-stage table")
    args = parser.parse_args(argv)
    if args.frames < 4:
        parser.error("--frames must be at least 4")
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    if not set(outputs) <= {"folder", "mp4"}:
        parser.error(f"--outputs: folder and/or mp4, got {args.outputs}")
    if "mp4" in outputs and not pyav_available():
        print("PyAV is not installed: the mp4 runs are left out", file=sys.stderr)
        outputs.remove("mp4")

    width, height = args.size
    seconds = args.model_ms / 1000
    print(f"{args.frames} frames {width}x{height}, 2x, stand-in model {args.model_ms:g} ms per call, "
          f"CPUs {os.cpu_count()}, "
          f"io_workers auto = {default_io_workers()} (PNG writers {default_png_writers()}), "
          f"torch threads {torch.get_num_threads()}")
    frames = make_frames(args.frames, width, height)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline.") as scratch:
        folder = Path(scratch) / "input"
        folder.mkdir()
        for index, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"{index:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / len(frames) / 2 ** 20
        print(f"input PNGs: {size_mb:.2f} MB per frame")
        model_only = run_once(MemorySource(frames), NullSink(), seconds, None)
        model_rate = model_only["frames"] / model_only["seconds"]
        rows.append(("model-only", "-", model_only))
        print(f"model-only: {model_rate:.2f} out-frames/s ({model_only['calls']} calls)", flush=True)
        runs = [(prior, workers, output) for prior in args.prior for workers in args.io_workers
                for output in (["memory"] if prior else []) + outputs]
        for prior, workers, output in runs:
            if output == "memory":      # model + prior without decoding or encoding
                result = run_once(MemorySource(frames), NullSink(), seconds, workers, prior=True)
            else:
                target = Path(scratch) / f"out_{workers}_{output}_{prior}"
                source = open_source(folder, True, INPUT_RATE)
                if output == "folder":
                    sink = FolderSink(target, workers=workers)
                else:
                    target = target.with_suffix(".mp4")
                    sink = AvSink(target, width, height, 2 * INPUT_RATE, args.crf, args.preset, None,
                                  workers=workers, encoder_threads=workers or 0)
                result = run_once(source, sink, seconds, workers, prior)
            name = ("model+prior" if output == "memory" else output + (" +prior" if prior else ""))
            rows.append((name, "auto" if workers is None else str(workers), result))
            rate = result["frames"] / result["seconds"]
            print(f"{name} io_workers {workers or 'auto'}: {rate:.2f} out-frames/s "
                  f"({rate / model_rate:.2f} of model-only){'; ' + result['prior'] if result['prior'] else ''}; "
                  f"{result['pace']}",
                  flush=True)
        if not args.no_stages:
            stage_table(folder, frames, Path(scratch), default_io_workers(), args.preset, args.crf, any(args.prior))

    print(f"\n| run | io_workers | out frames | seconds | out-frames/s | / model-only | CPU ms per out frame | pace |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, workers, result in rows:
        rate = result["frames"] / result["seconds"]
        print(f"| {name} | {workers} | {result['frames']} | {result['seconds']:.1f} | {rate:.2f} | "
              f"{rate / model_rate:.2f} | {1000 * result['cpu_seconds'] / result['frames']:.0f} | "
              f"{result['pace_stage']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
