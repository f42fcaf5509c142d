"""Speed and memory of one 2x interpolation on random frames, from a checkpoint or from random weights.

    python benchmark/TimeTest.py --model phase1_hybrid_v2_best --resolution 4k
    python benchmark/TimeTest.py --phase 2 --resolution 2k --amp bf16          # random weights: no training needed
    python benchmark/TimeTest.py --phase 1 --model_size tiny --resolution 64x64 --device cpu
    python benchmark/TimeTest.py --phase 2 --flow_prior dis --resolution 1080p     # a classical-flow-prior model

Resolutions are HEIGHTxWIDTH: 256 = 256x256, 720p = 720x1280, 1080p = 1080x1920, 2k = 1080x2048,
4k = 2160x3840, or any "HxW" such as 64x96. Flow (Phase 2/3) is estimated at the protocols' downscale:
1 up to 720p, 0.5 at 1080p and 2K, 0.25 at 4K, 1 for a custom size (override with --flow_scale).
Timing: --warmup untimed calls, then --reps timed ones; the median ms per interpolation is reported, measured
with CUDA events on a GPU (perf_counter on a CPU), with peak allocated memory on CUDA. The frames are already
on the device and no padding or metric is timed: this is the model alone. One summary line; --out writes JSON.

A model with a classical flow prior (``--flow_prior dis``, from its checkpoint or the flag) is given the DIS flows of
the same random frames (``measures.motion.prior_pair_flows``): the code path of real use, and DIS costs the same on
noise as on real frames (benchmark.timing.prior_of_tensors). The prior is computed once, before the timed calls, and
is never in the model's time; its own CPU cost is reported beside it (``prior_ms_per_pair``: the median of a few
DIS computations of the pair, on one OpenCV thread).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import statistics
import sys
import time
from pathlib import Path

PROCESS_START = time.perf_counter()     # before torch is imported: "first output" counts the whole start-up

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

import torch  # noqa: E402

from benchmark.eval_core import (  # noqa: E402
    AMP_DTYPES, BenchmarkError, add_runtime_arguments, exit_on_user_error, with_work_scale, write_report,
)
from benchmark.timing import (  # noqa: E402
    FLOW_SCALES, PRIOR_TIMING_CALLS, RESOLUTIONS, measure, parse_resolution, prior_of_tensors,
)
from checkpoint import model_from_checkpoint  # noqa: E402
from model.inference import (  # noqa: E402
    GraphUnavailable, InferenceRunner, describe_run, describe_runtime, runtime_record,
)
from config import FLOW_PRIORS, MODEL_SIZES, PHASES, positive_int, preset, resolve_device  # noqa: E402
from model import build_model, count_parameters  # noqa: E402
from model.reduced import work_scale_of  # noqa: E402

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="checkpoint name in --ckpt_dir or a path to a .pt file")
    source.add_argument("--phase", type=int, choices=PHASES, default=None,
                        help="time a randomly initialised model of this phase instead (default 1 without --model)")
    parser.add_argument("--model_size", choices=list(MODEL_SIZES), default="small",
                        help="preset size for --phase (default small)")
    parser.add_argument("--flow_prior", choices=FLOW_PRIORS, default=None,
                        help="for --phase 2/3: build the model with this flow prior (dis: the flow estimator starts "
                             "from the pair's DIS flows; default none); a checkpoint says its own")
    parser.add_argument("--resolution", default="256", help="256, 720p, 1080p, 2k, 4k or HEIGHTxWIDTH (default 256)")
    parser.add_argument("--warmup", type=positive_int, default=5, help="untimed calls first (default 5)")
    parser.add_argument("--reps", type=positive_int, default=20, help="timed calls (default 20)")
    add_runtime_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        height, width = parse_resolution(args.resolution)
    except argparse.ArgumentTypeError as error:
        parser.error(f"--resolution: {error}")
    flow_scale = args.flow_scale if args.flow_scale is not None else FLOW_SCALES.get(args.resolution, 1.0)

    with exit_on_user_error("TimeTest"):
        if args.model is not None and args.flow_prior is not None:
            raise BenchmarkError("--flow_prior builds a random-weight model (--phase); a checkpoint (--model) has "
                                 "its own")
        device = resolve_device(args.device)
        if args.model is not None:
            model, cfg = model_from_checkpoint(args.model, device=device, ckpt_dir=args.ckpt_dir)
            label = args.model
        else:
            cfg = preset(args.phase or 1, args.model_size)
            if args.flow_prior is not None:
                cfg = replace(cfg, model=replace(cfg.model, flow_prior=args.flow_prior))
            model = build_model(cfg.model).to(device).eval()
            label = f"random phase-{cfg.train.phase} {args.model_size}"
            if cfg.model.flow_prior != "none":
                label += f", flow prior {cfg.model.flow_prior}"
        model = with_work_scale(model, args.work_scale)
        if work_scale_of(model) != 1.0:
            label += f", work scale {work_scale_of(model):g}"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # one fixed input size: let cuDNN pick its fastest kernels

    generator = torch.Generator(device=device).manual_seed(0)
    img0, img1 = (torch.rand(1, 3, height, width, device=device, generator=generator) for _ in range(2))
    prior, prior_times = None, []
    if getattr(model, "needs_flow_prior", False):
        prior, prior_times = prior_of_tensors(img0, img1, calls=1)     # what the first output needs
    amp_dtype = AMP_DTYPES[args.amp]
    with exit_on_user_error("TimeTest"):
        try:
            runner = InferenceRunner(model, args.cuda_graph)
        except GraphUnavailable as error:
            raise BenchmarkError(str(error)) from None

    def interpolate() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return runner(img0, img1, 0.5, flow_scale=flow_scale, tta=args.tta, flow_prior=prior)

    with exit_on_user_error("TimeTest"):     # the first call records the graph: --cuda_graph on can fail here
        interpolate()                   # the first output: imports, model, cuDNN autotuning, capture / compilation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_output_s = time.perf_counter() - PROCESS_START
    timing = measure(interpolate, device, args.warmup, args.reps)
    times, peak_gib = timing.times_ms, timing.peak_gib
    if prior is not None:                  # the prior's own CPU cost, after (never inside) the model's timing
        prior_times = prior_of_tensors(img0, img1, calls=PRIOR_TIMING_CALLS)[1]
    prior_ms = statistics.median(prior_times) if prior_times else None
    if peak_gib is not None and runner.capture_peak_gib is not None:
        peak_gib = max(peak_gib, runner.capture_peak_gib)          # a replay allocates nothing: count the capture
    params = count_parameters(model)
    report = {"model": label, "phase": cfg.train.phase, "params": params, "height": height, "width": width,
              "flow_scale": flow_scale, "work_scale": work_scale_of(model), "flow_prior": cfg.model.flow_prior,
              "device": str(device), "amp": args.amp, "tta": args.tta,
              "warmup": args.warmup, "reps": args.reps, "median_ms": statistics.median(times),
              "min_ms": min(times), "max_ms": max(times), "times_ms": times, "peak_gib": peak_gib,
              "first_output_s": round(first_output_s, 2),
              "runtime": runtime_record(statistics.median(times), runner.mode, device, peak_gib, height, width,
                                        prior_ms_per_pair=prior_ms)}
    if prior is not None:
        report.update(prior_ms_per_pair=prior_ms, prior_times_ms=prior_times,
                      prior_source="DIS (measures.motion.prior_pair_flows) of the random frames, one OpenCV thread")
    memory = f" | peak {peak_gib:.2f} GiB" if peak_gib is not None else ""
    print(f"TimeTest {height}x{width} | {params / 1e6:.2f}M params | "
          + describe_run(label, cfg.model.use_flow, device, args.amp, args.tta, flow_scale)
          + f" | median {report['median_ms']:.1f} ms (min {report['min_ms']:.1f}, max {report['max_ms']:.1f}, "
          f"{args.reps} reps){memory}")
    print(f"{describe_runtime(report['runtime'])}; first output {first_output_s:.1f} s after the process started")
    if args.out:
        write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
