"""Typed configuration: frozen dataclasses, named presets, and the command line that overrides them.

Resolution order (later wins): model size preset -> phase preset -> ablation flags -> explicit CLI flags.
The resolved :class:`ExperimentConfig` is written into every checkpoint and log folder (``config.json``), and
``ExperimentConfig.from_dict`` rebuilds it, so a checkpoint always knows the architecture it belongs to.

Usage::

    cfg = config_from_argv(["--phase", "2", "--data_path", "/data/vimeo_triplet"])
    cfg.model.use_flow   # True
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

BACKBONE_MODES = ("hybrid", "mamba2_only", "gated_attn_only")
ATTENTION_GATES = ("headwise", "elementwise", "none")
FLOW_PRIORS = ("none", "dis")                 # where the flow estimator starts (ModelConfig.flow_prior)
PRIOR_SOURCES = ("crop", "context")            # what the training prior's DIS sees (DataConfig.prior_from)
REFINE_FINEST = ("full", "half")               # where RefineNet's finest decoder level runs (ModelConfig.refine_finest)
PHASES = (1, 2, 3)
# Autocast precision by ``--amp`` name; None = plain fp32 (no autocast). "auto" resolves to one of them.
AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = ("auto", *AMP_DTYPES)


class ConfigError(ValueError):
    """A configuration that makes no sense; the message is one line naming the flag at fault."""


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision an ``--amp`` choice names on ``device``: "auto" -> bf16 on CUDA (fp16 where the card lacks
    bf16), fp32 elsewhere; an explicit choice as given. One rule for training and inference; the Trainer then trains
    in fp32 on the CPU whatever the choice (CPU autocast is slower there) and adds a GradScaler to fp16."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


# --------------------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Architecture. Every field that changes a parameter shape lives here."""

    # Per-frame CNN stages at 1, 1/2, 1/4 and LGS stages at 1/8, 1/16 (docs/DESIGN.md 10).
    conv_channels: tuple[int, ...] = (16, 32, 64)
    conv_depths: tuple[int, ...] = (2, 2, 2)
    lgs_channels: tuple[int, ...] = (64, 128)
    lgs_depths: tuple[int, ...] = (2, 2)
    attn_heads: tuple[int, ...] = (2, 4)          # head dim 32 everywhere
    window_size: int = 8
    backbone_mode: str = "hybrid"
    use_ecab: bool = True
    use_mhc: bool = False
    mhc_streams: int = 4
    mhc_sinkhorn_iters: int = 20
    drop_path: float = 0.05
    # Branch A (Mamba2 SSD over the interleaved scan).
    ssm_expand: int = 2
    ssm_headdim: int = 32
    ssm_state: int = 32
    ssm_groups: int = 1                # 0 = one group per SSM head (needed by the MaTVLM init)
    ssm_chunk_size: int = 256
    ssm_per_direction: bool = False
    ssm_backend: str = "auto"
    # Branch B (gated window attention).
    attn_gate: str = "headwise"
    attn_cross_frame: bool = True
    attn_shift: bool = False
    # Refinement U-Net widths at 1, 1/2, 1/4, 1/8 (the 1/16 level is projected to the last width).
    refine_channels: tuple[int, ...] = (16, 32, 48, 64)
    # "full": the finest decoder level's two convolutions and the head run at full resolution (the design's U-Net);
    # "half": a stride-2 convolution reads the full-resolution inputs, that level runs at 1/2, and a transposed
    # convolution gives the head's four channels at full resolution (RIFE's arrangement). Why: at 1080p the finest
    # level's convolutions are most of the compiled call's full-resolution arithmetic (docs/PERF.md 10.2, 10.12);
    # "half" does about a quarter of it. Its quality is measured (docs/LARGE_MOTION.md), not assumed.
    refine_finest: str = "full"
    # Phase 2/3 flow pipeline.
    use_flow: bool = False
    flow_widths: tuple[int, ...] = (240, 150, 90)
    # Working scale of each flow block, coarse to fine (RIFE_m: 4, 2, 1; block k's trunk runs at 1/(4 s_k) of the frame).
    # (8, 4, 2) does a quarter of the flow estimator's arithmetic (391 -> 98 GFLOP at 1080p, docs/PERF.md 10.2) and
    # gives each block's first grid exactly the backbone level it reads (1/16, 1/8, 1/4); its quality is measured by
    # the fs842 runs of docs/LARGE_MOTION.md, not assumed.
    flow_scales: tuple[int, ...] = (4, 2, 1)
    flow_res_layers: int = 8
    flow_use_features: bool = True
    # "dis": the flow estimator starts from OpenCV DIS flows between the two inputs (computed on the CPU by the
    # caller: the data loader, the benchmarks, interpolate.py) and its blocks refine them; "none": from zero (RIFE).
    # Why: classical flow beats every learned model trained for minutes on fast motion (docs/LARGE_MOTION.md).
    flow_prior: str = "none"
    context_channels: int = 16

    @property
    def num_lgs_stages(self) -> int:
        return len(self.lgs_channels)

    def validate(self) -> None:
        if self.backbone_mode not in BACKBONE_MODES:
            raise ConfigError(f"--backbone_mode must be one of {', '.join(BACKBONE_MODES)}, got {self.backbone_mode!r}")
        if self.attn_gate not in ATTENTION_GATES:
            raise ConfigError(f"attn_gate must be one of {ATTENTION_GATES}, got {self.attn_gate!r}")
        if self.ssm_backend not in ("auto", "torch", "triton"):
            raise ConfigError(f"--ssd_backend must be auto, torch or triton, got {self.ssm_backend!r}")
        if len(self.conv_channels) != 3 or len(self.conv_depths) != 3:
            raise ConfigError("conv_channels and conv_depths need three entries (scales 1, 1/2, 1/4)")
        if not (len(self.lgs_channels) == len(self.lgs_depths) == len(self.attn_heads) == 2):
            raise ConfigError("lgs_channels, lgs_depths and attn_heads need two entries (scales 1/8, 1/16)")
        for width, heads in zip(self.lgs_channels, self.attn_heads):
            if width % heads:
                raise ConfigError(f"LGS width {width} is not divisible by its {heads} attention heads")
            if (width * self.ssm_expand) % self.ssm_headdim:
                raise ConfigError(f"Mamba2 inner width {width * self.ssm_expand} is not a multiple of "
                                  f"ssm_headdim {self.ssm_headdim}")
            if self.ssm_groups < 0 or (self.ssm_groups and ((width * self.ssm_expand) // self.ssm_headdim) % self.ssm_groups):
                raise ConfigError(f"ssm_groups {self.ssm_groups} must divide the Mamba2 head count (or be 0: one per head)")
        if self.use_mhc and self.mhc_streams < 2:
            raise ConfigError(f"mHC needs at least 2 streams, got {self.mhc_streams}")
        if len(self.refine_channels) != 4:
            raise ConfigError("refine_channels needs four entries (scales 1, 1/2, 1/4, 1/8)")
        if self.refine_finest not in REFINE_FINEST:
            raise ConfigError(f"--refine_finest must be one of {', '.join(REFINE_FINEST)}, got {self.refine_finest!r}")
        if len(self.flow_widths) != 3 or len(self.flow_scales) != 3:
            raise ConfigError("flow_widths and --flow_scales need three entries (one per flow block: the blocks read "
                              "the backbone's 1/16, 1/8 and 1/4 features)")
        if any(not isinstance(s, int) or s < 1 for s in self.flow_scales) or \
                any(coarse < fine for coarse, fine in zip(self.flow_scales, self.flow_scales[1:])):
            raise ConfigError(f"--flow_scales must be positive integers from coarse to fine (e.g. 4 2 1 or 8 4 2), "
                              f"got {' '.join(map(str, self.flow_scales))}")
        if self.flow_prior not in FLOW_PRIORS:
            raise ConfigError(f"--flow_prior must be one of {', '.join(FLOW_PRIORS)}, got {self.flow_prior!r}")
        if self.flow_prior != "none" and not self.use_flow:
            raise ConfigError(f"--flow_prior {self.flow_prior} starts the flow estimator, which phase 1 does not "
                              "have: use it with --phase 2 or 3")


DEFAULT_NUM_WORKERS = 8               # the spec's default; a machine with fewer cores per rank gets fewer


@dataclass(frozen=True)
class DataConfig:
    data_path: str | None = None
    x4k_path: str | None = None
    mixed_ratio: tuple[int, int] = (2, 1)
    crop_size: int = 256
    batch_size: int = 8
    num_workers: int | None = None     # None: DEFAULT_NUM_WORKERS, capped at the CPU cores per rank (train.py)
    prior_from: str = "crop"           # --flow_prior's DIS on each training crop, or on it and 64 px around it


@dataclass(frozen=True)
class LossConfig:
    lap: float = 1.0
    ter: float = 1.0
    vgg: float = 0.005
    flow_smooth: float = 0.1
    inter: float = 0.0                 # deep supervision of the flow blocks' blends (phases 2/3); 0 = off
    flow_teacher: float = 0.0          # DIS flow pseudo-labels where they warp better (phases 2/3); 0 = off
    prior_anchor: float = 0.0          # a --flow_prior model's flow held to the prior's where moving did not pay; 0 = off
    vgg_weights: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    phase: int = 1
    lr: float = 2e-4
    min_lr_ratio: float = 0.1          # cosine floor = lr * ratio (EMA-VFI: 2e-4 -> 2e-5)
    warmup_steps: int = 2000
    weight_decay: float = 1e-4
    epochs: int = 300
    grad_accum: int = 1
    grad_clip: float = 1.0
    amp: str = "auto"                  # auto: bf16 on CUDA when supported, else fp16 + GradScaler; fp32 on CPU
    cuda_graph: str = "auto"           # auto: replay the step as CUDA graphs on CUDA (step_graph.py); on / off
    ema_decay: float = 0.0             # 0 disables EMA weights
    freeze_backbone: int = 0
    freeze_flow: bool = False          # a --flow_prior model's flow estimator kept at its start: the prior's flows
    curriculum: bool = False
    curriculum_T: int = 50
    eval_interval: int = 3
    resume: str | None = None
    init_from_attn: str | None = None  # MaTVLM: start a hybrid run from an attention-only checkpoint
    allow_partial_init: bool = False   # accept a warm start that loads only a small part of the checkpoint
    exp_name: str | None = None
    dry_run: bool = False
    dry_run_steps: int = 4
    stop_after_epoch: int | None = None  # stop after this many epochs as if interrupted (tests, preemptible jobs)
    steps_per_epoch: int | None = None  # cap an epoch (demos, smoke tests); None = the whole dataset
    max_nonfinite_steps: int = 5
    seed: int = 0
    ckpt_dir: str = "ckpt"
    log_dir: str = "log"
    log_every: int = 50
    image_every: int = 500


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def experiment_name(self) -> str:
        return self.train.exp_name or f"phase{self.train.phase}_{self.model.backbone_mode}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ExperimentConfig":
        """Rebuild from :meth:`to_dict` output; unknown keys are rejected, missing keys take defaults."""
        def build(cls, values: dict[str, Any]):
            known = {f.name: f for f in dataclasses.fields(cls)}
            unknown = set(values) - set(known)
            if unknown:
                raise ConfigError(f"unknown {cls.__name__} fields in saved config: {sorted(unknown)}")
            converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            return cls(**converted)
        return ExperimentConfig(
            model=build(ModelConfig, data.get("model", {})),
            data=build(DataConfig, data.get("data", {})),
            loss=build(LossConfig, data.get("loss", {})),
            train=build(TrainConfig, data.get("train", {})),
        )

    def validate(self) -> None:
        self.model.validate()
        t, d = self.train, self.data
        if not d.data_path:
            raise ConfigError("--data_path is required: the Vimeo90K triplet folder (tri_trainlist.txt, sequences/)")
        if t.phase not in PHASES:
            raise ConfigError(f"--phase must be 1, 2 or 3, got {t.phase}")
        for flag, value in (("--epochs", t.epochs), ("--batch_size", d.batch_size), ("--grad_accum", t.grad_accum),
                            ("--eval_interval", t.eval_interval), ("--curriculum_T", t.curriculum_T),
                            ("--image_every", t.image_every)):
            if value < 1:
                raise ConfigError(f"{flag} must be a positive integer, got {value}")
        if t.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {t.lr}")
        if not 0.0 <= self.loss.inter < float("inf"):
            raise ConfigError(f"--inter_weight must be a finite number >= 0, got {self.loss.inter}")
        if not 0.0 <= self.loss.ter < float("inf"):
            raise ConfigError(f"--ter_weight must be a finite number >= 0, got {self.loss.ter}")
        if not 0.0 <= self.loss.flow_teacher < float("inf"):
            raise ConfigError(f"--flow_teacher must be a finite number >= 0, got {self.loss.flow_teacher}")
        if self.loss.flow_teacher > 0 and t.phase == 1:
            raise ConfigError("--flow_teacher supervises the flow estimator, which phase 1 does not have: use it "
                              "with --phase 2 or 3")
        if not 0.0 <= self.loss.prior_anchor < float("inf"):
            raise ConfigError(f"--prior_anchor must be a finite number >= 0, got {self.loss.prior_anchor}")
        if self.loss.prior_anchor > 0 and self.model.flow_prior == "none":
            raise ConfigError("--prior_anchor holds the flow to the classical prior's: use it with --flow_prior dis")
        if d.prior_from not in PRIOR_SOURCES:
            raise ConfigError(f"--prior_from must be one of {', '.join(PRIOR_SOURCES)}, got {d.prior_from!r}")
        if d.prior_from != "crop" and self.model.flow_prior == "none":
            raise ConfigError(f"--prior_from {d.prior_from} says where the flow prior's DIS runs in training: use it "
                              "with --flow_prior dis")
        if d.num_workers is not None and d.num_workers < 0:
            raise ConfigError(f"--num_workers must be >= 0, got {d.num_workers}")
        if d.crop_size < 32 or d.crop_size % 32:
            raise ConfigError(f"--crop_size must be a positive multiple of 32 (the backbone downsamples by 16 and "
                              f"the Laplacian loss by 32), got {d.crop_size}")
        if t.freeze_backbone < 0:
            raise ConfigError(f"--freeze_backbone must be >= 0, got {t.freeze_backbone}")
        if t.freeze_backbone and t.phase == 1:
            raise ConfigError("--freeze_backbone only makes sense in phases 2 and 3, with --resume from a trained "
                              "backbone (in phase 1 it would train nothing but the RefineNet)")
        if t.freeze_backbone >= t.epochs:
            raise ConfigError(f"--freeze_backbone {t.freeze_backbone} >= --epochs {t.epochs}: the backbone would "
                              "never train")
        if t.freeze_flow and (t.phase == 1 or self.model.flow_prior == "none"):
            raise ConfigError("--freeze_flow keeps the flow estimator at the classical prior's flows (its updates start "
                              "at zero): use it with --phase 2 or 3 and --flow_prior dis (without the prior a frozen "
                              "estimator would be its random start)")
        if t.freeze_flow and (self.loss.flow_teacher > 0 or self.loss.prior_anchor > 0):
            flag = "--flow_teacher" if self.loss.flow_teacher > 0 else "--prior_anchor"
            raise ConfigError(f"{flag} trains the flow estimator, which --freeze_flow keeps fixed: use one of them")
        if t.curriculum and t.phase != 3:
            raise ConfigError("--curriculum is the Phase-3 X4K motion curriculum: use it with --phase 3")
        if t.phase == 3 and not d.x4k_path:
            raise ConfigError("--phase 3 trains on Vimeo90K + X4K1000FPS: give --x4k_path")
        if d.x4k_path and t.phase != 3:
            raise ConfigError(f"--x4k_path is only used in phase 3 (got --phase {t.phase})")
        if t.amp not in AMP_CHOICES:
            raise ConfigError(f"--amp must be auto, bf16, fp16 or fp32, got {t.amp!r}")
        if t.cuda_graph not in ("auto", "on", "off"):
            raise ConfigError(f"--cuda_graph must be auto, on or off, got {t.cuda_graph!r}")
        if not 0.0 <= t.ema_decay < 1.0:
            raise ConfigError(f"--ema_decay must be in [0, 1), got {t.ema_decay}")
        if t.init_from_attn and self.model.backbone_mode != "hybrid":
            raise ConfigError("--init_from_attn copies attention weights into a hybrid block's Mamba2 branch: "
                              "use it with --backbone_mode hybrid")
        if t.init_from_attn and t.resume:
            raise ConfigError("--init_from_attn and --resume both set the starting weights: give only one")


# --------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------
MODEL_SIZES: dict[str, ModelConfig] = {
    # Every component at toy width: CPU tests, CI smoke runs and the CPU demo.
    "tiny": ModelConfig(conv_channels=(8, 8, 16), conv_depths=(1, 1, 1), lgs_channels=(32, 32), lgs_depths=(1, 1),
                        attn_heads=(2, 2), window_size=4, ssm_headdim=16, ssm_state=8, ssm_chunk_size=64,
                        refine_channels=(8, 8, 16, 16), drop_path=0.0, flow_widths=(24, 16, 12), flow_res_layers=2,
                        context_channels=4),
    # ~1.3M parameters in Phase 1, the size the spec reports for its Phase-1 model.
    "small": ModelConfig(),
    # A VFIMamba-S-like width profile (docs/DESIGN.md 10 scaled to F=16) for when capacity matters more than speed.
    "base": ModelConfig(conv_channels=(16, 32, 64), lgs_channels=(128, 256), lgs_depths=(2, 3), attn_heads=(4, 8),
                        ssm_state=64, refine_channels=(24, 32, 48, 96), drop_path=0.1),
}

PHASE_PRESETS: dict[int, dict[str, dict[str, Any]]] = {
    1: {"model": {"use_flow": False}, "train": {"phase": 1, "lr": 2e-4, "epochs": 300}},
    2: {"model": {"use_flow": True}, "train": {"phase": 2, "lr": 1e-4, "epochs": 200}},
    3: {"model": {"use_flow": True}, "train": {"phase": 3, "lr": 5e-5, "epochs": 100}},
}

# Named ablations of the backbone (SPEC: backbone_mode, use_mhc, use_ecab).
ABLATIONS: dict[str, dict[str, Any]] = {
    "hybrid": {"backbone_mode": "hybrid"},
    "mamba2_only": {"backbone_mode": "mamba2_only"},
    "gated_attn_only": {"backbone_mode": "gated_attn_only"},
    "hybrid_mhc": {"backbone_mode": "hybrid", "use_mhc": True},
    "hybrid_cab": {"backbone_mode": "hybrid", "use_ecab": False},
    # Branch A shaped so an attention-only checkpoint maps onto it exactly (MaTVLM, docs/DESIGN.md 6).
    "hybrid_matvlm": {},  # built by matvlm_compatible(): the shapes depend on the attention head dim
}


def matvlm_compatible(model: ModelConfig) -> ModelConfig:
    """Branch A with expand 1, one group per attention head, state size = head dim = attention head dim.

    Only valid when every LGS stage uses the same head dim (width / heads).
    """
    head_dims = {w // h for w, h in zip(model.lgs_channels, model.attn_heads)}
    if len(head_dims) != 1:
        raise ConfigError(f"MaTVLM init needs one attention head dim across LGS stages, got {sorted(head_dims)}")
    head_dim = head_dims.pop()
    return replace(model, ssm_expand=1, ssm_headdim=head_dim, ssm_state=head_dim, ssm_groups=0, backbone_mode="hybrid")


def preset(phase: int = 1, size: str = "small", ablation: str | None = None) -> ExperimentConfig:
    """A named configuration: model size x phase x optional ablation."""
    if size not in MODEL_SIZES:
        raise ConfigError(f"--model_size must be one of {', '.join(MODEL_SIZES)}, got {size!r}")
    if phase not in PHASE_PRESETS:
        raise ConfigError(f"--phase must be 1, 2 or 3, got {phase}")
    model = replace(MODEL_SIZES[size], **PHASE_PRESETS[phase]["model"])
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ConfigError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
        if ablation == "hybrid_matvlm":
            model = matvlm_compatible(model)
        else:
            model = replace(model, **ABLATIONS[ablation])
    train = replace(TrainConfig(), **PHASE_PRESETS[phase]["train"])
    return ExperimentConfig(model=model, train=train)


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------
class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is reported in one line naming the flag)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def unit_fraction(text: str) -> float:
    """argparse type: a float in (0, 1] (a downscale factor)."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity on Linux, else the machine's count): what worker and thread
    defaults are sized by (loaders.default_num_workers, footage.video_io's I/O threads)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):          # not on Linux
        return os.cpu_count() or 1


def resolve_device(text: str | None) -> torch.device:
    """``--device``: the named torch device, or cuda when available else cpu; ConfigError for a bad name.

    A numbered CUDA device (``cuda:1``) also becomes the process's current device: the inference graphs' side stream
    and capture, and Triton's kernels (the warps, the SSD scan), run on the current device, not on their tensors'.
    """
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"--device {text!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(f"--device {text}: this machine has {count} CUDA device(s), numbered from 0")
        torch.cuda.set_device(device)
    return device


def parse_mixed_ratio(text: str) -> tuple[int, int]:
    """"2:1" -> (2, 1); anything else -> ConfigError naming --mixed_ratio."""
    parts = text.split(":")
    try:
        ratio = tuple(int(p) for p in parts)
    except ValueError:
        ratio = ()
    if len(ratio) != 2 or min(ratio) < 1:
        raise ConfigError(f"--mixed_ratio must look like A:B with positive integers (e.g. 2:1), got {text!r}")
    return ratio  # type: ignore[return-value]


def build_arg_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="train.py",
        description="Train Thesis-VFI. Single device: python train.py ...; several: torchrun --nproc_per_node=N "
                    "train.py ...  Flags left out take the phase preset's value (shown in brackets).")
    spec = p.add_argument_group("training (SPEC table)")
    spec.add_argument("--phase", type=int, default=1, help="training phase 1/2/3 (default 1)")
    spec.add_argument("--batch_size", type=int, default=None, help="batch size per GPU (default 8)")
    spec.add_argument("--lr", type=float, default=None, help="base learning rate (default 2e-4; phase 2: 1e-4, phase 3: 5e-5)")
    spec.add_argument("--epochs", type=int, default=None, help="total epochs (default 300; phase 2: 200, phase 3: 100)")
    spec.add_argument("--data_path", type=str, default=None, help="Vimeo90K triplet folder (required)")
    spec.add_argument("--x4k_path", type=str, default=None, help="X4K1000FPS folder (phase 3)")
    spec.add_argument("--mixed_ratio", type=str, default=None, help="Vimeo:X4K sampling ratio (default 2:1)")
    spec.add_argument("--crop_size", type=int, default=None, help="training crop size (default 256)")
    spec.add_argument("--resume", type=str, default=None,
                      help="checkpoint name in --ckpt_dir (e.g. phase1_hybrid_v2_best) or a path")
    spec.add_argument("--freeze_backbone", type=int, default=None, help="freeze the backbone for N epochs (default 0)")
    spec.add_argument("--exp_name", type=str, default=None, help="experiment name (checkpoint/log name)")
    spec.add_argument("--backbone_mode", type=str, default=None, choices=BACKBONE_MODES,
                      help="hybrid / mamba2_only / gated_attn_only (default hybrid)")
    spec.add_argument("--use_mhc", action=argparse.BooleanOptionalAction, default=None,
                      help="enable manifold-constrained hyper-connections (default off)")
    spec.add_argument("--use_ecab", action=argparse.BooleanOptionalAction, default=None,
                      help="ECAB in the FFN slot; --no-use_ecab uses the standard CAB (default on)")
    spec.add_argument("--curriculum", action="store_true", default=None, help="X4K motion curriculum (phase 3)")
    spec.add_argument("--curriculum_T", type=int, default=None, help="curriculum transition epoch (default 50)")
    spec.add_argument("--dry_run", action="store_true", default=None, help="a few steps plus one evaluation, then exit")
    spec.add_argument("--num_workers", type=int, default=None,
                      help="DataLoader workers per process (default 8, at most the CPU cores per process)")
    spec.add_argument("--grad_accum", type=int, default=None, help="gradient accumulation steps (default 1)")
    spec.add_argument("--eval_interval", type=int, default=None, help="evaluate every N epochs (default 3)")

    extra = p.add_argument_group("more")
    extra.add_argument("--model_size", type=str, default="small", help=f"model preset: {', '.join(MODEL_SIZES)} (default small)")
    extra.add_argument("--ablation", type=str, default=None, help=f"named ablation preset: {', '.join(ABLATIONS)}")
    extra.add_argument("--init_from_attn", type=str, default=None,
                       help="MaTVLM init: copy a gated_attn_only checkpoint's attention into the Mamba2 branch")
    extra.add_argument("--allow_partial_init", action="store_true", default=None,
                       help="accept a --resume warm start that loads less than half of the checkpoint's tensors "
                            "or finds many at another shape (refused otherwise)")
    extra.add_argument("--amp", type=str, default=None, help="auto / bf16 / fp16 / fp32 (default auto)")
    extra.add_argument("--cuda_graph", type=str, default=None,
                       help="auto / on / off: replay the training step as CUDA graphs (auto: on CUDA, one process "
                            "or several, without fp16 loss scaling or --grad_accum; off: the eager step)")
    extra.add_argument("--ema_decay", type=float, default=None, help="EMA of weights, 0 = off (default 0)")
    extra.add_argument("--warmup_steps", type=int, default=None, help="linear warm-up steps (default 2000)")
    extra.add_argument("--steps_per_epoch", type=int, default=None, help="cap the steps of an epoch (demos)")
    extra.add_argument("--stop_after_epoch", type=int, default=None,
                       help="stop after this epoch as if interrupted; the LR schedule still spans --epochs")
    extra.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    extra.add_argument("--ssd_backend", type=str, default=None, help="auto / torch / triton (default auto)")
    extra.add_argument("--inter_weight", type=float, default=None,
                       help="phases 2/3: weight of the deep supervision sum_i Lap(I_hat_i) on the flow blocks' "
                            "blends (default 0 = off; RIFE/EMA-VFI use 0.5)")
    extra.add_argument("--ter_weight", type=float, default=None,
                       help="weight of the ternary (census) term of the loss (default 1.0 as in the spec's loss "
                            "table; 0 leaves LapLoss to score the pixels: docs/LARGE_MOTION.md, seventh round)")
    extra.add_argument("--flow_teacher", type=float, default=None,
                       help="phases 2/3: weight of the flow-teacher term, which pulls the estimated flow towards "
                            "OpenCV DIS flows from the middle frame where those warp better (default 0 = off; "
                            "docs/LARGE_MOTION.md)")
    extra.add_argument("--flow_scales", type=positive_int, nargs=3, default=None, metavar="S",
                       help="phases 2/3: working scale of the three flow blocks, coarse to fine (default 4 2 1 as in "
                            "RIFE_m; 8 4 2 does a quarter of the flow arithmetic, docs/PERF.md 10.2)")
    extra.add_argument("--flow_prior", type=str, default=None, choices=FLOW_PRIORS,
                       help="phases 2/3: dis starts the flow estimator from OpenCV DIS flows between the two inputs "
                            "(computed on the CPU by the data loader, the benchmarks and interpolate.py), which its "
                            "blocks refine; none (default) starts from zero as RIFE does (docs/LARGE_MOTION.md)")
    extra.add_argument("--prior_anchor", type=float, default=None,
                       help="with --flow_prior dis: weight of a term that holds the estimated flow to the prior's "
                            "wherever the model's own warp is not better than the prior's by a margin (default 0 = "
                            "off; docs/LARGE_MOTION.md, thirteenth round)")
    extra.add_argument("--freeze_flow", action="store_true", default=None,
                       help="with --flow_prior dis: never train the flow estimator, so the flow stays the classical "
                            "prior's (its updates start at zero) and the model learns the blend and RefineNet's "
                            "residual on top (default off; docs/LARGE_MOTION.md, twentieth round)")
    extra.add_argument("--prior_from", type=str, default=None, choices=PRIOR_SOURCES,
                       help="with --flow_prior dis: crop (default) computes each training sample's DIS on its "
                            "augmented crop; context on the crop and 64 px of the frame around it, then crops, flips "
                            "and rotates the flows with the frames (test time runs DIS on the whole frame; about 2.3x "
                            "the loader's DIS time; docs/LARGE_MOTION.md)")
    extra.add_argument("--refine_finest", type=str, default=None, choices=REFINE_FINEST,
                       help="where RefineNet's finest decoder level runs: full (default, the design's U-Net) or half "
                            "(a stride-2 entry and a transposed-convolution head, as RIFE; about a quarter of that "
                            "level's arithmetic: faster inference at 1080p and 4K; docs/PERF.md 10.15)")
    extra.add_argument("--vgg_weights", type=str, default=None,
                       help="local VGG19 weights file for the perceptual loss (or env THESIS_VGG_WEIGHTS)")
    extra.add_argument("--ckpt_dir", type=str, default=None, help="checkpoint folder (default ckpt)")
    extra.add_argument("--log_dir", type=str, default=None, help="TensorBoard folder (default log)")
    extra.add_argument("--log_every", type=int, default=None, help="scalar logging interval in steps (default 50)")
    extra.add_argument("--image_every", type=int, default=None,
                       help="training image grid interval in steps; also logged at each evaluation (default 500)")
    extra.add_argument("--no_progress", action="store_true",
                       help="no progress bar and no progress lines (epoch results still print); without it a "
                            "terminal gets a bar, a file or pipe one plain line every --log_every steps")
    return p


# flag name -> (section, field); flags not listed map to the train section under the same name.
_FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "batch_size": ("data", "batch_size"), "data_path": ("data", "data_path"), "x4k_path": ("data", "x4k_path"),
    "crop_size": ("data", "crop_size"), "num_workers": ("data", "num_workers"), "prior_from": ("data", "prior_from"),
    "backbone_mode": ("model", "backbone_mode"), "use_mhc": ("model", "use_mhc"), "use_ecab": ("model", "use_ecab"),
    "ssd_backend": ("model", "ssm_backend"), "vgg_weights": ("loss", "vgg_weights"),
    "inter_weight": ("loss", "inter"), "ter_weight": ("loss", "ter"), "flow_teacher": ("loss", "flow_teacher"),
    "flow_scales": ("model", "flow_scales"), "flow_prior": ("model", "flow_prior"),
    "refine_finest": ("model", "refine_finest"), "prior_anchor": ("loss", "prior_anchor"),
}
_NOT_FIELDS = {"phase", "model_size", "ablation", "mixed_ratio", "no_progress"}   # not part of a run's config


def model_field_flag(name: str) -> str | None:
    """The train.py flag that sets ModelConfig field ``name`` (``"flow_prior"`` -> ``"--flow_prior"``), or None for a
    field only a preset sets (widths, depths): what an error about a saved model config names."""
    flags = [flag for flag, (section, field_name) in _FLAG_FIELDS.items() if (section, field_name) == ("model", name)]
    return f"--{flags[0]}" if flags else None


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Preset for (phase, model_size, ablation), then every flag the user gave overrides its field."""
    cfg = preset(args.phase, args.model_size, args.ablation)
    sections: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "loss": {}, "train": {}}
    for name, value in vars(args).items():
        if value is None or name in _NOT_FIELDS:
            continue
        section, field_name = _FLAG_FIELDS.get(name, ("train", name))
        sections[section][field_name] = tuple(value) if isinstance(value, list) else value
    if args.mixed_ratio is not None:
        sections["data"]["mixed_ratio"] = parse_mixed_ratio(args.mixed_ratio)
    cfg = ExperimentConfig(model=replace(cfg.model, **sections["model"]), data=replace(cfg.data, **sections["data"]),
                           loss=replace(cfg.loss, **sections["loss"]), train=replace(cfg.train, **sections["train"]))
    if cfg.train.phase == 1:
        cfg = replace(cfg, loss=replace(cfg.loss, flow_smooth=0.0, inter=0.0))   # no flow in phase 1
    cfg.validate()
    return cfg


def config_from_argv(argv: Sequence[str] | None = None) -> ExperimentConfig:
    """Parse ``argv`` (default sys.argv[1:]); a bad value exits with one line on stderr and status 2."""
    return parse_train_argv(argv)[0]


def parse_train_argv(argv: Sequence[str] | None = None) -> tuple[ExperimentConfig, argparse.Namespace]:
    """(the run's config, every parsed flag): the flags that only say how this process reports (``no_progress``)
    are not part of the config, so they never make two runs differ."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.phase not in PHASES:
        parser.error(f"--phase must be 1, 2 or 3, got {args.phase}")
    try:
        return config_from_args(args), args
    except ConfigError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits
