"""interpolate.py: exact frame counts and rates, copies at cuts and duplicates, folders, audio, atomic output, the
one-line errors, and the t arithmetic (halving for t = 0.5-only checkpoints, direct t for Phase 3).

The clip: 8 frames of 64x96 at 24 fps, moving shapes; frame 4 repeats frame 3 (a duplicate) and frames 5-7 are
another shot (a hard cut between 4 and 5). Written losslessly (libx264 -qp 0) with an AAC tone, so a decoded frame
matches the source to codec rounding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import interpolate
import train
from checkpoint import atomic_save
from config import preset
from footage import video_io
from footage.interpolator import FrameInterpolator
from footage.timeplan import halving_rounds, output_frame_count, pair_times
from model import build_model

from conftest import counting_dis

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, RATE = 64, 96, 24
DUPLICATE_PAIR, CUT_PAIR = 3, 4          # pair i = input frames (i, i+1)
def find_ffmpeg() -> str | None:
    """The ffmpeg binary the imageio-ffmpeg wheel ships: the tests build their clips with it."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


FFMPEG = find_ffmpeg()
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None or not video_io.pyav_available(),
                                  reason="imageio-ffmpeg (test clips) or PyAV is not installed")


def shot_frame(index: int, shot: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: shapes that move a few pixels per frame; the two shots differ in every pixel."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    if shot == 0:
        image[:] = (40, 60, 90)
        cv2.circle(image, (12 + 4 * index, 30), 10, (250, 200, 40), -1)
        cv2.rectangle(image, (70 - 3 * index, 6), (86 - 3 * index, 22), (30, 220, 120), -1)
    else:
        image[:] = (230, 220, 200)
        cv2.rectangle(image, (6 + 4 * index, 34), (32 + 4 * index, 58), (200, 20, 30), -1)
    return image


def clip_frames() -> list[np.ndarray]:
    shot_a = [shot_frame(i, 0) for i in range(4)]
    return shot_a + [shot_a[-1].copy()] + [shot_frame(i, 1) for i in range(3)]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame (RGB) and the rate, through OpenCV: an independent reader of what interpolate.py wrote."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    return frames, fps


def write_video(path: Path, frames: list[np.ndarray], audio: bool = True) -> Path:
    audio_input = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-shortest", "-c:a", "aac"]
    command = [FFMPEG, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}",
               "-framerate", str(RATE), "-i", "-", *(audio_input if audio else []),
               "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, input=b"".join(f.tobytes() for f in frames), check=True)
    return path


def has_audio(path: Path) -> bool:
    result = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return " Audio: " in result.stderr


@pytest.fixture(scope="module")
def checkpoint(vimeo_root, tmp_path_factory) -> Path:
    """A tiny Phase-1 checkpoint trained for two steps (the way tests/test_train.py trains)."""
    root = tmp_path_factory.mktemp("interp_train")
    assert train.main(["--data_path", str(vimeo_root), "--model_size", "tiny", "--batch_size", "2",
                       "--crop_size", "32", "--num_workers", "0", "--ckpt_dir", str(root / "ckpt"),
                       "--log_dir", str(root / "log"), "--exp_name", "interp", "--epochs", "1",
                       "--steps_per_epoch", "2", "--eval_interval", "1"]) == 0
    return root / "ckpt" / "interp_last.pt"


@pytest.fixture(scope="module")
def phase3_checkpoint(tmp_path_factory) -> Path:
    """A tiny Phase-3 (arbitrary t) checkpoint with random weights: enough to check how t reaches the model."""
    cfg = preset(3, size="tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("interp_p3") / "p3.pt"
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": build_model(cfg).state_dict(), "ema": None}, path)
    return path


@pytest.fixture(scope="module")
def prior_checkpoint(tmp_path_factory) -> Path:
    """A tiny Phase-2 --flow_prior dis checkpoint with random weights: it needs a prior on every call."""
    cfg = preset(2, size="tiny")
    cfg = replace(cfg, model=replace(cfg.model, flow_prior="dis"))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("interp_prior") / "prior.pt"
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": build_model(cfg).state_dict(), "ema": None}, path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clip")
    frames = clip_frames()
    folder = root / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{index + 1}.png"), frame[..., ::-1])   # natural order: 1..8, not 1, 10..
    result = {"frames": frames, "folder": folder}
    if FFMPEG is not None:
        result["video"] = write_video(root / "clip.mp4", frames)
        result["decoded"] = read_video(result["video"])[0]
    return result


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = interpolate.main([*map(str, args), "--no_progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------------------
# Output times: pure arithmetic
# --------------------------------------------------------------------------------------------------------
def test_output_times_counts_and_halving_plan():
    third = Fraction(1, 3)
    assert pair_times(5, third) == [0, third, 2 * third]
    # 24 -> 60 fps: output k sits at input time 0.4 k; pair 1 (input 1 .. 2) gets k = 3, 4 at t = 0.2, 0.6.
    ratio = Fraction(24, 60)
    assert pair_times(1, ratio) == [Fraction(1, 5), Fraction(3, 5)]
    assert sum(len(pair_times(i, ratio)) for i in range(7)) == output_frame_count(8, ratio) == 18
    assert [output_frame_count(8, Fraction(1, n)) for n in (2, 3, 4)] == [15, 22, 29]
    assert halving_rounds([Fraction(1, 4), Fraction(1, 2), Fraction(3, 4)]) == [[Fraction(1, 2)],
                                                                                [Fraction(1, 4), Fraction(3, 4)]]
    # Only the ancestors a time needs: 3/8 comes from 1/4 and 1/2, 1/4 from 0 and 1/2.
    assert halving_rounds([Fraction(3, 8)]) == [[Fraction(1, 2)], [Fraction(1, 4)], [Fraction(3, 8)]]
    with pytest.raises(ValueError):
        halving_rounds([third])
    assert interpolate.default_flow_scale(1080, 1920) == 1.0
    assert interpolate.default_flow_scale(1080, 2048) == 0.5
    assert interpolate.default_flow_scale(2160, 3840) == 0.25


class LinearBlend(nn.Module):
    """An oracle 'model': (1 - t) * img0 + t * img1, recording every t it is given."""

    def __init__(self):
        super().__init__()
        self.seen: list[float] = []
        self.batches: list[int] = []

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        t = torch.as_tensor(t, dtype=img0.dtype).reshape(-1, 1, 1, 1)
        self.seen += t.flatten().tolist()
        self.batches.append(img0.shape[0])
        return (1 - t) * img0 + t * img1


@pytest.mark.parametrize("halving, times, model_ts", [
    (True, [Fraction(k, 8) for k in range(8)], {0.5}),
    (False, [Fraction(k, 3) for k in range(3)], {1 / 3, 2 / 3}),
])
def test_interpolator_puts_each_time_where_it_belongs(halving, times, model_ts):
    """With a linear oracle every output must be the exact blend at its t, whether reached by halving (the model
    only ever sees t = 0.5) or given directly; calls are batched across pairs."""
    oracle = LinearBlend()
    engine = FrameInterpolator(oracle, torch.device("cpu"), None, False, 1.0, batch_size=3, halving=halving)
    pairs = [(torch.full((1, 3, 8, 8), float(a)), torch.full((1, 3, 8, 8), float(b)), times)
             for a, b in ((0.0, 1.0), (0.2, 0.6))]
    results = engine.interpolate(pairs)
    for (img0, img1, _), values in zip(pairs, results):
        for t in times[1:]:
            expected = (1 - float(t)) * img0 + float(t) * img1
            assert torch.allclose(values[t], expected, atol=1e-6), t
    assert {round(t, 6) for t in oracle.seen} == {round(t, 6) for t in model_ts}
    assert engine.model_calls == len(oracle.seen) == 2 * (len(times) - 1)
    assert max(oracle.batches) == 3


def test_fixed_batch_fills_the_last_batch_and_drops_the_extra_predictions():
    """With --compile every forward pass has the full batch (a new batch size would compile the model again); the
    filler requests' predictions are dropped and only real calls are counted."""
    oracle, reference = LinearBlend(), LinearBlend()
    times = [Fraction(k, 4) for k in range(4)]                 # 3 calls per pair, 2 pairs: batches of 4 and 2
    pairs = [(torch.full((1, 3, 8, 8), float(a)), torch.full((1, 3, 8, 8), float(b)), times)
             for a, b in ((0.0, 1.0), (0.2, 0.6))]
    fixed = FrameInterpolator(oracle, torch.device("cpu"), None, False, 1.0, batch_size=4, halving=False,
                              fixed_batch=True)
    plain = FrameInterpolator(reference, torch.device("cpu"), None, False, 1.0, batch_size=4, halving=False)
    got, expected = fixed.interpolate(pairs), plain.interpolate(pairs)
    assert oracle.batches == [4, 4] and reference.batches == [4, 2]
    assert fixed.model_calls == plain.model_calls == 6
    for values, wanted in zip(got, expected):
        assert values.keys() == wanted.keys()
        assert all(torch.equal(values[t], wanted[t]) for t in wanted)


# --------------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------------
@needs_ffmpeg
@pytest.mark.parametrize("multi", [2, 3, 4])
def test_multi_video_counts_rate_audio_and_copies(checkpoint, clip, tmp_path, capsys, multi):
    out = tmp_path / f"out{multi}.mp4"
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["video"], "--output", out,
                                   "--multi", multi, "--crf", 0)
    assert code == 0, stderr
    frames, fps = read_video(out)
    assert len(frames) == 7 * multi + 1
    assert fps == pytest.approx(RATE * multi)
    assert stdout.strip().splitlines()[-1].startswith(f"frames in 8, frames out {7 * multi + 1}, cuts 1, "
                                                      f"duplicates 1,")
    assert has_audio(out)
    decoded = clip["decoded"]
    for index in range(8):                            # every input frame is kept, at k * multi
        assert mad(frames[index * multi], decoded[index]) < 1.5, index
    for pair in (DUPLICATE_PAIR, CUT_PAIR):           # between them: copies of the earlier frame, never blends
        for j in range(1, multi):
            assert mad(frames[pair * multi + j], decoded[pair]) < 1.5, (pair, j)
    # A motion pair is interpolated: its middle frame is neither input frame.
    middle = frames[multi + multi // 2]
    assert mad(middle, decoded[1]) > 1.5 and mad(middle, decoded[2]) > 1.5
    if multi == 4:
        assert "recursive halving" in stdout
    if multi == 3:
        assert "never saw t = 1/3, 2/3" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]       # no temporary files left


@needs_ffmpeg
def test_fps_24_to_60_exact_times(checkpoint, clip, tmp_path, capsys):
    out = tmp_path / "out60.mkv"
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["video"], "--output", out,
                                   "--fps", 60, "--crf", 0)
    assert code == 0, stderr
    frames, fps = read_video(out)
    assert len(frames) == 18 == output_frame_count(8, Fraction(24, 60))
    assert fps == pytest.approx(60)
    assert "never saw" in stderr                      # t = k/5 for a t = 0.5-only checkpoint
    # Output k is at input time 0.4 k: k = 10, 11, 12 lie in the cut pair (4 .. 5), k = 0 and 5 on inputs 0 and 2.
    for k in (10, 11, 12):
        assert mad(frames[k], clip["decoded"][CUT_PAIR]) < 1.5, k
    assert mad(frames[0], clip["decoded"][0]) < 1.5 and mad(frames[5], clip["decoded"][2]) < 1.5


@needs_ffmpeg
def test_audio_is_left_out_when_the_timing_changes(checkpoint, clip, tmp_path, capsys):
    """--input_fps 12 stretches the 24 fps clip to twice its length: its audio would drift, so it is not copied."""
    out = tmp_path / "stretched.mp4"
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["video"], "--output", out,
                                   "--input_fps", 12)
    assert code == 0, stderr
    assert "note: audio not copied: the output lasts 0.625 s" in stdout
    frames, fps = read_video(out)
    assert len(frames) == 15 and fps == pytest.approx(24)
    assert not has_audio(out)


