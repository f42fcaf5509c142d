"""Running a trained model fast: CUDA graphs per input shape, ``torch.compile`` for inference, eager fallback.

Every user of a trained model (``interpolate.py``, the benchmarks, ``benchmark/bench_model.py``) calls
:class:`InferenceRunner` instead of ``model.inference``::

    runner = InferenceRunner(model, cuda_graph="auto")          # compile=True: compile_for_inference first
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pred = runner(img0, img1, t, flow_scale=1.0)            # (B, 3, H, W), a fresh tensor each call

Why graphs: one forward of the Phase-2 model is about 1,100 operations, each a kernel launch, so up to 1080p an
eager call is bound by the host launching kernels, not by the GPU (docs/PERF.md, inference section). A CUDA graph
records the launches of one call once and replays them with one launch.

How: a graph is recorded per :class:`GraphKey` (device, batch, height, width, input dtype, flow scale, TTA,
autocast state) once that key has been seen ``capture_after`` times. Recording copies the inputs into static
buffers, warms up on a side stream (cuDNN/cuBLAS choose their kernels, Triton autotunes, lazy caches fill), then
captures one call; later calls copy into the same buffers, replay, and clone the static output (the next replay
overwrites it). ``t`` always travels as a (B,) float32 device tensor: a Python float would be copied from the host
inside the captured region, which CUDA forbids ("Cannot copy between CPU and CUDA tensors during CUDA graph
capture"), and a scalar and a per-sample ``t`` then share one graph. At most ``max_graphs`` graphs are kept (least
recently used evicted, its memory pool freed with it). Where graphs cannot run (a CPU model, ``cuda_graph="off"``,
a capture that fails) the call runs eagerly, and the reason is logged once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .flow import align_flow_channels_

logger = logging.getLogger(__name__)

GRAPH_CHOICES = ("auto", "on", "off")
DEFAULT_MAX_GRAPHS = 4
DEFAULT_WARMUP_CALLS = 3
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
KEPT_TIMINGS = 4096          # model-call times a ModelClock keeps (the most recent ones)


class GraphUnavailable(ValueError):
    """``cuda_graph="on"`` where graphs cannot run (a CPU model, a failed capture); the message says why."""


# --------------------------------------------------------------------------------------------------------
# torch.compile for inference
# --------------------------------------------------------------------------------------------------------
def default_compile_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels across runs unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise:
    ``$XDG_CACHE_HOME/thesis_vfi/inductor`` (``~/.cache/thesis_vfi/inductor``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "thesis_vfi" / "inductor"


def inductor_cache_dir_chosen_by_user() -> bool:
    """Whether ``TORCHINDUCTOR_CACHE_DIR`` names a folder other than torch's own default (``/tmp/torchinductor_USER``).

    Why not just "is it set": importing ``torch._dynamo`` (which timm's import of torchvision does, so ``import model``
    does) sets the variable to torch's default as a side effect, so by the time a model is compiled it is always set.
    """
    value = os.environ.get(INDUCTOR_CACHE_ENV)
    if not value:
        return False
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        torch_default = default_cache_dir()
    except Exception:                        # noqa: BLE001 - another torch layout: treat any value as the user's
        return True
    return os.path.abspath(value) != os.path.abspath(torch_default)


def use_compile_cache_dir(cache_dir: str | os.PathLike | None = None) -> None:
    """Point Inductor at ``cache_dir``, else at :func:`default_compile_cache_dir` unless the user chose a folder."""
    if cache_dir is not None or not inductor_cache_dir_chosen_by_user():
        # Read by Inductor whenever it looks up or stores a graph; the environment is the documented way to choose the
        # folder. Torch's own default, which its import sets, lives in /tmp: lost on a reboot or a fresh machine.
        os.environ[INDUCTOR_CACHE_ENV] = str(cache_dir or default_compile_cache_dir())


# The Inductor settings a compiled inference may take, by the name --compile_mode gives them: two of Inductor's own
# modes, never one with its CUDA graphs ("reduce-overhead", "max-autotune": InferenceRunner captures the compiled call
# as a graph of its own), and an option set of ours (torch.compile takes a mode or options, not both):
# "tune-kernels": Inductor times a few block sizes of each kernel it generates (coordinate-descent tuning) and keeps
# the fastest. Why: those fused kernels are about half of a compiled 1080p call (docs/PERF.md 10.12). At 1080p on an
# H100 (the fast arrangement, docs/PERF.md 10.17) it took 13.34 -> 12.64 ms and 13.30 -> 12.76 ms in two calls, for a
# first compilation of 160-215 s instead of 23-42 s; a later process with the same shapes reuses the choices (64 s to
# its first output). Adding Inductor's Triton convolution templates to it (timed against cuDNN, matrix products left
# to cuBLAS) measured 12.95 ms in the same call: no gain, not offered.
INDUCTOR_SETTINGS: dict[str, dict] = {
    "default": {"mode": "default"},
    "max-autotune-no-cudagraphs": {"mode": "max-autotune-no-cudagraphs"},
    "tune-kernels": {"options": {"coordinate_descent_tuning": True}},
}
INDUCTOR_MODES = tuple(INDUCTOR_SETTINGS)


def compile_for_inference(model: nn.Module, cache_dir: str | os.PathLike | None = None,
                          align_channels: bool = True, mode: str | None = None) -> nn.Module:
    """Compile ``model`` in place with ``torch.compile`` (Inductor, static shapes) for many calls at one frame size
    and batch; returns it. ``model.inference`` and ``model(...)`` then run the compiled forward.

    Why: in eager 4K inference about half the time went to memory-bound passes around the cuDNN convolutions (dtype
    casts, concatenations, PReLU, LayerNorm, layout transposes); Inductor fuses them (docs/PERF.md, section 4:
    94.2 -> 59.8 ms at 4K on an H100, 4.3 -> 5.4 GiB). The model is one graph: mamba-ssm's Triton SSD kernel
    enters it as a custom operator (model/ops/ssd.py), and while compiling, the convolution inputs are
    channel-aligned and RefineNet's row strips are larger (model/ops/conv.py, model/refine.py). The first call per
    input shape compiles (minutes at 4K); Inductor's kernel cache (``cache_dir``, default
    :func:`default_compile_cache_dir`, or ``TORCHINDUCTOR_CACHE_DIR`` when set) makes a later process with the
    same shapes skip most of it. Wrap the compiled model in :class:`InferenceRunner` to replay it as a CUDA graph.

    ``align_channels`` (default on): first zero-pad the flow estimator's trunk to channel counts in multiples of 8
    (:func:`model.flow.align_flow_channels_`; 150 / 90 -> 152 / 96, halves 75 / 45 -> 80 / 48, exact: the function
    is unchanged). Why: cuDNN's bf16 tensor-core kernels pad any other channel count with an extra copy of the
    input before the convolution; at 1080p (flow 1.0, H200) that padding pass took 1.46 ms of the compiled call's
    18.1 ms (87 calls, docs/PERF.md 10.1). Prediction: most of those 1.46 ms go, the convolutions' own time stays
    (cuDNN computed on padded widths already), unless that pass is in fact run for every convolution whatever its
    channels, which the 87 calls (about one per convolution call, aligned ones included) leave open; docs/PERF.md
    10.3 says how to measure it. A model without a flow estimator is left as it is.

    In place, like the compilation itself: the caller's model becomes the aligned one (no second copy of the
    weights on the GPU), and nothing saves a model after compiling it. So that nothing can: an aligned flow block's
    ``state_dict()`` and ``load_state_dict()`` raise :class:`model.flow.AlignedForInferenceError` (its shapes match
    no checkpoint). Load a checkpoint before calling this; to keep an unaligned model too, pass a
    ``copy.deepcopy`` of it. Eager inference and training of an unaligned model are unchanged bit for bit.

    ``mode``: a name of :data:`INDUCTOR_SETTINGS` (None: Inductor's default). ``"max-autotune-no-cudagraphs"`` also
    benchmarks Triton templates for the convolutions and matrix products against cuDNN/cuBLAS and keeps the faster
    (minutes more compilation); ``"tune-kernels"`` is an option set of ours (see there). A mode with Inductor's own
    CUDA graphs is refused: :class:`InferenceRunner` records the graph itself.
    """
    if mode is not None and mode not in INDUCTOR_SETTINGS:
        raise ValueError(f"compile mode {mode!r}: one of {', '.join(INDUCTOR_MODES)} (Inductor's own CUDA graphs would "
                         "be recorded inside ours)")
    prepare_for_compile(model, cache_dir, align_channels)
    model.compile(dynamic=False, **(INDUCTOR_SETTINGS[mode] if mode is not None else {"mode": None}))
    return model


def prepare_for_compile(model: nn.Module, cache_dir: str | os.PathLike | None = None,
                        align_channels: bool = True) -> None:
    """What every compiled inference path does first (:func:`compile_for_inference`,
    :func:`model.precompiled.precompile_for_inference`): Inductor's cache folder (:func:`use_compile_cache_dir`),
    evaluation mode, and with ``align_channels`` the flow estimator's channels aligned in place."""
    use_compile_cache_dir(cache_dir)
    model.eval()
    if align_channels:
        align_flow_channels_(model)


def compile_report() -> dict:
    """What this process's compilations did, for a report: Inductor's FX graph cache and AOTAutograd's cache (hits,
    misses, bypasses), the cache folder, and the slowest compile phases in seconds (Dynamo's timers, summed).

    Why: a second process with the cache folder filled should skip Inductor's code generation and kernel builds
    (hits, no misses); a miss or bypass there, or a large ``PyCodeCache.load_by_key_path`` / ``async_compile``
    phase on a hit (kernels rebuilt from source), says where a slow warm start spends its time.
    """
    from torch._dynamo.utils import counters
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:                         # pragma: no cover - a torch without Dynamo's timers
        compilation_time_metrics = {}
    inductor, aot = counters["inductor"], counters["aot_autograd"]
    phases = sorted(((name, sum(times)) for name, times in compilation_time_metrics.items()),
                    key=lambda item: -item[1])
    return {"cache_dir": os.environ.get(INDUCTOR_CACHE_ENV),
            "fx_graph_cache": {state: int(inductor[f"fxgraph_cache_{state}"]) for state in ("hit", "miss", "bypass")},
            "aot_autograd_cache": {state: int(aot[f"autograd_cache_{state}"]) for state in ("hit", "miss", "bypass")},
            "slowest_phases_s": {name: round(seconds, 2) for name, seconds in phases[:6]}}


def describe_compile_report(report: dict) -> str:
    """One line: ``compile cache DIR: FX graph 1 hit, 0 miss, 0 bypass; AOTAutograd ...; slowest: NAME 12.3 s, ...``."""
    def counts(name: str) -> str:
        return ", ".join(f"{number} {state}" for state, number in report[name].items())
    slowest = ", ".join(f"{name} {seconds:g} s" for name, seconds in list(report["slowest_phases_s"].items())[:4])
    return (f"compile cache {report['cache_dir']}: FX graph {counts('fx_graph_cache')}; AOTAutograd "
            f"{counts('aot_autograd_cache')}" + (f"; slowest: {slowest}" if slowest else ""))


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model.compile()`` was called on it (its forward runs through Dynamo)."""
    return getattr(model, "_compiled_call_impl", None) is not None


# --------------------------------------------------------------------------------------------------------
# CUDA graphs
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphKey:
    """Everything a recorded graph is specific to. Two calls with equal keys replay the same graph."""

    device: str
    batch: int
    height: int
    width: int
    dtype: torch.dtype              # of the input images
    flow_scale: float
    tta: bool
    autocast_dtype: torch.dtype | None   # None: autocast off
    with_prior: bool = False             # the call passes a flow prior (a --flow_prior model): one more buffer

    def describe(self) -> str:
        precision = str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "no autocast"
        return (f"{self.batch}x3x{self.height}x{self.width} {str(self.dtype).replace('torch.', '')}, flow scale "
                f"{self.flow_scale:g}, {precision}{', TTA' if self.tta else ''}{', flow prior' if self.with_prior else ''}")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in effect for ``device_type`` right now, None when autocast is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


@dataclass
class Recorded:
    """A recorded call: ``replay()`` reruns it on whatever the static buffers hold and refreshes ``output``."""

    replay: Callable[[], None]
    output: torch.Tensor
    handle: object = None           # keeps the graph (and its memory pool) alive
    peak_gib: float | None = None   # peak allocated memory while the call was captured (its pool at full use)


class CudaGraphCapture:
    """How :class:`InferenceRunner` records a call: warm-up on a side stream, then ``torch.cuda.graph``."""

    def unavailable_reason(self, device: torch.device) -> str | None:
        """None where graphs can run on ``device``, else why not (a sentence fragment)."""
        if device.type != "cuda":
            return f"CUDA graphs need a CUDA device (the model is on {device.type})"
        return None

    def record(self, call: Callable[[], torch.Tensor], warmup_calls: int) -> Recorded:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_calls):
                call()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        # A replay allocates nothing: the graph's memory is what its capture allocated, so the peak that a report
        # compares with eager's is read over the capture (the warm-up's autotuning workspaces left out).
        torch.cuda.reset_peak_memory_stats()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = call()
        peak = torch.cuda.max_memory_allocated() / 2**30
        return Recorded(replay=graph.replay, output=output, handle=graph, peak_gib=peak)


@dataclass
class _Entry:
    img0: torch.Tensor
    img1: torch.Tensor
    t: torch.Tensor
    recorded: Recorded
    flow_prior: torch.Tensor | None = None


class InferenceRunner:
    """``runner(img0, img1, t=0.5, flow_scale=1.0, tta=False, flow_prior=None)`` = ``model.inference(...)``, replayed
    as a CUDA graph per input shape where possible (module docstring).

    model: anything with ``inference(img0, img1, t, flow_scale=..., tta=...)`` returning (B, 3, H, W), and a
        ``flow_prior=`` keyword where calls pass one (a ``--flow_prior dis`` model; it is then one more static
        buffer of the graph).
    cuda_graph: "auto" (graphs on CUDA, eager elsewhere or when a capture fails), "on" (raise
        :class:`GraphUnavailable` instead of falling back), "off" (always eager).
    compile: compile the model in place first (:func:`compile_for_inference`); with graphs, the compiled forward is
        what gets recorded.
    compile_mode: Inductor's mode for ``compile`` (:data:`INDUCTOR_MODES`; None: its default).
    precompiled: instead of ``compile``, run each key through a function compiled ahead of time and saved to a
        file, which a later process loads instead of compiling (:class:`model.precompiled.PrecompiledCalls`, built on
        this runner's model); with graphs, that function is what gets recorded.
    capture_after: record a key's graph on its n-th call (1: at once). A data set of many frame sizes keeps the
        eager path for sizes seen once instead of paying a warm-up and a capture for each.
    max_graphs: graphs kept at once (least recently used evicted).
    capture: the recorder (:class:`CudaGraphCapture`); tests pass a stand-in that needs no GPU.
    """

    def __init__(self, model: nn.Module, cuda_graph: str = "auto", compile: bool = False, capture_after: int = 1,
                 max_graphs: int = DEFAULT_MAX_GRAPHS, warmup_calls: int = DEFAULT_WARMUP_CALLS,
                 capture: CudaGraphCapture | None = None, precompiled=None, compile_mode: str | None = None):
        if cuda_graph not in GRAPH_CHOICES:
            raise ValueError(f"cuda_graph must be one of {', '.join(GRAPH_CHOICES)}, got {cuda_graph!r}")
        if capture_after < 1 or max_graphs < 1 or warmup_calls < 0:
            raise ValueError("capture_after and max_graphs must be >= 1 and warmup_calls >= 0")
        if compile and precompiled is not None:
            raise ValueError("compile and precompiled are two ways of compiling: pass one")
        if compile_mode is not None and not compile:
            raise ValueError("compile_mode is a setting of compile=True")
        self.model = compile_for_inference(model, mode=compile_mode) if compile else model
        self.precompiled = precompiled
        self.compiled = is_compiled(self.model) or precompiled is not None
        self.capture = capture or CudaGraphCapture()
        self.capture_after, self.max_graphs, self.warmup_calls = capture_after, max_graphs, warmup_calls
        self.graphs: OrderedDict[GraphKey, _Entry] = OrderedDict()
        self.seen: OrderedDict[GraphKey, int] = OrderedDict()       # calls per key not yet recorded (bounded)
        self.failed: set[GraphKey] = set()                          # keys whose capture failed: eager from then on
        self.counts = {"replays": 0, "eager_calls": 0, "captures": 0, "evictions": 0}
        self.last_mode = "eager"
        device = self._model_device()
        reason = "eager (--cuda_graph off)" if cuda_graph == "off" else self.capture.unavailable_reason(device)
        if cuda_graph == "on" and reason is not None:
            raise GraphUnavailable(f"--cuda_graph on is not possible here: {reason}")
        self.graph_reason = reason              # None: graphs will be recorded
        self.cuda_graph = cuda_graph
        self._said: set[str] = set()

    # ---------------------------------------------------------------------------------------------------
    @property
    def graphs_enabled(self) -> bool:
        return self.graph_reason is None

    @property
    def mode(self) -> str:
        """"eager", "graphed", "compiled" or "compiled+graphed": what the last call ran."""
        base = "compiled" if self.compiled else ""
        if self.last_mode == "graphed":
            return f"{base}+graphed" if base else "graphed"
        return base or "eager"

    @property
    def capture_peak_gib(self) -> float | None:
        """The largest peak allocated memory seen while capturing a graph still kept (None without graphs). The
        capture resets CUDA's peak-memory statistics: read a peak of your own before the first graphed call."""
        peaks = [entry.recorded.peak_gib for entry in self.graphs.values() if entry.recorded.peak_gib is not None]
        return max(peaks) if peaks else None

    def clear(self) -> None:
        """Drop every recorded graph (and with it the graphs' memory pools)."""
        self.graphs.clear()
        self.seen.clear()

    def _model_device(self) -> torch.device:
        parameters = getattr(self.model, "parameters", None)        # any object with ``inference`` will do
        parameter = next(iter(parameters()), None) if callable(parameters) else None
        return parameter.device if parameter is not None else torch.device("cpu")

    def _say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.warning(message)

    def key(self, img0: torch.Tensor, flow_scale: float, tta: bool, with_prior: bool = False) -> GraphKey:
        batch, _, height, width = img0.shape
        return GraphKey(str(img0.device), batch, height, width, img0.dtype, float(flow_scale), bool(tta),
                        autocast_dtype(img0.device.type), with_prior)

    # ---------------------------------------------------------------------------------------------------
    def __call__(self, img0: torch.Tensor, img1: torch.Tensor, t=0.5, flow_scale: float = 1.0,
                 tta: bool = False, flow_prior: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) images, ``t`` a float, 0-d, (B,) or (B, 1, 1, 1), ``flow_prior`` None or the pair's flows
        (B, 4, H, W) (a ``--flow_prior`` model) -> (B, 3, H, W) prediction."""
        if img0.dim() != 4 or img0.shape != img1.shape:
            raise ValueError(f"InferenceRunner expects two (B, 3, H, W) images of equal shape, got "
                             f"{tuple(img0.shape)} and {tuple(img1.shape)}")
        if flow_prior is not None and flow_prior.shape != (img0.shape[0], 4, *img0.shape[-2:]):
            raise ValueError(f"flow_prior must be (B, 4, H, W) = ({img0.shape[0]}, 4, {img0.shape[2]}, "
                             f"{img0.shape[3]}), got {tuple(flow_prior.shape)}")
        with torch.no_grad():
            if not self.graphs_enabled:
                return self._eager(img0, img1, t, flow_scale, tta, flow_prior)
            key = self.key(img0, flow_scale, tta, flow_prior is not None)
            entry = self.graphs.get(key)
            if entry is None:
                if key in self.failed or not self._due(key):
                    return self._eager(img0, img1, t, flow_scale, tta, flow_prior)
                entry = self._record(key, img0, img1, t, flow_prior)
                if entry is None:
                    return self._eager(img0, img1, t, flow_scale, tta, flow_prior)
            else:
                self.graphs.move_to_end(key)
                self._fill(entry, img0, img1, t, flow_prior)
            entry.recorded.replay()
            self.counts["replays"] += 1
            self.last_mode = "graphed"
            return entry.recorded.output.clone()

    def _eager(self, img0, img1, t, flow_scale, tta, flow_prior=None) -> torch.Tensor:
        self.counts["eager_calls"] += 1
        self.last_mode = "eager"
        key = self.key(img0, flow_scale, tta, flow_prior is not None)
        if self.precompiled is not None:            # it takes t as a (B,) tensor only
            t = self._timestep_buffer(t, key.batch, img0.device)
        return self._run_model(key, img0, img1, t, flow_prior)

    def _run_model(self, key: GraphKey, img0, img1, t, flow_prior=None) -> torch.Tensor:
        """One call of the model with ``key``'s flow scale and TTA: through its precompiled function where the runner
        has them, else ``model.inference``. Eager calls and graph captures both come here."""
        if self.precompiled is not None:
            return self.precompiled(key, img0, img1, t, flow_prior)
        return self.model.inference(img0, img1, t, flow_scale=key.flow_scale, tta=key.tta,
                                    **_prior_keyword(flow_prior))

    def _due(self, key: GraphKey) -> bool:
        """Count a call of a key not yet recorded; True once it has been seen ``capture_after`` times."""
        calls = self.seen.pop(key, 0) + 1
        if calls >= self.capture_after:
            return True
        self.seen[key] = calls
        while len(self.seen) > 64:          # a data set of many sizes: remember only the recent ones
            self.seen.popitem(last=False)
        return False

    @staticmethod
    def _timestep_buffer(t, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) float32 on ``device`` holding ``t`` (float, 0-d, (B,) or (B, 1, 1, 1))."""
        buffer = torch.empty(batch, dtype=torch.float32, device=device)
        InferenceRunner._write_timestep(buffer, t)
        return buffer

    @staticmethod
    def _write_timestep(buffer: torch.Tensor, t) -> None:
        if isinstance(t, torch.Tensor):
            if t.numel() not in (1, buffer.numel()):
                raise ValueError(f"timestep must be a scalar or have one value per sample (batch "
                                 f"{buffer.numel()}), got shape {tuple(t.shape)}")
            buffer.copy_(t.reshape(-1).expand(buffer.numel()), non_blocking=True)
        else:
            buffer.fill_(float(t))          # a kernel with the value as its argument: no host-to-device copy

    def _fill(self, entry: _Entry, img0, img1, t, flow_prior=None) -> None:
        entry.img0.copy_(img0)
        entry.img1.copy_(img1)
        self._write_timestep(entry.t, t)
        if flow_prior is not None:
            entry.flow_prior.copy_(flow_prior, non_blocking=True)

    def _record(self, key: GraphKey, img0, img1, t, flow_prior=None) -> _Entry | None:
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
            self.counts["evictions"] += 1
        # Static buffers: ordinary tensors (not inference tensors), so later calls in or out of inference mode
        # can copy into them.
        with torch.inference_mode(False):
            static0, static1 = img0.clone(), img1.clone()
            static_t = self._timestep_buffer(t, key.batch, img0.device)
            static_prior = None if flow_prior is None else flow_prior.to(img0.device, torch.float32, copy=True)

        def call() -> torch.Tensor:
            # Autocast's weight-cast cache must stay off: a cached cast made outside the capture would be read by
            # the graph after autocast freed it. Same dtype and on/off state as the caller's.
            with torch.autocast(img0.device.type, dtype=key.autocast_dtype or torch.float32,
                                enabled=key.autocast_dtype is not None, cache_enabled=False):
                return self._run_model(key, static0, static1, static_t, static_prior)
        try:
            recorded = self.capture.record(call, self.warmup_calls)
        except Exception as error:          # noqa: BLE001 - any capture failure means: this key runs eagerly
            if self.cuda_graph == "on":
                raise GraphUnavailable(f"--cuda_graph on: CUDA graph capture failed for {key.describe()}: "
                                       f"{type(error).__name__}: {error}") from error
            self.failed.add(key)
            self._say(f"CUDA graph capture failed for {key.describe()} ({type(error).__name__}: "
                      f"{' '.join(str(error).split())[:200]}); that shape runs eagerly")
            return None
        entry = _Entry(static0, static1, static_t, recorded, static_prior)
        self.graphs[key] = entry
        self.counts["captures"] += 1
        return entry


def _prior_keyword(flow_prior: torch.Tensor | None) -> dict:
    """``flow_prior=`` for the model's ``inference`` only when there is one: models without a prior (and the tests'
    stand-ins) keep their plain signature."""
    return {} if flow_prior is None else {"flow_prior": flow_prior}


def add_graph_argument(parser, default: str = "auto") -> None:
    """``--cuda_graph auto|on|off`` with the same meaning everywhere (benchmarks, bench_model, interpolate)."""
    parser.add_argument("--cuda_graph", choices=GRAPH_CHOICES, default=default,
                        help="replay the model as CUDA graphs, one per input shape (auto: on CUDA, eager on the "
                             "CPU or where a capture fails; on: fail instead; off: eager). Default " + default)


def compile_mode_problem(compile_mode: str | None, compile: bool, aot_compile: bool = False) -> str | None:
    """The one-line refusal of ``--compile_mode`` on a command line where it would do nothing (no ``--compile``, or
    ``--aot_compile``, which compiles in Inductor's default mode), or None: what interpolate.py and the benchmarks
    check before a model loads."""
    if compile_mode is None or (compile and not aot_compile):
        return None
    if aot_compile:
        return "--compile_mode is a setting of --compile (--aot_compile compiles in Inductor's default mode)"
    return "--compile_mode is a setting of --compile: add --compile or drop --compile_mode"


# --------------------------------------------------------------------------------------------------------
# The runtime record every report carries
# --------------------------------------------------------------------------------------------------------
def device_name(device: torch.device | str) -> str:
    """The card's name ("NVIDIA H200") or "cpu"."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def runtime_record(ms_per_frame: float | None, mode: str, device: torch.device | str, peak_gib: float | None,
                   height: int | None = None, width: int | None = None, prior_ms_per_pair: float | None = None,
                   **extra) -> dict:
    """{"ms_per_frame", "mode", "device", "peak_gib", "height", "width", ...}: the model's time per output frame at
    the data set's resolution, as VFI papers report runtime. peak_gib is None on the CPU.

    prior_ms_per_pair: a ``--flow_prior dis`` model's classical flows, computed on the CPU before the model call: the
    DIS wall ms per input pair on one core (the model's ms never include it). Absent from the record when None (a
    model without a prior)."""
    record = {"ms_per_frame": None if ms_per_frame is None else round(ms_per_frame, 3), "mode": mode,
              "device": device_name(device), "peak_gib": None if peak_gib is None else round(peak_gib, 3),
              "height": height, "width": width}
    if prior_ms_per_pair is not None:
        record["prior_ms_per_pair"] = round(prior_ms_per_pair, 3)
    record.update(extra)
    return record


def describe_runtime(record: dict) -> str:
    """One line: "runtime 13.1 ms per output frame at 720x1280 (graphed, NVIDIA H200, peak 2.10 GiB)", and for a
    model with a flow prior "; + DIS flow prior 45.0 ms per input pair on one CPU core (not in the model's time)"."""
    size = f" at {record['height']}x{record['width']}" if record.get("height") else ""
    memory = f", peak {record['peak_gib']:.2f} GiB" if record.get("peak_gib") is not None else ""
    ms = record.get("ms_per_frame")
    speed = f"{ms:.1f} ms per output frame" if ms is not None else "n/a"
    prior = record.get("prior_ms_per_pair")
    prior_text = (f"; + DIS flow prior {prior:.1f} ms per input pair on one CPU core (not in the model's time)"
                  if prior is not None else "")
    return f"runtime {speed}{size} ({record['mode']}, {record['device']}{memory}){prior_text}"


def describe_run(model_name: str, uses_flow: bool, device: torch.device, amp: str, tta: bool,
                 flow_scale: float) -> str:
    """One line of what ran: model, device, precision, TTA, and whether flow_scale had any effect."""
    flow = f"flow_scale {flow_scale:g}" if uses_flow else "flow_scale n/a (no flow estimator)"
    return f"model {model_name} | {device} {amp} | TTA {'on' if tta else 'off'} | {flow}"


class ModelClock:
    """``with clock:`` around each model call: its milliseconds (CUDA events on a GPU, read back without waiting,
    so timing adds no synchronisation) and the peak allocated memory since the clock was made.

    keep: how many of the most recent calls' times are kept (``times_ms``). A clock lives as long as a video, so its
    memory must not grow with the video's length: finished event pairs are folded into plain numbers at the next
    call, and only the last ``keep`` of those stay (plenty for a stable median). ``calls`` counts every call.
    """

    def __init__(self, device: torch.device, keep: int = KEPT_TIMINGS):
        self.cuda = device.type == "cuda"
        self.device = device
        self.pending: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()   # recorded, not yet read back
        self.recent_ms: deque[float] = deque(maxlen=keep)
        self.calls = 0
        self._began = 0.0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def __enter__(self) -> "ModelClock":
        if self.cuda:
            self._read_finished(wait=False)
            self.pending.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self.pending[-1][0].record()
        else:
            self._began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.calls += 1
        if self.cuda:
            self.pending[-1][1].record()
        else:
            self.recent_ms.append((time.perf_counter() - self._began) * 1000)

    def _read_finished(self, wait: bool) -> None:
        """Fold event pairs whose end has been reached into ``recent_ms``, oldest first (``wait``: all of them)."""
        while self.pending:
            start, end = self.pending[0]
            if wait:
                end.synchronize()
            elif not end.query():
                break
            self.recent_ms.append(start.elapsed_time(end))
            self.pending.popleft()

    @property
    def times_ms(self) -> list[float]:
        """The most recent calls' milliseconds, oldest first (at most ``keep``)."""
        if self.cuda:
            self._read_finished(wait=True)
        return list(self.recent_ms)

    def median_ms(self) -> float | None:
        times = sorted(self.times_ms)
        return times[len(times) // 2] if times else None

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
