"""Tests for benchmark/: the evaluation core, every script's sample enumeration on a fixture in its layout,
end-to-end runs with a tiny checkpoint, and the one-line user errors (the metrics: tests/test_quality.py).

CPU only; every dataset is a handful of small PNGs written to tmp_path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # plain `pytest` puts tests/ on the path, not the repository root
    sys.path.insert(0, REPO_ROOT)

from benchmark import SNU_FILM, UCF101, TimeTest, Vimeo90K, Xiph, XTest, eval_core  # noqa: E402
from benchmark.eval_core import (  # noqa: E402
    BenchmarkError, Evaluator, FrameGeometry, Protocol, describe_dataset, mean_metrics, read_image,
)
from checkpoint import atomic_save  # noqa: E402
from config import OneLineErrorParser, positive_float, positive_int, preset  # noqa: E402
from measures.visualize import GRID_PADDING  # noqa: E402
from model.frames import centred_padding, crop_padding, pad_centred  # noqa: E402
from model import build_model  # noqa: E402

FRAME_H, FRAME_W = 24, 40   # not multiples of 16 or 32, so padding and cropping are exercised


# --------------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------------
def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))


def pattern(offset: int = 0, seed: int | None = None) -> np.ndarray:
    """(FRAME_H, FRAME_W, 3) uint8: a fixed gradient with values in [0, 55] (+ offset), or noise with a seed."""
    if seed is not None:
        return np.random.default_rng(seed).integers(0, 256, (FRAME_H, FRAME_W, 3), dtype=np.uint8)
    y, x, c = np.meshgrid(np.arange(FRAME_H), np.arange(FRAME_W), np.arange(3), indexing="ij")
    return ((x * 3 + y * 5 + c * 11) % 56 + offset).astype(np.uint8)


def save_checkpoint(path: Path, phase: int, flow_prior: str = "none") -> Path:
    cfg = preset(phase, "tiny")
    cfg = replace(cfg, model=replace(cfg.model, flow_prior=flow_prior))
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": build_model(cfg.model).state_dict(), "ema": None},
                path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(folder / "tiny_phase1.pt", 1)
    save_checkpoint(folder / "tiny_phase2.pt", 2)
    save_checkpoint(folder / "tiny_phase2_prior.pt", 2, flow_prior="dis")
    return folder


@pytest.fixture(scope="module")
def vimeo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vimeo")
    names = ["00001/0001", "00001/0002", "00002/0001"]
    (root / "tri_testlist.txt").write_text("\n".join(names) + "\n\n")   # a trailing blank line, as in the real list
    for i, name in enumerate(names):
        for j in (1, 2, 3):
            write_rgb(root / "sequences" / name / f"im{j}.png", pattern(seed=10 * i + j))
    return root


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf")
    for i, folder in enumerate(["1", "10", "2"]):
        for j, name in enumerate(UCF101.FRAME_NAMES):
            write_rgb(root / folder / name, pattern(seed=10 * i + j))
    write_rgb(root / "incomplete" / "frame_00.png", pattern(seed=99))   # no ground truth: not a sample
    (root / "readme.txt").write_text("not a folder")
    return root


@pytest.fixture(scope="module")
def snu_root(tmp_path_factory) -> Path:
    """Frames under <root>/test/...; lists use the published data/SNU-FILM/test/... prefix, one line without."""
    root = tmp_path_factory.mktemp("snu")
    for split in SNU_FILM.SPLITS:
        lines = []
        for i in range(3):
            frames = [f"test/{split}_clip/{i}_{j}.png" for j in range(3)]
            for j, frame in enumerate(frames):
                write_rgb(root / frame, pattern(seed=100 * SNU_FILM.SPLITS.index(split) + 10 * i + j))
            prefix = "" if i == 2 else "data/SNU-FILM/"
            lines.append(" ".join(prefix + f for f in frames))
        (root / f"test-{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def xiph_root(tmp_path_factory) -> Path:
    """Flat reference layout <clip>-NNN.png, frames 001..099; frame n = gradient + 2n (a blend of n +- 1 is n)."""
    root = tmp_path_factory.mktemp("xiph")
    for clip in Xiph.CLIPS:
        for n in range(1, 100):
            write_rgb(root / f"{clip}-{n:03d}.png", pattern(offset=2 * n))
    return root


@pytest.fixture(scope="module")
def xtest_root(tmp_path_factory) -> Path:
    """<root>/test/<Type>/<scene>/0000..0032.png with frame i = gradient + 4i (t = k/8 blend of 0, 32 is 4k)."""
    root = tmp_path_factory.mktemp("x4k")
    for scene in ("Type1/TEST01_a", "Type2/TEST02_b"):
        for i in range(33):
            write_rgb(root / "test" / scene / f"{i:04d}.png", pattern(offset=4 * i))
    return root


class BlendModel:
    """Stand-in model: the linear blend (1 - t) img0 + t img1; records what it was called with."""

    def __init__(self):
        self.calls = []

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        self.calls.append({"shape": tuple(img0.shape), "t": t, "flow_scale": flow_scale, "tta": tta})
        return (1 - t) * img0 + t * img1


def small_geometry_protocols(protocols: dict[str, Protocol]) -> dict[str, Protocol]:
    """The 2K resize and 4K crop of a script, scaled down to fixture frames (a 2048x1080 CPU run is too slow)."""
    small = {}
    for name, protocol in protocols.items():
        geometry = protocol.geometry
        geometry = replace(geometry, resize_to=(32, 16) if geometry.resize_to else None,
                           crop_margins=(2, 4) if geometry.crop_margins else None)
        small[name] = replace(protocol, geometry=geometry)
    return small


def run_failing(main, argv, capsys) -> str:
    """Run a script's main expecting a user error: exit status 2 and exactly one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------------------------------------
