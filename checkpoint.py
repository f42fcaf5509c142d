"""Checkpoints: one format for training state, warm starts and evaluation.

A checkpoint is a dict saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``::

    {"format": 1, "config": ExperimentConfig.to_dict(), "model": state_dict, "ema": state_dict | None,
     "optimizer": ..., "scaler": ..., "step": int, "epoch": int (epochs completed), "best_metric": float,
     "rng": [capture_rng_state() of every rank], "metrics": {...}}

Only plain containers, numbers, strings and tensors go in, so ``weights_only=True`` can load it (no pickled code).
Files are written to a temporary name in the same folder, synced, then renamed over the target, so a crash
never leaves a truncated checkpoint behind. ``ckpt/<exp_name>_last.pt`` and ``_best.pt`` are the names the
trainer writes (``<exp_name>_dryrun_last.pt`` / ``_dryrun_best.pt`` for a ``--dry_run``, so a dry run never
writes where a real run keeps its files); ``--resume`` and ``--model`` accept either such a name or a path.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch
from torch import nn

from config import MODEL_SIZES, ExperimentConfig, ModelConfig, model_field_flag

CHECKPOINT_FORMAT = 1

# ModelConfig fields that choose how the model runs, not what it is: no tensor depends on them, so they are kept
# out of the identity check of a resume and replaced by this machine's choice when a checkpoint is evaluated.
RUNTIME_MODEL_FIELDS = ("ssm_backend",)

# A warm start that uses less than this share of the checkpoint's tensors, or finds more than this share of the
# names it shares with the model at another shape, is almost certainly the wrong checkpoint or the wrong model
# flags. Phase 1 -> Phase 2 (small) loads 174 of the checkpoint's 178 tensors and 4 differ in shape (RefineNet's
# first convolutions gain the context channels): 98% used, 2% reshaped. A --model_size mismatch loads 9 of 301.
MIN_WARM_START_USED = 0.5
MAX_WARM_START_RESHAPED = 0.1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read, or used as asked; one line naming the file."""


def run_name(cfg: ExperimentConfig) -> str:
    """Stem of a run's checkpoints and log folder: the experiment name, plus ``_dryrun`` for a dry run."""
    return f"{cfg.experiment_name}_dryrun" if cfg.train.dry_run else cfg.experiment_name


def run_checkpoint_path(cfg: ExperimentConfig, kind: str) -> Path:
    """``<ckpt_dir>/<run name>_last.pt`` (kind "last") or ``_best.pt`` (kind "best")."""
    return Path(cfg.train.ckpt_dir) / f"{run_name(cfg)}_{kind}.pt"


