"""Training-step and inference benchmark of ThesisModel on one CUDA device (timings are never asserted in tests).

Training step = forward, CompositeLoss (VGG with random weights so its cost is counted), backward, AdamW step,
under bf16 autocast by default; reported as median ms per step, samples/s and peak GiB. Inference = the
prediction only, at named resolutions, with flow estimated at the protocol's downscale (Phases 2/3).
Before timing, one training step runs with SDPA restricted to FlashAttention, which raises if any attention call
in the model is not flash-eligible.

Examples:
    python benchmark/bench_model.py --phase 1 --modes hybrid mamba2_only gated_attn_only --batch 4 --size 256
    python benchmark/bench_model.py --phase 2 --batch 4 --size 256 --infer 1080p 2k 4k
    python benchmark/bench_model.py --phase 2 --peer_table --json ours_p2.json
    python benchmark/bench_model.py --phase 2 --flow_prior dis --infer 720p@1.0 1080p@1.0 --infer_only --flops
    python benchmark/bench_model.py --phase 2 --infer 1080p@1.0 --infer_only --compile_infer --align_channels on,off \
        --kernel_profile

``--peer_table`` prints the rows of the side-by-side comparison with other VFI models (RIFE, EMA-VFI) under one
definition for every model: a training step (forward, the training loss as the trainer builds it with the VGG
term as configured -- off without local weights -- backward, AdamW with default settings) at 256x256 for
b4 fp32, b4 bf16, b8 bf16 and b16 bf16, then 2x inference in bf16 at 256, 720p, 1080p (flow at full resolution),
2K (flow 0.5) and 4K (flow 0.25); median of 10 CUDA-event timings after 3 warm-up calls (5 at 4K), peak memory
of the timed calls, cudnn.benchmark on. Run the peers' own code the same way in the same session to compare.

``--flow_prior dis`` builds the model with a classical flow prior (train.py's flag): every call then takes the
pair's DIS flows, here those of the benchmark's random frames (``benchmark.timing.prior_of_tensors``: DIS costs the
same on noise as on real frames), computed before the timed calls and never inside the model's ms. Each inference
row gives the prior's own CPU cost per pair at its resolution (``prior_ms``: median of 3 DIS computations on one
OpenCV thread, medium preset on at most 1024 px), and a training step gets each sample's prior as an input, as the
data loader supplies it. Not with ``--peer_table`` or ``--trainer_step``.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import gc
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.timing import (FLOW_SCALES, PRIOR_TIMING_CALLS, RESOLUTIONS, count_gflop,  # noqa: E402
                              kernel_profile, measure, measure_alternating, prior_of_tensors)
from config import FLOW_PRIORS, REFINE_FINEST, preset, unit_fraction  # noqa: E402
from model import build_model, count_parameters  # noqa: E402
from model.inference import INDUCTOR_MODES, runtime_record  # noqa: E402
from measures.quality import difference_stats  # noqa: E402
from model.loss import CompositeLoss  # noqa: E402
from model.mamba_branch import InterleavedMamba2  # noqa: E402
from model.reduced import WORK_SCALE_HELP, reduce_resolution, work_scale_of  # noqa: E402
from model.ops.warp import TRITON_WARP_ENV, triton_warp_wanted  # noqa: E402
from model.warplayer import BackwardWarp  # noqa: E402

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# cuDNN's channel-padding pass before a convolution (nhwcAddPaddingKernel), and its layout conversions (names as
# cuDNN 9 gives them). Not plain "Padding": ATen's grid_sampler_2d_kernel carries GridSamplerPadding in its template
# arguments, and call M's profile counted the 17 warps as padding passes with it (docs/PERF.md 10.12).
KERNEL_PATTERNS = ("AddPadding", "nchwToNhwc", "nhwcToNchw")


def stamp(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def needs_prior(model) -> bool:
    """Whether ``model`` (or the model a compiled wrapper holds) takes a flow prior in every call."""
    return bool(getattr(model, "needs_flow_prior", False))


def frames_prior(img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) DIS flow prior of a batch of random frame pairs (one computation per pair, not timed)."""
    return torch.cat([prior_of_tensors(a[None], b[None], calls=1)[0] for a, b in zip(img0, img1)])