@needs_ffmpeg
def test_phase3_checkpoint_gets_t_directly(phase3_checkpoint, clip, tmp_path, capsys):
    out = tmp_path / "p3.mp4"
    code, stdout, stderr = run_cli(capsys, "--model", phase3_checkpoint, "--input", clip["video"], "--output", out,
                                   "--multi", 3, "--strict_t")
    assert code == 0, stderr
    assert "Phase-3 checkpoint: each t = k/3 is given to the model directly" in stdout
    assert "flow_scale 1 (default for 96x64" in stdout
    assert "never saw" not in stderr
    assert len(read_video(out)[0]) == 22


@needs_ffmpeg
def test_opencv_fallback_without_imageio_ffmpeg(checkpoint, clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(interpolate, "pyav_available", lambda: False)
    out = tmp_path / "cv.mp4"
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["video"], "--output", out)
    assert code == 0, stderr
    assert stderr.count("PyAV is not installed") == 1
    frames, fps = read_video(out)
    assert len(frames) == 15 and fps == pytest.approx(48)


# --------------------------------------------------------------------------------------------------------
# Frame folders
# --------------------------------------------------------------------------------------------------------
def test_folder_in_folder_out_copies_are_exact(checkpoint, clip, tmp_path, capsys):
    out = tmp_path / "out_frames"
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output", out,
                                   "--multi", 2)
    assert code == 0, stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{k:08d}.png" for k in range(15)]
    frames = [cv2.imread(str(out / name))[..., ::-1] for name in names]
    source = clip["frames"]
    for index in range(8):
        assert np.array_equal(frames[2 * index], source[index]), index
    assert np.array_equal(frames[2 * DUPLICATE_PAIR + 1], source[DUPLICATE_PAIR])
    assert np.array_equal(frames[2 * CUT_PAIR + 1], source[CUT_PAIR])
    assert not np.array_equal(frames[3], source[1]) and not np.array_equal(frames[3], source[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_frames"]


@pytest.mark.parametrize("output_name", ["frames_out", "video.mp4"])
def test_interrupt_leaves_no_output(checkpoint, clip, tmp_path, capsys, monkeypatch, output_name):
    """Ctrl-C in the middle of writing: exit status 130 and nothing in the output folder, not even a temp file."""
    if output_name.endswith(".mp4") and FFMPEG is None:
        pytest.skip("imageio-ffmpeg is not installed")
    sink_class = video_io.FolderSink if "." not in output_name else video_io.AvSink
    original = sink_class.write
    written = []

    def write_then_interrupt(self, frame):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(1)
        original(self, frame)

    monkeypatch.setattr(sink_class, "write", write_then_interrupt)
    out_dir = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output",
                                   out_dir / output_name, "--input_fps", 24)
    assert code == 130
    assert "interrupted; nothing was written" in stderr
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written
# --------------------------------------------------------------------------------------------------------
def bad_case(name: str, clip: dict, checkpoint: Path, tmp_path: Path) -> tuple[list[str], str]:
    """(arguments, what the one error line must contain) for each bad input the issue lists (and a few more)."""
    out = tmp_path / "out.mp4"
    base = ["--model", checkpoint, "--output", out]
    if name == "missing input":
        return ["--input", tmp_path / "nope.mp4", *base], "does not exist"
    if name == "unreadable video":
        (tmp_path / "text.mp4").write_text("not a video\n")
        return ["--input", tmp_path / "text.mp4", *base], "cannot read video"
    if name == "empty folder":
        (tmp_path / "empty").mkdir()
        return ["--input", tmp_path / "empty", *base], "no frames"
    if name == "frames of different sizes":
        folder = tmp_path / "mixed"
        folder.mkdir()
        cv2.imwrite(str(folder / "a.png"), clip["frames"][0])
        cv2.imwrite(str(folder / "b.png"), clip["frames"][1][:32])
        return ["--input", folder, *base, "--input_fps", 24], "all frames must have one size"
    if name == "one-frame video":
        return ["--input", write_video(tmp_path / "one.mp4", clip["frames"][:1], audio=False), *base], "only 1"
    if name == "missing checkpoint":
        return ["--input", clip["folder"], "--model", "no_such_run", "--ckpt_dir", tmp_path, "--output",
                tmp_path / "o"], "checkpoint not found"
    if name == "not a Thesis-VFI checkpoint":
        torch.save({"weights": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
        return ["--input", clip["folder"], "--model", tmp_path / "other.pt", "--output", tmp_path / "o"], \
            "not a Thesis-VFI checkpoint"
    if name == "unwritable output":
        (tmp_path / "a_file").write_text("x")
        return ["--input", clip["folder"], "--model", checkpoint, "--output", tmp_path / "a_file" / "o"], \
            "cannot write --output"
    if name == "existing output":
        (tmp_path / "exists.mp4").write_bytes(b"old")
        return ["--input", clip["folder"], "--model", checkpoint, "--output", tmp_path / "exists.mp4",
                "--input_fps", 24], "pass --overwrite"
    if name == "unknown output extension":
        return ["--input", clip["folder"], "--model", checkpoint, "--output", tmp_path / "o.gif"], "unknown extension"
    if name == "multi 1":
        return ["--input", clip["folder"], *base, "--multi", 1], "argument --multi: must be an integer >= 2"
    if name == "cut ratio 1":
        return ["--input", clip["folder"], *base, "--cut_ratio", 1], "argument --cut_ratio: must be a number above 1"
    if name == "multi with fps":
        return ["--input", clip["folder"], *base, "--multi", 2, "--fps", 60], "not allowed with argument"
    if name == "fps on a folder without a rate":
        return ["--input", clip["folder"], "--model", checkpoint, "--output", tmp_path / "o", "--fps", 60], \
            "--input_fps"
    if name == "compile without CUDA":
        return ["--input", clip["folder"], "--model", checkpoint, "--output", tmp_path / "o", "--input_fps", 24,
                "--compile", "--device", "cpu"], "--compile needs a CUDA device"
    if name == "work scale on a Phase-1 checkpoint":
        return ["--input", clip["folder"], *base, "--input_fps", 24, "--work_scale", 0.5], "--work_scale"
    if name == "work scale above 1":
        return ["--input", clip["folder"], *base, "--work_scale", 2], "argument --work_scale: must be in (0, 1]"
    if name == "report is the output":
        return ["--input", clip["folder"], *base, "--input_fps", 24, "--report", out], \
            f"--report {out} is the --output"
    if name == "report is the input":
        return ["--input", write_video(tmp_path / "in.mp4", clip["frames"][:3], audio=False), *base, "--overwrite",
                "--report", tmp_path / "in.mp4"], "is the --input"
    if name == "strict t":
        return ["--input", clip["folder"], "--model", checkpoint, "--output", tmp_path / "o", "--multi", 3,
                "--strict_t"], "--strict_t: this Phase-1 checkpoint"
    raise AssertionError(name)


VIDEO_CASES = {"unreadable video", "one-frame video", "report is the input"}


@pytest.mark.parametrize("name", ["missing input", "unreadable video", "empty folder", "frames of different sizes",
                                  "one-frame video", "missing checkpoint", "not a Thesis-VFI checkpoint",
                                  "unwritable output", "existing output", "unknown output extension", "multi 1",
                                  "multi with fps", "cut ratio 1", "fps on a folder without a rate", "strict t",
                                  "compile without CUDA", "work scale on a Phase-1 checkpoint", "work scale above 1",
                                  "report is the output", "report is the input"])
def test_bad_input_gives_one_line(name, checkpoint, clip, tmp_path, capsys):
    if name in VIDEO_CASES and FFMPEG is None:
        pytest.skip("imageio-ffmpeg is not installed")
    args, expected = bad_case(name, clip, checkpoint, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = interpolate.main([*map(str, args), "--no_progress"])
    except SystemExit as raised:                      # argparse errors (--multi 1, --multi with --fps) exit here
        code = raised.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("interpolate.py: error:"), captured.err
    assert expected in lines[0]
    assert "wrote" not in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # nothing written, no temporary left


@pytest.mark.parametrize("extra,output_name,expected", [
    (["--compile", "--device", "cpu"], "frames", "--compile needs a CUDA device"),
    (["--aot_compile", "--device", "cpu"], "frames", "--aot_compile needs a CUDA device"),
    (["--compile_mode", "max-autotune-no-cudagraphs"], "frames", "--compile_mode is a setting of --compile: add"),
    (["--compile_mode", "max-autotune-no-cudagraphs", "--aot_compile"], "frames",
     "--compile_mode is a setting of --compile (--aot_compile compiles in Inductor's default mode)"),
    ([], "out.mp4", "a video output needs a frame rate"),
    (["--multi", 3, "--strict_t"], "frames", "--strict_t: this Phase-1 checkpoint"),
    (["--amp", "fp16", "--device", "cpu"], "frames", "--amp fp16 needs a CUDA device"),
])
def test_a_refused_command_leaves_no_output_folders(checkpoint, clip, tmp_path, capsys, extra, output_name, expected):
    """The output's missing parent folders are made only after every check: a refusal that comes late (a flag, the
    checkpoint's phase) used to leave the empty folders behind."""
    code, _, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output",
                              tmp_path / "new" / "deeper" / output_name, *extra)
    assert code == 2 and expected in stderr
    assert not (tmp_path / "new").exists()


def test_missing_output_folders_are_made_for_a_run(checkpoint, clip, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output",
                              tmp_path / "new" / "deeper" / "frames")
    assert code == 0, stderr
    assert len(list((tmp_path / "new" / "deeper" / "frames").iterdir())) == 15
    assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == ["frames"]    # no temporary left


def test_failed_capture_under_cuda_graph_on_gives_one_line(checkpoint, clip, tmp_path, capsys,
                                                          failing_graph_capture):
    """--cuda_graph on, and the capture of the first batch fails (on a GPU: an op that cannot be captured): exit
    status 2 with the runner's one line, and nothing written; not a traceback from inside the stream."""
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output",
                                   tmp_path / "o", "--cuda_graph", "on", "--device", "cpu")
    lines = stderr.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("interpolate.py: error: --cuda_graph on: CUDA graph capture "
                                                   "failed"), stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_command_line_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "interpolate.py"), "--model", "x", "--input",
                             str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o.mp4")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"interpolate.py: error: --input {tmp_path / 'missing.mp4'} "
                                                  f"does not exist"]