# ----------------------------------------------------------------------------------------------------------
# RNG state (all generators a training step touches): one seed for all, and capture/restore in weights_only form
# ----------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) default generators from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, NumPy and Python generator states (a checkpoint's ``rng`` holds one per rank)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def resolve_checkpoint(name_or_path: str, ckpt_dir: str | os.PathLike = "ckpt") -> Path:
    """``phase1_hybrid_best`` -> ckpt/phase1_hybrid_best.pt; an existing path is returned as is."""
    direct = Path(name_or_path)
    if direct.is_file():
        return direct
    for candidate in (Path(ckpt_dir) / name_or_path, Path(ckpt_dir) / f"{name_or_path}.pt"):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in Path(ckpt_dir).glob("*.pt")) if Path(ckpt_dir).is_dir() else []
    hint = f"; available in {ckpt_dir}/: {', '.join(available)}" if available else f"; {ckpt_dir}/ has no checkpoints"
    raise CheckpointError(f"checkpoint not found: {name_or_path!r} (neither a file nor {ckpt_dir}/{name_or_path}.pt){hint}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """The one way files are written here: ``write(stream)`` into a temporary file in the target folder, fsync,
    then ``os.replace`` onto ``path``, so a crash or Ctrl-C never leaves a truncated file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def atomic_save(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save ``payload`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda stream: torch.save(payload, stream))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (config.json, summary.json, benchmark reports) atomically."""
    atomic_write(path, lambda stream: stream.write(text), binary=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write an encoded file (a PNG) atomically."""
    atomic_write(path, lambda stream: stream.write(data))


# How a file that torch.save wrote begins: a zip archive (the format since torch 1.6) or a legacy pickle stream.
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")
# Recognisable beginnings of what is often passed by mistake: (bytes at an offset, what it is).
_OTHER_FILE_KINDS = ((0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"), (4, b"ftyp", "an MP4/MOV video"),
                     (0, b"RIFF", "an AVI/WAV file"), (0, b"\x89PNG", "a PNG image"), (0, b"\xff\xd8\xff", "a JPEG image"),
                     (0, b"\x00\x00\x01\xba", "an MPEG video"), (0, b"GIF8", "a GIF image"))


def not_a_checkpoint_file(path: Path) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file, judged from its first bytes (a video, an image, text), or None
    when it may be one. Saves torch.load's advice to retry with ``weights_only=False``, which is wrong here."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return f"cannot open it ({error.strerror or error})"
    if head.startswith(_TORCH_SAVE_MAGIC):
        return None
    for offset, magic, kind in _OTHER_FILE_KINDS:
        if head[offset:offset + len(magic)] == magic:
            return f"it is {kind}"
    return "it is no file torch.save wrote" if head else "it is empty"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) onto the CPU; a clear error for anything else."""
    path = Path(path)
    problem = not_a_checkpoint_file(path)
    if problem:
        raise CheckpointError(f"{path} is not a checkpoint: {problem} (--model and --resume take a checkpoint that "
                              "train.py wrote, e.g. ckpt/<exp_name>_best.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if "weights only load failed" in str(error).lower():
            # torch advises weights_only=False, which would run code the file holds: not what a checkpoint needs.
            raise CheckpointError(f"{path} is not a Thesis-VFI checkpoint: it holds Python objects other than "
                                  "tensors and plain containers, which are not loaded (no code runs from a file)") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path} is not a Thesis-VFI checkpoint (no 'model'/'config' entries)")
    if payload.get("format", 0) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by a newer Thesis-VFI (format {payload['format']})")
    return payload


def checkpoint_config(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> ExperimentConfig:
    try:
        return ExperimentConfig.from_dict(payload["config"])
    except Exception as error:
        raise CheckpointError(f"{path}: saved config does not fit this version: {error}") from None


def config_differences(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """Field names (section.field) whose values differ between two dataclass configs of the same type, less the
    fields named in ``ignore``."""
    da, db = (x.to_dict() if hasattr(x, "to_dict") else x.__dict__ for x in (a, b))
    out = []
    for key in sorted((set(da) | set(db)) - set(ignore)):
        va, vb = da.get(key), db.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += [f"{key}.{k}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
        elif va != vb:
            out.append(key)
    return out


def describe_model_differences(saved: ModelConfig, current: ModelConfig, names: list[str]) -> str:
    """``names`` (from :func:`config_differences`) for a user: each by its train.py flag where it has one, with the
    checkpoint's value and this run's, e.g. ``--flow_prior (checkpoint none, this run dis)``."""
    def shown(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    return ", ".join(f"{model_field_flag(name) or name} (checkpoint {shown(getattr(saved, name, None))}, this run "
                     f"{shown(getattr(current, name, None))})" for name in names)


def load_matching_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy every tensor whose name and shape match; report the rest instead of failing.

    Returns {"loaded": [...], "skipped": [...] (name present, shape differs), "new": [...] (only in the model),
    "unused": [...] (only in the checkpoint)}.
    """
    own = model.state_dict()
    loaded, skipped = [], []
    for key, value in state.items():
        if key in own:
            if own[key].shape == value.shape:
                own[key].copy_(value)
                loaded.append(key)
            else:
                skipped.append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
    return {"loaded": loaded, "skipped": skipped, "new": [k for k in own if k not in state],
            "unused": [k for k in state if k not in own]}


def summarize_weight_report(report: dict[str, list[str]]) -> str:
    """One paragraph: counts, then the top-level modules of what was new or skipped."""
    def modules(names: list[str]) -> str:
        tops = sorted({n.split(".")[0] + ("." + n.split(".")[1] if n.count(".") > 1 else "") for n in names})
        return ", ".join(tops[:12]) + (" ..." if len(tops) > 12 else "")
    parts = [f"loaded {len(report['loaded'])} tensors"]
    if report["new"]:
        parts.append(f"new (initialised fresh) {len(report['new'])}: {modules(report['new'])}")
    if report["skipped"]:
        parts.append(f"skipped (shape differs) {len(report['skipped'])}: {'; '.join(report['skipped'][:5])}")
    if report["unused"]:
        parts.append(f"unused from checkpoint {len(report['unused'])}: {modules(report['unused'])}")
    return "; ".join(parts)


def model_size_name(model: ModelConfig) -> str | None:
    """The ``--model_size`` preset whose widths and depths ``model`` has, or None (a custom size)."""
    presets = list(MODEL_SIZES.values())
    size_fields = [name for name in ModelConfig.__dataclass_fields__
                   if len({getattr(p, name) for p in presets}) > 1]      # the fields the presets set
    for name, size in MODEL_SIZES.items():
        if all(getattr(model, f) == getattr(size, f) for f in size_fields):
            return name
    return None


def partial_start_problem(report: dict[str, list[str]], saved: ModelConfig, current: ModelConfig) -> str | None:
    """Why a warm start that loaded ``report`` looks like a mistake, or None when it looks intended.

    It is suspicious when less than ``MIN_WARM_START_USED`` of the checkpoint's tensors load, or when more than
    ``MAX_WARM_START_RESHAPED`` of the names the checkpoint and the model share differ in shape. New tensors of
    modules the model adds (a Phase-2 flow pipeline on a Phase-1 checkpoint) are expected and not counted.
    """
    loaded, skipped, unused = len(report["loaded"]), len(report["skipped"]), len(report["unused"])
    in_checkpoint, shared = loaded + skipped + unused, loaded + skipped
    if loaded >= MIN_WARM_START_USED * in_checkpoint and skipped <= MAX_WARM_START_RESHAPED * shared:
        return None
    parts = [f"loaded {loaded} of the checkpoint's {in_checkpoint} tensors"]
    if skipped:
        parts.append(f"{skipped} differ in shape, e.g. {report['skipped'][0]}")
    if unused:
        parts.append(f"{unused} are not in this model, e.g. {report['unused'][0]}")
    saved_size, current_size = model_size_name(saved), model_size_name(current)
    if saved_size != current_size and saved_size is not None:
        cause = f"the checkpoint was trained with --model_size {saved_size} (this run: {current_size or 'custom'})"
    else:
        # use_flow is the phase's own difference.
        differing = config_differences(saved, current, ignore=RUNTIME_MODEL_FIELDS + ("use_flow",))
        cause = f"the checkpoint's model differs in {', '.join(differing[:6]) or 'its parameter names'}"
    return "; ".join(parts) + f": {cause}"


def model_from_checkpoint(name_or_path: str, device: str | torch.device = "cpu", prefer_ema: bool = True,
                          ckpt_dir: str | os.PathLike = "ckpt", ssm_backend: str | None = "auto"
                          ) -> tuple[nn.Module, ExperimentConfig]:
    """Build the model a checkpoint was trained with and load its (EMA, when present) weights, in eval mode.

    ``ssm_backend`` replaces the SSD kernel choice saved in the checkpoint (a runtime choice of the machine that
    trained it: a GPU run's "triton" cannot run on a CPU); None keeps the saved one. The returned config says
    which one the model uses.
    """
    from model import build_model

    path = resolve_checkpoint(name_or_path, ckpt_dir)
    payload = load_checkpoint(path)
    cfg = checkpoint_config(payload, path)
    if ssm_backend is not None:
        cfg = replace(cfg, model=replace(cfg.model, ssm_backend=ssm_backend))
    model = build_model(cfg.model)
    state = payload["ema"] if prefer_ema and payload.get("ema") else payload["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the saved config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return model.to(device).eval(), cfg


def starting_model_from_checkpoint(name_or_path: str, device: str | torch.device = "cpu",
                                   ckpt_dir: str | os.PathLike = "ckpt") -> tuple[nn.Module, ExperimentConfig]:
    """The model a checkpoint's run started from, in eval mode: its saved config's architecture built right after
    :func:`seed_everything` with the run's seed, as a training run builds it (the untrained baseline of
    ``benchmark/demo_summary.py``). The checkpoint's weights are not loaded; the saved SSD kernel choice is kept."""
    from model import build_model

    path = resolve_checkpoint(name_or_path, ckpt_dir)
    cfg = checkpoint_config(load_checkpoint(path), path)
    seed_everything(cfg.train.seed)
    return build_model(cfg.model).to(device).eval(), cfg
