"""Runs that end well (issue 17): mixed frame sizes under torchrun, Ctrl-C, refused flags, plain progress lines."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

import train
from checkpoint import load_checkpoint
from conftest import moving_pattern, write_vimeo
from dataset import VimeoDataset
from loaders import SameSizeBatchSampler, item_frame_sizes
from model.loss import LOSS_LOG_KEYS
from torch.utils.data import Subset

REPO = Path(__file__).resolve().parents[1]


def base_args(data, tmp_path, name, *extra):
    return ["--data_path", str(data), "--model_size", "tiny", "--batch_size", "2", "--crop_size", "32",
            "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "log"),
            "--exp_name", name, "--eval_interval", "1", "--log_every", "1", *extra]


def mixed_size_vimeo(root: Path) -> Path:
    """4 training and 4 test triplets; the test list is 64x96, 64x96, 96x64, 96x64 in that order, so two ranks
    (rank r takes items r, r + 2) each get one of each size: a batch of two would not stack."""
    write_vimeo(root, train=4, test=4, height=64, width=96)
    for index in (6, 7):
        folder = root / "sequences" / f"{index // 10 + 1:05d}" / f"{index % 10 + 1:04d}"
        for frame in range(3):
            cv2.imwrite(str(folder / f"im{frame + 1}.png"), moving_pattern(96, 64, 2.0 * frame, seed=index))
    return root


# ---------------------------------------------------------------------------------------------- mixed sizes
def test_same_size_batches_hold_one_size_and_every_index_once(tmp_path):
    root = mixed_size_vimeo(tmp_path / "vimeo")
    test_set = VimeoDataset(root, "test")
    sizes = item_frame_sizes(test_set)
    assert sizes == [(64, 96), (64, 96), (96, 64), (96, 64)]
    assert item_frame_sizes(Subset(test_set, [3, 0])) == [(96, 64), (64, 96)]
    batches = list(SameSizeBatchSampler([0, 2, 1, 3], sizes, batch_size=4))
    assert batches == [[0, 1], [2, 3]]
    assert list(SameSizeBatchSampler([0, 2], sizes, batch_size=2)) == [[0], [2]]      # rank 0's shard of two
    assert list(SameSizeBatchSampler(range(4), sizes, batch_size=1)) == [[0], [1], [2], [3]]


def test_torchrun_validation_on_a_mixed_size_set(tmp_path):
    """Two gloo ranks through train.py on a test list of two frame sizes: the first evaluation used to fail in the
    collate (stack expects each tensor to be equal size)."""
    root = mixed_size_vimeo(tmp_path / "vimeo")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train.py"), *base_args(root, tmp_path, "mixed", "--epochs", "1", "--steps_per_epoch", "1",
                                                  "--no_progress")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 x cpu" in result.stdout and "epoch 1: val PSNR" in result.stdout
    assert "on 4 samples" in result.stdout                        # every test sample once across both ranks
    assert "weights identical on all ranks: yes" in result.stdout
    assert "epoch 1/1 step" not in result.stdout and "\r" not in result.stderr      # --no_progress: no progress


def test_shutdown_frees_a_ddp_wrapper_held_in_a_cycle_so_the_process_group_ends_there(tmp_path):
    """A finished run's DDP wrapper is kept alive by reference cycles, and through its reducer the process group:
    shutting down frees it, so gloo's threads end inside destroy_process_group, not at a later collection or at the
    interpreter's exit (where a finished two-rank run once died of SIGABRT)."""
    import gc
    import weakref
    import torch.distributed as dist
    from distributed import shutdown_distributed
    from torch.nn.parallel import DistributedDataParallel
    collecting = gc.isenabled()
    gc.disable()                                  # no automatic collection may free it before the shutdown does
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        holder = {"wrapper": DistributedDataParallel(torch.nn.Linear(2, 2))}
        holder["itself"] = holder                 # a cycle, as the trainer's hooks and graphs make
        wrapper = weakref.ref(holder["wrapper"])
        del holder
        assert wrapper() is not None
        shutdown_distributed()
        assert wrapper() is None and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if collecting:
            gc.enable()


