"""Deep supervision through the training path: flag -> config -> Trainer -> CompositeLoss -> TensorBoard."""

from __future__ import annotations

import pytest

import train
from config import config_from_argv


def one_logged_step(vimeo_root, tmp_path, name: str, *flags: str):
    """One Phase-2 training step of the tiny model with ``flags``, logged every step; its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    args = ["--data_path", str(vimeo_root), "--model_size", "tiny", "--phase", "2", "--batch_size", "2",
            "--crop_size", "32", "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"),
            "--log_dir", str(tmp_path / "log"), "--exp_name", name, "--epochs", "1", "--steps_per_epoch", "1",
            "--log_every", "1", *flags]
    assert train.main(args) == 0
    events = EventAccumulator(str(tmp_path / "log" / name))
    events.Reload()
    return events


def test_inter_weight_flag_reaches_the_config(vimeo_root, capsys):
    common = ["--data_path", str(vimeo_root), "--model_size", "tiny"]
    assert config_from_argv(common).loss.inter == 0.0
    assert config_from_argv(common + ["--phase", "2", "--inter_weight", "0.5"]).loss.inter == 0.5
    assert config_from_argv(common + ["--phase", "1", "--inter_weight", "0.5"]).loss.inter == 0.0   # no flow
    with pytest.raises(SystemExit) as error:
        config_from_argv(common + ["--phase", "2", "--inter_weight", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert error.value.code == 2 and len(err) == 1 and "--inter_weight" in err[0]


def test_phase2_run_logs_loss_inter(vimeo_root, tmp_path):
    events = one_logged_step(vimeo_root, tmp_path, "inter", "--inter_weight", "0.5")
    for tag in ("loss/loss_lap", "loss/loss_ter", "loss/loss_vgg", "loss/loss_flow_smooth", "loss/loss_total"):
        assert tag in events.Tags()["scalars"], tag
    inter = events.Scalars("loss/loss_inter")
    assert inter and inter[0].value > 0


def test_ter_weight_flag_reaches_the_config_and_zero_drops_the_term(vimeo_root, tmp_path, capsys):
    """`--ter_weight` (docs/LARGE_MOTION.md, seventh round): the spec's 1.0 by default, any finite weight >= 0; at 0
    the ternary term is not computed and TensorBoard's `loss/loss_ter` reads 0."""
    common = ["--data_path", str(vimeo_root), "--model_size", "tiny"]
    assert config_from_argv(common).loss.ter == 1.0
    assert config_from_argv(common + ["--phase", "2", "--ter_weight", "0.25"]).loss.ter == 0.25
    with pytest.raises(SystemExit) as error:
        config_from_argv(common + ["--ter_weight", "nan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert error.value.code == 2 and len(err) == 1 and "--ter_weight" in err[0]
    events = one_logged_step(vimeo_root, tmp_path, "noter", "--ter_weight", "0")
    assert all(event.value == 0 for event in events.Scalars("loss/loss_ter"))      # logged as 0, as every off term
    assert events.Scalars("loss/loss_lap")[0].value > 0