# Evaluation core
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width,multiple", [(24, 40, 32), (33, 17, 32), (64, 64, 32), (50, 70, 16)])
def test_centred_padding_round_trip(height, width, multiple):
    image = torch.rand(1, 3, height, width)
    padded, padding = pad_centred(image, multiple)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    left, right, top, bottom = padding
    assert (left, top) == ((padded.shape[-1] - width) // 2, (padded.shape[-2] - height) // 2)   # odd pixel right/bottom
    assert 0 <= right - left <= 1 and 0 <= bottom - top <= 1
    assert torch.equal(crop_padding(padded, padding), image)
    if top:   # replicate: the rows above the image repeat its first row
        assert torch.equal(padded[..., 0, left:left + width], image[..., 0, :])


def test_centred_padding_values():
    assert centred_padding(256, 448, 32) == (0, 0, 0, 0)
    assert centred_padding(720, 1280, 32) == (0, 0, 8, 8)
    assert centred_padding(1080, 2048, 16) == (0, 0, 4, 4)
    assert centred_padding(33, 17, 32) == (7, 8, 15, 16)


def test_xiph_geometries_on_full_size_frames():
    frame = np.random.default_rng(5).integers(0, 256, (2160, 4096, 3), dtype=np.uint8)
    cropped = Xiph.PROTOCOLS["4k"].geometry.apply(frame)
    assert cropped.shape == (1080, 2048, 3) and np.array_equal(cropped, frame[540:-540, 1024:-1024])
    resized = Xiph.PROTOCOLS["2k"].geometry.apply(frame)
    assert resized.shape == (1080, 2048, 3) and resized.dtype == np.uint8
    # An exact 2x INTER_AREA is the mean of each 2x2 block (uint8 rounding: within one level).
    block_mean = frame.reshape(1080, 2, 2048, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(resized - block_mean).max() <= 1.0


def test_xtest_2k_geometry_resizes_in_float():
    frame = np.random.default_rng(6).integers(0, 256, (2160, 4096, 3), dtype=np.uint8)
    resized = XTest.PROTOCOLS["2k"].geometry.apply(frame)
    assert resized.shape == (1080, 2048, 3) and resized.dtype == np.float32
    block_mean = frame.reshape(1080, 2, 2048, 2, 3).astype(np.float64).mean(axis=(1, 3)) / 255
    assert np.abs(resized - block_mean).max() < 1e-6
    assert XTest.PROTOCOLS["4k"].geometry.apply(frame) is frame


def test_small_geometry_stand_ins_and_bad_crop():
    frame = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    assert np.array_equal(FrameGeometry(crop_margins=(2, 3)).apply(frame), frame[2:8, 3:9])
    assert FrameGeometry(resize_to=(6, 5)).apply(frame).shape == (5, 6, 3)
    with pytest.raises(BenchmarkError, match="4096x2160"):
        FrameGeometry(crop_margins=(540, 1024)).apply(frame)


def test_mean_metrics_per_group_then_over_groups():
    records = [{"psnr": 30.0, "ssim": 0.9, "group": "a"},
               {"psnr": 20.0, "ssim": 0.5, "group": "b"}, {"psnr": 22.0, "ssim": 0.6, "group": "b"},
               {"psnr": 24.0, "ssim": 0.7, "group": "b"}]
    flat = mean_metrics(records)
    assert flat["psnr"] == pytest.approx(24.0) and flat["count"] == 4
    grouped = mean_metrics(records, average_per_group=True)
    assert grouped["psnr"] == pytest.approx((30 + 22) / 2) and grouped["ssim"] == pytest.approx((0.9 + 0.6) / 2)
    assert grouped["groups"]["b"]["count"] == 3


def test_read_image_is_rgb_and_names_bad_files(tmp_path):
    image = pattern(seed=7)
    write_rgb(tmp_path / "frame.png", image)
    tensor = read_image(tmp_path / "frame.png")
    assert tensor.shape == (3, FRAME_H, FRAME_W) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BenchmarkError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(BenchmarkError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_evaluator_pads_centred_and_passes_protocol_options(vimeo_root):
    model = BlendModel()
    protocol = Protocol("SNU-like", pad_multiple=32, flow_scale=0.5)
    samples = Vimeo90K.enumerate_samples(vimeo_root)[:1]
    Evaluator(model, protocol, progress=False).evaluate(samples)
    Evaluator(model, protocol, flow_scale=0.25, tta=True, progress=False).evaluate(samples)
    assert [c["shape"] for c in model.calls] == [(1, 3, 32, 64)] * 2
    assert [(c["flow_scale"], c["tta"]) for c in model.calls] == [(0.5, False), (0.25, True)]


# --------------------------------------------------------------------------------------------------------
# Sample enumeration per layout
# --------------------------------------------------------------------------------------------------------
def test_vimeo_enumeration(vimeo_root):
    samples = Vimeo90K.enumerate_samples(vimeo_root)
    assert [s.name for s in samples] == ["00001/0001", "00001/0002", "00002/0001"]
    first = samples[0]
    folder = vimeo_root / "sequences" / "00001" / "0001"
    assert (first.img0, first.gt, first.img1, first.t) == (folder / "im1.png", folder / "im2.png",
                                                           folder / "im3.png", 0.5)


def test_ucf101_enumeration(ucf_root):
    samples = UCF101.enumerate_samples(ucf_root)
    assert [s.name for s in samples] == ["1", "10", "2"]   # complete folders only, sorted
    assert (samples[0].img0.name, samples[0].gt.name, samples[0].img1.name) == (
        "frame_00.png", "frame_01_gt.png", "frame_02.png")


def test_snu_film_enumeration_resolves_list_prefix(snu_root, tmp_path):
    samples = SNU_FILM.enumerate_split(snu_root, "hard")
    assert len(samples) == 3
    assert samples[0].img0 == snu_root / "test" / "hard_clip" / "0_0.png"      # prefix dropped: exists that way
    assert samples[0].gt == snu_root / "test" / "hard_clip" / "0_1.png"
    assert samples[2].img1 == snu_root / "test" / "hard_clip" / "2_2.png"      # written without the prefix
    assert all(p.is_file() for s in samples for p in (s.img0, s.gt, s.img1))
    (tmp_path / "test-easy.txt").write_text("a.png b.png\n")
    with pytest.raises(BenchmarkError, match=r"test-easy.txt:1: expected 3"):
        SNU_FILM.enumerate_split(tmp_path, "easy")


def test_xiph_enumeration_pairs_neighbours(xiph_root, tmp_path):
    samples = Xiph.enumerate_samples(xiph_root)
    assert len(samples) == 8 * 49 == 392
    assert [p.name for p in (samples[0].img0, samples[0].gt, samples[0].img1)] == [
        "BoxingPractice-001.png", "BoxingPractice-002.png", "BoxingPractice-003.png"]
    assert [p.name for p in (samples[-1].img0, samples[-1].gt, samples[-1].img1)] == [
        "Tango-097.png", "Tango-098.png", "Tango-099.png"]
    assert all(s.t == 0.5 for s in samples)
    write_rgb(tmp_path / "Tango" / "001.png", pattern())                       # one folder per clip
    assert Xiph.frame_path(tmp_path, "Tango", 1) == tmp_path / "Tango" / "001.png"


def test_xtest_enumeration_targets_and_timesteps(xtest_root):
    samples = XTest.enumerate_samples(xtest_root)
    assert len(samples) == 2 * 7
    first_scene = samples[:7]
    assert [s.t for s in first_scene] == [k / 8 for k in range(1, 8)]
    assert [s.gt.name for s in first_scene] == [f"{4 * k:04d}.png" for k in range(1, 8)]
    assert {(s.img0.name, s.img1.name) for s in samples} == {("0000.png", "0032.png")}
    assert [s.group for s in samples] == ["Type1/TEST01_a"] * 7 + ["Type2/TEST02_b"] * 7
    assert XTest.enumerate_samples(xtest_root / "test") == samples             # --path may be test/ itself


def test_xtest_short_scene_is_an_error(tmp_path):
    for i in range(20):
        write_rgb(tmp_path / "test" / "Type1" / "short" / f"{i:04d}.png", pattern())
    with pytest.raises(BenchmarkError, match="short has 20 frames"):
        XTest.enumerate_samples(tmp_path)


# --------------------------------------------------------------------------------------------------------
# Exactness with a stand-in model: right triplets and right t give a perfect score
# --------------------------------------------------------------------------------------------------------
def test_xtest_pairing_and_timesteps_are_exact(xtest_root):
    model = BlendModel()
    result = Evaluator(model, XTest.PROTOCOLS["4k"], progress=False).evaluate(XTest.enumerate_samples(xtest_root))
    assert all(r["psnr"] == math.inf for r in result["samples"])             # blend of 0 and 32 at k/8 == 4k
    assert result["ssim"] == pytest.approx(1.0) and set(result["groups"]) == {"Type1/TEST01_a", "Type2/TEST02_b"}
    assert [c["flow_scale"] for c in model.calls] == [0.25] * 14


def test_xiph_pairing_is_exact(xiph_root):
    protocol = small_geometry_protocols(Xiph.PROTOCOLS)["4k"]
    samples = Xiph.enumerate_samples(xiph_root)[::20]
    result = Evaluator(BlendModel(), protocol, progress=False).evaluate(samples)
    assert all(r["psnr"] == math.inf and r["ssim"] == pytest.approx(1.0) for r in result["samples"])


# --------------------------------------------------------------------------------------------------------
# End to end with a tiny checkpoint
# --------------------------------------------------------------------------------------------------------
def read_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    for result in report["results"].values():
        assert math.isfinite(result["psnr"]) and 0 < result["psnr"] < 100
        assert -1 <= result["ssim"] <= 1
        assert len(result["samples"]) == result["count"]
    return report


def common_args(root: Path, checkpoints: Path, out: Path, model: str = "tiny_phase1") -> list[str]:
    return ["--model", model, "--ckpt_dir", str(checkpoints), "--path", str(root), "--device", "cpu",
            "--out", str(out), "--no_progress"]


def test_vimeo_end_to_end(vimeo_root, checkpoints, tmp_path):
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json") + ["--limit", "2"])
    report = read_report(tmp_path / "r.json")
    result = report["results"]["test"]
    assert result["count"] == 2 and result["quantize"] is False and result["metric"] == "matlab"
    assert report["phase"] == 1 and report["uses_flow"] is False


def test_ucf101_end_to_end_quantizes(ucf_root, checkpoints, tmp_path):
    UCF101.main(common_args(ucf_root, checkpoints, tmp_path / "r.json"))
    result = read_report(tmp_path / "r.json")["results"]["test"]
    assert result["count"] == 3 and result["quantize"] is True


def test_snu_film_end_to_end_with_flow_model(snu_root, checkpoints, tmp_path):
    SNU_FILM.main(common_args(snu_root, checkpoints, tmp_path / "r.json", "tiny_phase2") + ["--split", "hard"])
    report = read_report(tmp_path / "r.json")
    assert list(report["results"]) == ["hard"] and report["uses_flow"] is True
    assert report["results"]["hard"]["flow_scale"] == 0.5


def test_snu_film_all_splits(snu_root, checkpoints, tmp_path):
    report = SNU_FILM.main(common_args(snu_root, checkpoints, tmp_path / "r.json") + ["--limit", "1"])
    assert list(report["results"]) == list(SNU_FILM.SPLITS)


def test_xiph_end_to_end(xiph_root, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(Xiph, "PROTOCOLS", small_geometry_protocols(Xiph.PROTOCOLS))
    Xiph.main(common_args(xiph_root, checkpoints, tmp_path / "r.json", "tiny_phase2") + ["--limit", "2"])
    report = read_report(tmp_path / "r.json")
    assert list(report["results"]) == ["2k", "4k"]
    assert report["results"]["2k"]["metric"] == "skimage_uint8" and report["results"]["4k"]["pad_multiple"] == 16


def test_xtest_end_to_end(xtest_root, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(XTest, "PROTOCOLS", small_geometry_protocols(XTest.PROTOCOLS))
    XTest.main(common_args(xtest_root, checkpoints, tmp_path / "r.json", "tiny_phase2") + ["--flow_scale", "0.5"])
    report = read_report(tmp_path / "r.json")
    for name in ("2k", "4k"):
        result = report["results"][name]
        assert result["count"] == 14 and len(result["groups"]) == 2 and result["flow_scale"] == 0.5
        group_means = [g["psnr"] for g in result["groups"].values()]
        assert result["psnr"] == pytest.approx(np.mean(group_means))


def test_timetest_random_weights_and_checkpoint(checkpoints, tmp_path):
    report = TimeTest.main(["--phase", "2", "--model_size", "tiny", "--resolution", "32x48", "--warmup", "1",
                            "--reps", "2", "--device", "cpu", "--out", str(tmp_path / "t.json")])
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["median_ms"] > 0 and (saved["height"], saved["width"]) == (32, 48) and saved["phase"] == 2
    assert report["flow_scale"] == 1.0 and len(saved["times_ms"]) == 2
    report = TimeTest.main(["--model", "tiny_phase1", "--ckpt_dir", str(checkpoints), "--resolution", "16x16",
                            "--warmup", "1", "--reps", "1", "--device", "cpu"])
    assert report["phase"] == 1 and report["peak_gib"] is None


def test_timetest_named_resolutions():
    assert TimeTest.parse_resolution("4k") == (2160, 3840)
    assert TimeTest.parse_resolution("2k") == (1080, 2048)
    assert TimeTest.parse_resolution("64x96") == (64, 96)
    assert TimeTest.FLOW_SCALES["4k"] == 0.25


# --------------------------------------------------------------------------------------------------------
# User errors: one line, the path named, exit status 2
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [Vimeo90K, UCF101, SNU_FILM, Xiph, XTest])
def test_missing_dataset_folder(script, checkpoints, tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    line = run_failing(script.main, common_args(missing, checkpoints, tmp_path / "r.json"), capsys)
    assert str(missing) in line and "not found" in line


@pytest.mark.parametrize("script,list_name", [(Vimeo90K, "tri_testlist.txt"), (SNU_FILM, "test-easy.txt")])
def test_missing_list_file(script, list_name, checkpoints, tmp_path, capsys):
    line = run_failing(script.main, common_args(tmp_path, checkpoints, tmp_path / "r.json"), capsys)
    assert str(tmp_path / list_name) in line


def test_missing_checkpoint(vimeo_root, checkpoints, tmp_path, capsys):
    line = run_failing(Vimeo90K.main, common_args(vimeo_root, checkpoints, tmp_path / "r.json", "no_such_run"),
                       capsys)
    assert "no_such_run" in line and "tiny_phase1" in line       # lists what is available
    line = run_failing(TimeTest.main, ["--model", "no_such_run", "--ckpt_dir", str(checkpoints), "--device", "cpu"],
                       capsys)
    assert "no_such_run" in line
    assert not (tmp_path / "r.json").exists()


def test_bad_device_and_counts_are_one_line_naming_the_flag(vimeo_root, checkpoints, tmp_path, capsys):
    """config.resolve_device (shared with interpolate.py) raises ConfigError; every entry point prints it in one line."""
    line = run_failing(Vimeo90K.main, common_args(vimeo_root, checkpoints, tmp_path / "r.json")
                       + ["--device", "no_such_device"], capsys)           # the last --device wins
    assert "--device 'no_such_device' is not a torch device" in line
    line = run_failing(TimeTest.main, ["--model", "tiny_phase1", "--ckpt_dir", str(checkpoints), "--device", "nope"],
                       capsys)
    assert "--device 'nope' is not a torch device" in line
    parser = OneLineErrorParser(prog="x")
    parser.add_argument("--reps", type=positive_int)
    parser.add_argument("--scale", type=positive_float)
    assert parser.parse_args(["--reps", "3", "--scale", "0.5"]).reps == 3
    for argv, message in ((["--reps", "0"], "must be a positive integer, got 0"),
                          (["--scale", "-1"], "must be positive, got -1")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_a_numbered_cuda_device_becomes_the_current_one_or_is_refused_by_name(monkeypatch):
    """--device cuda:N (resolve_device, shared by interpolate.py and the benchmarks) makes N the current CUDA device,
    since graph capture and Triton's kernels launch on the current device, and refuses an N the machine lacks with
    one line naming the flag. CUDA stood in for (two devices)."""
    import config
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(device))
    assert config.resolve_device("cuda:1") == torch.device("cuda:1") and chosen == [torch.device("cuda:1")]
    assert config.resolve_device("cuda") == torch.device("cuda") and len(chosen) == 1     # unnumbered: as it is
    with pytest.raises(config.ConfigError, match=r"--device cuda:2: this machine has 2 CUDA device"):
        config.resolve_device("cuda:2")
    assert len(chosen) == 1


def test_failed_capture_under_cuda_graph_on_is_one_line(vimeo_root, checkpoints, tmp_path, capsys,
                                                         failing_graph_capture):
    """--cuda_graph on, and the capture fails when it happens (a frame size's second sample in the benchmarks, the
    first call in TimeTest): one line and exit status 2, no report written, not a traceback."""
    line = run_failing(Vimeo90K.main, common_args(vimeo_root, checkpoints, tmp_path / "r.json")
                       + ["--limit", "2", "--no_motion", "--cuda_graph", "on"], capsys)
    assert "--cuda_graph on: CUDA graph capture failed" in line
    assert not (tmp_path / "r.json").exists()
    line = run_failing(TimeTest.main, ["--model", "tiny_phase1", "--ckpt_dir", str(checkpoints), "--device", "cpu",
                                       "--resolution", "16x16", "--cuda_graph", "on"], capsys)
    assert "--cuda_graph on: CUDA graph capture failed" in line


def test_missing_frame_is_named_before_loading(tmp_path, checkpoints, capsys):
    (tmp_path / "tri_testlist.txt").write_text("00001/0001\n")
    line = run_failing(Vimeo90K.main, common_args(tmp_path, checkpoints, tmp_path / "r.json"), capsys)
    assert str(tmp_path / "sequences" / "00001" / "0001" / "im1.png") in line


def test_no_ucf101_triplets(tmp_path, checkpoints, capsys):
    line = run_failing(UCF101.main, common_args(tmp_path, checkpoints, tmp_path / "r.json"), capsys)
    assert "no UCF101 triplets" in line and str(tmp_path) in line


# --------------------------------------------------------------------------------------------------------
# Results that explain themselves: frame-average baseline, which folder ran, images of every sample
# --------------------------------------------------------------------------------------------------------
def frame_average_psnr_by_hand(folder: Path) -> float:
    """PSNR of (im1 + im3) / 2 against im2, straight from the PNGs in float64."""
    i0, gt, i1 = (cv2.imread(str(folder / f"im{k}.png")).astype(np.float64) / 255 for k in (1, 2, 3))
    return -10 * math.log10(np.mean(((i0 + i1) / 2 - gt) ** 2))


def test_report_holds_the_frame_average_psnr(vimeo_root, checkpoints, tmp_path, capsys):
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json"))
    result = read_report(tmp_path / "r.json")["results"]["test"]
    expected = [frame_average_psnr_by_hand(vimeo_root / "sequences" / r["name"]) for r in result["samples"]]
    assert [r["psnr_frame_average"] for r in result["samples"]] == pytest.approx(expected, abs=1e-5)   # float32 blend
    assert result["psnr_frame_average"] == pytest.approx(np.mean(expected), abs=1e-5)
    assert result["psnr_frame_average"] != pytest.approx(result["psnr"], abs=1e-3)   # the model's own score
    printed = capsys.readouterr().out
    assert f"PSNR {result['psnr_frame_average']:.4f} dB" in printed and "frame average (I0+I1)/2" in printed


def test_frame_average_goes_through_the_protocol(ucf_root, xtest_root):
    """The baseline is scored like the model: a model that *is* the blend scores exactly the baseline."""
    ucf = Evaluator(BlendModel(), UCF101.PROTOCOL, progress=False).evaluate(UCF101.enumerate_samples(ucf_root))
    assert all(r["psnr"] == r["psnr_frame_average"] for r in ucf["samples"])
    assert ucf["psnr_frame_average"] == ucf["psnr"]
    # X-TEST asks for t = k/8: the baseline is (1 - t) I0 + t I1, exact for frames that brighten linearly.
    xtest = Evaluator(BlendModel(), XTest.PROTOCOLS["4k"], progress=False).evaluate(XTest.enumerate_samples(xtest_root))
    assert all(r["psnr_frame_average"] == math.inf for r in xtest["samples"])
    assert set(xtest["groups"]["Type1/TEST01_a"]) >= {"psnr", "ssim", "psnr_frame_average"}


def test_run_on_another_folder_says_it_is_not_the_official_test_set(vimeo_root, checkpoints, tmp_path, capsys):
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json") + ["--limit", "2"])
    result = read_report(tmp_path / "r.json")["results"]["test"]
    assert result["official"] is False and result["samples_found"] == 3 and result["count"] == 2
    assert str(vimeo_root) in result["dataset_note"] and "not the official test set" in result["dataset_note"]
    assert "3,782" in result["dataset_note"]
    assert result["dataset_note"] in capsys.readouterr().out


def test_official_test_set_is_recognised_by_its_sample_count():
    official, note = describe_dataset("Vimeo90K", "/data/vimeo_triplet", 3782, 3782, None)
    assert official is True and "official test set (3,782 samples)" in note
    official, note = describe_dataset("Vimeo90K", "/data/vimeo_triplet", 3782, 3782, 10)
    assert official is True and "first 10 of the 3,782 official" in note
    official, note = describe_dataset("SNU-FILM hard", "/data/snu", 12, 310, None)
    assert official is False and note.startswith("SNU-FILM hard protocol on /data/snu (not the official test set")
    assert SNU_FILM.PROTOCOL.official_samples == 310 and UCF101.PROTOCOL.official_samples == 379
    assert {p.official_samples for p in Xiph.PROTOCOLS.values()} == {392}
    assert {p.official_samples for p in XTest.PROTOCOLS.values()} == {105}


def saved_images(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]


def test_save_images_writes_one_labelled_image_per_sample(vimeo_root, checkpoints, tmp_path):
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json") + ["--save_images", str(tmp_path / "img")])
    images = saved_images(tmp_path / "img")
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == \
        ["0000_00001_0001.png", "0001_00001_0002.png", "0002_00002_0001.png"]       # one per sample, no temp files
    panel = FRAME_W + GRID_PADDING
    for image in images:
        assert image.shape[1] == 4 * panel + GRID_PADDING                      # I0 | prediction | ground truth | I1
        assert image.shape[0] > FRAME_H + 2 * GRID_PADDING                       # plus the label band
    # Below the band, the last panel is I1 itself (BGR as cv2 reads it back).
    first_i1 = cv2.imread(str(vimeo_root / "sequences" / "00001" / "0001" / "im3.png"))
    top = images[0].shape[0] - FRAME_H - GRID_PADDING
    left = 3 * panel + GRID_PADDING
    assert np.array_equal(images[0][top:top + FRAME_H, left:left + FRAME_W], first_i1)


def test_save_images_adds_flow_and_mask_panels_and_changes_no_score(snu_root, checkpoints, tmp_path):
    options = ["--split", "easy", "--limit", "2", "--tta"]
    SNU_FILM.main(common_args(snu_root, checkpoints, tmp_path / "plain.json", "tiny_phase2") + options)
    SNU_FILM.main(common_args(snu_root, checkpoints, tmp_path / "saved.json", "tiny_phase2") + options
                  + ["--save_images", str(tmp_path / "img")])
    plain = read_report(tmp_path / "plain.json")["results"]["easy"]
    saved = read_report(tmp_path / "saved.json")["results"]["easy"]
    assert [r["psnr"] for r in saved["samples"]] == [r["psnr"] for r in plain["samples"]]
    assert [r["ssim"] for r in saved["samples"]] == [r["ssim"] for r in plain["samples"]]
    images = saved_images(tmp_path / "img")
    assert len(images) == 2
    assert all(image.shape[1] == 7 * (FRAME_W + GRID_PADDING) + GRID_PADDING for image in images)  # + flows, mask


def test_save_images_uses_one_folder_per_subset(snu_root, checkpoints, tmp_path):
    SNU_FILM.main(common_args(snu_root, checkpoints, tmp_path / "r.json") + ["--limit", "1",
                                                                           "--save_images", str(tmp_path / "img")])
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == sorted(SNU_FILM.SPLITS)
    assert all(len(list((tmp_path / "img" / split).glob("*.png"))) == 1 for split in SNU_FILM.SPLITS)


def test_demo_summary_line_reports_untrained_trained_and_frame_average(tmp_path, capsys):
    """The demo's closing line: data set and size, untrained -> trained PSNR, frame average."""
    from conftest import write_vimeo
    from benchmark import demo_summary
    from checkpoint import seed_everything

    root = write_vimeo(tmp_path / "set", train=3, test=2, height=32, width=64)
    cfg = preset(1, "tiny")
    seed_everything(cfg.train.seed)                      # the weights a run with this config starts from
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": build_model(cfg.model).state_dict(), "ema": None},
                tmp_path / "ckpt" / "start.pt")
    Vimeo90K.main(common_args(root, tmp_path / "ckpt", tmp_path / "r.json", "start"))
    result = read_report(tmp_path / "r.json")["results"]["test"]
    capsys.readouterr()
    line = demo_summary.main(["--report", str(tmp_path / "r.json"), "--name", "toy set"])
    assert capsys.readouterr().out.strip() == line
    # Checkpoint = initial weights, so "untrained" must reproduce the report's own PSNR.
    assert f"{result['psnr']:.2f}" != f"{result['psnr_frame_average']:.2f}"   # else the line uses three decimals
    assert line.startswith(f"demo: toy set (3 train / 2 test triplets, 64x32): PSNR untrained {result['psnr']:.2f} dB "
                           f"-> trained {result['psnr']:.2f} dB; frame average {result['psnr_frame_average']:.2f} dB")
    assert demo_summary.summary_line("x", 1, 1, "8x8", 25.06, 25.61, 25.44).endswith("(trained: 0.17 dB above it)")
    assert demo_summary.summary_line("x", 1, 1, "8x8", 25.06, 25.41, 25.44).endswith("(trained: 0.03 dB below it)")
    # Two decimals would print 25.44 for both: three are used then.
    assert demo_summary.summary_line("x", 1, 1, "8x8", 25.064, 25.4426, 25.4362).endswith(
        "untrained 25.064 dB -> trained 25.443 dB; frame average 25.436 dB (trained: 0.006 dB above it)")


def test_demo_summary_names_a_missing_report(tmp_path, capsys):
    from benchmark import demo_summary

    line = run_failing(demo_summary.main, ["--report", str(tmp_path / "none.json")], capsys)
    assert str(tmp_path / "none.json") in line


def test_compiled_model_predicts_what_the_eager_model_predicts(tmp_path, monkeypatch):
    """`interpolate.py --compile` (compile_for_inference): the compiled forward runs through `inference` and the
    Evaluator, with the eager prediction's values (CPU Inductor here; measured on the GPU in docs/PERF.md)."""
    from benchmark.eval_core import Evaluator, Protocol
    from model.inference import compile_for_inference
    from config import preset
    from model import build_model
    torch.manual_seed(0)
    model = build_model(preset(1, "tiny")).eval()
    evaluator = Evaluator(model, Protocol("video"), "cpu", "fp32", progress=False)
    img0, img1 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    eager = evaluator.predict(img0, img1, 0.5)
    from torch._dynamo.utils import counters
    counters.clear()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert compile_for_inference(model) is model
    compiled = evaluator.predict(img0, img1, 0.5)
    assert counters["stats"]["unique_graphs"] >= 1              # Dynamo traced the forward: the compiled path ran
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_bench_model_times_eager_and_compiled_inference_on_cpu(tmp_path, monkeypatch):
    """`bench_model.py --infer ... --compile_infer` (the 4K rows of docs/PERF.md) as a CPU smoke test: one eager and one
    compiled inference row, the compiled one with its compile time and its difference from the eager prediction."""
    from benchmark import bench_model
    out = tmp_path / "rows.json"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--phase", "1", "--model_size", "tiny", "--batch", "1",
                                      "--size", "32", "--infer", "256", "--compile_infer", "--reps", "1",
                                      "--amp", "fp32", "--device", "cpu", "--json", str(out)])
    bench_model.main()
    rows = [row for row in json.loads(out.read_text())["rows"] if row["kind"] == "infer"]
    assert [row["exec"] for row in rows] == ["eager", "compiled"]
    assert all(row["ms"] > 0 and row["resolution"] == "256" for row in rows)
    assert rows[1]["first_call_s"] > 0 and rows[1]["max_abs_diff_vs_eager"] < 1e-4
    assert rows[1]["p999_abs_diff_vs_eager"] <= rows[1]["max_abs_diff_vs_eager"]
    assert rows[1]["compile"]["cache_dir"] == str(tmp_path / "inductor")          # what Inductor's caches did
    assert sum(rows[1]["compile"]["fx_graph_cache"].values()) >= 1 and "compile" not in rows[0]
    assert [row["runtime"]["mode"] for row in rows] == ["eager", "compiled"]
    assert all(row["runtime"]["device"] == "cpu" and row["runtime"]["peak_gib"] is None for row in rows)
    assert rows[1]["align_channels"] is True and "align_channels" not in rows[0]       # the default: aligned


def test_bench_model_times_compiled_rows_with_and_without_channel_alignment(tmp_path, monkeypatch):
    """`--compile_infer --align_channels off,on`: one compiled row per setting, each on its own copy of the model
    (so both start from the trained widths) and each saying which it was; both predict what eager predicts; with
    --kernel_profile each lists what ran (on the CPU: operators, here the convolutions), and a row timed after a
    profile is marked. The
    compilation itself is replaced by a stand-in that runs the module eagerly (Inductor on this CPU takes minutes);
    the stand-in records the flow blocks' alignment of each model it was given."""
    from benchmark import bench_model
    compiled_models = []

    def compile_eagerly(module, *args, **kwargs):
        compiled_models.append([block.channel_multiple for block in module.flow_estimator.blocks])
        module._compiled_call_impl = module._call_impl            # what is_compiled() looks for

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--phase", "2", "--model_size", "tiny", "--infer", "256@1.0",
                                      "--infer_only", "--compile_infer", "--align_channels", "off,on", "--reps", "1",
                                      "--amp", "fp32", "--device", "cpu", "--kernel_profile", "aten::conv2d",
                                      "--json", str(out)])
    bench_model.main()
    rows = [row for row in json.loads(out.read_text())["rows"] if row["kind"] == "infer"]
    assert [(row["exec"], row.get("align_channels")) for row in rows] == [
        ("eager", None), ("compiled", False), ("compiled", True)]
    assert compiled_models == [[None, None, None], [8, 8, 8]]
    assert all(row["max_abs_diff_vs_eager"] < 1e-5 and row["runtime"]["mode"] == "compiled" for row in rows[1:])
    # --kernel_profile (on the CPU: operators): the same number of convolutions runs, aligned or not
    convolutions = [row["kernels"]["matching"]["aten::conv2d"]["per_call"] for row in rows[1:]]
    assert convolutions[0] == convolutions[1] > 20 and "kernels" not in rows[0]
    # only the row timed after the first profile says so (a CUDA profiler slows the launches that follow it)
    assert [row.get("after_kernel_profile", False) for row in rows] == [False, False, True]
    for row in rows[1:]:                      # the families add up to the whole profile
        families = row["kernels"]["families"].values()
        assert sum(found["per_call"] for found in families) == pytest.approx(row["kernels"]["all"]["per_call"], abs=0.1)
        assert row["kernels"]["families"]["convolutions"]["per_call"] >= convolutions[0]
    # A graphed row profiles the call its graph recorded (t a device tensor, autocast's cache off), run ungraphed.
    from model import build_model
    from model.inference import InferenceRunner
    torch.manual_seed(0)
    model = build_model(preset(2, "tiny").model).eval()
    settings = argparse.Namespace(phase=2, amp="fp32")
    recorded_like = bench_model.graph_like_call(model, "256@1.0", settings, "cpu")()
    plain = bench_model.inference_call(InferenceRunner(model, "off"), "256@1.0", settings, "cpu")[0]()
    assert recorded_like.shape == (1, 3, 256, 256) and torch.equal(recorded_like.float(), plain)
    assert bench_model.parse_align_channels("on, off") == (True, False)
    for wrong in ("yes", "on,on", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="give on, off, or both"):
            bench_model.parse_align_channels(wrong)


