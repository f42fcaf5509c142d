"""The ablation table: train every variant the same way through train.py, then tabulate what each component is worth.

Each run is ``python train.py ...`` in a child process of its own, so a row is exactly what that command produces:
same data, same optimizer, schedule and loss, same validation on the data set's test list. Every variant
gets the same steps, batch, crop and seeds. Runs live in a private folder beside the table (``<out dir>/runs/ckpt``
and ``<out dir>/runs/log``), named ``ablation_<variant>_s<seed>``, so nothing of the user's is touched; a finished
run (its ``summary.json`` present, same configuration; for ``hybrid_matvlm`` also the same source checkpoint, by path
and content hash) is reused when the command is repeated, and an interrupted one (Ctrl-C) is continued with
``--resume``.

Variants: the named ablation presets of config.py (``hybrid``, ``mamba2_only``, ``gated_attn_only``,
``hybrid_mhc``, ``hybrid_cab``, ``hybrid_matvlm``) and, in phase 2, ``hybrid_inter`` (``hybrid`` with the deep
supervision of the flow blocks' blends, ``--inter_weight 0.5``). ``hybrid_matvlm`` starts from a trained
``gated_attn_only`` model with the MaTVLM-compatible shapes: one trained here for the same number of steps and
seed (the row says so), or ``--matvlm_source CKPT``.

Output: ``--out table.md`` (Markdown) and ``table.json`` beside it, one row per variant: parameters, training
samples/s, peak GPU memory (CUDA), validation PSNR and SSIM (mean and sample standard deviation over seeds), the
frame-average PSNR of the same test set, and the PSNR difference to ``hybrid``.

Every run trains its steps as one epoch (a small data set's training list is repeated in a private view,
``<out dir>/runs/data``, whose ``sequences`` links to the original), so a run evaluates and saves once instead
of once per pass over a few batches. ``--gpus 0,1,2,3`` runs that many runs at a time, one per GPU, each in its
own process (a ``hybrid_matvlm`` row waits for its source); the table is the same as from one GPU.

Examples::

    python benchmark/ablation.py --data_path data/sample_vimeo --steps 1500 --batch_size 16 --seeds 0,1
    python benchmark/ablation.py --data_path /data/vimeo_triplet --steps 20000 --variants hybrid,hybrid_mhc
    python benchmark/ablation.py --data_path data/sample_vimeo --steps 1500 --phase 2 --out log/ablation_p2/table.md
    python benchmark/ablation.py --data_path data/sample_vimeo --steps 1500 --seeds 0,1 --gpus 0,1,2,3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from checkpoint import atomic_write_text  # noqa: E402
from config import ABLATIONS, ConfigError, config_from_argv  # noqa: E402

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
INTER_WEIGHT = 0.5          # the conventional deep-supervision weight (RIFE, EMA-VFI, VFIMamba)
SUMMARY_KEYS = ("experiment", "phase", "params", "steps", "epochs", "best_psnr", "last_val",
                "train_samples_per_sec", "peak_gpu_mem_gib", "wall_seconds", "config")


class AblationError(RuntimeError):
    """A run failed or left no usable result; the message is one line naming the run and what to do."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a run (train.py printed where, and its checkpoint); repeating the command goes on."""


# ----------------------------------------------------------------------------------------------------------
# Variants and run plans
# ----------------------------------------------------------------------------------------------------------
def default_variants(phase: int) -> list[str]:
    """Every ablation preset; in phase 2 also ``hybrid_inter``."""
    return list(ABLATIONS) + (["hybrid_inter"] if phase >= 2 else [])


def variant_flags(variant: str, phase: int) -> list[str]:
    """train.py flags that make ``variant`` (its MaTVLM start is added by the plan)."""
    if variant == "hybrid_inter":
        if phase < 2:
            raise ConfigError("variant hybrid_inter (deep supervision of the flow blocks) needs --phase 2")
        return ["--ablation", "hybrid", "--inter_weight", str(INTER_WEIGHT)]
    if variant not in ABLATIONS:
        raise ConfigError(f"unknown variant {variant!r}; known: {', '.join(default_variants(2))}")
    return ["--ablation", variant]