def test_footage_imports_no_benchmark_or_training_code():
    """The layout's rule (docs/DESIGN.md): footage sits below the benchmarks and never reaches training code."""
    code = ("import sys, footage.pipeline, footage.interpolator, footage.timeplan, footage.video_io; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'benchmark', 'train', 'Trainer', 'dataset'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_interpolator_predicts_as_the_benchmark_evaluator_does():
    """Same padding (an odd frame size), precision, crop and clamp as benchmark.eval_core.Evaluator."""
    from benchmark.eval_core import Evaluator, Protocol

    torch.manual_seed(0)
    model = build_model(preset(3, size="tiny")).eval()
    img0, img1 = torch.rand(1, 3, 37, 53), torch.rand(1, 3, 37, 53)
    t = torch.tensor([0.3])
    interpolator = FrameInterpolator(model, torch.device("cpu"), None, False, 1.0, batch_size=1, halving=False)
    evaluator = Evaluator(model, Protocol("video", flow_scale=1.0), "cpu", "fp32", False, 1.0, progress=False)
    assert torch.equal(interpolator.predict(img0, img1, t), evaluator.predict(img0, img1, t))


def test_interpolator_and_evaluator_give_a_prior_model_the_same_prediction():
    """With a --flow_prior dis model both pad the pair's flows as they pad its frames: the same prediction, and a
    different one from another prior (so the prior is used, not dropped on the way)."""
    from dataclasses import replace

    from benchmark.eval_core import Evaluator, Protocol

    torch.manual_seed(0)
    cfg = preset(2, size="tiny")
    model = build_model(replace(cfg, model=replace(cfg.model, flow_prior="dis"))).eval()
    img0, img1 = torch.rand(1, 3, 37, 53), torch.rand(1, 3, 37, 53)
    t = torch.tensor([0.3])
    prior = torch.randn(1, 4, 37, 53) * 4
    interpolator = FrameInterpolator(model, torch.device("cpu"), None, False, 1.0, batch_size=1, halving=False)
    evaluator = Evaluator(model, Protocol("video", flow_scale=1.0), "cpu", "fp32", False, 1.0, progress=False)
    predicted = interpolator.predict(img0, img1, t, flow_prior=prior)
    assert torch.equal(predicted, evaluator.predict(img0, img1, t, flow_prior=prior))
    assert not torch.equal(predicted, interpolator.predict(img0, img1, t, flow_prior=torch.zeros_like(prior)))


def test_io_workers_are_reported_and_change_nothing_in_the_output(checkpoint, clip, tmp_path, capsys):
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output", out,
                                       "--io_workers", workers)
        assert code == 0, stderr
        assert f"io:     {workers} threads decoding, {workers} writing PNGs (--io_workers)" in stdout
        outputs[workers] = [(out / name).read_bytes() for name in sorted(p.name for p in out.iterdir())]
    assert len(outputs[1]) == 15 and outputs[1] == outputs[3]


