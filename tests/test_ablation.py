"""benchmark/ablation.py: each variant trained by train.py in a child process, rows read from the runs'
summary.json."""

from __future__ import annotations

import json

import pytest

from benchmark import ablation


def test_steps_split_into_epochs_exactly():
    assert ablation.split_steps(1500, 4) == (375, 4)
    assert ablation.split_steps(1500, 3207) == (1, 1500)
    assert ablation.split_steps(7, 4) == (7, 1)            # a prime that does not fit: one step per epoch
    assert ablation.split_steps(12, 5) == (3, 4)
    for steps, per in ((2, 4), (100, 7), (97, 200)):
        epochs, per_epoch = ablation.split_steps(steps, per)
        assert epochs * per_epoch == steps and per_epoch <= per


def test_default_variants_and_refusals(vimeo_root, tmp_path, capsys):
    assert ablation.default_variants(1) == ["hybrid", "mamba2_only", "gated_attn_only", "hybrid_mhc", "hybrid_cab",
                                            "hybrid_matvlm"]
    assert ablation.default_variants(2)[-1] == "hybrid_inter"
    common = ["--data_path", str(vimeo_root), "--steps", "2", "--crop_size", "32", "--out", str(tmp_path / "t.md")]
    for extra, fragment in ((["--variants", "hybrid,nonsense"], "unknown variant 'nonsense'"),
                            (["--variants", "hybrid_inter"], "needs --phase 2"),
                            (["--seeds", "0,x"], "--seeds"),
                            (["--batch_size", "99"], "larger than the 8 training triplets")):
        with pytest.raises(SystemExit) as error:
            ablation.main(common + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert error.value.code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "runs").exists()


def test_two_variants_two_steps_on_cpu(vimeo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)     # --device cpu sets it; restored after the test
    out = tmp_path / "abl" / "table.md"
    args = ["--data_path", str(vimeo_root), "--steps", "2", "--batch_size", "2", "--crop_size", "32",
            "--variants", "hybrid,hybrid_matvlm", "--model_size", "tiny", "--num_workers", "0", "--device", "cpu",
            "--out", str(out), "--train_args", "--log_every 1"]
    assert ablation.main(args) == 0
    table = json.loads((out.parent / "table.json").read_text())
    assert table["steps"] == 2 and table["epochs"] * table["steps_per_epoch"] == 2 and table["seeds"] == [0]
    rows = {row["variant"]: row for row in table["rows"]}
    assert list(rows) == ["hybrid", "hybrid_matvlm"]
    for row in rows.values():
        assert row["params"] > 0 and row["train_samples_per_sec"] > 0 and row["peak_gpu_mem_gib"] is None
        assert 0 < row["psnr"] < 100 and 0 < row["ssim"] <= 1 and row["psnr_sd"] is None
        assert row["val_count"] == 4 and row["psnr_frame_average"] > 0
    assert rows["hybrid"]["delta_psnr_vs_hybrid"] == 0.0
    assert rows["hybrid_matvlm"]["delta_psnr_vs_hybrid"] == pytest.approx(rows["hybrid_matvlm"]["psnr"]
                                                                          - rows["hybrid"]["psnr"])
    # hybrid_matvlm started from a gated_attn_only source trained here, and says so.
    assert [s["experiment"] for s in rows["hybrid_matvlm"]["matvlm_source"]] == ["ablation_matvlm_source_s0"]
    assert "MaTVLM start" in rows["hybrid_matvlm"]["note"] and "source val PSNR" in rows["hybrid_matvlm"]["note"]
    runs = out.parent / "runs"
    for name in ("ablation_hybrid_s0", "ablation_matvlm_source_s0", "ablation_hybrid_matvlm_s0"):
        summary = json.loads((runs / "log" / name / "summary.json").read_text())
        assert summary["steps"] == 2 and (runs / "ckpt" / f"{name}_last.pt").exists()
    assert json.loads((runs / "log" / "ablation_matvlm_source_s0" / "summary.json").read_text())[
        "config"]["model"]["backbone_mode"] == "gated_attn_only"
    markdown = out.read_text()
    assert "| hybrid_matvlm |" in markdown and "Δ PSNR vs hybrid" in markdown
    # Repeating the command reuses the finished runs instead of training (or refusing) again.
    capsys.readouterr()
    assert ablation.main(args) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 3