# ---------------------------------------------------------------------------------------------- refused input
def tiny_checkpoint(path: Path) -> Path:
    from checkpoint import atomic_save
    from config import preset
    from model import build_model
    cfg = preset(1, size="tiny")
    torch.manual_seed(0)
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": build_model(cfg.model).state_dict(), "ema": None}, path)
    return path


def frames_folder(path: Path, count: int = 2) -> Path:
    path.mkdir()
    for index in range(count):
        cv2.imwrite(str(path / f"f{index}.png"), moving_pattern(64, 64, 2.0 * index, seed=0))
    return path


def interpolate_error(capsys, *args) -> str:
    import interpolate
    code = interpolate.main([*map(str, args), "--no_progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


def test_fp16_on_the_cpu_is_refused_in_one_line(vimeo_root, tmp_path, capsys):
    assert train.main(base_args(vimeo_root, tmp_path, "half", "--amp", "fp16", "--epochs", "1")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["train.py: error: --amp fp16 needs a CUDA device (this run is on cpu, which trains in fp32): "
                     "use --amp fp32 or auto"]
    assert not (tmp_path / "ckpt").exists()
    line = interpolate_error(capsys, "--input", frames_folder(tmp_path / "frames"), "--output", tmp_path / "out",
                             "--model", tiny_checkpoint(tmp_path / "tiny.pt"), "--amp", "fp16", "--device", "cpu")
    assert "--amp fp16 needs a CUDA device" in line and "bf16 or fp32" in line
    assert not (tmp_path / "out").exists()


def test_a_video_given_as_a_checkpoint_is_called_what_it_is(vimeo_root, tmp_path, capsys):
    video = tmp_path / "holiday.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    line = interpolate_error(capsys, "--input", frames_folder(tmp_path / "frames"), "--output", tmp_path / "out",
                             "--model", video)
    assert f"{video} is not a checkpoint: it is an MP4/MOV video" in line and "weights_only" not in line
    assert train.main(base_args(vimeo_root, tmp_path, "v", "--resume", str(video))) == 2
    err = capsys.readouterr().err
    assert "is not a checkpoint: it is an MP4/MOV video" in err and "weights_only" not in err
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    from checkpoint import CheckpointError, load_checkpoint
    with pytest.raises(CheckpointError, match="is not a checkpoint: it is no file torch.save wrote"):
        load_checkpoint(text)
    import collections
    torch.save({"model": collections.Counter("x")}, tmp_path / "code.pt")   # a class: weights_only refuses it
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "code.pt")
    assert "weights_only" not in str(error.value) and "not a Thesis-VFI checkpoint" in str(error.value)


def test_a_single_image_as_input_is_called_an_image(tmp_path, capsys):
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), moving_pattern(64, 64, 0.0, seed=0))
    line = interpolate_error(capsys, "--input", image, "--output", tmp_path / "out.mp4", "--model",
                             tiny_checkpoint(tmp_path / "tiny.pt"))
    assert f"--input {image} is a single image" in line and "video frame" not in line


def test_readme_names_every_loss_tag_train_writes():
    readme = (REPO / "README.md").read_text()
    missing = [f"loss/{tag}" for tag in LOSS_LOG_KEYS if f"loss/{tag}" not in readme]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------- Ctrl-C
def start_training(vimeo_root, tmp_path, name, *extra) -> subprocess.Popen:
    """python train.py with a pipe for standard output (so progress comes as plain lines, one per step)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "train.py", *base_args(vimeo_root, tmp_path, name, *extra)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt_at(process: subprocess.Popen, line_start: str, number=signal.SIGINT) -> tuple[str, str]:
    """Send ``number`` once standard output shows a line starting with ``line_start``; (stdout, stderr) at exit."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(line_start):
            process.send_signal(number)
            break
    else:
        process.wait(timeout=60)
        raise AssertionError(f"never saw {line_start!r}: {''.join(seen)[-2000:]} {process.stderr.read()[-2000:]}")
    out, err = process.communicate(timeout=120)
    return "".join(seen) + out, err