def test_bench_model_builds_one_model_per_ssd_chunk_size(tmp_path, monkeypatch):
    """`--ssm_chunk_size 64 16`: one model per length, each with that inference chunk length on every Mamba branch
    (the configured training length untouched), each row saying the length its scans used (on the CPU: the configured
    one, since the inference length applies on CUDA only)."""
    from benchmark import bench_model
    from model.mamba_branch import InterleavedMamba2
    built = []
    real_build = bench_model.build_model

    def recording_build(cfg):
        built.append(real_build(cfg))
        return built[-1]

    monkeypatch.setattr(bench_model, "build_model", recording_build)
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--phase", "1", "--model_size", "tiny", "--infer", "256",
                                      "--infer_only", "--ssm_chunk_size", "64", "16", "--reps", "1", "--amp", "fp32",
                                      "--device", "cpu", "--json", str(out)])
    bench_model.main()
    rows = [row for row in json.loads(out.read_text())["rows"] if row["kind"] == "infer"]
    configured = preset(1, "tiny").model.ssm_chunk_size
    assert [row["ssm_chunk_size"] for row in rows] == [configured, configured]
    for model, chunk in zip(built, (64, 16)):
        branches = [m for m in model.modules() if isinstance(m, InterleavedMamba2)]
        assert branches and all(b.inference_chunk_size == chunk and b.chunk_size == configured for b in branches)
        assert branches[0].chunk_for(on_cuda=True, grad_enabled=False) == chunk
    assert {row["warp_kernel"] for row in rows} == {"aten"}          # the CPU: ATen's grid_sample


