"""Footage a video editor accepts: colour, aspect, timing and audio carried through, shots and duplicates found.

Each clip is built here with the ffmpeg binary that imageio-ffmpeg ships, and every output is read back with that
same binary, as a player would read it: decoded with the matrix its tags name, its stream times from the container
(``-c copy -f framecrc``). None of the reading goes through PyAV, which writes the outputs. The model is a linear
blend ("oracle") run through the real pipeline (footage.pipeline.run_stream), so the tests need no checkpoint; one
command-line run with a tiny random Phase-3 checkpoint checks --report.
"""

from __future__ import annotations

import json
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import interpolate
from checkpoint import atomic_save
from config import preset
from footage import video_io
from footage.interpolator import FrameInterpolator
from footage.pipeline import RunStats, StreamSettings, run_stream
from model import build_model

try:
    import imageio_ffmpeg
    FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
except (ImportError, RuntimeError):
    FFMPEG = None
pytestmark = pytest.mark.skipif(FFMPEG is None or not video_io.pyav_available(),
                                reason="needs imageio-ffmpeg (to build clips) and PyAV")


class LinearBlend(nn.Module):
    """The 'model': (1 - t) * img0 + t * img1."""

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        t = torch.as_tensor(t, dtype=img0.dtype).reshape(-1, 1, 1, 1)
        return (1 - t) * img0 + t * img1


