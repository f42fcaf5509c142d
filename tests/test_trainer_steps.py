"""Trainer defects of issue 8 section 4: fp16 GradScaler skips, a too-short epoch for --grad_accum, and the SSD
backend as a runtime choice (resume and evaluation). The EMA-under-DDP check is in test_train.py's gloo test."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import Trainer as trainer_module
import train
from checkpoint import atomic_save, load_checkpoint, model_from_checkpoint
from config import preset
from model.loss import CompositeLoss
from Trainer import Trainer


def tiny_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    frames = [torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=generator) for _ in range(3)]
    return {"img0": frames[0], "gt": frames[1], "img1": frames[2], "t": torch.full((2,), 0.5)}


@pytest.fixture
def fp16_trainer(monkeypatch) -> Trainer:
    """A tiny Phase-1 Trainer on the CPU with an enabled GradScaler (what --amp fp16 gives on a CUDA card without
    bf16): the scaler logic is device-agnostic, only the autocast dtype is left out."""
    monkeypatch.setattr(trainer_module, "training_precision", lambda amp, device: (None, True))
    cfg = preset(1, "tiny")
    cfg = replace(cfg, train=replace(cfg.train, ema_decay=0.5, warmup_steps=4, lr=1e-3))
    torch.manual_seed(0)
    trainer = Trainer.single_process(cfg, "cpu", steps_per_epoch=10, log=lambda *a: None)
    assert trainer.scaler.is_enabled()
    return trainer


def poison_next_loss(monkeypatch) -> None:
    """The next CompositeLoss call returns NaN (once)."""
    original = CompositeLoss.forward

    def once(self, *args, **kwargs):
        monkeypatch.setattr(CompositeLoss, "forward", original)
        total, logs = original(self, *args, **kwargs)
        return total * float("nan"), logs
    monkeypatch.setattr(CompositeLoss, "forward", once)


def snapshot(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return ({k: v.clone() for k, v in trainer.model.state_dict().items()},
            {k: v.clone() for k, v in trainer.ema.state_dict().items()})


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fp16_scaler_survives_nonfinite_losses_and_overflow_does_not_advance_anything(fp16_trainer, monkeypatch):
    trainer = fp16_trainer
    # 1. The very first loss is NaN: no scale() has run yet, so an update() would fail (``_scale is None``).
    poison_next_loss(monkeypatch)
    result = trainer.train_step(tiny_batch(0))
    assert result["skipped"] and not result["stepped"] and trainer.step == 0
    # 2. A clean step: everything advances (the EMA shadow now lags the live weights).
    assert trainer.train_step(tiny_batch(1))["stepped"] and trainer.step == 1
    scale, lr = trainer.scaler.get_scale(), trainer.current_lr()
    weights, shadow = snapshot(trainer)
    assert any(not torch.equal(weights[k], shadow[k]) for k in weights)
    # 3. A finite loss whose gradients overflow: the scaler skips optimizer.step and halves its scale; the step
    #    counter, hence the learning rate, and the EMA must not advance either.
    hook = next(trainer.model.parameters()).register_hook(lambda grad: torch.full_like(grad, float("inf")))
    result = trainer.train_step(tiny_batch(2))
    hook.remove()
    assert not result["stepped"] and not result["skipped"]
    assert trainer.step == 1 and trainer.current_lr() == lr and trainer.overflow_skips == 1
    assert trainer.scaler.get_scale() == scale / 2
    after_weights, after_shadow = snapshot(trainer)
    assert_same(weights, after_weights)
    assert_same(shadow, after_shadow)
    # 4. NaN again, now with inf checks of earlier windows behind it (the old "No inf checks were recorded").
    poison_next_loss(monkeypatch)
    assert trainer.train_step(tiny_batch(3))["skipped"] and trainer.step == 1
    # 5. Training goes on.
    assert trainer.train_step(tiny_batch(4))["stepped"] and trainer.step == 2 and trainer.nonfinite_streak == 0


def test_fp16_scale_collapsing_below_one_is_divergence(fp16_trainer):
    """Gradients that overflow at every scale would otherwise halve the scale forever while nothing trains."""
    trainer = fp16_trainer
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    hook = next(trainer.model.parameters()).register_hook(lambda grad: torch.full_like(grad, float("nan")))
    trainer.train_step(tiny_batch(0))
    trainer.train_step(tiny_batch(1))           # 4 -> 2 -> 1
    with pytest.raises(trainer_module.TrainingDiverged, match="loss scale"):
        trainer.train_step(tiny_batch(2))       # 1 -> 0.5
    hook.remove()
    assert trainer.step == 0


def plain_trainer(**train_overrides) -> tuple[Trainer, list[str]]:
    """A tiny fp32 Phase-1 Trainer on the CPU, and the list its log lines go to."""
    cfg = preset(1, "tiny")
    cfg = replace(cfg, train=replace(cfg.train, ema_decay=0.5, warmup_steps=4, lr=1e-3, **train_overrides))
    torch.manual_seed(0)
    messages = []
    trainer = Trainer.single_process(cfg, "cpu", steps_per_epoch=10, log=messages.append)
    return trainer, messages


def test_a_nonfinite_loss_skips_its_whole_accumulation_window(monkeypatch):
    """--grad_accum 2: a NaN loss in the first micro-batch is reported at once; the window's end (a finite loss)
    then applies nothing and counts one skip; the next window steps and clears the streak."""
    trainer, messages = plain_trainer(grad_accum=2)
    weights, shadow = snapshot(trainer)
    poison_next_loss(monkeypatch)
    first = trainer.train_step(tiny_batch(0))
    assert not first["stepped"] and not first["skipped"]
    assert sum("non-finite loss at step 0" in m for m in messages) == 1
    second = trainer.train_step(tiny_batch(1))
    assert second["skipped"] and not second["stepped"] and trainer.step == 0 and trainer.nonfinite_streak == 1
    assert all(p.grad is None for p in trainer.model.parameters())          # the window's gradients dropped
    assert_same(weights, snapshot(trainer)[0])
    assert_same(shadow, snapshot(trainer)[1])
    assert not trainer.train_step(tiny_batch(2))["stepped"]
    assert trainer.train_step(tiny_batch(3))["stepped"] and trainer.step == 1 and trainer.nonfinite_streak == 0


def test_a_nonfinite_gradient_norm_skips_the_step_and_counts_towards_divergence():
    trainer, messages = plain_trainer(max_nonfinite_steps=2)
    weights, shadow = snapshot(trainer)
    hook = next(trainer.model.parameters()).register_hook(lambda grad: torch.full_like(grad, float("inf")))
    result = trainer.train_step(tiny_batch(0))
    assert result["skipped"] and not result["stepped"] and trainer.step == 0
    assert any("non-finite gradient norm at step 0" in m for m in messages)
    assert not math.isfinite(trainer.last_grad_norm)
    assert_same(weights, snapshot(trainer)[0])
    assert_same(shadow, snapshot(trainer)[1])
    with pytest.raises(trainer_module.TrainingDiverged, match="2 non-finite steps in a row"):
        trainer.train_step(tiny_batch(1))
    hook.remove()


def test_one_amp_rule_for_training_and_inference():
    """config.resolve_amp names the precision (inference runs it as named); training keeps fp32 on the CPU and
    pairs fp16 with a GradScaler."""
    from config import resolve_amp
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == "fp32"
    assert [resolve_amp(name, cpu) for name in ("bf16", "fp16", "fp32")] == ["bf16", "fp16", "fp32"]
    assert all(trainer_module.training_precision(name, cpu) == (None, False) for name in ("auto", "bf16", "fp32"))
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert resolve_amp("auto", cuda) == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
        assert trainer_module.training_precision("fp16", cuda) == (torch.float16, True)
        assert trainer_module.training_precision("bf16", cuda) == (torch.bfloat16, False)


def test_epoch_shorter_than_grad_accum_is_refused(vimeo_root, tmp_path, capsys):
    """8 samples at batch 2 are 4 micro-batches: --grad_accum 8 would never take an optimizer step."""
    args = ["--data_path", str(vimeo_root), "--model_size", "tiny", "--batch_size", "2", "--crop_size", "32",
            "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "log"),
            "--exp_name", "accum", "--epochs", "1", "--grad_accum", "8"]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--grad_accum 8" in err[0] and "4 micro-batches" in err[0]
    assert not (tmp_path / "ckpt").exists()


def test_resume_may_switch_the_ssd_backend(vimeo_root, tmp_path, capsys):
    args = ["--data_path", str(vimeo_root), "--model_size", "tiny", "--batch_size", "2", "--crop_size", "32",
            "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "log"),
            "--exp_name", "backend", "--epochs", "2", "--steps_per_epoch", "1", "--eval_interval", "2"]
    assert train.main([*args, "--ssd_backend", "torch", "--stop_after_epoch", "1"]) == 0
    capsys.readouterr()
    assert train.main([*args, "--ssd_backend", "auto", "--resume", "backend_last"]) == 0, capsys.readouterr().err
    payload = load_checkpoint(tmp_path / "ckpt" / "backend_last.pt")
    assert payload["step"] == 2 and payload["config"]["model"]["ssm_backend"] == "auto"


def test_checkpoint_saved_with_the_triton_backend_evaluates_on_cpu(tmp_path):
    """A format-1 checkpoint carries model.ssm_backend; a GPU run's "triton" must not stop CPU evaluation."""
    from model import build_model
    cfg = preset(1, "tiny")
    cfg = replace(cfg, model=replace(cfg.model, ssm_backend="triton"))
    torch.manual_seed(0)
    source = build_model(replace(cfg.model, ssm_backend="torch"))
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": source.state_dict(), "ema": None},
                tmp_path / "gpu_run_best.pt")
    model, loaded_cfg = model_from_checkpoint(str(tmp_path / "gpu_run_best.pt"))
    assert loaded_cfg.model.ssm_backend == "auto"
    img0, img1 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(img0, img1, 0.5).pred, source.eval()(img0, img1, 0.5).pred)
    # Who wants the kernel named in the checkpoint asks for it.
    _, kept = model_from_checkpoint(str(tmp_path / "gpu_run_best.pt"), ssm_backend=None)
    assert kept.model.ssm_backend == "triton"