def test_small_set_trains_as_one_epoch_over_a_repeated_list(vimeo_root, tmp_path, monkeypatch):
    """8 triplets at batch 2 are 4 steps; 10 steps become one epoch over the list repeated 3 times (one
    evaluation and one save per run instead of one per pass), the frames read from the original folder."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "abl" / "table.md"
    assert ablation.main(["--data_path", str(vimeo_root), "--steps", "10", "--batch_size", "2", "--crop_size", "32",
                          "--variants", "hybrid", "--model_size", "tiny", "--num_workers", "0", "--device", "cpu",
                          "--out", str(out)]) == 0
    table = json.loads((out.parent / "table.json").read_text())
    assert (table["epochs"], table["steps_per_epoch"], table["train_list_repeats"]) == (1, 10, 3)
    assert table["data_path"] == str(vimeo_root)
    view = out.parent / "runs" / "data"
    assert (view / "sequences").resolve() == (vimeo_root / "sequences").resolve()
    original = (vimeo_root / "tri_trainlist.txt").read_text().split()
    assert (view / "tri_trainlist.txt").read_text().split() == original * 3
    summary = json.loads((out.parent / "runs" / "log" / "ablation_hybrid_s0" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["epochs"] == 1
    assert "repeated 3 times" in out.read_text()


def test_parallel_runs_one_per_device_and_matvlm_waits_for_its_source(vimeo_root, tmp_path, monkeypatch, capsys):
    """--gpus runs each run in its own process, as many at a time as devices listed (here on the CPU: the ids
    only set CUDA_VISIBLE_DEVICES); the hybrid_matvlm row starts only after its source has finished."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "par" / "table.md"
    assert ablation.main(["--data_path", str(vimeo_root), "--steps", "2", "--batch_size", "2", "--crop_size", "32",
                          "--variants", "hybrid,hybrid_matvlm", "--model_size", "tiny", "--num_workers", "0",
                          "--device", "cpu", "--gpus", "0,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("ablation_matvlm_source_s0 finished") < printed.index("ablation_hybrid_matvlm_s0 started")
    assert "2 GPUs (0, 1)" in printed
    rows = {row["variant"]: row for row in json.loads((out.parent / "table.json").read_text())["rows"]}
    assert set(rows) == {"hybrid", "hybrid_matvlm"} and rows["hybrid_matvlm"]["matvlm_source"]
    logs = out.parent / "runs" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["ablation_hybrid_matvlm_s0.log", "ablation_hybrid_s0.log",
                                                      "ablation_matvlm_source_s0.log"]
    assert "Runs went 2 at a time" in out.read_text()


def test_strip_flag():
    assert ablation.strip_flag(["--a", "1", "--gpus", "0,1", "--b"], "--gpus") == ["--a", "1", "--b"]
    assert ablation.strip_flag(["--gpus=0,1", "--b"], "--gpus") == ["--b"]


def attention_source(path, seed: int, step: int):
    """A gated_attn_only checkpoint with the MaTVLM shapes (what --matvlm_source takes), random weights."""
    import dataclasses

    import torch

    from checkpoint import atomic_save
    from config import preset
    from model import build_model
    cfg = preset(1, "tiny", "hybrid_matvlm")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_mode="gated_attn_only"))
    torch.manual_seed(seed)
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": build_model(cfg.model).state_dict(), "ema": None,
                 "step": step}, path)
    return path


def test_matvlm_row_is_reused_only_from_the_same_source_and_states_its_total_steps(vimeo_root, tmp_path, monkeypatch,
                                                                                    capfd):
    """capfd, not capsys: train.py runs in a child process, whose output reaches the file descriptors only."""
    capsys = capfd
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    source_a = attention_source(tmp_path / "a.pt", seed=1, step=7)
    source_b = attention_source(tmp_path / "b.pt", seed=2, step=7)
    out = tmp_path / "abl" / "table.md"

    def args(source):
        return ["--data_path", str(vimeo_root), "--steps", "2", "--batch_size", "2", "--crop_size", "32",
                "--variants", "hybrid_matvlm", "--model_size", "tiny", "--num_workers", "0", "--device", "cpu",
                "--out", str(out), "--matvlm_source", str(source), "--no_progress"]
    assert ablation.main(args(source_a)) == 0
    printed = capsys.readouterr().out
    assert "\r" not in printed and "ablation: run 1/1: ablation_hybrid_matvlm_s0" in printed
    assert "done: 2 steps" in printed                                # train.py's own lines were captured too
    row = json.loads((out.parent / "table.json").read_text())["rows"][0]
    assert row["total_steps"] == 9                                   # its own 2 + the source's 7
    table = out.read_text()
    assert "| hybrid_matvlm | 9 |" in table and "no same-shape control" in table and "2N" in table
    assert ablation.main(args(source_a)) == 0                        # same source: reused
    assert "reusing the finished run ablation_hybrid_matvlm_s0" in capsys.readouterr().out
    for source in (source_b, source_a):                              # another file; then the same path, new content
        if source == source_a:
            source_a.write_bytes(source_b.read_bytes())
        with pytest.raises(SystemExit) as error:
            ablation.main(args(source))
        err = capsys.readouterr().err.strip().splitlines()
        assert error.value.code == 2 and len(err) == 1, err
        assert "ablation_hybrid_matvlm_s0 was started from" in err[0] and "sha256" in err[0], err[0]


def test_a_stop_signal_reaches_the_training_process_and_the_driver_waits_for_it(tmp_path, monkeypatch):
    """SIGTERM sent to the ablation driver alone (a job scheduler) is passed on to train.py's process, and the driver
    waits until that process has saved and exited (130) instead of leaving it behind or killing it mid-save."""
    import os
    import signal
    import threading
    import time

    fake_train = tmp_path / "fake_train.py"          # stands in for train.py: stops after its "step" on SIGTERM
    fake_train.write_text(
        "import pathlib, signal, sys, time\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda number, frame: got.append(number))\n"
        "pathlib.Path(sys.argv[1]).write_text('ready')\n"
        "deadline = time.monotonic() + 60\n"          # never outlives a failed test for long
        "while not got and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "time.sleep(0.3)\n"
        "pathlib.Path(sys.argv[2]).write_text('saved')\n"
        "sys.exit(130)\n")
    monkeypatch.setattr(ablation, "TRAIN_SCRIPT", fake_train)
    ready, saved = tmp_path / "ready", tmp_path / "saved"

    def stop_the_driver_once_training_runs():
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_the_driver_once_training_runs, daemon=True).start()
    assert ablation.run_train([str(ready), str(saved)]) == 130
    assert saved.read_text() == "saved"
    assert signal.getsignal(signal.SIGTERM) is before               # the driver's own handlers are back