# --------------------------------------------------------------------------------------------------------
# Building clips and reading them back with the ffmpeg binary
# --------------------------------------------------------------------------------------------------------
def scene(width: int, height: int, index: int, seed: int = 0, low: int = 20, high: int = 235) -> np.ndarray:
    """(H, W, 3) uint8 RGB: smooth colour gradients and a few saturated shapes moving 3 px per frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.random(3) * 6
    image = np.stack([np.sin(x / width * 3 + phase[c]) + np.cos(y / height * 2 + phase[c]) for c in range(3)], -1)
    image = low + (image + 2) / 4 * (high - low)
    image = image.astype(np.uint8)
    for k, colour in enumerate(((230, 40, 40), (40, 200, 60), (50, 60, 220))):
        cx = int(width * (0.2 + 0.3 * k)) + 3 * index
        cv2.circle(image, (cx, height // 2), max(4, height // 8), colour, -1)
    return image


def write_clip(path: Path, frames: list[np.ndarray], rate: str = "24", video_args: tuple[str, ...] = (),
               audio_seconds: float | None = None, video_offset: float | None = None, audio_codec: str = "aac",
               encode_args: tuple[str, ...] = ("-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p")) -> Path:
    """Raw RGB frames -> a clip. video_args: filters/tags on the video; audio: a 440 Hz tone of that length."""
    height, width = frames[0].shape[:2]
    offset = ["-itsoffset", str(video_offset)] if video_offset is not None else []
    audio_in = (["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={audio_seconds}"]
                if audio_seconds is not None else [])
    audio_out = ["-c:a", audio_codec] if audio_seconds is not None else []
    command = [FFMPEG, "-y", "-loglevel", "error", *offset, "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-framerate", rate, "-i", "-", *audio_in, "-map", "0:v",
               *(["-map", "1:a"] if audio_in else []), *video_args, *encode_args, *audio_out, str(path)]
    subprocess.run(command, input=b"".join(f.tobytes() for f in frames), check=True)
    return path


def header(path: Path) -> str:
    """ffmpeg's description of the file's streams (what a player reads from its headers)."""
    return subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def player_frames(path: Path, width: int, height: int, matrix: str = "auto") -> list[np.ndarray]:
    """Every frame as RGB, converted with the matrix and range the file is tagged with (or ``matrix``)."""
    scale = (f"scale=in_color_matrix={matrix}:in_range=auto:flags=accurate_rnd+full_chroma_int+bicubic")
    result = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-map", "0:v:0", "-vf", scale,
                             "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                            capture_output=True, check=True)
    data = np.frombuffer(result.stdout, np.uint8)
    return list(data.reshape(-1, height, width, 3))


def stream_times(path: Path) -> dict[str, tuple[float, float]]:
    """{"video" | "audio": (start, end) in seconds} from the container's packet times, as a player schedules them."""
    listing = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-map", "0", "-c", "copy",
                              "-f", "framecrc", "-"], capture_output=True, text=True, check=True).stdout
    bases = {int(m.group(1)): Fraction(int(m.group(2)), int(m.group(3)))
             for m in re.finditer(r"^#tb (\d+): (\d+)/(\d+)", listing, re.M)}
    kinds = {int(m.group(1)): m.group(2) for m in re.finditer(r"^#media_type (\d+): (\w+)", listing, re.M)}
    spans: dict[str, list[float]] = {}
    for line in listing.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        index, _, pts, duration = (int(v.strip()) for v in line.split(",")[:4])
        start, end = float(pts * bases[index]), float((pts + duration) * bases[index])
        span = spans.setdefault(kinds[index], [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    return {kind: (span[0], span[1]) for kind, span in spans.items()}


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def convert(source_path: Path, output: Path, multi: int = 2, fps: Fraction | None = None) -> RunStats:
    """interpolate.py's path from a source to a sink, with the oracle as the model."""
    source = video_io.open_source(source_path, True, None)
    info = source.info
    out_rate = fps if fps is not None else (info.rate * multi if info.rate else Fraction(multi))
    ratio = (info.rate or 1) / out_rate
    plan = interpolate.time_plan(info, ratio, out_rate)
    if output.suffix:
        sink = video_io.AvSink(output, info.width, info.height, out_rate, 0, "ultrafast", info if info.kind == "video"
                               else None)
    else:
        sink = video_io.FolderSink(output)
    engine = FrameInterpolator(LinearBlend(), torch.device("cpu"), None, False, 1.0, batch_size=4, halving=False)
    try:
        stats = run_stream(source, sink, engine, StreamSettings(plan, progress=False))
    finally:
        source.close()
    stats.report = sink.report()
    return stats


# --------------------------------------------------------------------------------------------------------
# Colour and geometry
# --------------------------------------------------------------------------------------------------------
# Convert with BT.709 and tag every frame so (setparams: the encoder writes the frames' tags).
BT709 = ("-vf", "scale=out_color_matrix=bt709:out_range=tv,"
                "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv")
UNTAGGED_709 = ("-vf", "scale=out_color_matrix=bt709:out_range=tv,setparams=colorspace=unknown")


@pytest.mark.parametrize("case", ["tagged BT.709", "untagged HD"])
def test_colour_is_carried_through_and_tagged(tmp_path, case):
    """The source's frames (decoded as BT.709: tagged so, or HD and untagged, as players assume) and the output's
    input-frame positions (decoded as its tags say) agree within 1.5 levels on average; the output says BT.709."""
    width, height = (320, 180) if case == "tagged BT.709" else (1024, 584)
    frames = [scene(width, height, i) for i in range(3)]
    source = write_clip(tmp_path / "source.mp4", frames, video_args=BT709 if case == "tagged BT.709" else UNTAGGED_709)
    assert ("bt709" in header(source).split("Video:")[1].splitlines()[0]) == (case == "tagged BT.709")
    reference = player_frames(source, width, height, matrix="bt709")
    output = tmp_path / "out.mp4"
    convert(source, output)
    assert "bt709" in header(output).split("Video:")[1].splitlines()[0]           # yuv420p(tv, bt709, ...)
    decoded = player_frames(output, width, height)
    assert len(decoded) == 5
    errors = [mean_difference(decoded[2 * i], reference[i]) for i in range(3)]
    assert max(errors) < 1.5, errors


def test_the_colour_check_tells_the_matrices_apart(tmp_path):
    """The 1.5-level check above can fail: the same frames decoded with BT.601 instead of BT.709 (what an untagged
    output converted with ffmpeg's default matrix looked like to a player) differ by several levels."""
    frames = [scene(320, 180, 0)]
    source = write_clip(tmp_path / "709.mp4", frames, video_args=BT709)
    as_709, as_601 = player_frames(source, 320, 180, "bt709"), player_frames(source, 320, 180, "bt601")
    assert mean_difference(as_709[0], as_601[0]) > 3


def test_sample_aspect_ratio_is_kept(tmp_path):
    frames = [scene(720, 480, i) for i in range(3)]
    source = write_clip(tmp_path / "anamorphic.mkv", frames, video_args=("-vf", "setsar=32/27"))
    assert "SAR 32:27" in header(source)
    output = tmp_path / "out.mkv"
    stats = convert(source, output)
    assert "SAR 32:27" in header(output)
    assert stats.report["output"]["sample_aspect_ratio"] == "32/27"
    assert "smpte170m" in header(output).split("Video:")[1].splitlines()[0]      # untagged SD: BT.601, said so


def test_display_rotation_is_kept(tmp_path):
    """A phone's portrait clip: frames stored landscape with a 90-degree display matrix; the output plays upright."""
    frames = [scene(96, 64, i) for i in range(3)]
    stored = write_clip(tmp_path / "stored.mp4", frames)
    source = tmp_path / "portrait.mp4"
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", "-display_rotation", "90", "-i", str(stored), "-c", "copy",
                    str(source)], check=True)
    assert "rotation of 90.00 degrees" in header(source)
    output = tmp_path / "out.mp4"
    stats = convert(source, output)
    assert "rotation of 90.00 degrees" in header(output)
    assert stats.report["output"]["rotation"] == 90


