"""Apply a trained Thesis-VFI checkpoint to footage: a video or a folder of frames in, N times the frames out.

    python interpolate.py --model phase2_hybrid_best --input clip.mp4 --output clip_4x.mp4 --multi 4
    python interpolate.py --model ckpt/p3.pt --input clip.mp4 --output clip_60.mp4 --fps 60
    python interpolate.py --model p3 --input frames/ --output frames_2x/             # PNG folder in and out

Output times. Input frame i sits at time i (in input frames); with ``ratio`` = input frames per output frame
(1/N for ``--multi N``, input rate / F for ``--fps F``), output frame k sits at time k * ratio. The output frames
between input frames i and i+1 get t = k * ratio - i in [0, 1); t = 0 is input frame i itself. The last input frame
is an output frame when it falls on the output grid, so ``--multi N`` gives (n - 1) * N + 1 frames, ``--fps F``
floor((n - 1) * F / rate) + 1, and the output spans exactly the input's first to last frame. A variable-frame-rate
video keeps each frame's timestamp: output frames fall on the output grid between the real times (t from the
timestamps), and the output lasts as long as the input (the last frame held as long as it was).

Colour, aspect and audio. The source's matrix, range, primaries, transfer and sample aspect ratio are read and
written to the output (untagged: BT.709 above 576 lines, BT.601 below); its audio is copied with its offset to the
video kept and trimmed to the video's end. ``--report OUT.json`` records every cut and duplicate, the metadata read
and written, and the audio decision (README, "What a video editor gets back").

Which model calls. A Phase-3 checkpoint was trained at arbitrary t and gets each t directly (one pass per output
frame). Phases 1 and 2 were trained only at t = 0.5: when every needed t is k / 2^d (``--multi`` a power of two,
or ``--fps`` a power-of-two multiple of the input rate), t = k / 2^d is the t = 0.5 interpolation of (k-1) / 2^d and
(k+1) / 2^d, computed depth by depth ("recursive halving"); any other t is given directly, with a warning that the
model never saw it (``--strict_t`` refuses instead). A ``--flow_prior dis`` checkpoint also gets each interpolated
pair's DIS optical flow both ways, computed on the CPU by ``--io_workers`` threads while the model runs (about 100 ms
of a core per 1080p pair: a fast GPU needs several cores for it); halving's sub-pairs take theirs from the pair's
(footage/interpolator.py, ``sub_pair_prior``).

Scene cuts and duplicates: a frame between two shots must never be a blend of both, and a repeated frame has no
motion to interpolate. Both come from ``measures/shots.py`` (the measure ``tools/video_to_vimeo.py`` filters training
data with): a pair is a cut when its content change (grey correlation and colour histograms, robust to brightness)
is ``--cut_ratio`` times its neighbours' median or more, a duplicate when no 16x16 block of a <= 448 px copy differs by
more than ``--duplicate_block`` levels. Either way every output frame between the two is a copy of the earlier input
frame. A pair's verdict needs the next two input frames, which the reader holds back.

Streaming (memory depends on the frame size, never on the video's length)::

    decode threads (PNG / RGB conversion, pinned) -> reader thread: cut/duplicate verdict --queue--> main: upload,
        batch pairs, model (bf16 on CUDA) --queue of uint8 frames (async GPU->pinned copies)--> writer thread
        -> encode threads (PNG; RGB->Y'CbCr then libx264's own threads, or NVENC on the GPU: --encoder)

so decoding, the model and encoding overlap, and several frames are decoded and encoded at once (``--io_workers``).
Output goes to a hidden temporary name and is renamed at the end.
Errors a user can fix (a missing input, a bad flag, a checkpoint that is not ours, an unwritable output) end with one
line on stderr and exit status 2; Ctrl-C removes what was written and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import torch

from checkpoint import CheckpointError, atomic_write_text, model_from_checkpoint, resolve_checkpoint
from config import (AMP_DTYPES, ConfigError, OneLineErrorParser, positive_float, positive_int, resolve_amp,
                    resolve_device, unit_fraction)
from footage.interpolator import FrameInterpolator
from footage.pipeline import RunStats, StreamSettings, run_stream, seconds_since_process_start
from footage.timeplan import TimePlan, describe_times, is_power_of_two, output_frame_count
from footage.video_io import (H264_ENCODERS, AvSink, FolderSink, FrameSink, OpenCVSink, SourceInfo, VideoIOError,
                              default_io_workers, encoder_options,
                              check_output, create_output_parents, default_png_writers, nvenc_unavailable, open_source,
                              pyav_available, snap_rate)
from measures.shots import ShotSettings, add_shot_arguments
from model.inference import (INDUCTOR_MODES, GraphUnavailable, InferenceRunner, add_graph_argument,
                             compile_mode_problem, compile_report, describe_compile_report, describe_run)
from model.precompiled import precompile_for_inference
from model.reduced import WORK_SCALE_HELP, describe_work_scale, reduce_resolution

PROGRAM = "interpolate.py"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Auto batch: about one 1080p frame's worth of pixels per model call; small frames are batched up to this many.
BATCH_PIXELS = 1920 * 1088
MAX_AUTO_BATCH = 8


class InterpolateError(RuntimeError):
    """A request that cannot be carried out as given (e.g. --strict_t with a t the model never saw); one line."""


# OSError too: a full disk or a vanished folder is the user's to fix, and its message names the file.
# GraphUnavailable: --cuda_graph on and the first batch's capture failed (the message says which shape and why).
USER_ERRORS = (InterpolateError, VideoIOError, CheckpointError, ConfigError, GraphUnavailable, OSError)


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
    parser.add_argument("--work_scale", type=unit_fraction, default=None, help=WORK_SCALE_HELP)
    add_shot_arguments(parser, "frames copied")
    parser.add_argument("--strict_t", action="store_true",
                        help="refuse times a Phase-1/2 checkpoint (trained at t=0.5) cannot reach by halving")
    parser.add_argument("--amp", choices=["auto", *AMP_DTYPES], default="auto",
                        help="model precision (default auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--tta", action="store_true", help="average with the prediction on flipped inputs (2x time)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (CUDA) before replaying it as a CUDA graph: minutes of "
                             "compilation once per frame size (kernels cached across runs), then faster at 1080p "
                             "and above; see docs/PERF.md, inference section, for when it pays off")
    parser.add_argument("--compile_mode", choices=INDUCTOR_MODES, default=None,
                        help="with --compile: how hard Inductor works for speed (default: its default mode). "
                             "tune-kernels times block sizes for each kernel it generates: 4-5%% faster at 1080p on "
                             "an H100, for about 3 more minutes of compilation once per frame size (a minute when "
                             "cached; docs/PERF.md 10.17). max-autotune-no-cudagraphs also times Triton templates "
                             "against cuDNN per convolution and matrix product (compilation of many minutes)")
    parser.add_argument("--aot_compile", action="store_true",
                        help="as --compile, but compiled ahead of time into a file (~/.cache/thesis_vfi/aot) that a "
                             "later run with the same model architecture, frame size and settings loads instead of "
                             "tracing and compiling again (torch's experimental ahead-of-time mode; where it fails, "
                             "--compile's way); docs/PERF.md 10.9")
    add_graph_argument(parser)
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="model calls per forward pass (default: 1 on the CPU; on a GPU about 1080p worth)")
    parser.add_argument("--io_workers", type=positive_int, default=None,
                        help="threads decoding the input and threads encoding the output, each (default: half the "
                             "CPUs, 2 to 8, and for PNG output all CPUs but a quarter, 2 to 16, as PNG encoding costs "
                             "several times decoding; also libx264's thread count, which otherwise follows the CPUs)")
    parser.add_argument("--crf", type=crf_value, default=18, help="H.264 quality, 0 lossless .. 51 (default 18)")
    parser.add_argument("--preset", choices=X264_PRESETS, default="medium",
                        help="x264 speed preset (default medium); where encoding sets the pace (the 'pace:' line), "
                             "faster encodes 1.7-2x as fast for 0.2-0.5 dB less at the same --crf (docs/PERF.md 10.8); "
                             "at 1080p on 16 cores veryfast kept up with the graphed model (10.23)")
    parser.add_argument("--encoder", choices=("auto", "libx264", "nvenc"), default="auto",
                        help="H.264 encoder of a video output (default auto: NVIDIA's hardware encoder, NVENC, when "
                             "the run is on a GPU that has one (GeForce/RTX, workstation cards; not H100/A100), else "
                             "libx264 on the CPU); --crf and --preset apply to both (NVENC's constant-quality scale "
                             "and its p1-p7 presets)")
    parser.add_argument("--ckpt_dir", default="ckpt", help="folder searched for --model names (default ckpt)")
    parser.add_argument("--report", type=Path, default=None, metavar="OUT.json",
                        help="write a JSON record of the run: every cut and duplicate (frame indices, scores), the "
                             "colour, aspect and timing read and written, and what happened to the audio")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output (and --report)")
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


def choose_time_strategy(phase: int, ratio: Fraction, strict: bool, vfr: bool = False) -> tuple[bool, str]:
    """(use halving, one line saying how the output times are reached) for a checkpoint of ``phase``. A VFR input's
    output times fall anywhere between its frames, so they are always given directly."""
    if vfr:
        if phase == 3:
            return False, "Phase-3 checkpoint: each t (from the frames' timestamps, VFR) is given to the model directly"
        if strict:
            raise InterpolateError(f"--strict_t: this Phase-{phase} checkpoint was trained only at t = 0.5, and a "
                                   f"variable-frame-rate input puts output frames at any t; use a Phase-3 checkpoint")
        warn(f"this Phase-{phase} checkpoint was trained only at t = 0.5; a variable-frame-rate input puts output "
             f"frames at any t between its frames, given directly (--strict_t refuses)")
        return False, f"Phase-{phase} checkpoint: t from the frames' timestamps (VFR) given directly"
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


def choose_encoder(requested: str, device: torch.device, kind: str, use_pyav: bool) -> tuple[str | None, str]:
    """(the H.264 encoder a video output gets, "libx264" / "nvenc" / None for a PNG folder or OpenCV's writer; a note
    on the choice for the io line). ``--encoder nvenc`` where NVENC does not open is an InterpolateError."""
    if kind != "video":
        return None, ""
    if not use_pyav:
        if requested == "nvenc":
            raise InterpolateError("--encoder nvenc writes through PyAV, which is not installed: pip install av")
        return None, ""
    if requested == "libx264":
        return "libx264", ""
    reason = nvenc_unavailable() if requested == "nvenc" or device.type == "cuda" else "the run is on the CPU"
    if requested == "nvenc" and reason:
        raise InterpolateError(f"--encoder nvenc: {reason}; use --encoder libx264")
    return ("nvenc", "") if reason is None else ("libx264", f"--encoder auto: no NVENC, {reason}")


def make_sink(path: Path, kind: str, info: SourceInfo, rate: Fraction | None, args: argparse.Namespace,
              use_pyav: bool, encoder: str | None = "libx264") -> FrameSink:
    """A PNG folder, or a video through PyAV (colour, aspect and audio from a video source) or, without PyAV,
    OpenCV. ``encoder``: :func:`choose_encoder`'s choice, None for the two sinks that have none (folder, OpenCV)."""
    if kind == "folder":
        return FolderSink(path, workers=args.io_workers)
    if not use_pyav:
        return OpenCVSink(path, info.width, info.height, rate)
    source = info if info.kind == "video" else None
    # --io_workers also caps x264's own threads; without it x264 picks its count from the CPUs.
    return AvSink(path, info.width, info.height, rate, args.crf, args.preset, source,
                  keep_audio=not info.rate_overridden, workers=args.io_workers, encoder_threads=args.io_workers or 0,
                  encoder=encoder)


