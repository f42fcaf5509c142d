"""No lost work (issue 11): dry runs keep their own files, no run overwrites another's, warm starts that load
almost nothing are refused."""

from __future__ import annotations

import pytest

import train
from checkpoint import load_matching_weights, partial_start_problem
from config import preset
from model import build_model


def run_args(vimeo_root, tmp_path, *extra):
    return ["--data_path", str(vimeo_root), "--model_size", "tiny", "--batch_size", "2", "--crop_size", "32",
            "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "log"),
            "--eval_interval", "1", "--log_every", "1", *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_dry_run_leaves_a_finished_runs_files_byte_identical(vimeo_root, tmp_path):
    assert train.main(run_args(vimeo_root, tmp_path, "--exp_name", "bikes", "--epochs", "1",
                               "--steps_per_epoch", "1")) == 0
    ckpt = tmp_path / "ckpt"
    before = {kind: (ckpt / f"bikes_{kind}.pt").read_bytes() for kind in ("last", "best")}
    for _ in range(2):      # the second dry run replaces the first one's files without asking
        assert train.main(run_args(vimeo_root, tmp_path, "--exp_name", "bikes", "--dry_run")) == 0
    for kind, content in before.items():
        assert (ckpt / f"bikes_{kind}.pt").read_bytes() == content, kind
    assert (ckpt / "bikes_dryrun_last.pt").exists() and (ckpt / "bikes_dryrun_best.pt").exists()
    assert (tmp_path / "log" / "bikes_dryrun" / "config.json").exists()


def test_a_real_run_after_a_dry_run_starts_fresh(vimeo_root, tmp_path, capsys):
    """The README's dry run uses the default name; the real run after it must not be told to continue it."""
    assert train.main(run_args(vimeo_root, tmp_path, "--dry_run")) == 0
    assert (tmp_path / "ckpt" / "phase1_hybrid_dryrun_last.pt").exists()
    capsys.readouterr()
    assert train.main(run_args(vimeo_root, tmp_path, "--epochs", "1", "--steps_per_epoch", "1")) == 0
    assert "resumed" not in capsys.readouterr().out
    assert (tmp_path / "ckpt" / "phase1_hybrid_last.pt").exists()


def test_no_fresh_run_or_warm_start_overwrites_another_runs_best(vimeo_root, tmp_path, capsys):
    args = run_args(vimeo_root, tmp_path, "--exp_name", "done", "--epochs", "1", "--steps_per_epoch", "1")
    assert train.main(args) == 0
    ckpt = tmp_path / "ckpt"
    (ckpt / "done_last.pt").unlink()                 # only the _best of a finished run is left
    best = (ckpt / "done_best.pt").read_bytes()
    capsys.readouterr()
    assert train.main(args) == 2
    line = one_error_line(capsys)
    assert "done_best.pt exists" in line and "--resume done_best" in line and "--exp_name" in line
    assert train.main(run_args(vimeo_root, tmp_path, "--exp_name", "p1", "--epochs", "1",
                               "--steps_per_epoch", "1")) == 0
    capsys.readouterr()
    # A warm start (another experiment's checkpoint) into a name that holds a run is refused as well.
    assert train.main([*args, "--phase", "2", "--resume", "p1_best"]) == 2
    assert "done_best.pt exists" in one_error_line(capsys)
    assert (ckpt / "done_best.pt").read_bytes() == best


def test_warm_start_that_loads_almost_nothing_is_refused_unless_allowed(vimeo_root, tmp_path, capsys):
    assert train.main(run_args(vimeo_root, tmp_path, "--exp_name", "tiny_p1", "--epochs", "1",
                               "--steps_per_epoch", "1")) == 0
    capsys.readouterr()
    other_size = run_args(vimeo_root, tmp_path, "--exp_name", "small_p1", "--epochs", "1", "--steps_per_epoch", "1",
                          "--resume", "tiny_p1_best")
    other_size[other_size.index("--model_size") + 1] = "small"
    assert train.main(other_size) == 2
    line = one_error_line(capsys)
    assert "refused" in line and "differ in shape" in line and "--model_size tiny (this run: small)" in line
    assert "--allow_partial_init" in line
    assert not (tmp_path / "ckpt" / "small_p1_last.pt").exists()
    assert train.main([*other_size, "--allow_partial_init"]) == 0
    assert "partial warm start" in capsys.readouterr().out


@pytest.mark.parametrize("source,target,accepted", [
    ((1, "tiny"), (2, "tiny"), True),         # Phase 1 -> Phase 2: the flow pipeline is new, RefineNet's inputs grow
    ((2, "tiny"), (1, "tiny"), True),         # back to Phase 1: the flow pipeline is unused
    ((1, "tiny"), (1, "tiny", "hybrid_mhc"), True),
    ((2, "small"), (2, "tiny"), False),       # issue 11's case: 9 of 301 tensors load
    ((1, "small"), (1, "base"), False),
])
def test_partial_start_threshold(source, target, accepted):
    saved, current = preset(*source).model, preset(*target).model
    report = load_matching_weights(build_model(current), build_model(saved).state_dict())
    problem = partial_start_problem(report, saved, current)
    assert (problem is None) == accepted, problem
    if not accepted:
        assert f"--model_size {source[1]} (this run: {target[1]})" in problem
