"""Training system: checkpoints and TensorBoard tags, exact resume, DDP on CPU, warm start, freezing, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from checkpoint import load_checkpoint, model_from_checkpoint
from config import ExperimentConfig, config_from_argv
from loaders import CURRICULUM_GAPS, curriculum_max_gap
from measures.visualize import sample_grid
from model.loss import CompositeLoss
from Trainer import lr_at_step, parameter_groups

REPO = Path(__file__).resolve().parents[1]


def base_args(vimeo_root, tmp_path, name, *extra):
    return ["--data_path", str(vimeo_root), "--model_size", "tiny", "--batch_size", "2", "--crop_size", "32",
            "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "log"),
            "--exp_name", name, "--eval_interval", "1", "--log_every", "1", *extra]


def model_state(path):
    return load_checkpoint(path)["model"]


def test_two_step_run_writes_checkpoints_and_tensorboard_tags(vimeo_root, tmp_path, capsys):
    assert train.main(base_args(vimeo_root, tmp_path, "smoke", "--epochs", "1", "--steps_per_epoch", "2")) == 0
    for suffix in ("last", "best"):
        payload = load_checkpoint(tmp_path / "ckpt" / f"smoke_{suffix}.pt")
        assert payload["step"] == 2 and payload["epoch"] == 1
        assert payload["config"]["train"]["exp_name"] == "smoke"
    assert (tmp_path / "log" / "smoke" / "config.json").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "log" / "smoke"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("loss/loss_lap", "loss/loss_ter", "loss/loss_vgg", "loss/loss_flow_smooth", "loss/loss_total",
                "train/lr", "val/psnr", "val/ssim", "val/psnr_frame_average"):
        assert tag in scalars, tag
    assert "train/I0_pred_gt_I1" in events.Tags()["images"]
    assert "val PSNR" in capsys.readouterr().out


def test_image_grids_at_each_evaluation_without_a_phase1_mask_and_the_capped_warmup_is_logged(
        vimeo_root, tmp_path, capsys, monkeypatch):
    masks = []

    def spy(*args, **kwargs):
        masks.append(kwargs.get("mask"))
        return sample_grid(*args, **kwargs)
    monkeypatch.setattr(train, "sample_grid", spy)
    assert train.main(base_args(vimeo_root, tmp_path, "grids", "--epochs", "3", "--steps_per_epoch", "1",
                                "--image_every", "2")) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "log" / "grids"))
    events.Reload()
    # step 1 (first step), step 2 (--image_every), step 3 (the last evaluation): each once
    assert [e.step for e in events.Images("train/I0_pred_gt_I1")] == [1, 2, 3]
    assert [e.step for e in events.Images("val/I0_pred_gt_I1")] == [1, 2, 3]
    assert masks and all(mask is None for mask in masks)         # Phase 1: no flow, so no mask panel
    out = capsys.readouterr().out
    assert "warm-up capped at 1 of --warmup_steps 2000 steps" in out and out.count("warm-up capped") == 1


def test_run_writes_summary_json(vimeo_root, tmp_path):
    """log/<exp>/summary.json, the file benchmark/ablation.py reads: these key names exactly."""
    assert train.main(base_args(vimeo_root, tmp_path, "summary", "--epochs", "2", "--steps_per_epoch", "1")) == 0
    summary = json.loads((tmp_path / "log" / "summary" / "summary.json").read_text())
    assert set(summary) == {"experiment", "phase", "params", "steps", "epochs", "best_psnr", "last_val",
                            "train_samples_per_sec", "peak_gpu_mem_gib", "wall_seconds", "first_step_seconds",
                            "steady_samples_per_sec", "config"}
    assert (summary["experiment"], summary["phase"], summary["steps"], summary["epochs"]) == ("summary", 1, 2, 2)
    best = load_checkpoint(tmp_path / "ckpt" / "summary_best.pt")
    assert summary["best_psnr"] == best["best_metric"]
    last = load_checkpoint(tmp_path / "ckpt" / "summary_last.pt")["metrics"]
    assert summary["last_val"] == {k: last[k] for k in ("psnr", "ssim", "psnr_frame_average")} | {"count": 4}
    model, _ = model_from_checkpoint(str(tmp_path / "ckpt" / "summary_best.pt"))
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["train_samples_per_sec"] > 0 and summary["wall_seconds"] > 0
    assert 0 < summary["first_step_seconds"] < summary["wall_seconds"]
    assert summary["steady_samples_per_sec"] > 0                     # the second step ran after the first
    if torch.cuda.is_available():                                   # the suite also runs on the GPU machine
        assert summary["peak_gpu_mem_gib"] > 0
    else:
        assert summary["peak_gpu_mem_gib"] is None
    assert summary["config"] == json.loads(json.dumps(best["config"]))      # tuples -> lists
    assert not [p for p in (tmp_path / "log" / "summary").iterdir() if p.name.endswith(".tmp")]


def test_resume_last_is_bit_identical_to_an_uninterrupted_run(vimeo_root, tmp_path):
    common = ("--epochs", "3", "--steps_per_epoch", "2", "--ema_decay", "0.9")
    assert train.main(base_args(vimeo_root, tmp_path, "straight", *common)) == 0
    assert train.main(base_args(vimeo_root, tmp_path, "broken", *common, "--stop_after_epoch", "1")) == 0
    assert load_checkpoint(tmp_path / "ckpt" / "broken_last.pt")["epoch"] == 1
    assert train.main(base_args(vimeo_root, tmp_path, "broken", *common, "--resume", "broken_last")) == 0
    straight = load_checkpoint(tmp_path / "ckpt" / "straight_last.pt")
    resumed = load_checkpoint(tmp_path / "ckpt" / "broken_last.pt")
    assert straight["step"] == resumed["step"] == 6
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in straight["ema"].items():
        assert torch.equal(value, resumed["ema"][key]), key
    assert straight["best_metric"] == resumed["best_metric"]
    summary = json.loads((tmp_path / "log" / "broken" / "summary.json").read_text())
    assert (summary["steps"], summary["epochs"], summary["best_psnr"]) == (6, 3, resumed["best_metric"])


def test_refuses_to_overwrite_an_existing_run(vimeo_root, tmp_path, capsys):
    args = base_args(vimeo_root, tmp_path, "once", "--epochs", "1", "--steps_per_epoch", "1")
    assert train.main(args) == 0
    capsys.readouterr()
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "once_last.pt exists" in err[0] and "--resume once_last" in err[0]


def test_checkpoint_from_another_config_gives_one_line_error(vimeo_root, tmp_path, capsys):
    assert train.main(base_args(vimeo_root, tmp_path, "cfg", "--epochs", "2", "--steps_per_epoch", "1",
                                "--stop_after_epoch", "1")) == 0
    capsys.readouterr()
    rc = train.main(base_args(vimeo_root, tmp_path, "cfg", "--epochs", "2", "--steps_per_epoch", "1", "--use_mhc",
                              "--resume", "cfg_last"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "another model config" in err[0] and "use_mhc" in err[0]


def test_missing_checkpoint_and_dataset_give_one_line_errors(vimeo_root, tmp_path, capsys):
    capsys.readouterr()
    assert train.main(base_args(vimeo_root, tmp_path, "x", "--resume", "nope_best")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope_best" in err[0]
    missing = tmp_path / "no_such_vimeo"
    assert train.main(base_args(missing, tmp_path, "x")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]


@pytest.mark.parametrize("flags,fragment", [
    (["--phase", "4"], "--phase"),
    (["--backbone_mode", "transformer"], "--backbone_mode"),
    (["--epochs", "-3"], "--epochs"),
    (["--mixed_ratio", "2-1", "--phase", "3", "--x4k_path", "x"], "--mixed_ratio"),
    (["--curriculum"], "--curriculum"),
    (["--phase", "3"], "--x4k_path"),
    (["--freeze_backbone", "5"], "--freeze_backbone"),
    (["--crop_size", "100"], "--crop_size"),
    (["--flow_teacher", "0.01"], "--flow_teacher"),            # phase 1 has no flow to teach
    (["--phase", "2", "--flow_teacher", "-1"], "--flow_teacher"),
    (["--phase", "2", "--prior_anchor", "0.01"], "--flow_prior"),          # nothing to hold the flow to
    (["--phase", "2", "--flow_prior", "dis", "--prior_anchor", "-1"], "--prior_anchor"),
    (["--phase", "2", "--freeze_flow"], "--flow_prior"),                   # a frozen random estimator
    (["--phase", "2", "--flow_prior", "dis", "--freeze_flow", "--prior_anchor", "0.01"], "--prior_anchor"),
    (["--phase", "2", "--flow_prior", "dis", "--freeze_flow", "--flow_teacher", "0.01"], "--flow_teacher"),
    (["--phase", "2", "--flow_scales", "1", "2", "4"], "--flow_scales"),       # fine to coarse
    (["--phase", "2", "--flow_scales", "4", "2"], "--flow_scales"),            # one per block
    (["--phase", "2", "--flow_scales", "4", "2", "0"], "--flow_scales"),
])
def test_nonsense_flags_exit_with_one_line(vimeo_root, tmp_path, capsys, flags, fragment):
    with pytest.raises(SystemExit) as stop:
        config_from_argv(["--data_path", str(vimeo_root), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_help_lists_every_spec_flag(capsys):
    with pytest.raises(SystemExit):
        config_from_argv(["--help"])
    text = capsys.readouterr().out
    for flag in ("--phase", "--batch_size", "--lr", "--epochs", "--data_path", "--x4k_path", "--mixed_ratio",
                 "--crop_size", "--resume", "--freeze_backbone", "--exp_name", "--backbone_mode", "--use_mhc",
                 "--no-use_ecab", "--curriculum", "--curriculum_T", "--dry_run", "--num_workers", "--grad_accum",
                 "--eval_interval"):
        assert flag in text, flag


def test_flags_override_the_phase_preset(vimeo_root):
    cfg = config_from_argv(["--data_path", str(vimeo_root), "--phase", "2"])
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 200 and cfg.model.use_flow
    cfg = config_from_argv(["--data_path", str(vimeo_root), "--phase", "2", "--lr", "3e-4", "--no-use_ecab",
                            "--mixed_ratio", "3:1"])
    assert cfg.train.lr == 3e-4 and not cfg.model.use_ecab and cfg.data.mixed_ratio == (3, 1)
    cfg = config_from_argv(["--data_path", str(vimeo_root)])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.batch_size, cfg.data.crop_size) == (2e-4, 300, 8, 256)
    assert cfg.loss.flow_smooth == 0.0          # phase 1 has no flow
    assert cfg.model.flow_scales == (4, 2, 1)
    cfg = config_from_argv(["--data_path", str(vimeo_root), "--phase", "2", "--flow_scales", "8", "4", "2"])
    assert cfg.model.flow_scales == (8, 4, 2)      # a tuple, as a saved config rebuilds it: resume compares them
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    saved_before_the_field = cfg.to_dict()
    del saved_before_the_field["model"]["flow_scales"]
    assert ExperimentConfig.from_dict(saved_before_the_field).model.flow_scales == (4, 2, 1)


def test_nonfinite_loss_is_skipped_loudly_then_stops(vimeo_root, tmp_path, capsys, monkeypatch):
    original = CompositeLoss.forward

    def poisoned(self, pred, gt, *args, **kwargs):
        total, logs = original(self, pred, gt, *args, **kwargs)
        return total * float("nan"), logs
    monkeypatch.setattr(CompositeLoss, "forward", poisoned)
    rc = train.main(base_args(vimeo_root, tmp_path, "nan", "--epochs", "1", "--batch_size", "1"))   # 8 steps
    out, err = capsys.readouterr()
    assert rc == 2
    assert out.count("non-finite loss") == 5
    assert "diverged" in err and len(err.strip().splitlines()) == 1


def test_phase2_warm_start_from_phase1_and_backbone_freezing(vimeo_root, tmp_path, capsys):
    assert train.main(base_args(vimeo_root, tmp_path, "p1", "--epochs", "1", "--steps_per_epoch", "2")) == 0
    phase1 = model_state(tmp_path / "ckpt" / "p1_best.pt")
    capsys.readouterr()
    common = ("--phase", "2", "--epochs", "2", "--steps_per_epoch", "2", "--freeze_backbone", "1")
    assert train.main(base_args(vimeo_root, tmp_path, "p2", *common, "--resume", "p1_best",
                                "--stop_after_epoch", "1")) == 0
    out = capsys.readouterr().out
    assert "warm start from" in out and "flow_estimator" in out and "context" in out
    frozen = model_state(tmp_path / "ckpt" / "p2_last.pt")
    backbone_keys = [k for k in phase1 if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(frozen[k], phase1[k]) for k in backbone_keys)     # loaded and frozen
    assert not torch.equal(frozen["refine.head.weight"], phase1["refine.head.weight"])        # the rest trains
    assert train.main(base_args(vimeo_root, tmp_path, "p2", *common, "--resume", "p2_last")) == 0
    released = model_state(tmp_path / "ckpt" / "p2_last.pt")
    assert any(not torch.equal(released[k], phase1[k]) for k in backbone_keys)              # trains after release


def test_ddp_two_processes_on_cpu(vimeo_root, tmp_path):
    """Phase 2 on two gloo ranks, with the backbone frozen for epoch 1 and released (DDP rebuilt) for epoch 2, and
    EMA on: every rank's shadow must start from rank 0's broadcast weights (validation runs on the EMA)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
               *base_args(vimeo_root, tmp_path, "ddp", "--phase", "2", "--epochs", "2", "--steps_per_epoch", "2",
                          "--freeze_backbone", "1", "--ema_decay", "0.999")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 x cpu" in result.stdout
    assert result.stdout.count("epoch 1: val PSNR") == 1            # rank 0 alone prints
    assert "on 4 samples" in result.stdout                         # every test sample once across both ranks
    assert "backbone frozen for epochs 1-1" in result.stdout        # epochs counted from 1, as the bar does
    assert "backbone released at epoch 2" in result.stdout
    assert ("optimizer steps per rank: [4, 4]; weights identical on all ranks: yes; "
            "EMA identical on all ranks: yes") in result.stdout
    assert load_checkpoint(tmp_path / "ckpt" / "ddp_last.pt")["step"] == 4