def time_plan(info: SourceInfo, ratio: Fraction, out_rate: Fraction | None) -> TimePlan:
    """Output frame k at k / out_rate seconds; a VFR video's output lasts as long as the video."""
    if info.vfr and out_rate is not None:
        return TimePlan(1 / out_rate, Fraction(info.duration).limit_denominator(10 ** 6))
    return TimePlan(ratio / (info.rate or 1))


def check_report_path(path: Path | None, overwrite: bool, input_path: Path, output_path: Path) -> None:
    if path is None:
        return
    # Written last and atomically, a report on either path would replace the video (--overwrite does not mean that).
    for flag, other in (("--input", input_path), ("--output", output_path)):
        if path.resolve() == other.resolve():
            raise InterpolateError(f"--report {path} is the {flag}; give the report a file name of its own")
    if path.exists() and (path.is_dir() or not overwrite):
        raise InterpolateError(f"--report {path} exists; pass --overwrite to replace it" if not path.is_dir()
                               else f"--report {path} is a folder; give a file name such as run.json")
    if not path.parent.is_dir():
        raise InterpolateError(f"--report {path}: the folder {path.parent} does not exist")


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def run_report(args: argparse.Namespace, info: SourceInfo, kind: str, out_rate: Fraction | None, time_text: str,
               shots: ShotSettings, sink: FrameSink, stats: RunStats, startup: dict[str, float | None],
               compiled_artifacts: list[dict] | None = None) -> dict:
    """What --report holds: the input and output metadata, timing, every cut and duplicate, the audio decision."""
    written = sink.report()
    audio = written["audio"]
    if info.has_audio and audio["decision"] == "none":
        reason = ("a frame folder holds no audio" if kind == "folder" else
                  "OpenCV writes no audio (PyAV is not installed)")
        audio = {"decision": "dropped", "reason": reason, "tracks": [t.as_dict() for t in info.audio]}
    output = {"path": str(args.output), "kind": kind, "rate": None if out_rate is None else str(out_rate),
              "frames": stats.frames_out, **written["output"]}
    if kind == "folder":
        output["colour"] = "RGB PNG"
    return {"input": info.as_dict(), "output": output,
            "timing": {"vfr": info.vfr, "times": time_text},
            "shots": {"settings": asdict(shots), "cuts": [v.as_dict() for v in stats.cuts],
                      "duplicates": [v.as_dict() for v in stats.duplicates]},
            "audio": audio, "notes": stats.notes,
            "summary": {"frames_in": stats.frames_in, "frames_out": stats.frames_out,
                        "model_calls": stats.model_calls, "seconds": round(stats.seconds, 3),
                        "first_frame_seconds": _rounded(stats.first_frame_seconds),
                        "first_frame_after_process_start_seconds": _rounded(stats.first_frame_after_process_start),
                        "prior_pairs": len(stats.prior_ms), "prior_threads": stats.prior_workers,
                        "pipeline": stats.waits.as_dict(),
                        "startup_process_age_seconds": {step: _rounded(age) for step, age in startup.items()},
                        "compiled_artifacts": compiled_artifacts or []}}