# --------------------------------------------------------------------------------------------------------
# Timing and audio
# --------------------------------------------------------------------------------------------------------
def vfr_clip(tmp_path: Path) -> Path:
    """50 frames over 3.0 s: 25 frames 40 ms apart, then 25 frames 80 ms apart; a 3.0 s tone."""
    frames = [scene(160, 96, i) for i in range(50)]
    retime = "setpts='if(lt(N,25),N*0.04,1.0+(N-25)*0.08)/TB'"
    return write_clip(tmp_path / "vfr.mkv", frames, rate="25", audio_seconds=3.0,
                      video_args=("-vf", retime, "-fps_mode", "passthrough"))


def test_variable_frame_rate_keeps_duration_and_audio(tmp_path):
    source = vfr_clip(tmp_path)
    info = video_io.open_source(source, True, None).info
    assert info.vfr and info.frame_count == 50
    assert "variable frame rate (VFR" in info.describe()          # the start-up header's input line
    source_video = stream_times(source)["video"]
    output = tmp_path / "out.mp4"
    stats = convert(source, output, fps=Fraction(30))
    times = stream_times(output)
    period = 1 / 30
    source_duration = source_video[1] - source_video[0]
    output_duration = times["video"][1] - times["video"][0]
    assert abs(output_duration - source_duration) <= period + 1e-6, (output_duration, source_duration)
    assert "audio" in times, "audio dropped"
    assert abs(times["audio"][0] - times["video"][0]) <= period
    # Frame 30 of the output (1.0 s) is input frame 25; frame 33 (1.1 s) lies 1/4 of the way from 26 to 27 (1.08,
    # 1.16): the in-betweens follow the real timestamps, not the frame count.
    decoded = player_frames(output, 160, 96)
    reference = player_frames(source, 160, 96)
    assert mean_difference(decoded[30], reference[25]) < 1.5
    blend = 0.75 * reference[26].astype(np.float64) + 0.25 * reference[27]
    assert mean_difference(decoded[33], blend) < 1.5
    assert stats.report["audio"]["decision"] == "kept"


def test_audio_video_offset_is_kept(tmp_path):
    frames = [scene(160, 96, i) for i in range(12)]
    source = write_clip(tmp_path / "offset.mp4", frames, audio_seconds=0.5, video_offset=0.063)
    before = stream_times(source)
    offset = before["video"][0] - before["audio"][0]
    assert offset > 0.04                              # the video starts after the audio
    output = tmp_path / "out.mp4"
    convert(source, output)
    after = stream_times(output)
    assert abs((after["video"][0] - after["audio"][0]) - offset) <= 1 / 48, (after, before)