# ---------------------------------------------------------------------------------------------- pure pieces
def test_phase2_run_with_the_flow_teacher_logs_its_term(vimeo_root, tmp_path):
    """--flow_teacher: the training items carry DIS flows, the term is computed and logged (> 0 for an untrained
    flow on moving content), and the resolved config records the weight."""
    name = "teacher"
    assert train.main(base_args(vimeo_root, tmp_path, name, "--phase", "2", "--epochs", "1", "--steps_per_epoch",
                                "2", "--flow_teacher", "0.01")) == 0
    payload = load_checkpoint(tmp_path / "ckpt" / f"{name}_last.pt")
    assert payload["config"]["loss"]["flow_teacher"] == 0.01
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "log" / name))
    events.Reload()
    values = [event.value for event in events.Scalars("loss/loss_flow_teacher")]
    assert values and all(math.isfinite(v) for v in values) and max(values) > 0


def test_phase2_run_with_the_prior_anchor_logs_its_term(vimeo_root, tmp_path):
    """--prior_anchor with --flow_prior dis: the term is computed from the batch's prior, logged, finite, and
    recorded in the resolved config."""
    name = "anchor"
    assert train.main(base_args(vimeo_root, tmp_path, name, "--phase", "2", "--epochs", "1", "--steps_per_epoch",
                                "3", "--flow_prior", "dis", "--prior_anchor", "0.05")) == 0
    payload = load_checkpoint(tmp_path / "ckpt" / f"{name}_last.pt")
    assert payload["config"]["loss"]["prior_anchor"] == 0.05
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "log" / name))
    events.Reload()
    values = [event.value for event in events.Scalars("loss/loss_prior_anchor")]
    assert values and all(math.isfinite(v) and v > 0 for v in values)