def split_steps(steps: int, micro_batches_per_epoch: int) -> tuple[int, int]:
    """(epochs, steps per epoch) whose product is exactly ``steps``, with as few epochs as the data allows.

    An epoch holds at most ``micro_batches_per_epoch`` optimizer steps (train.py caps ``--steps_per_epoch`` there),
    so the steps per epoch is the largest divisor of ``steps`` that fits.
    """
    if steps < 1 or micro_batches_per_epoch < 1:
        raise ValueError(f"need steps >= 1 and at least one batch per epoch, got {steps} and {micro_batches_per_epoch}")
    per_epoch = max(d for d in range(1, min(steps, micro_batches_per_epoch) + 1) if steps % d == 0)
    return steps // per_epoch, per_epoch


@dataclass
class Run:
    """One train.py invocation: ``argv`` produces ``log/<experiment>/summary.json`` in the private log folder."""

    variant: str
    seed: int
    experiment: str
    argv: list[str]
    role: str = "row"                  # "row": a table row; "matvlm_source": the attention model hybrid_matvlm starts from
    summary: dict[str, Any] | None = None


@dataclass
class Plan:
    runs: list[Run] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    extra_steps: dict[str, int | None] = field(default_factory=dict)   # steps a variant's start was trained for


def source_steps(path: str) -> int | None:
    """Optimizer steps a given MaTVLM source checkpoint was trained for (None when it does not say)."""
    from checkpoint import CheckpointError, load_checkpoint
    try:
        step = load_checkpoint(path).get("step")
    except CheckpointError as error:
        raise ConfigError(f"--matvlm_source: {error}") from None
    return int(step) if isinstance(step, int) else None


def build_plan(args: argparse.Namespace, variants: Sequence[str], seeds: Sequence[int], epochs: int,
               steps_per_epoch: int, ckpt_dir: Path, log_dir: Path) -> Plan:
    """Every run in order; a ``hybrid_matvlm`` row is preceded by the source it starts from (unless given)."""
    common = ["--phase", str(args.phase), "--data_path", args.data_path, "--model_size", args.model_size,
              "--batch_size", str(args.batch_size), "--crop_size", str(args.crop_size),
              "--num_workers", str(args.num_workers), "--epochs", str(epochs),
              "--steps_per_epoch", str(steps_per_epoch), "--eval_interval", str(epochs),
              "--ckpt_dir", str(ckpt_dir), "--log_dir", str(log_dir)] + shlex.split(args.train_args)
    plan = Plan()
    for variant in variants:
        flags = variant_flags(variant, args.phase)
        for seed in seeds:
            extra: list[str] = []
            if variant == "hybrid_matvlm":
                if args.matvlm_source:
                    extra = ["--init_from_attn", args.matvlm_source]
                    identity = file_identity(args.matvlm_source)
                    plan.notes[variant] = f"MaTVLM start from {args.matvlm_source} (sha256 {identity['sha256'][:12]})"
                    plan.extra_steps[variant] = source_steps(args.matvlm_source)
                else:
                    source = f"ablation_matvlm_source_s{seed}"
                    plan.runs.append(Run(variant, seed, source, common + [
                        "--ablation", "hybrid_matvlm", "--backbone_mode", "gated_attn_only", "--seed", str(seed),
                        "--exp_name", source], role="matvlm_source"))
                    extra = ["--init_from_attn", str(ckpt_dir / f"{source}_last.pt")]
                    plan.notes[variant] = (f"MaTVLM start from a gated_attn_only model (MaTVLM shapes) trained "
                                           f"{args.steps} steps with the same seed")
                    plan.extra_steps[variant] = args.steps
            if variant == "hybrid_inter":
                plan.notes[variant] = f"hybrid + {INTER_WEIGHT} x sum_i Lap(I_hat_i) on the flow blocks' blends"
            name = f"ablation_{variant}_s{seed}"
            plan.runs.append(Run(variant, seed, name, common + flags + ["--seed", str(seed), "--exp_name", name]
                                 + extra))
    return plan


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------
def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config without the fields that only say how it was started (an interrupted run is resumed)."""
    config = json.loads(json.dumps(config))
    for key in ("resume", "init_from_attn"):
        config.get("train", {}).pop(key, None)
    return config


def matvlm_source_of(run: Run) -> str | None:
    """The checkpoint a run starts from with ``--init_from_attn``, or None."""
    if "--init_from_attn" not in run.argv:
        return None
    return run.argv[run.argv.index("--init_from_attn") + 1]


def file_identity(path: str | Path) -> dict[str, str]:
    """{"path": absolute path, "sha256": hex digest of the content}: what a MaTVLM start is reused by."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"path": str(Path(path).resolve()), "sha256": digest.hexdigest()}