def test_slightly_longer_audio_is_trimmed_not_dropped(tmp_path):
    frames = [scene(160, 96, i) for i in range(12)]                       # 0.5 s of video at 24 fps
    source = write_clip(tmp_path / "long_audio.mp4", frames, audio_seconds=0.8)
    output = tmp_path / "out.mp4"
    stats = convert(source, output)
    times = stream_times(output)
    assert "audio" in times
    assert times["audio"][1] <= times["video"][1] + 0.03                # at most one AAC packet past the video
    assert any("trimmed" in note for note in stats.notes)
    track, = stats.report["audio"]["tracks"]
    assert track["decision"] == "copied" and track["trimmed_s"] > 0.25


def test_slightly_shorter_audio_is_kept(tmp_path):
    frames = [scene(160, 96, i) for i in range(12)]
    source = write_clip(tmp_path / "short_audio.mkv", frames, audio_seconds=0.3)
    stats = convert(source, tmp_path / "out.mkv")
    assert "audio" in stream_times(tmp_path / "out.mkv")
    assert any("before the video (kept" in note for note in stats.notes)


def test_audio_the_container_cannot_hold_is_reencoded_to_aac(tmp_path):
    """Opus in a .mkv source, an .avi output (AVI has no Opus): the track comes back as AAC, in sync."""
    frames = [scene(160, 96, i) for i in range(12)]
    source = write_clip(tmp_path / "opus.mkv", frames, audio_seconds=0.5, audio_codec="libopus")
    output = tmp_path / "out.avi"
    stats = convert(source, output)
    assert "Audio: aac" in header(output)
    assert any("re-encoded to AAC" in note for note in stats.notes)
    times = stream_times(output)
    assert abs(times["audio"][0] - times["video"][0]) <= 1 / 48 + 0.03      # AAC priming: one packet at most


# --------------------------------------------------------------------------------------------------------
# Shots and duplicates through the pipeline
# --------------------------------------------------------------------------------------------------------
def save_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir()
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:03d}.png"), frame[..., ::-1])
    return folder


def test_small_object_on_a_still_background_is_interpolated(tmp_path):
    """1080p, an 80x80 object moving 24 px per frame: the old mean-difference rule called it a duplicate and copied
    the frame; now every in-between differs from the previous frame where the object is."""
    background = scene(1920, 1080, 0)
    frames = []
    for index in range(4):
        frame = background.copy()
        frame[500:580, 600 + 24 * index:680 + 24 * index] = (250, 250, 250)
        frames.append(frame)
    out = tmp_path / "out"
    stats = convert(save_folder(tmp_path / "in", frames), out)
    assert stats.duplicates == [] and stats.cuts == []
    written = [cv2.imread(str(path))[..., ::-1] for path in sorted(out.iterdir())]
    for pair in range(3):
        between, previous = written[2 * pair + 1], written[2 * pair]
        region = (slice(500, 580), slice(600 + 24 * pair, 704 + 24 * pair))
        assert mean_difference(between[region], previous[region]) > 20, pair