def test_phase2_run_with_the_flow_prior_trains_validates_and_resumes_exactly(vimeo_root, tmp_path, capsys):
    """--flow_prior dis end to end: the loader gives every training and validation batch its DIS pair flows, the
    model (whose first flow block then reads 18 channels) takes them in the training step and in validation, the
    run writes its checkpoints, and a run stopped after epoch 1 and resumed ends bit-identical to a straight one."""
    common = ("--phase", "2", "--epochs", "2", "--steps_per_epoch", "2", "--ema_decay", "0.9", "--flow_prior", "dis")
    assert train.main(base_args(vimeo_root, tmp_path, "prior", *common)) == 0
    assert train.main(base_args(vimeo_root, tmp_path, "prior_cut", *common, "--stop_after_epoch", "1")) == 0
    assert train.main(base_args(vimeo_root, tmp_path, "prior_cut", *common, "--resume", "prior_cut_last")) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"epoch \d: val PSNR .* on 4 samples", out)) == 4         # 2 + 1 + 1 evaluations
    straight = load_checkpoint(tmp_path / "ckpt" / "prior_last.pt")
    resumed = load_checkpoint(tmp_path / "ckpt" / "prior_cut_last.pt")
    assert (tmp_path / "ckpt" / "prior_best.pt").exists()
    assert straight["config"]["model"]["flow_prior"] == "dis" and straight["step"] == resumed["step"] == 4
    assert straight["model"]["flow_estimator.blocks.0.stage1.0.weight"].shape[1] == 18    # the prior's input layer
    for part in ("model", "ema"):
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert straight["metrics"]["psnr"] == resumed["metrics"]["psnr"]
    model, _ = model_from_checkpoint(str(tmp_path / "ckpt" / "prior_best.pt"))
    assert model.needs_flow_prior