def source_record_path(run: Run, log_dir: Path) -> Path:
    """Where a MaTVLM row records the identity of the source it was started from (beside its summary.json)."""
    return log_dir / run.experiment / "matvlm_source.json"


def check_same_source(run: Run, log_dir: Path) -> None:
    """Refuse to reuse or continue a MaTVLM row that was started from another source (path or content) than the one
    this command names. (The config compared by :func:`comparable_config` leaves ``--init_from_attn`` out, because
    a continued run replaces it by ``--resume``.)"""
    source = matvlm_source_of(run)
    if source is None:
        return
    record = source_record_path(run, log_dir)
    wanted = file_identity(source)
    try:
        used = json.loads(record.read_text())
    except (OSError, ValueError):
        used = None
    if used != wanted:
        what = (f"from {used.get('path')} (sha256 {str(used.get('sha256'))[:12]})" if isinstance(used, dict)
                else "from a source it did not record")
        raise AblationError(f"{log_dir / run.experiment} was started {what}, not from {wanted['path']} (sha256 "
                            f"{wanted['sha256'][:12]}): delete {log_dir / run.experiment} and its checkpoints, or "
                            f"choose another --out")


def recorded_training_rate(summary: dict[str, Any]) -> float | None:
    """The training samples/s a run's summary.json recorded: the steady rate (after the first optimizer step) where
    the run has it (the first step of a process compiles kernels, which would make the first variant look slow),
    else the rate over the whole run."""
    return summary.get("steady_samples_per_sec") or summary["train_samples_per_sec"]


def read_summary(path: Path, run: Run) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise AblationError(f"{path}: unreadable run summary ({error})") from None
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise AblationError(f"{path}: run summary lacks {', '.join(missing)}")
    return summary


def finished_summary(run: Run, log_dir: Path, steps: int) -> dict[str, Any] | None:
    """The summary of an earlier identical, complete run of ``run``, or None."""
    path = log_dir / run.experiment / "summary.json"
    if not path.exists():
        return None
    summary = read_summary(path, run)
    wanted = comparable_config(config_from_argv(run.argv).to_dict())
    if summary["steps"] == steps and comparable_config(summary["config"]) == wanted and summary["last_val"]:
        check_same_source(run, log_dir)
        return summary
    raise AblationError(f"{path} belongs to a different or unfinished run of {run.experiment}: delete "
                        f"{log_dir / run.experiment} and its checkpoints, or choose another --out")