def test_ctrl_c_stops_at_a_step_boundary_says_where_and_the_resume_command_continues(vimeo_root, tmp_path):
    common = ("--epochs", "2", "--steps_per_epoch", "4")
    process = start_training(vimeo_root, tmp_path, "stop", *common)
    out, err = interrupt_at(process, "epoch 2/2 step 1/4")
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    line = err.strip().splitlines()[-1]
    match = re.fullmatch(r"train\.py: stopped by SIGINT at epoch 2/2, step (\d) \((\d) of 4 steps into the epoch\); "
                         r"last checkpoint (\S+) \(end of epoch 1, step 4; the (\d) steps since are not saved and will "
                         r"be trained again\); continue with: (python train\.py .*)", line)
    assert match, line
    step, into, last, lost, command = match.groups()
    assert int(step) == 4 + int(into) and int(lost) == int(into) and 1 <= int(into) <= 3      # stopped mid-epoch
    assert Path(last) == tmp_path / "ckpt" / "stop_last.pt" and load_checkpoint(last)["step"] == 4
    assert command.endswith("--resume stop_last") and "--epochs 2" in command
    assert "epoch 2: val PSNR" not in out
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stdout and "epoch 2: val PSNR" in resumed.stdout
    final = load_checkpoint(tmp_path / "ckpt" / "stop_last.pt")
    assert (final["step"], final["epoch"]) == (8, 2)


def test_sigterm_before_the_first_checkpoint_exits_130_in_one_line(vimeo_root, tmp_path, number=signal.SIGTERM):
    process = start_training(vimeo_root, tmp_path, "early", "--epochs", "1", "--steps_per_epoch", "4")
    _, err = interrupt_at(process, "epoch 1/1 step 1/4", number)
    assert process.returncode == 130
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"train\.py: stopped by {number.name} at epoch 1/1, step \d \(\d of 4 steps into the epoch\); "
                        r"no checkpoint yet \(the first is written at the end of epoch 1\): run the same command to "
                        r"start again", line), line
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())