# --------------------------------------------------------------------------------------------------------
# A --flow_prior dis checkpoint: one DIS per interpolated pair, on the prior threads; none for other models
# --------------------------------------------------------------------------------------------------------
def test_a_prior_checkpoint_gets_one_dis_per_motion_pair_and_the_same_frames_on_any_thread_count(
        prior_checkpoint, clip, tmp_path, capsys, monkeypatch):
    dis_calls = counting_dis(monkeypatch)
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        code, stdout, stderr = run_cli(capsys, "--model", prior_checkpoint, "--input", clip["folder"], "--output",
                                       out, "--multi", 4, "--io_workers", workers)
        assert code == 0, stderr
        assert f"prior:  --flow_prior dis checkpoint: each interpolated pair's DIS flows on {workers} threads" in stdout
        assert "recursive halving" in stdout
        # 7 pairs, one a duplicate and one a cut: 5 DIS, each serving the pair's 3 model calls (halving's sub-pairs
        # derive theirs), none on the main thread.
        assert len(dis_calls) == 5 and all(name.startswith("prior") for name in dis_calls)
        assert "15 model calls" in stdout and f"on each of {workers} threads; 5 pairs)" in stdout
        assert "prior-only" in stdout and "model-only" in stdout
        dis_calls.clear()
        outputs[workers] = [(out / name).read_bytes() for name in sorted(p.name for p in out.iterdir())]
    assert len(outputs[1]) == 29 and outputs[1] == outputs[3]