def test_alternating_timing_takes_the_calls_in_turn_and_bench_model_alternates_the_warp_kernels(tmp_path,
                                                                                                  monkeypatch):
    """measure_alternating runs one call of each per round (warm-up rounds untimed), a Timing per call; bench_model's
    --alternate_warps gives two eager rows of one model whose calls switched THESIS_TRITON_WARP in turn, and leaves
    the variable as it found it (on the CPU both rows say ATen's kernel, the one in effect there)."""
    from benchmark import bench_model
    from benchmark.timing import measure_alternating
    order = []
    timings = measure_alternating({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, "cpu",
                                  warmup=1, reps=3)
    assert order == ["a", "b"] * 4 and [len(timings[name].times_ms) for name in "ab"] == [3, 3]
    assert timings["a"].peak_gib is None                                          # the CPU: no peak memory
    seen = []
    real_call = bench_model.inference_call

    def recording_call(*call_args, **kwargs):
        infer, flow_scale = real_call(*call_args, **kwargs)

        def call():
            seen.append(os.environ.get("THESIS_TRITON_WARP"))
            return infer()
        return call, flow_scale

    monkeypatch.setattr(bench_model, "inference_call", recording_call)
    monkeypatch.setenv("THESIS_TRITON_WARP", "as before")
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--phase", "1", "--model_size", "tiny", "--infer", "256",
                                      "--infer_only", "--alternate_warps", "--reps", "2", "--amp", "fp32",
                                      "--device", "cpu", "--json", str(out)])
    bench_model.main()
    rows = [row for row in json.loads(out.read_text())["rows"] if row.get("alternated")]
    assert [row["exec"] for row in rows] == ["eager", "eager"] and all(row["ms"] > 0 for row in rows)
    assert {row["warp_kernel"] for row in rows} == {"aten"}
    assert seen[:8] == ["0", "1"] * 4                             # 2 warm-up and 2 timed rounds, in turn
    assert os.environ["THESIS_TRITON_WARP"] == "as before"


