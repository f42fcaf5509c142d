"""Compiled inference a later process loads from a file instead of compiling again (``interpolate.py --aot_compile``).

Why: with ``--compile`` a second process finds Inductor's kernels in its cache, but still traces the model with
Dynamo and looks its graphs up again before the first frame: 16.3 s of stream start-up on an H100 at 1080p with a
warm cache against 10.7 s without compiling (docs/PERF.md 10.6); on this project's 2-core CPU, Dynamo's tracing of
the Phase-2 model alone is 4.4 s (1,413 operations). torch.compile's ahead-of-time mode
(``torch.compile(fn, fullgraph=True).aot_compile(example)``, experimental in torch) traces and compiles once and
returns a function that can be saved; ``torch.compiler.load_compiled_function`` reads it back without tracing.

What is compiled: :class:`InferenceCall`, the model's ``inference`` with its flow scale and TTA fixed, for one
:class:`~model.inference.GraphKey` (batch, frame size, dtypes, autocast, flow scale, TTA, prior). The weights are
not in the file: the compiled function reads them from the model it is called with, so a retrained checkpoint of
the same architecture reuses it. Each key's file is named by a hash of everything the compiled code depends on
(:func:`artifact_fingerprint`): the key, torch's, Triton's and Python's versions, the device, the model's class,
configuration and parameter shapes, and the source of the ``model`` package. A file from other code or another
torch is therefore never found, not misused. A file that fails to load, or whose guards reject the call, is
compiled again and replaced (written to a temporary name, then renamed). Where the ahead-of-time compile itself
fails, that key falls back to ordinary ``torch.compile`` (lazy, traced in every process) with a warning.

Ahead-of-time mode keeps Dynamo's guards on the inputs (shapes, dtypes), not on global state such as autocast:
that is why the autocast dtype is part of the key, and why a call runs only through the function of its own key.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .inference import default_compile_cache_dir, prepare_for_compile

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
ARTIFACT_SUFFIX = ".aot"
MODEL_PACKAGE = Path(__file__).resolve().parent


def aot_compile_available() -> bool:
    """Whether this torch has the ahead-of-time mode: ``torch.compile(...).aot_compile`` and
    ``torch.compiler.load_compiled_function``."""
    loader = getattr(getattr(torch, "compiler", None), "load_compiled_function", None)
    return callable(loader) and hasattr(torch.compile(lambda x: x, fullgraph=True), "aot_compile")


class InferenceCall(nn.Module):
    """``model.inference`` with the flow scale and TTA fixed: (img0, img1, t (B,), flow_prior or None) ->
    (B, 3, H, W). The unit that is compiled ahead of time: tensors in, one tensor out."""

    def __init__(self, model: nn.Module, flow_scale: float, tta: bool):
        super().__init__()
        self.model, self.flow_scale, self.tta = model, float(flow_scale), bool(tta)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor,
                flow_prior: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if flow_prior is None else {"flow_prior": flow_prior}
        return self.model.inference(img0, img1, t, flow_scale=self.flow_scale, tta=self.tta, **extra)


def source_fingerprint(package: Path = MODEL_PACKAGE) -> str:
    """sha256 of every ``.py`` file of the ``model`` package (relative path and content, in path order): the code a
    compiled function was traced from."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} sm{major}{minor}"
    return device.type


def _model_config(model: nn.Module) -> object:
    config = getattr(model, "config", None)
    if is_dataclass(config):
        return asdict(config)
    return repr(config)