def test_a_checkpoint_without_a_prior_never_runs_dis(checkpoint, clip, tmp_path, capsys, monkeypatch):
    from footage import pipeline

    def refuse(*_):
        raise AssertionError("DIS computed for a model without a flow prior")

    monkeypatch.setattr(pipeline, "prior_pair_flows", refuse)
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output",
                                   tmp_path / "out", "--multi", 4)
    assert code == 0, stderr
    assert "prior:" not in stdout and "prior-only" not in stdout


def test_work_scale_interpolates_a_prior_checkpoint_at_full_size(prior_checkpoint, clip, tmp_path, capsys):
    """`--work_scale 0.5` end to end with a --flow_prior model (the prior resized for the half-size model): as many
    full-size frames as without it, different pixels, and the model line says so."""
    outputs = {}
    for scale in (None, 0.5):
        out = tmp_path / ("full" if scale is None else "half")
        extra = [] if scale is None else ["--work_scale", scale]
        code, stdout, stderr = run_cli(capsys, "--model", prior_checkpoint, "--input", clip["folder"], "--output",
                                       out, *extra)
        assert code == 0, stderr
        assert ("work scale 0.5: the model on downscaled frames" in stdout) == (scale is not None)
        outputs[scale] = {p.name: cv2.imread(str(p)) for p in sorted(out.iterdir())}
    assert outputs[None].keys() == outputs[0.5].keys()
    shapes = {image.shape for image in outputs[0.5].values()}
    assert shapes == {image.shape for image in outputs[None].values()} and len(shapes) == 1
    assert any(not np.array_equal(outputs[None][name], outputs[0.5][name]) for name in outputs[None])