def run_train(argv: Sequence[str]) -> int:
    """``python train.py argv`` in a child process (this interpreter, the same environment and working folder); its
    exit status. Ctrl-C or SIGTERM reaching this process while it runs is passed on to it, and this process waits:
    train.py stops after the current step, saves, and exits 130 (a repeat within its grace period is ignored, so a
    Ctrl-C that reached both processes counts once)."""
    child = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *argv])

    def pass_on(number: int, frame) -> None:
        child.send_signal(number)

    previous = {number: signal.signal(number, pass_on) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def execute(run: Run, ckpt_dir: Path, log_dir: Path, steps: int, log=print, progress: bool = True) -> dict[str, Any]:
    """Run train.py for ``run`` (or reuse / continue it) and return its summary. ``progress`` False passes
    ``--no_progress`` on. Raises :class:`Interrupted` when Ctrl-C / SIGTERM stopped the run."""
    done = finished_summary(run, log_dir, steps)
    if done is not None:
        log(f"ablation: reusing the finished run {run.experiment}")
        return done
    argv = list(run.argv) + ([] if progress else ["--no_progress"])
    if (ckpt_dir / f"{run.experiment}_last.pt").exists():
        # An interrupted run: continue it exactly (its weights already hold any MaTVLM start).
        check_same_source(run, log_dir)
        if "--init_from_attn" in argv:
            at = argv.index("--init_from_attn")
            del argv[at:at + 2]
        argv += ["--resume", f"{run.experiment}_last"]
        log(f"ablation: continuing the interrupted run {run.experiment}")
    elif matvlm_source_of(run) is not None:
        source = matvlm_source_of(run)
        if not Path(source).is_file():
            raise AblationError(f"run {run.experiment}: its MaTVLM source {source} does not exist")
        atomic_write_text(source_record_path(run, log_dir), json.dumps(file_identity(source), indent=2))
    status = run_train(argv)                  # a fresh process: its peak GPU memory is this run's alone
    if status == 130:
        raise Interrupted(run.experiment)
    if status != 0:
        raise AblationError(f"run {run.experiment} failed (train.py exit status {status}; its error is above)")
    summary = read_summary(log_dir / run.experiment / "summary.json", run)
    if summary["steps"] != steps or not summary["last_val"]:
        raise AblationError(f"run {run.experiment} ended after {summary['steps']} of {steps} steps or without a "
                            f"validation result: delete {log_dir / run.experiment} and its checkpoints and rerun")
    return summary


def one_epoch_view(data_path: str, view: Path, repeats: int) -> str:
    """A Vimeo90K-layout folder whose training list is ``data_path``'s repeated ``repeats`` times (the test list
    and the frames are the original's; ``sequences`` is a link). Returns the path to train on."""
    if repeats <= 1:
        return data_path
    source = Path(data_path).resolve()
    view.mkdir(parents=True, exist_ok=True)
    link = view / "sequences"
    if link.is_symlink() and link.resolve() != (source / "sequences").resolve():
        link.unlink()
    if not link.exists():
        try:
            link.symlink_to(source / "sequences", target_is_directory=True)
        except FileExistsError:      # a parallel child made it first
            pass
    entries = [line for line in (source / "tri_trainlist.txt").read_text().splitlines() if line.strip()]
    atomic_write_text(view / "tri_trainlist.txt", "\n".join(entries * repeats) + "\n")
    atomic_write_text(view / "tri_testlist.txt", (source / "tri_testlist.txt").read_text())
    return str(view)


def strip_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def run_in_parallel(plan: Plan, child_argv: list[str], gpus: Sequence[str], logs_dir: Path, log=print) -> None:
    """Run the plan's runs as child processes of this script (``--only_run NAME``), one per GPU at a time.

    A ``hybrid_matvlm`` row starts after the source it is initialised from has finished. A failed run stops the
    scheduling of new runs; the ones under way finish, and the error names the failed run and its log file.
    """
    pending = list(plan.runs)
    done: set[str] = set()
    running: dict[str, tuple[subprocess.Popen, Run, Path]] = {}
    failed: list[tuple[Run, Path]] = []
    logs_dir.mkdir(parents=True, exist_ok=True)

    def ready(run_: Run) -> bool:
        needs = [r.experiment for r in plan.runs if r.role == "matvlm_source" and r.seed == run_.seed
                 and r.variant == run_.variant] if run_.role == "row" else []
        return all(name in done for name in needs)

    while pending or running:
        for gpu in [g for g in gpus if g not in running]:
            if failed:
                break
            run_ = next((r for r in pending if ready(r)), None)
            if run_ is None:
                break
            pending.remove(run_)
            log_path = logs_dir / f"{run_.experiment}.log"
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            with open(log_path, "w") as handle:
                process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *child_argv,
                                            "--only_run", run_.experiment], env=env, stdout=handle,
                                           stderr=subprocess.STDOUT)
            running[gpu] = (process, run_, log_path)
            log(f"ablation: {run_.experiment} started on GPU {gpu} (log: {log_path})")
        if not pending and not running:
            break
        time.sleep(1.0)
        for gpu, (process, run_, log_path) in list(running.items()):
            if process.poll() is None:
                continue
            del running[gpu]
            if process.returncode == 0:
                done.add(run_.experiment)
                log(f"ablation: {run_.experiment} finished on GPU {gpu}")
            else:
                failed.append((run_, log_path))
        if failed and not running:
            break
    if failed:
        names = ", ".join(f"{r.experiment} (see {p})" for r, p in failed)
        raise AblationError(f"run(s) failed: {names}")


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------
def mean_and_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def table_rows(plan: Plan, variants: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for variant in variants:
        runs = [r for r in plan.runs if r.variant == variant and r.role == "row"]
        sources = [r for r in plan.runs if r.variant == variant and r.role == "matvlm_source"]
        vals = [r.summary["last_val"] for r in runs]
        psnr, psnr_sd = mean_and_sd([v["psnr"] for v in vals])
        ssim, ssim_sd = mean_and_sd([v["ssim"] for v in vals])
        speeds = [recorded_training_rate(r.summary) for r in runs if recorded_training_rate(r.summary)]
        peaks = [r.summary["peak_gpu_mem_gib"] for r in runs if r.summary["peak_gpu_mem_gib"] is not None]
        extra = plan.extra_steps.get(variant, 0)
        rows.append({
            "variant": variant,
            "total_steps": None if extra is None else runs[0].summary["steps"] + extra,
            "params": runs[0].summary["params"],
            "train_samples_per_sec": statistics.fmean(speeds) if speeds else None,
            "peak_gpu_mem_gib": max(peaks) if peaks else None,
            "psnr": psnr, "psnr_sd": psnr_sd, "ssim": ssim, "ssim_sd": ssim_sd,
            "psnr_frame_average": statistics.fmean(v["psnr_frame_average"] for v in vals),
            "val_count": vals[0]["count"],
            "delta_psnr_vs_hybrid": None,
            "seeds": [r.seed for r in runs],
            "runs": [{"seed": r.seed, "experiment": r.experiment, "psnr": r.summary["last_val"]["psnr"],
                      "ssim": r.summary["last_val"]["ssim"], "train_samples_per_sec": recorded_training_rate(r.summary),
                      "peak_gpu_mem_gib": r.summary["peak_gpu_mem_gib"], "wall_seconds": r.summary["wall_seconds"]}
                     for r in runs],
            "matvlm_source": [{"seed": r.seed, "experiment": r.experiment, "psnr": r.summary["last_val"]["psnr"]}
                              for r in sources],
            "note": plan.notes.get(variant, ""),
        })
    reference = next((row for row in rows if row["variant"] == "hybrid"), None)
    if reference is not None:
        for row in rows:
            row["delta_psnr_vs_hybrid"] = row["psnr"] - reference["psnr"]
    for row in rows:
        if row["matvlm_source"]:
            source_psnr = statistics.fmean(s["psnr"] for s in row["matvlm_source"])
            row["note"] += f" (source val PSNR {source_psnr:.3f} dB)"
    return rows


def fmt(value: float | None, spec: str, spread: float | None = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec) + ("" if spread is None else f" ± {format(spread, spec)}")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    seeds = meta["seeds"]
    lines = [
        f"# Ablation: phase {meta['phase']}, model size {meta['model_size']}",
        "",
        f"{meta['date']} on {meta['device']}; {meta['steps']} optimizer steps per run at batch {meta['batch_size']}, "
        f"crop {meta['crop_size']}; seeds {', '.join(map(str, seeds))}; validation on {rows[0]['val_count']} "
        f"test triplets of `{meta['data_path']}`.",
        "",
        f"Command: `{meta['command']}`",
        "",
        (f"Each run is one epoch over the training list repeated {meta['train_list_repeats']} times. "
         if meta.get("train_list_repeats", 1) > 1 else "")
        + (f"Runs went {len(meta['gpus'])} at a time, one per GPU; samples/s is each run's own rate."
           if meta.get("gpus") else ""),
        "",
        "| variant | total steps | params | train samples/s | peak GPU GiB | val PSNR (dB) | val SSIM | "
        "frame-average PSNR | Δ PSNR vs hybrid | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append("| " + " | ".join([
            row["variant"], "?" if row["total_steps"] is None else str(row["total_steps"]),
            f"{row['params'] / 1e6:.3f}M", fmt(row["train_samples_per_sec"], ".1f"),
            fmt(row["peak_gpu_mem_gib"], ".2f"), fmt(row["psnr"], ".3f", row["psnr_sd"]),
            fmt(row["ssim"], ".4f", row["ssim_sd"]), fmt(row["psnr_frame_average"], ".3f"),
            fmt(row["delta_psnr_vs_hybrid"], "+.3f"), row["note"]]) + " |")
    lines += ["", "± is the sample standard deviation over the seeds (none with one seed). Δ is the difference of "
                  "the mean PSNR to the `hybrid` row; a difference smaller than the spreads is not a finding. "
                  "Peak GPU memory is CUDA's peak allocation of the run (`-` on the CPU). Total steps count every "
                  "optimizer step behind a row, its start's included."]
    if any(row["variant"] == "hybrid_matvlm" for row in rows):
        lines += ["", "`hybrid_matvlm` is not a like-for-like row: its total steps include the training of the "
                      "`gated_attn_only` model it starts from (2N where that source is trained here), and its Mamba2 "
                      "branch has another shape than `hybrid`'s (expand 1, one B/C group per head, state size = "
                      "attention head dim; config.matvlm_compatible). The table has no same-shape control trained "
                      "from scratch, so its Δ mixes the MaTVLM start with the extra steps and the other shape."]
    lines.append("")
    return "\n".join(lines)


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return "CPU"