def pace_hint(pace: str | None, kind: str, preset: str, use_pyav: bool, encoder: str | None = "libx264"
              ) -> str | None:
    """What to change when the output's encoding held the model back (``pace`` from StageWaits), else None."""
    if pace != "encoding":
        return None
    if encoder == "nvenc":
        return "NVENC set the pace: a faster --preset (NVENC's p1-p4)"
    if kind == "folder":
        return ("PNG writing set the pace: more writer threads (--io_workers N; one thread writes about 15 1080p PNGs "
                "a second) or a video output")
    if not use_pyav:
        return "OpenCV's encoder set the pace: pip install av (PyAV's libx264 runs on several threads)"
    # measured at 1080p 2x on 16 cores with the graphed model (docs/PERF.md 10.23): faster kept 80% of the model's
    # rate, veryfast 95%, so a preset slower than veryfast is pointed there, not one step faster
    if X264_PRESETS.index(preset) > X264_PRESETS.index("veryfast"):
        return (f"libx264 set the pace: --preset veryfast (at 1080p on 16 cores it kept 95% of the graphed model's "
                f"rate, faster 80%; larger files than {preset} at the same --crf), or more CPU cores")
    return "libx264 set the pace: a faster --preset, or more CPU cores"


def describe_startup(startup: dict[str, float | None]) -> str:
    """'start-up (process age, s): imports done 3.3, input opened 3.5, ...' for the steps whose age is known."""
    known = [f"{step} {age:.1f}" for step, age in startup.items() if age is not None]
    return "start-up (process age, s): " + (", ".join(known) if known else "n/a (this OS does not say)")