def test_the_pace_hint_names_what_to_change_only_when_encoding_held_the_model_back():
    assert interpolate.pace_hint("model", "video", "medium", True) is None
    assert interpolate.pace_hint(None, "folder", "medium", True) is None
    assert "--io_workers" in interpolate.pace_hint("encoding", "folder", "medium", True)
    for slower in ("faster", "medium", "slow"):         # faster kept 80% at 1080p (docs/PERF.md 10.23): not enough
        assert "--preset veryfast" in interpolate.pace_hint("encoding", "video", slower, True)
    for quick in ("veryfast", "superfast"):
        assert "a faster --preset" in interpolate.pace_hint("encoding", "video", quick, True)
    assert "pip install av" in interpolate.pace_hint("encoding", "video", "medium", False)
    assert "NVENC set the pace" in interpolate.pace_hint("encoding", "video", "medium", True, "nvenc")


# --------------------------------------------------------------------------------------------------------
# The H.264 encoder: NVIDIA's NVENC where the run's GPU has one, libx264 otherwise
# --------------------------------------------------------------------------------------------------------
def test_the_encoder_choice_takes_nvenc_only_where_it_opens_and_refuses_it_by_name(monkeypatch):
    """--encoder auto: NVENC for a CUDA run where it opens, libx264 otherwise, with the reason on the io line (a CPU
    run never probes); --encoder nvenc where it does not open, or without PyAV, stops naming the flag."""
    from footage.video_io import encoder_options
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    reason = "NVIDIA's encoder did not open here (Operation not permitted)"
    monkeypatch.setattr(interpolate, "nvenc_unavailable", lambda: reason)
    assert interpolate.choose_encoder("nvenc", cuda, "folder", True) == (None, "")          # PNGs: no encoder
    assert interpolate.choose_encoder("auto", cuda, "video", False) == (None, "")           # OpenCV's writer
    assert interpolate.choose_encoder("libx264", cuda, "video", True) == ("libx264", "")
    assert interpolate.choose_encoder("auto", cuda, "video", True) == ("libx264",
                                                                      f"--encoder auto: no NVENC, {reason}")
    with pytest.raises(interpolate.InterpolateError, match=r"^--encoder nvenc: NVIDIA's encoder did not open here "
                                                           r"\(Operation not permitted\); use --encoder libx264$"):
        interpolate.choose_encoder("nvenc", cuda, "video", True)
    with pytest.raises(interpolate.InterpolateError, match="--encoder nvenc writes through PyAV.*pip install av"):
        interpolate.choose_encoder("nvenc", cuda, "video", False)
    monkeypatch.setattr(interpolate, "nvenc_unavailable", lambda: None)
    assert interpolate.choose_encoder("auto", cuda, "video", True) == ("nvenc", "")
    assert interpolate.choose_encoder("nvenc", cpu, "video", True) == ("nvenc", "")
    monkeypatch.setattr(interpolate, "nvenc_unavailable", lambda: pytest.fail("a CPU run probed for NVENC"))
    assert interpolate.choose_encoder("auto", cpu, "video", True) == ("libx264", "--encoder auto: no NVENC, the run "
                                                                                 "is on the CPU")
    # --crf and --preset in each encoder's terms.
    assert encoder_options("libx264", 18, "medium") == {"crf": "18", "preset": "medium"}
    assert encoder_options("nvenc", 18, "medium") == {"preset": "p5", "tune": "hq", "rc": "vbr", "cq": "18", "b": "0"}
    assert encoder_options("nvenc", 23, "faster")["preset"] == "p4"
    assert encoder_options("nvenc", 0, "medium") == {"preset": "p7", "tune": "lossless"}
    with pytest.raises(ValueError, match="unknown H.264 encoder 'x265'"):
        encoder_options("x265", 18, "medium")