# ---------------------------------------------------------------------------------------------- DDP layout
def test_no_grad_stride_warning_under_ddp():
    """The Mamba branch's depthwise conv weight used to be contiguous while its gradient came back channels-last, so
    DDP warned 'Grad strides do not match bucket view strides' (and copied through a mismatched view)."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_layout_worker.py"), str(port)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]
    assert "Grad strides do not match" not in result.stdout + result.stderr, result.stdout
    # torch 2.14 renamed broadcast_buffers and warns at every DDP start on the old name (distributed.wrap_ddp)
    assert "deprecated" not in result.stdout + result.stderr, result.stdout


def test_depthwise_weight_keeps_the_gradient_layout_through_moves_and_loads():
    from model import build_model
    from config import preset
    model = build_model(preset(1, "tiny").model)
    convs = [m.conv for m in model.modules() if type(m).__name__ == "InterleavedMamba2"]
    assert convs
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(torch.float64).to(torch.float32).load_state_dict(state)
    for conv in convs:
        channels, _, k, _ = conv.weight.shape
        assert conv.weight.stride() == (k * k, 1, k, 1)
        x = torch.randn(2, 5, 6, channels + 3)[..., :channels].permute(0, 3, 1, 2)   # how the branch feeds it
        conv(x).sum().backward()
        assert conv.weight.grad.stride() == conv.weight.stride()


def test_ddp_layout_benchmark_runs_on_cpu():
    result = subprocess.run([sys.executable, "benchmark/bench_ddp_layout.py", "--device", "cpu", "--model_size", "tiny",
                             "--phase", "1", "--batch", "1", "--size", "32", "--rounds", "1", "--steps", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| contiguous", "| channels"))]
    assert rows[0].startswith("| contiguous (before) |") and rows[0].endswith("| 2 |")      # the old layout mismatched
    assert rows[1].startswith("| channels-last (now) |") and rows[1].endswith("| 0 |")


# ---------------------------------------------------------------------------------------------- progress
def test_progress_is_plain_lines_in_a_file(vimeo_root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ("--epochs", "1", "--steps_per_epoch", "4", "--log_every", "2")
    logged = subprocess.run([sys.executable, "train.py", *base_args(vimeo_root, tmp_path, "lines", *common)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr[-2000:]
    both = logged.stdout + logged.stderr
    assert "\r" not in both and "\x1b[" not in both                    # no bar redraws, no cursor codes
    lines = [line for line in logged.stdout.splitlines() if line.startswith("epoch 1/1 step")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/1 step 1/4 (total 1/4)", "epoch 1/1 step 2/4 (total 2/4)",
                                                      "epoch 1/1 step 4/4 (total 4/4)"]   # step 1, then --log_every
    # --no_progress: see test_torchrun_validation_on_a_mixed_size_set.


# ---------------------------------------------------------------------------------------------- README
def test_readme_interpolation_example_runs_with_the_demo_checkpoint(tmp_path, capsys):
    """The README's first interpolate.py command names the checkpoint `make demo` writes and a folder it builds; run
    it with a stand-in for both (a tiny checkpoint under that name, three frames), and check the honest notes."""
    import interpolate
    readme = (REPO / "README.md").read_text()
    assert "No pretrained weights are published" in readme and "docs/LARGE_MOTION.md" in readme
    command = next(line for line in readme.splitlines() if line.startswith("python interpolate.py --model demo_phase1"))
    args = shlex.split(command)[2:]
    assert args[args.index("--model") + 1] == "demo_phase1_best"
    frames = args[args.index("--input") + 1]
    assert frames.startswith("data/sample_vimeo/sequences/")              # what make demo builds
    (tmp_path / "ckpt").mkdir()
    tiny_checkpoint(tmp_path / "ckpt" / "demo_phase1_best.pt")
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, name in enumerate(("im1.png", "im2.png", "im3.png")):
        cv2.imwrite(str(folder / name), moving_pattern(64, 96, 2.0 * index, seed=0))
    args[args.index("--input") + 1] = str(folder)
    args[args.index("--output") + 1] = str(tmp_path / "out")
    assert interpolate.main([*args, "--ckpt_dir", str(tmp_path / "ckpt"), "--no_progress"]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 5


def readme_block_commands(heading: str) -> list[list[str]]:
    """The commands of the first bash block after ``heading`` in README.md, continuation lines joined, comments
    dropped, each split as a shell would."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(heading):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_readme_recipe_commands_agree():
    """The one-GPU recipe's three commands parse with the tools' own parsers and name one corpus folder: the curated
    corpus it builds is the one it trains on and scores (a README that trained on data/corpus after building
    data/corpus36 would train on the whole corpus)."""
    from config import parse_train_argv
    corpus, train_cmd, score = readme_block_commands("### Train a usable model on one GPU")
    assert corpus[:2] == ["python", "tools/make_corpus.py"] and train_cmd[:2] == ["python", "train.py"]
    assert score[:2] == ["python", "benchmark/Corpus.py"]
    folder = corpus[corpus.index("--out") + 1]
    threshold = float(corpus[corpus.index("--min_classical_psnr") + 1])
    cfg, _ = parse_train_argv(train_cmd[2:])
    assert cfg.data.data_path == folder == score[score.index("--path") + 1]
    assert cfg.model.flow_prior == "dis" and cfg.train.freeze_flow and cfg.train.ema_decay == 0.0 and threshold > 0
    assert score[score.index("--model") + 1] == f"{cfg.train.exp_name}_last"


def test_stop_signals_before_and_after_arming(monkeypatch, capsys, vimeo_root, tmp_path):
    from distributed import DistributedContext
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    stop = train.StopSignals(ctx)
    with pytest.raises(KeyboardInterrupt):                 # start-up: at once
        stop.record(signal.SIGTERM)
    stop.arm()
    stop.record(signal.SIGTERM)
    stop.record(signal.SIGINT)                             # torchrun passing the same Ctrl-C on: ignored
    assert stop.agreed() and stop.stop_signal == signal.SIGTERM
    stop.received_at -= stop.REPEAT_GRACE_S + 1
    with pytest.raises(KeyboardInterrupt):                 # a later second signal: at once
        stop.record(signal.SIGINT)

    def interrupted_start_up(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "run", interrupted_start_up)
    previous = signal.getsignal(signal.SIGINT)
    assert train.main(base_args(vimeo_root, tmp_path, "startup")) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "train.py: interrupted during start-up; no checkpoint was written: run the same command to start again"]
    assert signal.getsignal(signal.SIGINT) is previous     # handlers put back