def test_freeze_flow_keeps_the_flow_at_the_prior_and_trains_the_rest(vimeo_root, tmp_path, capsys):
    """--freeze_flow with --flow_prior dis: the flow blocks' heads, zero at the start of a prior model, are still
    zero after the run (so the flow is the prior's at t), where a run without the flag moves them from its first
    step; RefineNet has moved in both; the flag is in the resolved config."""
    common = ("--phase", "2", "--epochs", "1", "--steps_per_epoch", "3", "--flow_prior", "dis")
    assert train.main(base_args(vimeo_root, tmp_path, "frozen", *common, "--freeze_flow")) == 0
    assert "flow estimator frozen" in capsys.readouterr().out
    assert train.main(base_args(vimeo_root, tmp_path, "free", *common)) == 0
    frozen = load_checkpoint(tmp_path / "ckpt" / "frozen_last.pt")
    free = load_checkpoint(tmp_path / "ckpt" / "free_last.pt")
    assert frozen["config"]["train"]["freeze_flow"] is True and frozen["step"] == free["step"] == 3
    heads = [key for key in frozen["model"] if key.startswith("flow_estimator.") and ".head." in key]
    assert heads
    assert all(frozen["model"][key].abs().sum() == 0 for key in heads)
    assert any(free["model"][key].abs().sum() > 0 for key in heads)
    for payload in (frozen, free):
        assert payload["model"]["refine.head.weight"].abs().sum() > 0      # zero at the start too