@needs_ffmpeg
def test_a_video_output_reports_its_encoder_and_a_refused_nvenc_writes_nothing(checkpoint, clip, tmp_path, capsys,
                                                                               monkeypatch):
    monkeypatch.setattr(interpolate, "nvenc_unavailable", lambda: "NVIDIA's encoder did not open here (test)")
    out = tmp_path / "out.mp4"
    code, _, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output", out,
                              "--input_fps", 24, "--encoder", "nvenc")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--encoder nvenc: NVIDIA's encoder" in stderr
    assert not out.exists()
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output", out,
                                   "--input_fps", 24, "--report", tmp_path / "run.json")
    assert code == 0, stderr
    assert ("encode: H.264 by libx264, --crf 18, --preset medium (--encoder auto: no NVENC, the run is on the CPU)"
            in stdout)
    assert json.loads((tmp_path / "run.json").read_text())["output"]["encoder"] == "libx264"
    assert len(read_video(out)[0]) == 15
    # An NVENC that the probe let through but that fails when the output opens (here: none at all) still ends in one
    # line naming the output, after the encode line said what was chosen, and leaves nothing behind.
    monkeypatch.setattr(interpolate, "nvenc_unavailable", lambda: None)
    other = tmp_path / "nv.mp4"
    code, stdout, stderr = run_cli(capsys, "--model", checkpoint, "--input", clip["folder"], "--output", other,
                                   "--input_fps", 24, "--encoder", "nvenc", "--preset", "faster")
    assert "encode: H.264 by NVENC (h264_nvenc), --crf 18, --preset faster = NVENC's p4 (--encoder nvenc)" in stdout
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and f"writing {other}: " in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "run.json"]