def artifact_fingerprint(model: nn.Module, key, backend: str, source: str | None = None) -> str:
    """The hex digest naming ``key``'s compiled file for ``model``: it changes with anything the compiled code
    depends on (module docstring). ``key`` is a :class:`~model.inference.GraphKey`; ``source``: the ``model``
    package's :func:`source_fingerprint` (computed when None)."""
    device = torch.device(key.device)
    tensors = [(name, list(value.shape), str(value.dtype))
               for name, value in [*model.named_parameters(), *model.named_buffers()]]
    described = {
        "format": ARTIFACT_FORMAT, "backend": backend, "torch": torch.__version__, "triton": _version("triton"),
        "python": platform.python_version(), "device": _device_description(device),
        "source": source or source_fingerprint(), "model": type(model).__qualname__,
        "config": _model_config(model), "tensors": tensors,
        "key": {name: str(value) for name, value in sorted(asdict(key).items())},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ArtifactRecord:
    """What happened for one key: ``source`` is "loaded", "compiled" (and saved) or "lazy" (the ahead-of-time
    compile failed; ordinary torch.compile instead), with the seconds it took and the file."""

    key: str
    source: str
    seconds: float
    path: str
    note: str = ""

    def describe(self) -> str:
        what = {"loaded": "loaded the compiled model", "compiled": "compiled the model ahead of time and saved it",
                "lazy": "compiled the model lazily (torch.compile)"}[self.source]
        return (f"aot:    {what} in {self.seconds:.1f} s for {self.key}: {self.path}"
                + (f" ({self.note})" if self.note else ""))


def _compile_ahead(call: InferenceCall, example: tuple, backend: str):
    compiled = torch.compile(call.forward, fullgraph=True, dynamic=False, backend=backend)
    return compiled.aot_compile((example, {}))


def _load(path: Path):
    with open(path, "rb") as handle:
        return torch.compiler.load_compiled_function(handle)


def _save(function, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        function.save_compiled_function(str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class PrecompiledCalls:
    """``calls(key, img0, img1, t, flow_prior)`` runs ``model.inference`` for ``key`` through a function compiled
    ahead of time, loaded from ``folder`` where an earlier process saved it, else compiled now and saved there.

    backend: torch.compile's backend ("inductor"; tests use "aot_eager", which needs no compiler toolchain).
    compile_ahead, load: how a function is compiled and read back (tests count or break them).
    """

    def __init__(self, model: nn.Module, folder: str | os.PathLike, backend: str = "inductor",
                 compile_ahead: Callable | None = None, load: Callable[[Path], object] | None = None):
        if not aot_compile_available():
            raise ValueError(f"this torch ({torch.__version__}) has no ahead-of-time compile "
                             "(torch.compile(...).aot_compile); use --compile")
        self.model, self.folder, self.backend = model, Path(folder), backend
        self._compile_ahead = compile_ahead or _compile_ahead
        self._load = load or _load
        self._source = source_fingerprint()
        self.calls: dict = {}                   # key -> (InferenceCall, compiled function)
        self.records: list[ArtifactRecord] = []

    def path_for(self, key) -> Path:
        return self.folder / (artifact_fingerprint(self.model, key, self.backend, self._source)[:32] + ARTIFACT_SUFFIX)

    def __call__(self, key, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor,
                 flow_prior: torch.Tensor | None = None) -> torch.Tensor:
        entry = self.calls.get(key)
        if entry is None:
            entry = self.calls[key] = self._prepare(key, (img0, img1, t, flow_prior))
        call, function = entry
        return function(call, img0, img1, t, flow_prior)

    def _prepare(self, key, example: tuple) -> tuple[InferenceCall, Callable]:
        call = InferenceCall(self.model, key.flow_scale, key.tta).eval()
        path = self.path_for(key)
        began = time.perf_counter()
        note = ""
        if path.is_file():
            try:
                function = self._load(path)
                check = getattr(function, "guard_check", None)     # absent from other torch versions' functions
                if check is None or check(call, *example):
                    self._record(key, "loaded", began, path)
                    return call, function
                note = "the saved file's guards rejected this call: compiled again"
            except Exception as error:      # noqa: BLE001 - any unreadable file is compiled again and replaced
                note = f"the saved file could not be loaded ({type(error).__name__}): compiled again"
            logger.warning("%s: %s", path, note)
        try:
            function = self._compile_ahead(call, example, self.backend)
        except Exception as error:          # noqa: BLE001 - an ahead-of-time failure falls back to lazy compile
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
            logger.warning("ahead-of-time compile failed for %s (%s); torch.compile compiles it lazily instead",
                           key.describe(), reason)
            lazy = torch.compile(call, dynamic=False, backend=self.backend)
            self._record(key, "lazy", began, path, f"ahead-of-time compile failed: {reason}")
            return call, lambda module, *args: lazy(*args)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _save(function, path)
        except Exception as error:          # noqa: BLE001 - a model that cannot be saved still runs, compiled
            note = (note + "; " if note else "") + f"not saved ({type(error).__name__}: {error})"
            logger.warning("%s: %s", path, note)
        self._record(key, "compiled", began, path, note)
        return call, function

    def _record(self, key, source: str, began: float, path: Path, note: str = "") -> None:
        self.records.append(ArtifactRecord(key.describe(), source, time.perf_counter() - began, str(path), note))


def default_artifact_dir() -> Path:
    """``$XDG_CACHE_HOME/thesis_vfi/aot`` (``~/.cache/thesis_vfi/aot``), beside Inductor's kernel cache."""
    return default_compile_cache_dir().parent / "aot"


def precompile_for_inference(model: nn.Module, folder: str | os.PathLike | None = None, align_channels: bool = True,
                             backend: str = "inductor") -> PrecompiledCalls:
    """The ahead-of-time counterpart of :func:`model.inference.compile_for_inference`: the same preparation
    (evaluation mode, Inductor's cache folder, the flow estimator's channels aligned in place), then a
    :class:`PrecompiledCalls` over ``folder`` (default :func:`default_artifact_dir`) for an
    :class:`~model.inference.InferenceRunner`'s ``precompiled``."""
    calls = PrecompiledCalls(model, folder or default_artifact_dir(), backend)   # refuses a torch without the mode
    prepare_for_compile(model, align_channels=align_channels)
    return calls