def test_kernel_families_sort_the_kernels_of_a_compiled_call():
    """benchmark.timing.kernel_family on kernel names of a compiled 1080p call (docs/PERF.md 10.17's profile): the SSD
    kernels before the matrix products their names resemble, cuDNN's padding pass before its convolutions, Inductor's
    fused kernels whatever they fuse (a copy, a convolution, a warp among them; call Y's profile counted 16 of them as
    warps), an Inductor template by what it computes, the rest "other"."""
    from benchmark.timing import kernel_family
    expected = {
        "_bmm_chunk_fwd_kernel": "ssd scan (mamba-ssm)", "_state_passing_fwd_kernel": "ssd scan (mamba-ssm)",
        "void at::native::(anonymous namespace)::grid_sampler_2d_kernel<float, int>(int)": "warps",
        "_border_warp_kernel": "warps",
        "void nhwcAddPaddingKernel<__nv_bfloat16>(int)": "cudnn layout and padding",
        "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_256x64_32x4_nhwc_align8>":
            "convolutions",
        "sm80_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x32x32": "convolutions",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matrix products",
        "triton_poi_fused__to_copy_cat_slice_184": "inductor fused kernels",
        # named after the operators they fused (call Y's profile): still Inductor's own kernels
        "triton_poi_fused__prelu_kernel__to_copy_border_warp_half_inference_convolution_view_79":
            "inductor fused kernels",
        "triton_red_fused__to_copy_add_cat_flip_mean_mul_pow_rsqrt_select_silu_transpose_view_94":
            "inductor fused kernels",
        "triton_tem_fused_convolution_12": "convolutions",        # a template: the convolution itself
        "Memcpy DtoD (Device -> Device)": "copies and fills",
        "some_new_kernel": "other",
    }
    assert {name: kernel_family(name) for name in expected} == expected


def test_benchmark_compile_mode_needs_compile(vimeo_root, checkpoints, tmp_path, capsys):
    """--compile_mode without --compile makes no sense: one line naming both flags, exit 2, no report."""
    with pytest.raises(SystemExit) as exit_info:
        Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json")
                      + ["--compile_mode", "max-autotune-no-cudagraphs"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert "--compile_mode is a setting of --compile: add --compile or drop --compile_mode" in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_bench_model_compiles_one_row_per_inductor_mode(tmp_path, monkeypatch):
    """`--compile_infer --compile_mode default max-autotune-no-cudagraphs`: one compiled row per mode, each compiled
    with that mode and saying so; a mode with Inductor's own CUDA graphs is refused by name before anything compiles
    (InferenceRunner records the graph itself). Compilation is replaced by a stand-in that records the mode."""
    from benchmark import bench_model
    from model import build_model
    from model.inference import compile_for_inference
    modes = []

    def compile_eagerly(module, *args, **kwargs):
        modes.append(kwargs.get("mode"))
        module._compiled_call_impl = module._call_impl

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--phase", "1", "--model_size", "tiny", "--infer", "256@1.0",
                                      "--infer_only", "--compile_infer", "--compile_mode", "default",
                                      "max-autotune-no-cudagraphs", "--reps", "1", "--amp", "fp32", "--device", "cpu",
                                      "--json", str(out)])
    bench_model.main()
    rows = [row for row in json.loads(out.read_text())["rows"] if row["kind"] == "infer"]
    assert [(row["exec"], row.get("compile_mode")) for row in rows] == [
        ("eager", None), ("compiled", "default"), ("compiled", "max-autotune-no-cudagraphs")]
    assert modes == ["default", "max-autotune-no-cudagraphs"]
    assert bench_model.describe_execution(rows[2]).endswith(", max-autotune-no-cudagraphs")
    model = build_model(preset(1, "tiny").model)
    with pytest.raises(ValueError, match="compile mode 'reduce-overhead'"):
        compile_for_inference(model, mode="reduce-overhead")
    assert len(modes) == 2 and not model._compiled_call_impl