def select_device(device: str) -> None:
    """Make train.py's device choice (CUDA when visible) land on ``device``: auto, cpu, cuda or cuda:N.

    train.py takes the first visible CUDA device, so the choice is made through CUDA_VISIBLE_DEVICES, which has to
    happen before anything in this process initialises CUDA.
    """
    if device == "auto":
        return
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if torch.cuda.is_available():
            raise ConfigError("--device cpu: CUDA was initialised before it could be hidden; run with "
                              "CUDA_VISIBLE_DEVICES= instead")
        return
    if device == "cuda" or device.startswith("cuda:"):
        if device != "cuda":
            index = device.split(":", 1)[1]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if not index.isdigit():
                raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
            ids = visible.split(",") if visible else None
            if ids is not None and int(index) >= len(ids):
                raise ConfigError(f"--device {device}: only {len(ids)} devices are visible")
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[int(index)] if ids is not None else index
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available")
        return
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from config import MODEL_SIZES, OneLineErrorParser
    p = OneLineErrorParser(prog="ablation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data_path", required=True, help="Vimeo90K-layout folder (tri_trainlist.txt, tri_testlist.txt)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps per run (every variant and seed)")
    p.add_argument("--batch_size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--crop_size", type=int, default=256, help="training crop (default 256)")
    p.add_argument("--variants", type=str, default=None,
                   help=f"comma-separated (default: {', '.join(default_variants(1))}; phase 2 adds hybrid_inter)")
    p.add_argument("--seeds", type=str, default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--phase", type=int, default=1, choices=(1, 2), help="training phase (default 1)")
    p.add_argument("--model_size", type=str, default="small", choices=tuple(MODEL_SIZES), help="(default small)")
    p.add_argument("--out", type=str, default="log/ablation/table.md",
                   help="Markdown table; table.json and the runs (runs/ckpt, runs/log) go beside it "
                        "(default log/ablation/table.md)")
    p.add_argument("--device", type=str, default="auto", help="auto / cpu / cuda / cuda:N (default auto)")
    p.add_argument("--matvlm_source", type=str, default=None,
                   help="gated_attn_only checkpoint (MaTVLM shapes) for hybrid_matvlm, instead of training one")
    p.add_argument("--gpus", type=str, default=None,
                   help="comma-separated CUDA device ids: run that many runs at a time, one per device")
    p.add_argument("--only_run", type=str, default=None, help=argparse.SUPPRESS)   # a --gpus child: one run
    p.add_argument("--num_workers", type=int, default=8, help="DataLoader workers per run (default 8)")
    p.add_argument("--no_progress", action="store_true",
                   help="no progress bars (passed on to every run); without it a terminal gets bars, a file or pipe "
                        "a line per run and train.py's plain progress lines")
    p.add_argument("--train_args", type=str, default="",
                   help="more train.py flags for every run, quoted (e.g. \"--amp bf16 --log_every 100\")")
    return p


def parse_list(text: str, flag: str, cast=str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [cast(item) for item in items]
    except ValueError:
        raise ConfigError(f"{flag} must be a comma-separated list, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"{flag} needs distinct, non-empty entries, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, " ".join(["python", "benchmark/ablation.py"] + [shlex.quote(a) for a in
                                                                         (sys.argv[1:] if argv is None else argv)]))
    except (Interrupted, KeyboardInterrupt) as stop:
        where = f" during run {stop.args[0]}" if isinstance(stop, Interrupted) else ""
        sys.stderr.write(f"ablation.py: interrupted{where}; repeat the same command to go on (finished runs are "
                         "reused, an interrupted one continues from its last checkpoint)\n")
        return 130
    except (ConfigError, AblationError) as error:
        parser.error(str(error))
        return 2  # unreachable: parser.error exits


def run(args: argparse.Namespace, command: str) -> int:
    from tqdm import tqdm

    from dataset import DatasetError, VimeoDataset

    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.matvlm_source and not Path(args.matvlm_source).is_file():
        raise ConfigError(f"--matvlm_source {args.matvlm_source}: no such checkpoint file")
    variants = parse_list(args.variants, "--variants") if args.variants else default_variants(args.phase)
    seeds = parse_list(args.seeds, "--seeds", int)
    select_device(args.device)
    try:
        train_samples = len(VimeoDataset(args.data_path, "train", crop_size=args.crop_size, augment=False))
    except DatasetError as error:
        raise ConfigError(str(error)) from None
    micro_per_epoch = train_samples // args.batch_size
    if micro_per_epoch < 1:
        raise ConfigError(f"--batch_size {args.batch_size} is larger than the {train_samples} training triplets "
                          f"in {args.data_path}")
    out = Path(args.out)
    ckpt_dir, log_dir = out.parent / "runs" / "ckpt", out.parent / "runs" / "log"
    repeats = math.ceil(args.steps / micro_per_epoch)
    original_data = args.data_path
    view = out.parent / "runs" / "data"
    if repeats > 1:
        args.data_path = str(view)            # made below, once every run's flags have been accepted
    epochs, steps_per_epoch = split_steps(args.steps, micro_per_epoch * repeats)
    plan = build_plan(args, variants, seeds, epochs, steps_per_epoch, ckpt_dir, log_dir)
    for run_ in plan.runs:                   # every flag is checked before the first run starts
        try:
            config_from_argv(run_.argv)
        except SystemExit:
            raise AblationError(f"train.py refused the flags of run {run_.experiment} (its error is above)") from None
    one_epoch_view(original_data, view, repeats)
    if args.only_run is not None:                       # a child of --gpus: this one run, no table
        run_ = next((r for r in plan.runs if r.experiment == args.only_run), None)
        if run_ is None:
            raise ConfigError(f"--only_run {args.only_run}: no such run in this plan")
        execute(run_, ckpt_dir, log_dir, args.steps, progress=not args.no_progress)
        return 0
    gpus = parse_list(args.gpus, "--gpus") if args.gpus else []
    where = f"{len(gpus)} GPUs ({', '.join(gpus)}), one run each at a time" if gpus else device_name()
    print(f"ablation: {len(plan.runs)} runs of {args.steps} steps ({epochs} epoch(s) x {steps_per_epoch}) on "
          f"{where}; table -> {out}", flush=True)
    started = time.perf_counter()
    if gpus:
        run_in_parallel(plan, strip_flag(args.argv, "--gpus"), gpus, out.parent / "runs" / "logs")
        for run_ in plan.runs:
            run_.summary = finished_summary(run_, log_dir, args.steps)
            if run_.summary is None:
                raise AblationError(f"run {run_.experiment} left no summary in {log_dir / run_.experiment}")
    elif not args.no_progress and sys.stdout.isatty() and sys.stderr.isatty():
        bar = tqdm(plan.runs, desc="ablation", unit="run", position=0, dynamic_ncols=True)
        for run_ in bar:
            bar.set_description(f"ablation: {run_.experiment}")
            run_.summary = execute(run_, ckpt_dir, log_dir, args.steps, log=tqdm.write)
        bar.close()
    else:                                   # a log file or pipe, or --no_progress: plain lines, no cursor codes
        for index, run_ in enumerate(plan.runs, start=1):
            print(f"ablation: run {index}/{len(plan.runs)}: {run_.experiment}", flush=True)
            run_.summary = execute(run_, ckpt_dir, log_dir, args.steps, progress=not args.no_progress)

    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "device": device_name(),
            "phase": args.phase, "model_size": args.model_size, "steps": args.steps, "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "batch_size": args.batch_size, "crop_size": args.crop_size,
            "seeds": seeds, "data_path": original_data, "train_list_repeats": repeats,
            "gpus": gpus, "wall_seconds": time.perf_counter() - started}
    rows = table_rows(plan, variants)
    atomic_write_text(out, markdown(rows, meta))
    atomic_write_text(out.with_name("table.json"), json.dumps({**meta, "rows": rows}, indent=2))
    print(markdown(rows, meta))
    print(f"ablation: wrote {out} and {out.with_name('table.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