def test_cut_between_dark_shots_is_copied_and_a_pan_is_not(tmp_path):
    """Two dark shots (30-50% brightness) with a textured pan in each: one cut, at the shot change; the pan is
    interpolated."""
    rng = np.random.default_rng(3)
    strips = [cv2.resize(rng.integers(77, 128, (60, 200, 3), dtype=np.uint8), (1000, 300),
                         interpolation=cv2.INTER_CUBIC) for _ in range(2)]
    frames = [np.ascontiguousarray(strips[i // 5][:, 40 * (i % 5):40 * (i % 5) + 480]) for i in range(10)]
    out = tmp_path / "out"
    stats = convert(save_folder(tmp_path / "in", frames), out)
    assert [verdict.pair for verdict in stats.cuts] == [4]
    written = [cv2.imread(str(path))[..., ::-1] for path in sorted(out.iterdir())]
    assert np.array_equal(written[9], frames[4])                             # the cut pair: a copy
    assert not np.array_equal(written[3], frames[1])                         # a pan pair: interpolated


# --------------------------------------------------------------------------------------------------------
# The command line's --report
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phase3_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = preset(3, size="tiny")
    path = tmp_path_factory.mktemp("footage_p3") / "p3.pt"
    atomic_save({"format": 1, "config": cfg.to_dict(), "model": build_model(cfg).state_dict(), "ema": None}, path)
    return path


def test_report_lists_cuts_duplicates_metadata_and_audio(tmp_path, phase3_checkpoint, capsys):
    frames = [scene(96, 64, i) for i in range(4)] + [scene(96, 64, 3)] + [scene(96, 64, i, seed=9) for i in range(3)]
    source = write_clip(tmp_path / "clip.mp4", frames, audio_seconds=1 / 3, video_args=BT709)
    output, report_path = tmp_path / "out.mp4", tmp_path / "run.json"
    code = interpolate.main(["--model", str(phase3_checkpoint), "--input", str(source), "--output", str(output),
                             "--report", str(report_path), "--no_progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(report_path.read_text())
    assert [c["frames"] for c in report["shots"]["cuts"]] == [[4, 5]]
    assert [d["frames"] for d in report["shots"]["duplicates"]] == [[3, 4]]
    assert {"change", "baseline", "largest_block"} <= set(report["shots"]["cuts"][0])
    assert report["input"]["colour"]["matrix"] == report["output"]["colour"]["matrix"] == "bt709"
    assert report["input"]["vfr"] is False and report["output"]["frames"] == 15
    assert report["audio"]["decision"] == "kept" and report["audio"]["tracks"][0]["decision"] == "copied"
    assert f"report: {report_path}" in captured.out
    assert "colour: bt709 matrix (tagged), tv range, primaries bt709, transfer bt709; carried" in captured.out
    # How long a fresh process takes to its first frame: this test's process is older than the stream.
    summary = report["summary"]
    assert 0 < summary["first_frame_seconds"] < summary["first_frame_after_process_start_seconds"]
    assert "s after the process started)" in captured.out
    # Where the wait went: the process's age at each start-up step, in the order they happen.
    ages = summary["startup_process_age_seconds"]
    steps = ["imports done", "input opened", "model loaded", "stream began", "first model call returned",
             "first frame written"]
    assert list(ages) == steps and all(ages[a] <= ages[b] for a, b in zip(steps, steps[1:])), ages
    assert ages["first frame written"] == pytest.approx(summary["first_frame_after_process_start_seconds"], abs=2e-3)
    assert "start-up (process age, s): imports done " in captured.out
    # Which stage set the pace, with every stage's share.
    pipeline = summary["pipeline"]
    assert pipeline["pace"] in pipeline["shares"] and f"pace: {pipeline['pace']} (" in captured.out
    assert set(pipeline["shares"]) == {"reading", "prior", "model", "main thread", "encoding"}
    # An existing report is never overwritten without --overwrite.
    code = interpolate.main(["--model", str(phase3_checkpoint), "--input", str(source), "--output",
                             str(tmp_path / "again.mp4"), "--report", str(report_path), "--no_progress"])
    assert code == 2 and "--report" in capsys.readouterr().err


def test_audio_copier_closes_its_source_when_setting_up_fails(monkeypatch):
    """A failure while adding the output streams must not leave the source file open (no caller can close it)."""
    import types
    from fractions import Fraction
    from footage import audio
    closed = []

    class SourceWithoutTheTrack:
        streams: dict = {}

        def close(self):
            closed.append(True)

    monkeypatch.setattr(audio.av, "open", lambda *args, **kwargs: SourceWithoutTheTrack())
    with pytest.raises(KeyError):
        audio.AudioCopier(Path("clip.mp4"), output=None, tracks=(types.SimpleNamespace(index=1),), shift=Fraction(0))
    assert closed == [True]


def test_process_age_counts_the_time_before_the_stream(tmp_path):
    """seconds_since_process_start (the first-frame time a user waits for, imports included) in a fresh process that
    sleeps before asking: at least the sleep, far less than a minute; the parent's own age is larger still."""
    import sys
    from footage.pipeline import seconds_since_process_start
    code = ("import time; time.sleep(0.6); import sys; sys.path.insert(0, sys.argv[1]); "
            "from footage.pipeline import seconds_since_process_start as age; print(age())")
    age = float(subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1])],
                               capture_output=True, text=True, check=True).stdout)
    assert 0.6 <= age < 60
    assert seconds_since_process_start() > age