def train_step_fn(model, loss_fn, optimizer, batch, size, amp, phase, device):
    g = torch.Generator(device=device).manual_seed(0)
    img0, gt, img1 = (torch.rand(batch, 3, size, size, device=device, generator=g) for _ in range(3))
    t = torch.full((batch,), 0.5, device=device)
    prior = {"flow_prior": frames_prior(img0, img1)} if needs_prior(model) else {}   # the loader's work, untimed

    def step():
        with torch.autocast(device, dtype=AMP_DTYPES[amp], enabled=AMP_DTYPES[amp] is not None):
            out = model(img0, img1, t, **prior)
            total, _ = loss_fn(out.pred, gt, flow=out.flow if phase > 1 else None)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def parse_infer_name(text: str) -> tuple[int, int, float]:
    """"1080p" -> (1080, 1920, 0.5): a named resolution with its protocol flow scale; "1080p@1.0" overrides it."""
    name, _, scale = text.partition("@")
    if name not in RESOLUTIONS:
        raise SystemExit(f"bench_model.py: --infer {text}: unknown resolution (choose from {', '.join(RESOLUTIONS)}, "
                         f"optionally @FLOW_SCALE)")
    return (*RESOLUTIONS[name], float(scale) if scale else FLOW_SCALES[name])


def benchmark_frames(name: str, args, device: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(img0, img1, flow scale) of a named resolution: fixed random frames (B=1), flow at the protocol's downscale
    in Phases 2/3 (Phase 1 has no flow: 1.0). Every inference row of a resolution times these same frames."""
    height, width, flow_scale = parse_infer_name(name)
    generator = torch.Generator(device=device).manual_seed(1)
    img0, img1 = (torch.rand(1, 3, height, width, device=device, generator=generator) for _ in range(2))
    return img0, img1, flow_scale if args.phase > 1 else 1.0


def inference_call(runner, name: str, args, device: str):
    """(a function running one 2x interpolation at a named resolution and returning it as float32, the flow scale):
    :func:`benchmark_frames`, autocast as ``--amp`` says, and for a model with a flow prior the frames' DIS flows
    (computed here, once: never inside the timed function). ``runner``: an
    :class:`model.inference.InferenceRunner` (eager, graphed or compiled)."""
    img0, img1, flow_scale = benchmark_frames(name, args, device)
    prior = prior_of_tensors(img0, img1, calls=1)[0] if needs_prior(runner.model) else None
    dtype = AMP_DTYPES[args.amp]

    def infer() -> torch.Tensor:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return runner(img0, img1, 0.5, flow_scale=flow_scale, flow_prior=prior).float()
    return infer, flow_scale


def graph_like_call(model, name: str, args, device: str):
    """The call that :class:`model.inference.InferenceRunner` records into a CUDA graph at a named resolution (``t``
    a (B,) float32 device tensor, autocast's weight-cast cache off, gradients off), as a function run without a
    graph. Dynamo guards on those conditions, so a compiled model runs the code its graph recorded instead of
    compiling again for a float ``t``."""
    img0, img1, flow_scale = benchmark_frames(name, args, device)
    t = torch.full((1,), 0.5, device=device)
    prior = {"flow_prior": prior_of_tensors(img0, img1, calls=1)[0]} if needs_prior(model) else {}
    dtype = AMP_DTYPES[args.amp]

    def call() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None,
                                             cache_enabled=False):
            return model.inference(img0, img1, t, flow_scale=flow_scale, **prior)
    return call


def select_warp_kernel(kernel: str) -> None:
    """Send the half-precision inference warps to ``kernel`` ("triton" or "aten") from the next eager call or
    compilation on (``THESIS_TRITON_WARP``, model/ops/warp.py)."""
    os.environ[TRITON_WARP_ENV] = "1" if kernel == "triton" else "0"


def warp_kernel_in_effect(args, device: str) -> str:
    """Which kernel warps the half-precision feature maps now (float32 maps and the CPU: always ATen's)."""
    return "triton" if device == "cuda" and args.amp != "fp32" and triton_warp_wanted() else "aten"


def inference_row(model, name: str, args, device: str, execution: str, flow_scale: float) -> dict:
    """What an inference row says about the call it times: the model's arrangement, the resolution, the mode."""
    flow_blocks = "x".join(map(str, model.config.flow_scales)) if model.config.use_flow else "-"
    row = {"kind": "infer", "phase": args.phase, "mode": model.config.backbone_mode, "resolution": name,
           "flow_scale": flow_scale, "flow_blocks": flow_blocks, "amp": args.amp, "exec": execution}
    if model.config.refine_finest != "full":
        row["refine_finest"] = model.config.refine_finest
    branches = [module for module in model.modules() if isinstance(module, InterleavedMamba2)]
    if branches:                         # the scan's chunk length in these rows (no gradients)
        row["ssm_chunk_size"] = branches[0].chunk_for(on_cuda=device == "cuda", grad_enabled=False)
    row["warp_kernel"] = warp_kernel_in_effect(args, device)
    if work_scale_of(model) != 1.0:
        row["work_scale"] = work_scale_of(model)
    return row


def alternating_warp_rows(model, name: str, args, device: str) -> list[dict]:
    """``--alternate_warps``: two eager rows of one model at a named resolution, its half-precision warps through
    ATen and through the Triton kernel, the two taken in turn call by call
    (:func:`benchmark.timing.measure_alternating`; ``THESIS_TRITON_WARP`` is read at every eager call). Why: eager
    calls are bound by the host's launches, and the same eager row moved 25.9-39.0 ms between rows timed one after
    the other (docs/PERF.md 10.20), too much to read a kernel's effect from. The variable is restored afterwards.
    On the CPU (or in float32) both rows are ATen's."""
    from model.inference import InferenceRunner
    infer, flow_scale = inference_call(InferenceRunner(model, "off"), name, args, device)
    before = os.environ.get(TRITON_WARP_ENV)

    def with_kernel(kernel: str):
        def call():
            select_warp_kernel(kernel)
            return infer()
        return call
    kernels = ("aten", "triton")
    try:
        timings = measure_alternating({kernel: with_kernel(kernel) for kernel in kernels}, device, warmup=2,
                                      reps=args.reps)
        in_effect = {}
        for kernel in kernels:
            select_warp_kernel(kernel)
            in_effect[kernel] = warp_kernel_in_effect(args, device)
    finally:
        if before is None:
            os.environ.pop(TRITON_WARP_ENV, None)
        else:
            os.environ[TRITON_WARP_ENV] = before
    height, width, _ = parse_infer_name(name)
    rows = []
    for kernel in kernels:
        timing = timings[kernel]
        row = inference_row(model, name, args, device, "eager", flow_scale)
        row.update(warp_kernel=in_effect[kernel], alternated=True, ms=round(timing.median_ms, 2),
                   peak_gib=round(timing.peak_gib or 0.0, 3),
                   runtime=runtime_record(timing.median_ms, "eager", device, timing.peak_gib, height, width))
        rows.append(row)
    stamp(f"inference {name} (eager, warps alternated): " + ", ".join(
        f"{row['warp_kernel']} {row['ms']} ms" for row in rows))
    return rows


def measure_inference(model, name: str, args, device: str, execution: str = "eager",
                      align_channels: bool = True, compile_mode: str = "default") -> dict:
    """Median ms and peak GiB of one 2x interpolation at a named resolution.

    execution: "eager", "graphed" (CUDA graph replay), "compiled" or "compiled+graphed" (the model is compiled in
    place with :func:`model.inference.compile_for_inference`, what ``interpolate.py --compile`` does, with the
    flow estimator's channels aligned or not as ``align_channels`` says, in Inductor's ``compile_mode``; the row
    records both). Beside eager it
    also reports the first call's seconds (warm-up and capture, plus compilation) and the pixel differences from
    the eager prediction. With ``--kernel_profile`` a compiled row also lists the kernels of the compiled model
    called without a CUDA graph (``kernels``: :func:`benchmark.timing.kernel_profile`).
    """
    from model.inference import InferenceRunner, compile_for_inference
    reference = None
    if execution != "eager":           # the eager prediction, taken before the model is compiled in place
        reference = inference_call(InferenceRunner(model, "off"), name, args, device)[0]()
    graphed = execution.endswith("graphed")
    compiled = execution.startswith("compiled")
    if compiled:
        compile_for_inference(model, align_channels=align_channels, mode=compile_mode)
    runner = InferenceRunner(model, "on" if graphed else "off")
    infer, flow_scale = inference_call(runner, name, args, device)
    row = inference_row(model, name, args, device, execution, flow_scale)
    if compiled:
        row.update(align_channels=align_channels, compile_mode=compile_mode)
    prior_ms = None
    if needs_prior(model):
        # The prior's own CPU cost per pair at this resolution (one OpenCV thread), beside the model's ms.
        prior_times = prior_of_tensors(*benchmark_frames(name, args, device)[:2], calls=PRIOR_TIMING_CALLS)[1]
        prior_ms = sorted(prior_times)[len(prior_times) // 2]
        row.update(flow_prior=model.config.flow_prior, prior_ms=round(prior_ms, 2))
    if reference is not None:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        first = infer()                                       # warm-up and capture (and compilation)
        if device == "cuda":
            torch.cuda.synchronize()
        row["first_call_s"] = round(time.perf_counter() - started, 2)
        if runner.compiled:         # what Inductor's caches did: a warm start should show hits only
            from model.inference import compile_report, describe_compile_report
            row["compile"] = compile_report()
            print(describe_compile_report(row["compile"]), flush=True)
        row.update(difference_stats(first, reference))
        del reference, first
    if device == "cuda":
        torch.cuda.empty_cache()
    stamp(f"inference {name} ({describe_execution(row)})")
    timing = measure(infer, device, warmup=2, reps=max(3, args.reps // 4))
    height, width, _ = parse_infer_name(name)
    peak = max(timing.peak_gib or 0.0, runner.capture_peak_gib or 0.0)       # a replay allocates nothing
    if device == "cuda":
        torch.cuda.empty_cache()
        row["reserved_gib"] = round(torch.cuda.memory_reserved() / 2**30, 3)   # weights, inputs, the graph's pool
    row.update(ms=round(timing.median_ms, 2), peak_gib=round(peak, 3),
               runtime=runtime_record(timing.median_ms, runner.mode, device, peak if device == "cuda" else None,
                                      height, width, prior_ms_per_pair=prior_ms))
    runner.clear()
    if compiled and getattr(args, "kernel_profile", None) is not None:
        # A graph replay may not be listed kernel by kernel: a graphed row profiles the call its graph recorded, run
        # without the graph (the same compiled code); an ungraphed row profiles its own call.
        profiled = graph_like_call(model, name, args, device) if graphed else infer
        row["kernels"] = kernel_profile(profiled, device, args.kernel_profile or KERNEL_PATTERNS)
        for pattern, found in row["kernels"]["matching"].items():
            print(f"kernels matching {pattern!r}: {found['per_call']:g} per call, {found['ms_per_call']:g} ms",
                  flush=True)
        for family, found in row["kernels"]["families"].items():
            print(f"kernel family {family}: {found['per_call']:g} per call, {found['ms_per_call']:g} ms", flush=True)
    return row


def mark_rows_after_a_kernel_profile(rows: list[dict], device: str) -> int:
    """Mark (``"after_kernel_profile": True``) and count the timed rows that came after a ``--kernel_profile`` in this
    process, and say so in one line.

    Why: on CUDA the profiler leaves NVIDIA's CUPTI attached after it stops (pytorch/pytorch#144455: Kineto tears it
    down only with TEARDOWN_CUPTI=1), which slows every later kernel launch. A graph replay is one launch, but an eager
    row is bound by its ~1,100 launches: the likely reason why call Y's eager row timed after a profile was 25%
    slower than the one before it (docs/PERF.md 10.19). Compare such rows only with rows timed after a profile too."""
    profiled = False
    marked = 0
    for row in rows:
        if profiled and "ms" in row:
            row["after_kernel_profile"] = True
            marked += 1
        profiled = profiled or "kernels" in row
    if marked and device == "cuda":
        print(f"note: {marked} row(s) timed after a --kernel_profile in this process (after_kernel_profile): the "
              "profiler stays attached and slows launches, most in eager rows; compare them with each other only",
              flush=True)
    return marked


MODEL_PARTS = ("backbone", "flow_estimator", "context", "refine")      # ThesisModel's children, as --flops splits them


def with_rate(row: dict, arithmetic: dict | None) -> dict:
    """``row`` with ``gflop``, ``gflop_parts`` and ``tflop_per_s`` (arithmetic over the median time) when
    ``arithmetic`` (:func:`benchmark.timing.count_gflop`'s record for the row's resolution) is given."""
    if arithmetic and row.get("ms"):
        row.update(gflop=round(arithmetic["total"], 1),
                   gflop_parts={part: round(value, 1) for part, value in arithmetic["parts"].items()},
                   tflop_per_s=round(arithmetic["total"] / row["ms"], 2))
    return row


def describe_execution(row: dict) -> str:
    """"compiled+graphed, channels aligned" for a row's ``exec`` and ``align_channels``."""
    if "align_channels" not in row:
        return row["exec"]
    mode = row.get("compile_mode", "default")
    return (f"{row['exec']}, channels {'aligned' if row['align_channels'] else 'as trained'}"
            + ("" if mode == "default" else f", {mode}"))


def parse_align_channels(text: str) -> tuple[bool, ...]:
    """"on,off" -> (True, False): the compiled rows' channel-alignment settings, in the order to run them."""
    names = [name.strip() for name in text.split(",")]
    if not names or any(name not in ("on", "off") for name in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give on, off, or both separated by a comma (on,off)")
    return tuple(name == "on" for name in names)


def reset_compilation() -> None:
    """Forget the compiled code and the compile counters of earlier rows, so that the next compiled row compiles from
    scratch and its ``compile`` record counts its own compilation only (kernels already built on disk stay in
    Inductor's cache)."""
    from torch._dynamo.utils import counters
    torch.compiler.reset()
    counters.clear()
    try:
        from torch._dynamo.utils import compilation_time_metrics
        compilation_time_metrics.clear()
    except ImportError:                          # pragma: no cover - a torch without Dynamo's timers
        pass


PEER_TRAIN = ((4, "fp32"), (4, "bf16"), (8, "bf16"), (16, "bf16"))
PEER_INFER = (("256", 256, 256, 1.0), ("720p", 720, 1280, 1.0), ("1080p", 1080, 1920, 1.0), ("2K", 1080, 2048, 0.5),
              ("4K", 2160, 3840, 0.25))


def peer_table(args, device: str) -> dict:
    """The comparison rows (see the module docstring); every failure is recorded, never fatal."""
    torch.manual_seed(0)
    cfg = preset(args.phase, args.model_size)
    model = build_model(cfg.model).to(device)
    loss_fn = CompositeLoss(args.phase).to(device)          # VGG term as the trainer builds it (off without weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    result = {"model": f"ours_p{args.phase}", "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "params_M": count_parameters(model) / 1e6, "train": {}, "infer": {},
              "errors": {}}
    for batch, precision in PEER_TRAIN:
        key = f"b{batch}_256_{precision}"
        try:
            a, b, gt = (torch.rand(batch, 3, 256, 256, device=device) for _ in range(3))
            t = torch.full((batch,), 0.5, device=device)
            model.train()

            def step():
                with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    out = model(a, b, t)
                    loss = loss_fn(out.pred, gt, flow=out.flow if args.phase > 1 else None)[0]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            step()                                           # compilation and autotuning outside the timing
            if device == "cuda":
                torch.cuda.empty_cache()
            timing = measure(step, device, warmup=3, reps=10)
            result["train"][key] = dict(ms=timing.median_ms, samples_s=batch * 1000 / timing.median_ms,
                                        peak_gib=timing.peak_gib)
        except Exception as error:                           # e.g. out of memory on a small card: record it
            result["errors"][key] = repr(error)[:300]
        print(result["model"], key, result["train"].get(key, result["errors"].get(key)), flush=True)
    model.eval()
    for label, height, width, scale in PEER_INFER:
        key = f"{label}_bf16"
        try:
            a, b = (torch.rand(1, 3, height, width, device=device) for _ in range(2))

            def run():
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
                    return model.inference(a, b, 0.5, flow_scale=scale)
            run()
            if device == "cuda":
                torch.cuda.empty_cache()
            timing = measure(run, device, warmup=2, reps=5 if label == "4K" else 10)
            result["infer"][key] = dict(ms=timing.median_ms, peak_gib=timing.peak_gib, flow_scale=scale,
                                        runtime=runtime_record(timing.median_ms, "eager", device, timing.peak_gib,
                                                               height, width))
        except Exception as error:
            result["errors"][key] = repr(error)[:300]
        print(result["model"], key, result["infer"].get(key, result["errors"].get(key)), flush=True)
    return result


def trainer_step_table(args, device: str) -> dict:
    """Samples/s of train.py's own step, ``Trainer.train_step`` on uint8 batches (fused AdamW, gradient clipping,
    the CompositeLoss of the phase), replayed as CUDA graphs and eager, at the peer table's batch sizes and
    ``--size`` crops (256 in the peer table). On the CPU both rows run the eager step: a smoke test of the script.

    Peak memory of the graphed step is read over its capture too: replays allocate nothing (the graph's pool
    holds the activations), so the peak of the timed replays alone would hide them.
    """
    from Trainer import Trainer
    cuda = device == "cuda"
    # As train.py runs: cuDNN autotuning off (the rows in docs/PERF.md of 2026-11-28 were timed with it on, and their
    # peak memory, read over the warm-up, may include its trial workspaces).
    torch.backends.cudnn.benchmark = False
    result = {"model": f"ours_p{args.phase}_trainer", "gpu": torch.cuda.get_device_name() if cuda else "cpu",
              "rows": {}, "errors": {}}
    pin = (lambda x: x.pin_memory()) if cuda else (lambda x: x)
    for batch, precision in PEER_TRAIN:
        if args.trainer_batches and batch not in args.trainer_batches:
            continue
        for mode in ("on", "off") if args.trainer_eager else ("on",):
            key = f"b{batch}_{args.size}_{precision}_{'graph' if mode == 'on' else 'eager'}"
            try:
                cfg = preset(args.phase, args.model_size)
                cfg = replace(cfg, train=replace(cfg.train, amp=precision, cuda_graph=mode if cuda else "auto",
                                                 warmup_steps=10))
                torch.manual_seed(0)
                trainer = Trainer.single_process(cfg, device, steps_per_epoch=1000, log=lambda *a: None)
                frames = [pin(torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8))
                          for _ in range(3)]
                sample = {"img0": frames[0], "gt": frames[1], "img1": frames[2], "t": pin(torch.full((batch,), 0.5))}
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(trainer.steps_before_capture + 2):  # eager warm-up, capture, first replays
                    trainer.train_step(sample)
                warm_peak = None
                if cuda:
                    torch.cuda.synchronize()
                    warm_peak = torch.cuda.max_memory_allocated() / 2**30
                timing = measure(lambda: trainer.train_step(sample), device, warmup=2, reps=args.reps)
                result["rows"][key] = dict(ms=timing.median_ms, samples_s=batch * 1000 / timing.median_ms,
                                           steps=trainer.step, mode=trainer.step_mode,
                                           peak_gib=max(warm_peak, timing.peak_gib) if cuda else None,
                                           reserved_gib=torch.cuda.memory_reserved() / 2**30 if cuda else None)
                del trainer
                gc.collect()          # the captured step refers back to its trainer: free both before the next row
            except Exception as error:
                result["errors"][key] = repr(error)[:300]
            print(result["model"], key, result["rows"].get(key, result["errors"].get(key)), flush=True)
            if cuda:
                torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=int, default=1)
    parser.add_argument("--model_size", default="small")
    parser.add_argument("--modes", nargs="+", default=["hybrid"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="bf16")
    parser.add_argument("--ssd_backends", nargs="+", default=["auto"], help="e.g. triton torch")
    parser.add_argument("--infer", nargs="*", default=[],
                        help=f"inference resolutions: {', '.join(RESOLUTIONS)}, each optionally @FLOW_SCALE "
                             f"(1080p@1.0)")
    parser.add_argument("--flow_scales", type=int, nargs=3, default=None, metavar="S",
                        help="the flow blocks' working scales, as train.py's flag (default: the preset's 4 2 1)")
    parser.add_argument("--flow_prior", choices=FLOW_PRIORS, default="none",
                        help="phases 2/3: build the model with this flow prior, as train.py's flag (dis: the flow "
                             "estimator starts from the pair's DIS flows; each inference row then also gives the "
                             "prior's CPU ms per pair, prior_ms)")
    parser.add_argument("--refine_finest", nargs="+", choices=REFINE_FINEST, default=["full"],
                        help="RefineNet's finest level, as train.py's flag; several: one model and its rows each, in "
                             "one process (e.g. full half)")
    parser.add_argument("--ssm_chunk_size", type=int, nargs="+", default=None, metavar="N",
                        help="inference rows on CUDA: the SSD scan's chunk length (default: 128, "
                             "model/ops/ssd.INFERENCE_TRITON_CHUNK; training rows keep the preset's 256); several: one "
                             "model and its rows each, in one process. Not a weight: every length computes the same "
                             "scan (benchmark/check_kernels.py --ssd_chunks times the scan alone)")
    parser.add_argument("--warp_kernel", nargs="+", choices=("triton", "aten"), default=None,
                        help="half-precision inference warps on CUDA: the Triton kernel (model/ops/warp_triton.py, the "
                             "default) or ATen's float32 grid_sample (THESIS_TRITON_WARP=0); several: one model "
                             "and its rows each, in one process (e.g. aten triton)")
    parser.add_argument("--alternate_warps", action="store_true",
                        help="inference rows: also two eager rows of each model, its half-precision warps through "
                             "ATen and through the Triton kernel taken in turn call by call (--reps calls each), so "
                             "that the host's drift between rows falls on both alike")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--compile", action="store_true",
                        help="also time the training step with torch.compile on the model and the loss")
    parser.add_argument("--compile_infer", action="store_true",
                        help="after the --infer rows, compile the model for inference (interpolate.py --compile) "
                             "and time the last --infer resolution again (replayed as a CUDA graph unless "
                             "--cuda_graph off)")
    parser.add_argument("--align_channels", type=parse_align_channels, default=(True,),
                        help="--compile_infer rows: with the flow estimator's trunk zero-padded to channel counts in "
                             "multiples of 8 (on, the default, as interpolate.py --compile runs), without (off), or "
                             "both in this process (on,off: one row each, each on a copy of the model)")
    parser.add_argument("--compile_mode", nargs="+", choices=INDUCTOR_MODES, default=["default"],
                        help="--compile_infer rows: Inductor's mode, one row per mode given (tune-kernels: "
                             "coordinate-descent tuning of Inductor's own kernels; max-autotune-no-cudagraphs also "
                             "tries Triton templates for the convolutions; both compile longer)")
    parser.add_argument("--work_scale", type=unit_fraction, default=None,
                        help="--infer rows (phases 2/3): " + WORK_SCALE_HELP)
    parser.add_argument("--flops", action="store_true",
                        help="inference rows also give the call's arithmetic (GFLOP, per part of the model: "
                             "benchmark.timing.count_gflop) and the rate it ran at (TFLOP/s)")
    parser.add_argument("--kernel_profile", nargs="*", default=None, metavar="PATTERN",
                        help="--compile_infer rows: also profile 3 calls of the compiled model without a CUDA graph "
                             "and record how many kernels whose name contains each PATTERN ran and their GPU ms "
                             f"(default: {' '.join(KERNEL_PATTERNS)}: cuDNN's channel padding and layout passes), "
                             "and the slowest kernels")
    parser.add_argument("--cuda_graph", choices=("auto", "on", "off"), default="auto",
                        help="inference rows: beside each eager row a CUDA-graph row (auto: on CUDA only)")
    parser.add_argument("--infer_only", action="store_true", help="skip the training-step rows")
    parser.add_argument("--compare_unchunked_warp", action="store_true",
                        help="also measure inference with feature warps done in one float32 pass (the old way)")
    parser.add_argument("--peer_table", action="store_true",
                        help="print the rows of the comparison with peer models (module docstring) and exit")
    parser.add_argument("--trainer_step", action="store_true",
                        help="time train.py's step (Trainer.train_step) with CUDA graphs and eager at the peer "
                             "table's batch sizes, and exit")
    parser.add_argument("--trainer_batches", type=int, nargs="*", default=None,
                        help="with --trainer_step: only these batch sizes (default: the peer table's)")
    parser.add_argument("--no_trainer_eager", dest="trainer_eager", action="store_false",
                        help="with --trainer_step: skip the eager rows")
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"),
                        help="cpu runs are smoke tests of this script, not measurements; pick a card with "
                             "CUDA_VISIBLE_DEVICES")
    parser.add_argument("--watchdog", type=float, default=0, help="dump all stacks every N s (debug hangs)")
    args = parser.parse_args()
    if args.flow_prior != "none" and (args.phase == 1 or args.peer_table or args.trainer_step):
        parser.error(f"--flow_prior {args.flow_prior}: for phases 2/3 and the --infer / training rows only (not "
                     "--phase 1, --peer_table or --trainer_step)")
    if args.work_scale not in (None, 1.0) and (args.phase == 1 or args.peer_table or args.trainer_step):
        parser.error(f"--work_scale {args.work_scale:g}: for phases 2/3 and the --infer rows only (not --phase 1, "
                     "--peer_table or --trainer_step)")
    if args.watchdog:
        faulthandler.dump_traceback_later(args.watchdog, repeat=True)
    device = args.device
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    if args.trainer_step:
        table = trainer_step_table(args, device)
        if args.json:
            Path(args.json).write_text(json.dumps(table, indent=1))
        return
    if args.peer_table:
        table = peer_table(args, device)
        if args.json:
            Path(args.json).write_text(json.dumps(table, indent=1))
        return
    flash = SDPBackend.FLASH_ATTENTION if device == "cuda" else SDPBackend.MATH
    rows = []
    compiled_once = False                                # a later model compiles after a reset of Dynamo
    chunk_sizes = args.ssm_chunk_size or [None]
    for mode, backend, finest, chunk, warp_kernel in itertools.product(args.modes, args.ssd_backends,
                                                                       args.refine_finest, chunk_sizes,
                                                                       args.warp_kernel or [None]):
        if mode == "gated_attn_only" and backend != args.ssd_backends[0]:
            continue   # no SSM in this mode
        cfg = replace(preset(args.phase, args.model_size).model, backbone_mode=mode, ssm_backend=backend)
        if args.flow_scales:
            cfg = replace(cfg, flow_scales=tuple(args.flow_scales))
        cfg = replace(cfg, flow_prior=args.flow_prior, refine_finest=finest)
        if warp_kernel is not None:      # read at each eager call, and by each compilation (rows reset Dynamo)
            select_warp_kernel(warp_kernel)
        torch.manual_seed(0)
        stamp(f"building phase {args.phase} {mode} (ssd {backend})"
              + (f", flow prior {args.flow_prior}" if args.flow_prior != "none" else "")
              + (f", refine_finest {finest}" if finest != "full" else "")
              + (f", ssm_chunk_size {chunk}" if chunk is not None else "")
              + (f", {warp_kernel} warps" if warp_kernel is not None else ""))
        model = build_model(cfg).to(device).train()
        for branch in model.modules():
            if isinstance(branch, InterleavedMamba2):
                branch.inference_chunk_size = chunk
        loss_fn = CompositeLoss(args.phase, vgg_allow_random=True).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        step = train_step_fn(model, loss_fn, optimizer, args.batch, args.size, args.amp, args.phase, device)
        variants = []
        if not args.infer_only:
            with sdpa_kernel(flash):
                step()                               # raises if any attention call is not flash-eligible
            stamp("first step done (kernel compilation and autotuning included)")
            variants.append(("eager", step))
        if args.compile and not args.infer_only:
            compiled_step = train_step_fn(torch.compile(model), torch.compile(loss_fn), optimizer, args.batch,
                                          args.size, args.amp, args.phase, device)
            compiled_step()
            stamp("torch.compile warm-up done")
            variants.append(("compiled", compiled_step))
        for label, fn in variants:
            if device == "cuda":
                torch.cuda.empty_cache()
            timing = measure(fn, device, warmup=5, reps=args.reps)
            ms, gib = timing.median_ms, timing.peak_gib or 0.0
            row = {"kind": "train", "phase": args.phase, "mode": mode,
                   "ssd": backend if mode != "gated_attn_only" else "-", "exec": label,
                   "params_M": round(count_parameters(model) / 1e6, 3), "batch": args.batch, "size": args.size,
                   "amp": args.amp, "step_ms": round(ms, 2), "samples_per_s": round(args.batch * 1000 / ms, 1),
                   "peak_gib": round(gib, 3), "flash_eligible": device == "cuda"}
            if args.flow_prior != "none":
                row["flow_prior"] = args.flow_prior
            rows.append(row)
            print(row, flush=True)
        del optimizer, step, variants                # free the training state before measuring inference
        model = reduce_resolution(model.eval(), args.work_scale)
        parts = MODEL_PARTS if work_scale_of(model) == 1.0 else \
            tuple(f"model.{part}" for part in MODEL_PARTS)      # the wrapped model's children
        graphs = args.cuda_graph == "on" or (args.cuda_graph == "auto" and device == "cuda")
        from model.inference import InferenceRunner
        arithmetic = {}                    # resolution -> count_gflop's record (--flops)
        for name in args.infer:
            if args.flops:
                arithmetic[name] = count_gflop(inference_call(InferenceRunner(model, "off"), name, args, device)[0],
                                               model, parts)
            if args.alternate_warps:
                rows.extend(alternating_warp_rows(model, name, args, device))
                print(*rows[-2:], sep="\n", flush=True)
            for execution in ("eager", "graphed") if graphs else ("eager",):
                try:
                    rows.append(with_rate(measure_inference(model, name, args, device, execution),
                                          arithmetic.get(name)))
                except Exception as error:               # e.g. out of memory or a failed capture: record it
                    rows.append({"kind": "infer", "resolution": name, "exec": execution,
                                 "error": repr(error)[:300]})
                print(rows[-1], flush=True)
            if args.compare_unchunked_warp:
                warps = [m for m in model.modules() if isinstance(m, BackwardWarp)]
                for warp in warps:
                    warp.max_chunk_elements = 1 << 62
                rows.append(dict(measure_inference(model, name, args, device), warp="unchunked"))
                print(rows[-1], flush=True)
                for warp in warps:
                    warp.max_chunk_elements = 1 << 26
        if args.compile_infer and args.infer:
            execution = "compiled+graphed" if graphs else "compiled"
            settings = [(align, inductor_mode) for inductor_mode in args.compile_mode for align in args.align_channels]
            for align, inductor_mode in settings:
                # Each setting compiles (and aligns) a copy of its own, so that every row starts from the same
                # unaligned, uncompiled weights; a lone setting compiles the model itself, as before.
                candidate = copy.deepcopy(model) if len(settings) > 1 else model
                if compiled_once:                        # a later setting, or a later model of the product
                    reset_compilation()
                compiled_once = True
                rows.append(with_rate(measure_inference(candidate, args.infer[-1], args, device, execution, align,
                                                        inductor_mode), arithmetic.get(args.infer[-1])))
                print(rows[-1], flush=True)
                del candidate
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    mark_rows_after_a_kernel_profile(rows, device)
    print(f"\ndevice: {device_name}, torch {torch.__version__}")
    for row in rows:
        print(" | ".join(f"{k}={v}" for k, v in row.items() if k != "runtime"))
    from model.inference import describe_runtime
    for row in rows:
        if "runtime" in row:
            print(f"{row['resolution']} {describe_execution(row)}: {describe_runtime(row['runtime'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