def test_resuming_with_another_flow_prior_is_refused_naming_the_flag(vimeo_root, tmp_path, capsys):
    """A run trained without the prior cannot continue with one (the first flow block has other inputs), nor the
    other way round: one line naming --flow_prior and both values."""
    common = ("--phase", "2", "--epochs", "2", "--steps_per_epoch", "1")
    assert train.main(base_args(vimeo_root, tmp_path, "noprior", *common, "--stop_after_epoch", "1")) == 0
    capsys.readouterr()
    rc = train.main(base_args(vimeo_root, tmp_path, "noprior", *common, "--flow_prior", "dis", "--resume",
                              "noprior_last"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "another model config" in err[0] and "--flow_prior (checkpoint none, this run dis)" in err[0], err[0]


def test_warm_start_of_a_prior_model_from_a_run_without_says_what_starts_fresh(vimeo_root, tmp_path):
    """A prior model warm-started from a phase-2 checkpoint without one: every tensor loads but the first flow
    block's input convolution (7 -> 18 input channels), and the log says so naming --flow_prior."""
    from checkpoint import atomic_save
    from Trainer import Trainer
    source_cfg = config_from_argv(base_args(vimeo_root, tmp_path, "source", "--phase", "2"))
    source = Trainer.single_process(source_cfg, "cpu", steps_per_epoch=1, log=lambda *a: None)
    atomic_save(source.state_payload([]), tmp_path / "source.pt")
    lines = []
    cfg = config_from_argv(base_args(vimeo_root, tmp_path, "target", "--phase", "2", "--flow_prior", "dis",
                                     "--resume", str(tmp_path / "source.pt")))
    target = Trainer.single_process(cfg, "cpu", steps_per_epoch=1, log=lines.append)
    target.start()
    fresh = "flow_estimator.blocks.0.stage1.0.weight"
    note = next(line for line in lines if "--flow_prior none, this run has --flow_prior dis" in line)
    assert fresh in note and "starts fresh" in note
    before, after = source.model.state_dict(), target.model.state_dict()
    assert before[fresh].shape[1] + 11 == after[fresh].shape[1]
    assert all(torch.equal(before[k], after[k]) for k in after if k != fresh)


def test_matvlm_start_across_flow_priors_is_refused(vimeo_root, tmp_path):
    """--init_from_attn must reproduce its source's output; a source without the prior reads other inputs."""
    from checkpoint import CheckpointError, atomic_save
    from Trainer import Trainer
    source_cfg = config_from_argv(base_args(vimeo_root, tmp_path, "attn", "--phase", "2", "--ablation", "hybrid_matvlm",
                                            "--backbone_mode", "gated_attn_only"))
    source = Trainer.single_process(source_cfg, "cpu", steps_per_epoch=1, log=lambda *a: None)
    atomic_save(source.state_payload([]), tmp_path / "attn.pt")
    cfg = config_from_argv(base_args(vimeo_root, tmp_path, "hybrid", "--phase", "2", "--ablation", "hybrid_matvlm",
                                     "--flow_prior", "dis", "--init_from_attn", str(tmp_path / "attn.pt")))
    with pytest.raises(CheckpointError, match="--flow_prior none, this run has --flow_prior dis"):
        Trainer.single_process(cfg, "cpu", steps_per_epoch=1, log=lambda *a: None).start()


def test_learning_rate_schedule():
    lr = [lr_at_step(s, 2e-4, 10, 110, 0.1) for s in range(120)]
    assert lr[0] == pytest.approx(2e-5) and lr[9] == pytest.approx(2e-4)
    assert all(a <= b for a, b in zip(lr[:10], lr[1:10]))
    assert all(a >= b for a, b in zip(lr[10:110], lr[11:110]))
    assert lr[110] == pytest.approx(2e-5) and lr[119] == pytest.approx(2e-5)
    assert lr[60] == pytest.approx(2e-5 + (2e-4 - 2e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_curriculum_gap_grows_to_the_full_range_at_T():
    gaps = [curriculum_max_gap(epoch, 50, True) for epoch in range(80)]
    assert gaps[0] == CURRICULUM_GAPS[0]
    assert all(a <= b for a, b in zip(gaps, gaps[1:]))
    assert gaps[49] < CURRICULUM_GAPS[-1] <= gaps[50]
    assert sorted(set(gaps)) == list(CURRICULUM_GAPS)
    assert curriculum_max_gap(0, 50, False) == CURRICULUM_GAPS[-1]


def test_no_weight_decay_on_ssm_parameters_norms_and_biases():
    from config import preset
    from model import build_model
    model = build_model(preset(1, "tiny", "hybrid_mhc"))
    decay, no_decay = parameter_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert any(n.endswith("A_log") for n in no_decay_names) and any(n.endswith("dt_bias") for n in no_decay_names)
    assert any(n.endswith("bias_res") for n in no_decay_names)
    assert not any(n.endswith(("A_log", ".D", "dt_bias", ".bias")) for n in decay_names)
    assert any(n.endswith("qkv.weight") for n in decay_names)


def test_loss_config_defaults_match_the_loss_module():
    """config.LossConfig (what the CLI and checkpoints carry) and model.loss.LossWeights share the SPEC table."""
    import dataclasses
    from config import LossConfig
    from model.loss import LossWeights
    weights = dataclasses.asdict(LossWeights())
    assert {k: getattr(LossConfig(), k) for k in weights} == weights


def test_matvlm_init_from_an_attention_only_run(vimeo_root, tmp_path, capsys):
    """Train gated_attn_only with MaTVLM-compatible widths, then start a hybrid run from it (--init_from_attn)."""
    shapes = ("--ablation", "hybrid_matvlm", "--epochs", "1", "--steps_per_epoch", "1")
    assert train.main(base_args(vimeo_root, tmp_path, "attn", *shapes, "--backbone_mode", "gated_attn_only")) == 0
    capsys.readouterr()
    assert train.main(base_args(vimeo_root, tmp_path, "hybrid", *shapes, "--init_from_attn", "attn_last")) == 0
    out = capsys.readouterr().out
    assert "MaTVLM init from" in out and "mapped 2 attention->Mamba2 branches" in out   # exactness: test_matvlm.py
    # The log compares the source and the initialised hybrid on the validation set: function-preserving start.
    line = next(l for l in out.splitlines() if l.startswith("MaTVLM start: val PSNR source"))
    source, hybrid = (float(x) for x in re.findall(r"(-?[0-9.]+) dB", line))
    assert abs(source - hybrid) < 1e-3, line
    # Without the MaTVLM shapes (expand 2, one group) the copy has no meaning and is refused in one line.
    rc = train.main(base_args(vimeo_root, tmp_path, "refused", "--epochs", "1", "--init_from_attn", "attn_last"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "refused" in err[0]


def test_a_summary_that_cannot_be_written_is_a_warning_not_a_failed_run(vimeo_root, tmp_path, capsys, monkeypatch):
    """summary.json is a report written by rank 0 after the last collective: if its write fails (a full disk), the
    run still ends with status 0, its checkpoints in place, and the other ranks are not left waiting at the final
    barrier for a rank 0 that raised."""
    original = train.atomic_write_text

    def full_disk_for_the_summary(path, text):
        if Path(path).name == "summary.json":
            raise OSError(28, "No space left on device")
        return original(path, text)

    monkeypatch.setattr(train, "atomic_write_text", full_disk_for_the_summary)
    assert train.main(base_args(vimeo_root, tmp_path, "full", "--epochs", "1", "--steps_per_epoch", "2")) == 0
    err = capsys.readouterr().err
    assert "warning: could not write" in err and "summary.json" in err and "No space left" in err
    assert (tmp_path / "ckpt" / "full_last.pt").exists()
    assert not (tmp_path / "log" / "full" / "summary.json").exists()