# --------------------------------------------------------------------------------------------------------
# Quality by motion and the classical DIS baseline (measures/motion.py through the one core)
# --------------------------------------------------------------------------------------------------------
class DisModel:
    """Stand-in model that *is* the classical baseline: DIS both ways, warped to t, occlusion-aware blend."""

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        from measures.motion import interpolate_dis
        frames = [image[0].permute(1, 2, 0).numpy() for image in (img0, img1)]
        return torch.from_numpy(interpolate_dis(*frames, t)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def pan_root(tmp_path_factory) -> Path:
    """4 test triplets of 64x96 frames panning 2 px per frame (conftest.write_vimeo)."""
    from conftest import write_vimeo
    return write_vimeo(tmp_path_factory.mktemp("pan"), train=1, test=4)


def test_report_gives_motion_per_sample_and_quality_per_motion_bucket(pan_root, checkpoints, tmp_path, capsys):
    Vimeo90K.main(common_args(pan_root, checkpoints, tmp_path / "r.json"))
    result = read_report(tmp_path / "r.json")["results"]["test"]
    # The fixture pans 2 px per frame: I0 -> I1 moves 4 px.
    assert [r["motion"] for r in result["samples"]] == pytest.approx([4.0] * 4, abs=1.0)
    assert result["motion_statistic"].startswith("95th percentile of |DIS flow I0->I1| in px")
    buckets = result["by_motion"]
    assert [b["bucket"] for b in buckets] == ["<4", "4-16", "16-32", "32-64", ">64"]
    assert sum(b["count"] for b in buckets) == result["count"] == 4
    from measures.motion import bucket_of
    for bucket in buckets:
        members = [r for r in result["samples"] if bucket_of(r["motion"]) == bucket["bucket"]]
        assert bucket["count"] == len(members)
        for key in ("psnr", "ssim", "psnr_frame_average", "psnr_dis"):
            if members:
                assert bucket[key] == pytest.approx(np.mean([r[key] for r in members]))
            else:
                assert key not in bucket
    # The classical baseline is in the report and on the console, and beats blending on a clean pan.
    assert result["psnr_dis"] == pytest.approx(np.mean([r["psnr_dis"] for r in result["samples"]]))
    assert result["psnr_dis"] > result["psnr_frame_average"] + 3
    printed = capsys.readouterr().out
    assert (f"classical DIS flow (both ways, warped to t, occlusion-aware blend): PSNR {result['psnr_dis']:.4f}"
            in printed)
    assert "motion (px)  count" in printed and "DIS flow" in printed


def test_dis_baseline_goes_through_the_protocol(pan_root):
    """A model that *is* the DIS baseline scores exactly the baseline (same frames, geometry and metric)."""
    samples = Vimeo90K.enumerate_samples(pan_root)
    result = Evaluator(DisModel(), Vimeo90K.PROTOCOL, progress=False).evaluate(samples)
    assert all(r["psnr"] == pytest.approx(r["psnr_dis"], abs=1e-9) for r in result["samples"])
    assert result["psnr"] > result["psnr_frame_average"] + 3


def test_no_motion_skips_dis(vimeo_root, checkpoints, tmp_path, capsys):
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json") + ["--limit", "1", "--no_motion"])
    result = read_report(tmp_path / "r.json")["results"]["test"]
    assert "by_motion" not in result and "psnr_dis" not in result and "motion" not in result["samples"][0]
    assert "classical DIS" not in capsys.readouterr().out


class ScaleRecordingModel(BlendModel):
    """The blend, recording each call's flow_scale (to check which scale each sample got)."""

    use_flow = True


def test_motion_flow_scale_halves_the_scale_for_large_motion_only(pan_root, monkeypatch):
    from measures import motion
    samples = Vimeo90K.enumerate_samples(pan_root)                 # ~4 px of motion each
    model = ScaleRecordingModel()
    Evaluator(model, Vimeo90K.PROTOCOL, progress=False, motion_flow_scale=True).evaluate(samples)
    assert [c["flow_scale"] for c in model.calls] == [1.0] * 4
    monkeypatch.setattr(motion, "LARGE_MOTION_PX", 2.0)           # now every sample counts as large motion
    monkeypatch.setattr("benchmark.eval_core.motion_flow_scale",
                        lambda m, base: motion.motion_flow_scale(m, base, large_motion=2.0))
    model = ScaleRecordingModel()
    result = Evaluator(model, replace(Vimeo90K.PROTOCOL, flow_scale=0.5), progress=False,
                       motion_flow_scale=True).evaluate(samples)
    assert [c["flow_scale"] for c in model.calls] == [0.25] * 4
    assert [r["flow_scale"] for r in result["samples"]] == [0.25] * 4
    with pytest.raises(BenchmarkError, match="drop --no_motion"):
        Evaluator(model, Vimeo90K.PROTOCOL, motion=False, motion_flow_scale=True)
    assert motion.motion_flow_scale(31.9) == 1.0 and motion.motion_flow_scale(32.0, 0.5) == 0.25


def test_corpus_benchmark_names_samples_by_clip(tmp_path, checkpoints, capsys):
    from benchmark import Corpus
    from conftest import write_vimeo
    root = write_vimeo(tmp_path / "corpus", train=1, test=2)
    with pytest.raises(BenchmarkError, match="corpus.json not found"):
        Corpus.enumerate_samples(root)
    (root / "corpus.json").write_text(json.dumps({"triplets": {"00001/0002": ["city", 3, 10],
                                                               "00001/0003": ["city", 1, 4]}}))
    report = Corpus.main(common_args(root, checkpoints, tmp_path / "r.json", "tiny_phase2"))
    result = report["results"]["test"]
    assert [r["name"] for r in result["samples"]] == ["city s3 f10", "city s1 f4"]
    assert {r["group"] for r in result["samples"]} == {"city"} and "by_motion" in result
    assert "Corpus protocol on" in capsys.readouterr().out


@pytest.mark.parametrize("content,message", [
    (None, "report not found"),
    ("{\"results\": ", "is not valid JSON (Expecting value at line 1"),
    ("[1, 2]", "is not a benchmark report"),
    ("{\"results\": {\"val\": {}}}", "has no subset 'test' (it has val)"),
    ("{\"results\": {\"test\": {\"count\": 2}}}", "has no per-motion results for 'test'"),
    ("{\"results\": {\"test\": {\"count\": 2, \"by_motion\": [1]}}}", "buckets with counts (a report of another version?)"),
])
def test_bucket_table_names_the_report_it_cannot_use_in_one_line(tmp_path, content, message):
    from benchmark import bucket_table
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        bucket_table.main([f"base={path}"])
    text = str(exit_info.value)
    assert text.startswith("bucket_table: error: ") and str(path) in text and "\n" not in text
    assert message in text


def test_bucket_table_puts_reports_side_by_side_with_seed_means(tmp_path, capsys):
    from benchmark import bucket_table
    from measures.motion import summarize_by_motion
    paths = []
    for index, offset in enumerate((0.0, 1.0)):
        records = [{"motion": m, "psnr": 30.0 + offset + i, "ssim": 0.9, "psnr_frame_average": 25.0,
                    "psnr_dis": 28.0} for i, m in enumerate((2.0, 40.0))]
        result = {"count": 2, "psnr": 30.5 + offset, "psnr_frame_average": 25.0, "psnr_dis": 28.0,
                  "by_motion": summarize_by_motion(records, ["psnr", "psnr_frame_average", "psnr_dis"])}
        paths.append(tmp_path / f"r{index}.json")
        paths[-1].write_text(json.dumps({"results": {"test": result}}))
    bucket_table.main([f"base_s0={paths[0]}", f"base_s1={paths[1]}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| motion (px) | count | frame avg | DIS flow | base_s0 | base_s1 | base (mean of 2) |"
    assert lines[2] == "| <4 | 1 | 25.00 | 28.00 | 30.00 | 31.00 | 30.50 |"
    assert lines[3] == "| 4-16 | 0 | - | - | - | - | - |"
    assert lines[5] == "| 32-64 | 1 | 25.00 | 28.00 | 31.00 | 32.00 | 31.50 |"
    assert lines[7] == "| all | 2 | 25.00 | 28.00 | 30.50 | 31.50 | 31.00 |"
    with pytest.raises(SystemExit, match="--metric psnr_blend: not in the report.* base_s0, base_s1 .*--components"):
        bucket_table.main([f"base_s0={paths[0]}", f"base_s1={paths[1]}", "--metric", "psnr_blend"])
    bucket_table.main([f"base_s0={paths[0]}", f"base_s1={paths[1]}", "--metric", "psnr_dis"])
    assert capsys.readouterr().out.splitlines()[2] == "| <4 | 1 | 25.00 | 28.00 | 28.00 | 28.00 | 28.00 |"


def test_bucket_table_rows_by_stride_average_the_samples_of_each_stride(tmp_path, capsys):
    """`--rows stride` (Corpus.py reports): one row per stride read from the samples' names, each value the mean over
    that stride's samples, "all" over every sample; a report whose names carry no stride is refused by name."""
    from benchmark import bucket_table
    from benchmark.Corpus import sample_name, stride_of
    from measures.motion import summarize_by_motion
    records = [{"name": sample_name("city", stride, start), "motion": 3.0, "psnr": 30.0 + stride + start,
                "psnr_frame_average": 20.0, "psnr_dis": 31.0, "psnr_blend": 29.0}
               for stride, start in ((2, 0), (1, 0), (2, 2), (1, 4))]
    result = {"count": 4, "psnr": 33.0, "psnr_blend": 29.0, "by_motion": summarize_by_motion(records, ["psnr"]),
              "samples": records}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": {"test": result}}))
    bucket_table.main([f"prior={path}", "--rows", "stride"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| stride | count | frame avg | DIS flow | prior |"
    assert lines[2:] == ["| s1 | 2 | 20.00 | 31.00 | 33.00 |", "| s2 | 2 | 20.00 | 31.00 | 33.00 |",
                         "| all | 4 | 20.00 | 31.00 | 33.00 |"]
    bucket_table.main([f"prior={path}", "--rows", "stride", "--metric", "psnr_blend"])
    assert capsys.readouterr().out.splitlines()[-1] == "| all | 4 | 20.00 | 31.00 | 29.00 |"
    assert stride_of("cityCC0 s3 f40") == 3 and stride_of("00001/0001") is None and stride_of("a s1 x") is None
    records[0]["name"] = "00001/0001"
    path.write_text(json.dumps({"results": {"test": result}}))
    with pytest.raises(SystemExit, match="sample '00001/0001' has no stride in its name"):
        bucket_table.main([f"prior={path}", "--rows", "stride"])


def test_count_gflop_splits_by_part_scales_with_pixels_and_restores_the_ssd_backend():
    """bench_model.py --flops: the count uses the SSD reference while counting (the Triton kernel is opaque to the
    counter, so a GPU count would miss the scan) and puts each branch's backend back; arithmetic is a property of the
    model and the size: twice the pixels, about twice the GFLOP; the parts add up to the total."""
    from benchmark.timing import count_gflop
    from model.mamba_branch import InterleavedMamba2

    torch.manual_seed(0)
    model = build_model(preset(2, "tiny")).eval()
    branches = [m for m in model.modules() if isinstance(m, InterleavedMamba2)]
    assert branches
    for branch in branches:
        branch.backend = "auto"
    seen = []
    hook = branches[0].register_forward_pre_hook(lambda module, inputs: seen.append(module.backend))

    def record(height, width):
        frames = torch.rand(2, 1, 3, height, width)
        return count_gflop(lambda: model.inference(frames[0], frames[1], 0.5), model,
                           ("backbone", "flow_estimator", "context", "refine"))

    small, large = record(64, 64), record(64, 128)
    hook.remove()
    assert seen == ["torch", "torch"] and all(branch.backend == "auto" for branch in branches)
    assert small["parts"]["flow_estimator"] > 0 and small["parts"]["backbone"] > 0
    assert abs(sum(small["parts"].values()) - small["total"]) <= 0.01 * small["total"]
    assert 1.8 < large["total"] / small["total"] < 2.2


# --------------------------------------------------------------------------------------------------------
# A model with a classical flow prior (--flow_prior dis): each pair's DIS flows, padded and flipped like the frames
# --------------------------------------------------------------------------------------------------------
class PriorRecordingModel(BlendModel):
    """The blend, as a stand-in for a --flow_prior model (or, with ``needs=False``, a model without one): records
    the prior of every call (None when it got none)."""

    def __init__(self, needs: bool = True):
        super().__init__()
        self.needs_flow_prior = needs
        self.priors = []

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False, flow_prior=None):
        self.priors.append(None if flow_prior is None else flow_prior.clone())
        return super().inference(img0, img1, t, flow_scale, tta)


def expected_prior(sample, protocol: Protocol) -> torch.Tensor:
    """(1, 4, H', W'): measures.motion.prior_pair_flows of the sample's frames as evaluated (read as RGB, the
    protocol's geometry), centred-replicate padded to the protocol's multiple as the images are."""
    from measures.motion import prior_pair_flows
    from model.frames import read_rgb_uint8
    frames = [protocol.geometry.apply(read_rgb_uint8(path, BenchmarkError)) for path in (sample.img0, sample.img1)]
    return pad_centred(torch.from_numpy(prior_pair_flows(*frames))[None], protocol.pad_multiple)[0]


@pytest.fixture
def dis_calls(monkeypatch) -> dict:
    """Counts the evaluator's DIS computations: motion flows (flow_pair) and priors computed for themselves."""
    from benchmark import eval_core
    calls = {"flow_pair": 0, "prior_pair_flows": 0}

    def counted(name):
        original = getattr(eval_core, name)

        def call(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(eval_core, name, call)
    counted("flow_pair")
    counted("prior_pair_flows")
    return calls


@pytest.mark.parametrize("motion", [True, False])
def test_each_pair_gets_its_own_prior_padded_like_the_images(vimeo_root, dis_calls, motion):
    """With the motion statistic on, the prior is its flows (frames under 1024 px: the same DIS); with --no_motion it
    is computed for itself; either way it equals prior_pair_flows of the pair as evaluated, padded from 24x40 to
    32x64 as the images are, and its CPU cost is in the runtime record."""
    samples = Vimeo90K.enumerate_samples(vimeo_root)                 # three pairs of different noise
    model = PriorRecordingModel()
    result = Evaluator(model, Vimeo90K.PROTOCOL, progress=False, motion=motion).evaluate(samples)
    assert [tuple(prior.shape) for prior in model.priors] == [(1, 4, 32, 64)] * 3
    for prior, sample in zip(model.priors, samples):
        assert torch.equal(prior, expected_prior(sample, Vimeo90K.PROTOCOL))
    assert not torch.equal(model.priors[0], model.priors[1])
    assert dis_calls == ({"flow_pair": 3, "prior_pair_flows": 0} if motion else {"flow_pair": 0, "prior_pair_flows": 3})
    runtime = result["runtime"]
    assert runtime["prior_pairs"] == 3 and runtime["prior_ms_per_pair"] > 0
    assert ("motion" in result["samples"][0]) is motion


def test_frames_over_the_prior_size_get_a_prior_of_their_own(vimeo_root, dis_calls, monkeypatch):
    """Above measures.motion.PRIOR_WORK_MAX_SIDE (1024 px; here 16) the motion flows (DIS on up to 2048 px) are not
    the prior: the prior's own DIS runs on the downscaled frames, once per pair beside the motion's."""
    from measures import motion
    monkeypatch.setattr(motion, "PRIOR_WORK_MAX_SIDE", 16)
    samples = Vimeo90K.enumerate_samples(vimeo_root)[:2]
    model = PriorRecordingModel()
    Evaluator(model, Vimeo90K.PROTOCOL, progress=False).evaluate(samples)
    assert dis_calls == {"flow_pair": 2, "prior_pair_flows": 2}
    for prior, sample in zip(model.priors, samples):
        assert torch.equal(prior, expected_prior(sample, Vimeo90K.PROTOCOL))      # the downscaled DIS


@pytest.mark.parametrize("motion", [True, False])
def test_xtest_computes_one_prior_per_pair_for_its_seven_targets(xtest_root, dis_calls, motion):
    protocol = XTest.PROTOCOLS["4k"]
    samples = XTest.enumerate_samples(xtest_root)                    # 2 scenes x 7 targets
    model = PriorRecordingModel()
    result = Evaluator(model, protocol, progress=False, motion=motion).evaluate(samples)
    assert sum(dis_calls.values()) == 2
    assert len(model.priors) == 14 and [c["t"] for c in model.calls[:7]] == [k / 8 for k in range(1, 8)]
    for prior, sample in zip(model.priors, samples):
        assert torch.equal(prior, expected_prior(sample, protocol))
    assert result["runtime"]["prior_pairs"] == 2


def test_tta_passes_the_prior_as_is_for_the_model_to_flip(vimeo_root):
    """Through the runner, model.inference(tta=True) flips the prior itself (tests/test_prior.py): the evaluator
    hands it the unflipped prior once."""
    samples = Vimeo90K.enumerate_samples(vimeo_root)[:1]
    model = PriorRecordingModel()
    Evaluator(model, Vimeo90K.PROTOCOL, tta=True, progress=False).evaluate(samples)
    assert [c["tta"] for c in model.calls] == [True]
    assert torch.equal(model.priors[0], expected_prior(samples[0], Vimeo90K.PROTOCOL))


def test_a_model_without_a_prior_gets_none_and_no_prior_cost(vimeo_root, dis_calls):
    samples = Vimeo90K.enumerate_samples(vimeo_root)[:2]
    model = PriorRecordingModel(needs=False)
    result = Evaluator(model, Vimeo90K.PROTOCOL, progress=False).evaluate(samples)
    assert model.priors == [None, None] and dis_calls == {"flow_pair": 2, "prior_pair_flows": 0}
    assert not any(key.startswith("prior") for key in result["runtime"])
    Evaluator(model, Vimeo90K.PROTOCOL, progress=False, motion=False).evaluate(samples)
    assert dis_calls == {"flow_pair": 2, "prior_pair_flows": 0}


@pytest.mark.parametrize("extra", [[], ["--no_motion"]])
def test_prior_model_end_to_end_reports_the_priors_cpu_cost(vimeo_root, checkpoints, tmp_path, capsys, extra):
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json", "tiny_phase2_prior") + ["--limit", "2"]
                  + extra)
    report = read_report(tmp_path / "r.json")
    runtime = report["results"]["test"]["runtime"]
    assert report["flow_prior"] == "dis" and runtime["prior_pairs"] == 2 and runtime["prior_ms_per_pair"] > 0
    assert report["runtime"]["test"] == runtime
    printed = capsys.readouterr().out
    assert (f"ms per output frame at 24x40 (eager, cpu); + DIS flow prior {runtime['prior_ms_per_pair']:.1f} ms per "
            f"input pair on one CPU core (not in the model's time)") in printed
    assert ("by_motion" in report["results"]["test"]) is not extra


def test_model_without_prior_reports_no_prior_cost(vimeo_root, checkpoints, tmp_path, capsys):
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json", "tiny_phase2") + ["--limit", "1"])
    report = read_report(tmp_path / "r.json")
    assert report["flow_prior"] == "none" and "prior_ms_per_pair" not in report["results"]["test"]["runtime"]
    assert "flow prior" not in capsys.readouterr().out


def test_prior_model_with_tta_scores_the_same_with_and_without_image_panels(snu_root, checkpoints, tmp_path):
    """--save_images runs the model's forward and the flipped pass itself (for the flow panels): the flipped pass must
    get the flipped prior, as model.inference(tta=True) gives it, or the scores would differ from the plain run."""
    options = ["--split", "easy", "--limit", "2", "--tta"]
    SNU_FILM.main(common_args(snu_root, checkpoints, tmp_path / "plain.json", "tiny_phase2_prior") + options)
    SNU_FILM.main(common_args(snu_root, checkpoints, tmp_path / "saved.json", "tiny_phase2_prior") + options
                  + ["--save_images", str(tmp_path / "img")])
    plain = read_report(tmp_path / "plain.json")["results"]["easy"]
    saved = read_report(tmp_path / "saved.json")["results"]["easy"]
    assert [r["psnr"] for r in saved["samples"]] == pytest.approx([r["psnr"] for r in plain["samples"]], abs=1e-9)
    assert len(saved_images(tmp_path / "img")) == 2


def test_timetest_runs_a_prior_model_and_reports_the_priors_cpu_cost(checkpoints, tmp_path, capsys):
    report = TimeTest.main(["--phase", "2", "--model_size", "tiny", "--flow_prior", "dis", "--resolution", "32x48",
                            "--warmup", "1", "--reps", "2", "--device", "cpu", "--out", str(tmp_path / "t.json")])
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["flow_prior"] == "dis" and len(saved["prior_times_ms"]) == 3 and saved["prior_ms_per_pair"] > 0
    assert saved["runtime"]["prior_ms_per_pair"] == pytest.approx(saved["prior_ms_per_pair"], abs=1e-3)
    assert "+ DIS flow prior" in capsys.readouterr().out and "flow prior dis" in report["model"]
    report = TimeTest.main(["--model", "tiny_phase2_prior", "--ckpt_dir", str(checkpoints), "--resolution", "16x16",
                            "--warmup", "1", "--reps", "1", "--device", "cpu"])
    assert report["flow_prior"] == "dis" and report["runtime"]["prior_ms_per_pair"] > 0
    report = TimeTest.main(["--phase", "2", "--model_size", "tiny", "--resolution", "16x16", "--warmup", "1",
                            "--reps", "1", "--device", "cpu"])
    assert report["flow_prior"] == "none" and "prior_ms_per_pair" not in report["runtime"]


def test_timetest_flow_prior_errors_are_one_line(checkpoints, capsys):
    line = run_failing(TimeTest.main, ["--phase", "1", "--flow_prior", "dis", "--device", "cpu"], capsys)
    assert "--flow_prior dis" in line and "phase 1" in line
    line = run_failing(TimeTest.main, ["--model", "tiny_phase2_prior", "--ckpt_dir", str(checkpoints),
                                       "--flow_prior", "dis", "--device", "cpu"], capsys)
    assert "--flow_prior" in line and "checkpoint" in line


def test_bench_model_times_a_prior_model_with_the_priors_cpu_cost_and_arithmetic(tmp_path, monkeypatch):
    """`bench_model.py --flow_prior dis`: a training row (each sample's prior an input) and an inference row that gives
    the DIS prior's CPU ms per pair beside the model's ms, and its GFLOP: the first flow block reads 18 channels
    instead of 7, a little more arithmetic than the same model without a prior."""
    from benchmark import bench_model
    rows = {}
    for prior in ("dis", "none"):
        out = tmp_path / f"{prior}.json"
        monkeypatch.setattr(sys, "argv", ["bench_model.py", "--phase", "2", "--model_size", "tiny", "--batch", "2",
                                          "--size", "32", "--infer", "256@1.0", "--flops", "--reps", "1",
                                          "--amp", "fp32", "--device", "cpu", "--flow_prior", prior,
                                          "--json", str(out)])
        bench_model.main()
        rows[prior] = json.loads(out.read_text())["rows"]
    train, infer = rows["dis"]
    assert train["kind"] == "train" and train["flow_prior"] == "dis" and train["step_ms"] > 0
    assert infer["kind"] == "infer" and "error" not in infer and infer["flow_prior"] == "dis"
    assert infer["prior_ms"] > 0 and infer["runtime"]["prior_ms_per_pair"] == pytest.approx(infer["prior_ms"], abs=0.01)
    plain = rows["none"][1]
    assert "prior_ms" not in plain and "prior_ms_per_pair" not in plain["runtime"]
    assert "flow_prior" not in rows["none"][0]
    assert infer["gflop"] > 0 and "tflop_per_s" in infer
    # The graph-like call (what a CUDA graph records) takes the prior too, and predicts what the runner predicts.
    from benchmark.timing import count_gflop
    from model.inference import InferenceRunner
    torch.manual_seed(0)
    cfg = preset(2, "tiny").model
    model = build_model(replace(cfg, flow_prior="dis")).eval()
    settings = argparse.Namespace(phase=2, amp="fp32")
    recorded_like = bench_model.graph_like_call(model, "256@1.0", settings, "cpu")()
    prior_call = bench_model.inference_call(InferenceRunner(model, "off"), "256@1.0", settings, "cpu")[0]
    assert torch.equal(recorded_like.float(), prior_call())
    plain_model = build_model(cfg).eval()
    plain_call = bench_model.inference_call(InferenceRunner(plain_model, "off"), "256@1.0", settings, "cpu")[0]
    with_prior = count_gflop(prior_call, model, bench_model.MODEL_PARTS)["parts"]["flow_estimator"]
    without = count_gflop(plain_call, plain_model, bench_model.MODEL_PARTS)["parts"]["flow_estimator"]
    assert without < with_prior < 1.1 * without


@pytest.mark.parametrize("flags", [["--phase", "1"], ["--phase", "2", "--peer_table"],
                                   ["--phase", "2", "--trainer_step"]])
def test_bench_model_refuses_a_prior_where_it_has_no_meaning(flags, monkeypatch, capsys):
    from benchmark import bench_model
    monkeypatch.setattr(sys, "argv", ["bench_model.py", *flags, "--flow_prior", "dis", "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        bench_model.main()
    assert exit_info.value.code == 2 and "--flow_prior dis: for phases 2/3" in capsys.readouterr().err


class OffsetRunner:
    """Stand-in for a graphed runner whose predictions are the model's moved by ``offset`` on the middle pixel row
    (up, or down where that would leave [0, 1]): the parity report must find exactly that difference, while the
    eager reference stays the model's own."""

    mode = "graphed"
    capture_peak_gib = None

    def __init__(self, model, offset: float):
        self.model, self.offset = model, offset

    def __call__(self, img0, img1, t, flow_scale=1.0, tta=False, flow_prior=None):
        pred = self.model.inference(img0, img1, t, flow_scale=flow_scale, tta=tta).clone()
        row = pred[..., pred.shape[-2] // 2, :]           # inside the frame whatever the centred padding
        pred[..., pred.shape[-2] // 2, :] = torch.where(row <= 1 - self.offset, row + self.offset, row - self.offset)
        return pred


def test_parity_vs_eager_reports_the_runners_distance_from_eager(vimeo_root, checkpoints, tmp_path, capsys):
    """`--parity_vs_eager` (issue 21's parity figures on a trained checkpoint): every pair also runs eagerly; the
    records and the subset summary give the pixel differences and both PSNRs, and the scored prediction is the
    runner's."""
    samples = Vimeo90K.enumerate_samples(vimeo_root)[:2]
    model = BlendModel()
    offset = 3 / 255
    result = Evaluator(model, Vimeo90K.PROTOCOL, progress=False, motion=False, runner=OffsetRunner(model, offset),
                       parity_vs_eager=True).evaluate(samples)
    parity = result["parity_vs_eager"]
    assert parity["mode"] == "graphed"
    assert parity["max_abs_diff"] == pytest.approx(offset, abs=1e-6)
    row_share = 1 / FRAME_H                                                    # the offset row's share of pixels
    assert parity["mean_abs_diff"] == pytest.approx(offset * row_share, rel=1e-3)
    # more than 0.1 % of the pixels moved, so the 99.9th percentile is the offset itself
    assert row_share > 1e-3 and parity["p999_abs_diff"] == pytest.approx(offset, abs=1e-6)
    eager = Evaluator(model, Vimeo90K.PROTOCOL, progress=False, motion=False).evaluate(samples)
    assert parity["psnr_eager"] == pytest.approx(eager["psnr"], abs=1e-9)
    assert parity["psnr"] == result["psnr"] != pytest.approx(eager["psnr"], abs=1e-6)
    assert parity["psnr_difference"] == pytest.approx(result["psnr"] - eager["psnr"], abs=1e-9)
    assert all(r["max_abs_diff_vs_eager"] > 0 for r in result["samples"])
    with pytest.raises(BenchmarkError, match="drop --save_images"):
        Evaluator(model, Vimeo90K.PROTOCOL, save_images=tmp_path / "img", parity_vs_eager=True)
    # From the command line: on the CPU the runner is eager, and the report says it matches itself exactly
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json") + ["--limit", "1", "--no_motion",
                                                                               "--parity_vs_eager"])
    cli = read_report(tmp_path / "r.json")["results"]["test"]["parity_vs_eager"]
    assert cli["mode"] == "eager" and cli["max_abs_diff"] == 0 and cli["psnr_difference"] == 0
    assert "eager vs eager: pixel difference max 0.000/255" in capsys.readouterr().out


def test_benchmark_compile_scores_a_compiled_copy_against_the_uncompiled_model(vimeo_root, checkpoints, tmp_path,
                                                                               monkeypatch, capsys):
    """`--compile --parity_vs_eager` (issue 21's compiled parity on a trained checkpoint): the scored runner holds a
    compiled copy with aligned flow channels, the eager reference stays the checkpoint's model untouched, and the
    report carries the compile record. Inductor on this CPU takes minutes, so the compilation is a stand-in that
    runs the module eagerly; it records which models it was given."""
    from model.inference import is_compiled
    compiled_models = []
    eager_models = []

    def compile_eagerly(module, *args, **kwargs):
        compiled_models.append(module)
        module._compiled_call_impl = module._call_impl            # what is_compiled() looks for

    real_evaluator = eval_core.Evaluator

    def recording_evaluator(model, *args, **kwargs):
        eager_models.append(model)
        return real_evaluator(model, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    monkeypatch.setattr(eval_core, "Evaluator", recording_evaluator)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json", model="tiny_phase2")
                  + ["--limit", "2", "--no_motion", "--compile", "--parity_vs_eager"])
    report = read_report(tmp_path / "r.json")
    parity = report["results"]["test"]["parity_vs_eager"]
    assert parity["mode"] == "compiled"                        # the CPU has no graphs: compiled, not graphed
    assert parity["max_abs_diff"] < 1e-5 and abs(parity["psnr_difference"]) < 1e-4
    assert report["results"]["test"]["runtime"]["mode"] == "compiled"
    assert report["compile"]["cache_dir"] == str(tmp_path / "inductor")
    (compiled,), (eager,) = compiled_models, eager_models
    assert compiled is not eager and is_compiled(compiled) and not is_compiled(eager)
    assert all(block.channel_multiple == 8 for block in compiled.flow_estimator.blocks)
    assert all(block.channel_multiple is None for block in eager.flow_estimator.blocks)
    out = capsys.readouterr().out
    assert "compile: torch.compile on a copy" in out and "compiled vs eager: pixel difference max" in out
    line = run_failing(Vimeo90K.main, common_args(vimeo_root, checkpoints, tmp_path / "r2.json") +
                       ["--compile", "--save_images", str(tmp_path / "img")], capsys)
    assert "--compile" in line and "--save_images" in line


def test_components_split_a_prior_model_into_its_stages(vimeo_root, checkpoints, tmp_path, capsys):
    """`--components`: each record and the summary hold the PSNR of the blend before RefineNet's residual and of the
    prior's warps averaged. An untrained prior model starts at its prior (zero updates, zero residual), so all
    three agree; a model without a prior has no prior column; a Phase-1 model is refused naming the flag."""
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r.json", model="tiny_phase2_prior")
                  + ["--limit", "2", "--components"])
    result = read_report(tmp_path / "r.json")["results"]["test"]
    for record in result["samples"] + [result]:
        assert record["psnr"] == pytest.approx(record["psnr_blend"], abs=1e-3)
        assert record["psnr_blend"] == pytest.approx(record["psnr_prior_warps"], abs=1e-3)
    assert any("psnr_blend" in row for row in result["by_motion"])
    out = capsys.readouterr().out
    assert "stages: the blend of the model's warps" in out and "the prior's warps averaged" in out
    assert "prior warps" in out                                   # the motion table's column
    # With DIS's frame: the mean of two images is never worse than the worse of the two (MSE is convex; 8-bit
    # rounding aside), and the pick is one of the two per pixel.
    for record in result["samples"]:
        assert record["psnr_with_dis_mean"] >= min(record["psnr"], record["psnr_dis"]) - 0.05
        assert math.isfinite(record["psnr_agreement_pick"])
    assert "with DIS's frame: their mean" in out and "agreement pick" in out
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "r2.json", model="tiny_phase2")
                  + ["--limit", "1", "--no_motion", "--components"])
    plain = read_report(tmp_path / "r2.json")["results"]["test"]
    assert "psnr_blend" in plain and "psnr_prior_warps" not in plain
    assert "psnr_with_dis_mean" not in plain                      # --no_motion: no DIS frame to combine with
    line = run_failing(Vimeo90K.main, common_args(vimeo_root, checkpoints, tmp_path / "r3.json")
                       + ["--components"], capsys)
    assert "--components" in line and "Phase 1" in line


def test_components_see_what_refinenet_adds():
    """The blend's PSNR is the prediction's without RefineNet's residual: with the ground truth set to the model's own
    blend, the blend scores near-perfectly (8-bit rounding only) and a prediction carrying a constant residual of
    r = 2 sigmoid(0.05) - 1 scores -20 log10(r)."""
    import math
    from benchmark.eval_core import Evaluator
    from config import preset
    from model import build_model
    torch.manual_seed(0)
    model = build_model(preset(2, "tiny")).eval()
    with torch.no_grad():
        model.refine.head.weight.zero_()
        model.refine.head.bias.zero_()
        model.refine.head.bias[1:] = 0.05           # the mask correction stays 0; the residual is r everywhere
        img0, img1 = torch.rand(1, 3, 64, 96) * 0.8 + 0.1, torch.rand(1, 3, 64, 96) * 0.8 + 0.1
        output = model(img0, img1, 0.5)
        blend = output.mask * output.warped0 + (1 - output.mask) * output.warped1
    gt_frame = (blend[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    evaluator = Evaluator(model, Vimeo90K.PROTOCOL, progress=False, motion=False, components=True)
    stages = evaluator.component_psnrs(img0, img1, 0.5, gt_frame)
    assert set(stages) == {"psnr_blend"} and stages["psnr_blend"] > 50
    residual = 2 / (1 + math.exp(-0.05)) - 1
    pred_psnr = evaluator.score(evaluator.predict(img0, img1, 0.5), gt_frame, with_ssim=False)[0]
    assert pred_psnr == pytest.approx(-20 * math.log10(residual), abs=0.3)


def test_work_scale_runs_the_model_on_smaller_frames_from_every_entry_point(vimeo_root, checkpoints, tmp_path,
                                                                             monkeypatch, capsys):
    """`--work_scale 0.5`: a benchmark scores the wrapped model (the report says so; the prediction differs from the
    full-scale one), bench_model's inference row counts about a quarter of the arithmetic in the model's children,
    and a Phase-1 checkpoint is refused in one line naming the flag."""
    from benchmark import bench_model
    args = common_args(vimeo_root, checkpoints, tmp_path / "half.json", model="tiny_phase2") + ["--limit", "1",
                                                                                                "--no_motion"]
    Vimeo90K.main(args + ["--work_scale", "0.5"])
    Vimeo90K.main(common_args(vimeo_root, checkpoints, tmp_path / "full.json", model="tiny_phase2")
                  + ["--limit", "1", "--no_motion"])
    half, full = read_report(tmp_path / "half.json"), read_report(tmp_path / "full.json")
    assert half["work_scale"] == 0.5 and full["work_scale"] == 1.0
    assert half["results"]["test"]["psnr"] != full["results"]["test"]["psnr"]
    assert "work scale 0.5" in capsys.readouterr().out
    line = run_failing(Vimeo90K.main, common_args(vimeo_root, checkpoints, tmp_path / "p1.json")
                       + ["--work_scale", "0.5"], capsys)
    assert "--work_scale" in line and "Phase 1" in line
    gflop = {}
    for scale in ("1", "0.5"):
        out = tmp_path / f"rows_{scale}.json"
        monkeypatch.setattr(sys, "argv", ["bench_model.py", "--phase", "2", "--model_size", "tiny", "--infer", "256",
                                          "--infer_only", "--reps", "1", "--amp", "fp32", "--device", "cpu", "--flops",
                                          "--work_scale", scale, "--json", str(out)])
        bench_model.main()
        (row,) = [row for row in json.loads(out.read_text())["rows"] if row["kind"] == "infer"]
        gflop[scale] = row["gflop_parts"]
        assert ("work_scale" in row) == (scale == "0.5")
    full_parts, half_parts = gflop["1"], gflop["0.5"]
    assert set(half_parts) == {f"model.{part}" for part in full_parts}
    assert 0.2 < half_parts["model.backbone"] / full_parts["backbone"] < 0.3