def run(args: argparse.Namespace) -> RunStats:
    """Checks (cheap ones first: input, checkpoint name, output), model, then the stream; prints the final line.
    Raises one of USER_ERRORS for anything the user can fix."""
    # The process's age at each start-up step (imports are done by now): where the wait for the first frame goes.
    startup: dict[str, float | None] = {"imports done": seconds_since_process_start()}
    use_pyav = pyav_available()
    input_path, output_path = args.input, args.output
    if output_path.resolve() == input_path.resolve():
        raise InterpolateError(f"--output {output_path} is the --input; choose another path")
    output_is_video = output_path.suffix.lower() != "" and not output_path.is_dir()
    if not use_pyav and (input_path.is_file() or output_is_video):
        warn("PyAV is not installed: video is read and written with OpenCV (MPEG-4 part 2, no audio, no colour "
             "tags, no frame timestamps, --crf ignored); pip install av")
    source = open_source(input_path, use_pyav, args.input_fps)
    info = source.info
    startup["input opened"] = seconds_since_process_start()
    checkpoint_path = resolve_checkpoint(args.model, args.ckpt_dir)
    kind = check_output(output_path, args.overwrite)            # its missing folders are made after every check
    check_report_path(args.report, args.overwrite, input_path, output_path)
    ratio, out_rate, rate_text = output_ratio(args, info)
    plan = time_plan(info, ratio, out_rate)
    if kind == "video" and out_rate is None:
        raise InterpolateError(f"a video output needs a frame rate: {info.path} is a frame folder, give --input_fps")

    device = resolve_device(args.device)
    compile_flag = "--aot_compile" if args.aot_compile else "--compile" if args.compile else None
    if problem := compile_mode_problem(args.compile_mode, args.compile, args.aot_compile):
        raise InterpolateError(problem)
    if compile_flag and device.type != "cuda":
        raise InterpolateError(f"{compile_flag} needs a CUDA device (this run is on {device.type})")
    encoder, encoder_note = choose_encoder(args.encoder, device, kind, use_pyav)
    amp = resolve_amp(args.amp, device)
    if amp == "fp16" and device.type != "cuda":   # CPU fp16 autocast: about 27x slower than fp32 (issue 17)
        raise InterpolateError(f"--amp fp16 needs a CUDA device (this run is on {device.type}); use --amp bf16 or fp32")
    model, cfg = model_from_checkpoint(str(checkpoint_path), device=device)
    startup["model loaded"] = seconds_since_process_start()
    try:
        model = reduce_resolution(model, args.work_scale)
    except ValueError as error:
        raise InterpolateError(str(error)) from None
    halving, time_text = choose_time_strategy(cfg.train.phase, ratio, args.strict_t, info.vfr)
    flow_scale = args.flow_scale or default_flow_scale(info.height, info.width)
    batch = args.batch or default_batch(info.height, info.width, device)
    if device.type == "cuda":
        # One frame size for the whole run: cuDNN's per-shape autotuning is paid once and then pays off.
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)

    if info.vfr:
        expected = math.ceil(plan.end / plan.period)
    else:
        expected = output_frame_count(info.frame_count, ratio) if info.frame_count else None
    if info.colour is not None and info.colour.hdr:
        warn("the input is HDR (PQ/HLG transfer): its tags are carried over, but frames are processed as 8-bit RGB "
             "of the coded values")
    out_rate_text = f"{float(out_rate):.6g} fps = {rate_text}" if out_rate is not None else rate_text
    print(f"input:  {info.describe()}")
    if info.colour is not None:
        print(f"colour: {info.colour.describe()}; " + ("carried to the output" if kind == "video" and use_pyav
                                                       else "frames written as RGB"))
    print(f"output: {output_path} ({kind}, {out_rate_text}"
          + (f", ~{expected} frames)" if expected else ")"))
    flow_note = ("" if args.flow_scale or not cfg.model.use_flow
                 else f" (default for {info.width}x{info.height}; --flow_scale to change)")
    work_note = describe_work_scale(model)
    print(f"model:  {describe_run(args.model, cfg.model.use_flow, device, amp, args.tta, flow_scale)}{flow_note} | "
          f"batch {batch}{' | ' + work_note if work_note else ''}")
    print(f"times:  {time_text}")
    print(f"cuts:   a content change >= {args.cut_ratio:g} x its neighbours' median is a cut, a largest block "
          f"difference <= {args.duplicate_block:g} a duplicate: both copy the earlier frame")

    try:
        precompiled = precompile_for_inference(model) if args.aot_compile else None
        runner = InferenceRunner(model, args.cuda_graph, compile=args.compile and not args.aot_compile,
                                 precompiled=precompiled, compile_mode=args.compile_mode)
    except GraphUnavailable as error:
        raise InterpolateError(str(error)) from None
    except ValueError as error:             # a torch without the ahead-of-time mode
        raise InterpolateError(f"--aot_compile: {error}") from None
    if args.aot_compile:
        print(f"compile: ahead of time into {precompiled.folder}: the first batch loads the compiled model saved by an "
              f"earlier run, or compiles it (minutes at 1080p and 4K) and saves it")
    elif args.compile:
        mode = f" with --compile_mode {args.compile_mode}" if args.compile_mode else ""
        print(f"compile: torch.compile{mode}, the first batch compiles the model (minutes at 1080p and 4K)")
    print(f"run:    {'CUDA graph per frame size' if runner.graphs_enabled else 'eager'}"
          f"{' of the compiled model' if compile_flag else ''} (--cuda_graph {args.cuda_graph})")
    workers = args.io_workers or default_io_workers()
    if kind == "folder":
        encoding = f"{args.io_workers or default_png_writers()} writing PNGs"
    elif encoder == "nvenc":
        encoding = f"{workers} converting to Y'CbCr, NVENC (the GPU's video encoder)"
    elif use_pyav:
        encoding = (f"{workers} converting to Y'CbCr, libx264 on "
                    f"{args.io_workers if args.io_workers else 'its own count of'} threads")
    else:
        encoding = "1 encoding (OpenCV)"
    print(f"io:     {workers} threads decoding, {encoding} (--io_workers)")
    if encoder is not None:
        # What the encoder is given (encoder_options), not a second mapping: NVENC's --crf 0 is its lossless p7.
        options = encoder_options(encoder, args.crf, args.preset)
        preset = args.preset if encoder == "libx264" else f"{args.preset} = NVENC's {options['preset']}"
        name = f"NVENC ({H264_ENCODERS[encoder]})" if encoder == "nvenc" else H264_ENCODERS[encoder]
        print(f"encode: H.264 by {name}, --crf {args.crf}, --preset {preset} "
              f"({encoder_note or f'--encoder {args.encoder}'})")
    interpolator = FrameInterpolator(model, device, AMP_DTYPES[amp], args.tta, flow_scale, batch, halving, runner=runner)
    if interpolator.needs_prior:
        print(f"prior:  --flow_prior {cfg.model.flow_prior} checkpoint: each interpolated pair's DIS flows on "
              f"{workers} threads beside the model (cuts and duplicates need none; --io_workers)")
    create_output_parents(output_path)
    sink = make_sink(output_path, kind, info, out_rate, args, use_pyav, encoder)
    shots = ShotSettings(cut_ratio=args.cut_ratio, duplicate_block=args.duplicate_block)
    settings = StreamSettings(plan, shots, not args.no_progress, expected, io_workers=args.io_workers)
    try:
        stats = run_stream(source, sink, interpolator, settings)
    finally:
        source.close()
    startup.update(stats.startup_ages())
    for note in stats.notes:
        print(f"note: {note}")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB (allocated)")
    if compile_flag:
        print(describe_compile_report(compile_report()))
    compiled_records = precompiled.records if precompiled is not None else []
    for record in compiled_records:
        print(record.describe())
    prior_rate = stats.prior_rate()
    print(f"wrote {output_path} ({stats.model_calls} model calls; {stats.steady_rate()}; "
          f"{interpolator.model_rate(stats.frames_out)}{'; ' + prior_rate if prior_rate else ''})")
    print(stats.waits.pace())
    hint = pace_hint(stats.waits.slowest(), kind, args.preset, use_pyav, encoder)
    if hint:
        print(f"hint:   {hint}")
    print(describe_startup(startup))
    if args.report is not None:
        report = run_report(args, info, kind, out_rate, time_text, shots, sink, stats, startup,
                            [asdict(record) for record in compiled_records])
        atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
        print(f"report: {args.report}")
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
