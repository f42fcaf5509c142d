"""Frames in and out of videos and frame folders, for ``interpolate.py``.

A source yields (H, W, 3) uint8 RGB frames in order, each with its presentation time; a sink takes frames in order
and makes its output appear only when it is complete: everything goes to a hidden temporary name in the output's
folder (``.NAME.XXXX.partial...``) and is renamed onto the output by :meth:`FrameSink.finish`, so an interrupted run
leaves nothing that looks done.

Video goes through PyAV (the FFmpeg libraries, bundled in its wheel), which hands out each frame's timestamp and the
stream's colour and geometry tags:

    reading:  every decoded frame exactly once, converted to RGB with the matrix and range a player would use
              (footage/colour.py); its time from its own timestamp, so a variable-frame-rate (VFR) video keeps its
              timing. A constant-rate stream (every timestamp within a quarter frame of the rate's grid) gets the
              exact grid times i / rate instead, so output times stay exact fractions.
    writing:  RGB -> Y'CbCr 4:2:0 with the source's matrix and range (exact rounding, full chroma interpolation),
              libx264 at --crf (or NVIDIA's hardware encoder, NVENC, where the GPU has one:
              :func:`nvenc_unavailable`),
              tagged with the source's matrix, range, primaries, transfer and sample aspect ratio; the source's audio
              muxed in as the video is written (footage/audio.py).

The probe reads every video packet's timestamp (no decoding) to tell the frame count and whether the rate is
constant, and decodes two frames for the size and colour tags. Without PyAV, OpenCV reads and writes video instead
(mp4v, no audio, no colour tags), after one warning.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import statistics
import tempfile
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import cv2
import numpy as np

from config import usable_cpus
from footage.colour import ColourInfo
from model.frames import read_rgb_uint8

if TYPE_CHECKING:                   # footage.audio needs PyAV, which the OpenCV fallback does without
    from footage.audio import AudioTrack

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")
OUTPUT_FRAME_PATTERN = "{:08d}.png"          # 0-based output frame index; sorts by name up to 10^8 frames
# Output PNGs: zlib level 1, Huffman coding only, and PNG's Paeth filter on every row (where this OpenCV can say so,
# 4.11 and later). Why each (docs/PERF.md 10.8, 1080p frames of three clips, one core): string matching finds little
# in filtered camera frames, so Huffman only takes 11-16% less time than level 1's default and writes 4-9% smaller
# files; libpng's default filter choice tries all five filters on every row and then picks Paeth nearly always, so
# Paeth alone writes files of the same size (within 2 bytes in a million here) in 22-24% less time (86-92 -> 66-70 ms
# per frame).
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
               *((cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH) if hasattr(cv2, "IMWRITE_PNG_FILTER") else ())]
# A "rate" above this is a container time base that leaked through (a stream that declares no rate), not a rate.
MAX_PLAUSIBLE_RATE = 1000
# A stream is constant-rate when every timestamp lies within this fraction of a frame of the rate's grid.
CFR_TOLERANCE = Fraction(1, 4)
# Output video timestamps count in 1/TICKS_PER_FRAME of an output frame, so a start offset is kept to that precision.
TICKS_PER_FRAME = 100


class VideoIOError(RuntimeError):
    """A file or folder that cannot be read or written as asked; one line naming the path."""


MAX_PNG_WRITERS = 16


def default_io_workers() -> int:
    """Threads decoding input frames (and converting output frames to Y'CbCr for H.264) when --io_workers is not
    given: half the CPUs this process may use, at least 2 and at most 8. A 1080p PNG takes a core tens of
    milliseconds to decode, so a GPU at 60-80 output frames/s needs several; beyond 8 the stage is no longer the
    limit and only memory grows (every thread holds a frame or two). PNG output has its own count,
    :func:`default_png_writers`."""
    return max(2, min(8, usable_cpus() // 2))


def default_png_writers() -> int:
    """Threads writing output PNGs when --io_workers is not given: every CPU but a quarter (at least 2, for decoding
    the input and the thread launching the model), at least 2 and at most :data:`MAX_PNG_WRITERS`.

    Why more than the decoders: at 2x a 1080p output frame costs 80-165 ms of PNG encoding on one core against about
    35 ms of decoding (half an input frame), so at 78 output frames/s (the graphed model on an H200) the writers need
    about 10 cores. Half the CPUs (8 on the 16-core GPU host) held that run to 53% of the model-only rate
    (docs/PERF.md, section 10); 16 cores now give 12 writers. The cap bounds memory: each writer holds at most two
    frames (:class:`FolderSink`), 16 writers about 200 MB at 1080p."""
    cpus = usable_cpus()
    return max(2, min(MAX_PNG_WRITERS, cpus - max(2, cpus // 4)))


def pyav_available() -> bool:
    """Whether PyAV (``pip install av``) can be imported: without it, video goes through OpenCV."""
    return importlib.util.find_spec("av") is not None


def natural_key(name: str) -> list:
    """Sort key that orders 'frame2.png' before 'frame10.png': runs of digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class SourceInfo:
    """What a source knows before decoding everything.

    rate: frames per second as an exact fraction (a VFR video: its average rate); None for a frame folder without
        --input_fps.
    frame_count: exact for folders and for videos whose packets carry timestamps; else an estimate (progress bar).
    duration: the video stream's duration in seconds, from its first frame's start to its last frame's end (video
        only; None when unknown).
    vfr: the frames are not evenly spaced; each keeps its own timestamp.
    start: the first frame's time on the file's clock (seconds), where the audio's start is measured from too.
    colour: the colour tags and the conversion used (video through PyAV only).
    sample_aspect_ratio: pixel width / height (1 = square; 32:27 anamorphic widescreen PAL/NTSC), None if unknown.
    rotation: display rotation in degrees, counter-clockwise (a phone held upright records 90 or 270); the frames
        are processed as stored and the output carries the same rotation, so it plays upright too.
    audio: the audio tracks.
    rate_overridden: --input_fps replaced the video's own rate (its timing, and with it the audio's, no longer holds).
    """

    path: Path
    kind: str                   # "video" or "folder"
    width: int
    height: int
    rate: Fraction | None
    frame_count: int | None
    duration: float | None = None
    vfr: bool = False
    start: Fraction = Fraction(0)
    colour: ColourInfo | None = None
    sample_aspect_ratio: Fraction | None = None
    audio: tuple[AudioTrack, ...] = field(default_factory=tuple)
    rate_overridden: bool = False
    rotation: int = 0

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    def describe(self) -> str:
        rate = f"{float(self.rate):.6g} fps" if self.rate else "no frame rate"
        if self.vfr:
            rate = f"variable frame rate (VFR, average {float(self.rate):.6g} fps): frames keep their timestamps"
        count = (f"{self.frame_count} frames" if self.kind == "folder" or self.frame_count
                 else "frame count unknown")
        aspect = (f", SAR {self.sample_aspect_ratio.numerator}:{self.sample_aspect_ratio.denominator}"
                  if self.sample_aspect_ratio not in (None, 1) else "")
        audio = f", audio x{len(self.audio)}" if len(self.audio) > 1 else ", audio" if self.audio else ""
        rotation = f", shown rotated {self.rotation} degrees" if self.rotation else ""
        return f"{self.path} ({self.kind}, {self.width}x{self.height}{aspect}{rotation}, {count}, {rate}{audio})"

    def as_dict(self) -> dict:
        """The --report record of the input."""
        return {"path": str(self.path), "kind": self.kind, "width": self.width, "height": self.height,
                "rate": None if self.rate is None else str(self.rate), "vfr": self.vfr,
                "frame_count": self.frame_count, "duration_s": self.duration, "start_s": float(self.start),
                "rate_overridden": self.rate_overridden,
                "sample_aspect_ratio": None if self.sample_aspect_ratio is None else str(self.sample_aspect_ratio),
                "rotation": self.rotation, "colour": None if self.colour is None else self.colour.as_dict(),
                "audio": [track.as_dict() for track in self.audio]}


# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------
FrameJob = Callable[[], np.ndarray]     # finishes decoding one frame: -> (H, W, 3) uint8 RGB


class FrameSource:
    """Yields every frame once, in order, as (a fresh (H, W, 3) uint8 RGB array (never a reused buffer), its time).

    The time is a Fraction of seconds since the first frame (0 for the first): i / rate for a constant rate (exact),
    the frame's own timestamp for a VFR video. A frame folder without a rate counts in frames (i).

    :meth:`frame_jobs` gives the same frames as (job, time), where the job does the expensive part of decoding (a
    PNG's decompression, a video frame's conversion to RGB) and may run on another thread: jobs of different frames
    share nothing, so the pipeline runs several at once and keeps their results in order. Subclasses override
    :meth:`frame_jobs` (or, where nothing can be split off, :meth:`frames`).
    """

    info: SourceInfo

    def frame_jobs(self) -> Iterator[tuple[FrameJob, Fraction]]:
        for rgb, time in self.frames():
            yield (lambda rgb=rgb: rgb), time

    def frames(self) -> Iterator[tuple[np.ndarray, Fraction]]:
        for job, time in self.frame_jobs():
            yield job(), time

    def close(self) -> None:
        """Stop decoding early (an error or Ctrl-C elsewhere); safe to call more than once."""


class FolderSource(FrameSource):
    """A folder of .png/.jpg frames, in natural name order; all must have the same size."""

    def __init__(self, path: Path, rate: Fraction | None):
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise VideoIOError(f"{path}: no frames (.png, .jpg, .jpeg) in this folder")
        if len(files) < 2:
            raise VideoIOError(f"{path}: only 1 frame ({files[0].name}); interpolation needs at least 2")
        width, height = self._check_sizes(files)
        self.files = files
        self.info = SourceInfo(path, "folder", width, height, rate, len(files))

    @staticmethod
    def _check_sizes(files: list[Path]) -> tuple[int, int]:
        """(width, height) shared by every frame, from the image headers only (no decoding)."""
        try:
            from PIL import Image
        except ImportError:                       # torchvision brings Pillow; without it, frames() checks each frame
            first = read_rgb_uint8(files[0], VideoIOError)
            return first.shape[1], first.shape[0]
        sizes = {}
        for file in files:
            try:
                with Image.open(file) as image:
                    sizes[file] = image.size
            except Exception as error:
                raise VideoIOError(f"cannot read image {file} ({type(error).__name__})") from None
            if sizes[file] != sizes[files[0]]:
                raise VideoIOError(f"{file} is {sizes[file][0]}x{sizes[file][1]} but {files[0].name} is "
                                   f"{sizes[files[0]][0]}x{sizes[files[0]][1]}: all frames must have one size")
        return sizes[files[0]]

    def _decode(self, file: Path) -> np.ndarray:
        frame = read_rgb_uint8(file, VideoIOError)
        if frame.shape[:2] != (self.info.height, self.info.width):
            raise VideoIOError(f"{file} is {frame.shape[1]}x{frame.shape[0]} but the frames before it are "
                               f"{self.info.width}x{self.info.height}: all frames must have one size")
        return frame

    def frame_jobs(self) -> Iterator[tuple[FrameJob, Fraction]]:
        period = 1 / (self.info.rate or Fraction(1))
        for index, file in enumerate(self.files):
            yield partial(self._decode, file), index * period


def snap_rate(fps: float) -> Fraction:
    """A rate ffmpeg printed rounded ("23.98") -> the NTSC fraction it stands for (24000/1001), else as printed."""
    for nominal in (24, 30, 48, 60, 120, 240, 15, 25, 50, 100):
        ntsc = Fraction(nominal * 1000, 1001)
        if abs(fps - float(ntsc)) < 0.006:
            return ntsc
    return Fraction(fps).limit_denominator(1000)


def ffmpeg_reason(error: Exception) -> str:
    """The one-line reason in a PyAV error ("Invalid data found when processing input"), without the path."""
    return str(getattr(error, "strerror", None) or error).split(": '")[0]


# H.264 encoders: --encoder's names -> FFmpeg's. libx264 runs on the CPU; h264_nvenc on the GPU's video encoder
# (GeForce / RTX / workstation cards; data-centre cards such as the H100 have none), so it takes no CPU cores from
# decoding, the model's thread and the Y'CbCr conversion.
H264_ENCODERS = {"libx264": "libx264", "nvenc": "h264_nvenc"}
# x264's speed presets (interpolate.py --preset) -> NVENC's p1 (fastest) .. p7 (best): the same rank of speed.
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p2", "veryfast": "p3", "faster": "p4", "fast": "p4",
                 "medium": "p5", "slow": "p6", "slower": "p7", "veryslow": "p7"}


def encoder_options(encoder: str, crf: int, preset: str) -> dict[str, str]:
    """The codec options that give ``--crf`` quality at ``--preset`` speed with ``encoder`` ("libx264" / "nvenc").

    NVENC has no CRF: its constant-quality mode (``rc vbr`` with ``cq`` and no bitrate cap) takes the same 0-51
    scale of quantiser steps, which lands near x264's CRF at the same number (not the same bits or PSNR: NVENC's
    motion search and rate control differ); ``--crf 0`` becomes NVENC's lossless tuning.
    """
    if encoder == "libx264":
        return {"crf": str(crf), "preset": preset}
    if encoder != "nvenc":
        raise ValueError(f"unknown H.264 encoder {encoder!r}: one of {', '.join(H264_ENCODERS)}")
    if crf == 0:
        return {"preset": "p7", "tune": "lossless"}
    return {"preset": NVENC_PRESETS[preset], "tune": "hq", "rc": "vbr", "cq": str(crf), "b": "0"}


def nvenc_unavailable() -> str | None:
    """None where PyAV's FFmpeg opens NVIDIA's H.264 encoder on this machine, else why not (one line).

    The only reliable test is opening one: FFmpeg lists ``h264_nvenc`` wherever it was built with it, and the open
    fails without an NVIDIA driver (libnvidia-encode), without a GPU, or on a GPU without the encoder (H100, A100).
    """
    import av

    if H264_ENCODERS["nvenc"] not in av.codecs_available:
        return "this FFmpeg (PyAV's) was built without h264_nvenc"
    try:
        context = av.CodecContext.create(H264_ENCODERS["nvenc"], "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
    except (av.FFmpegError, ValueError, RuntimeError, OSError) as error:
        return f"NVIDIA's encoder did not open here ({ffmpeg_reason(error)}): no NVIDIA driver, or a GPU without one"
    del context
    return None


def decoding_flags():
    """swscale flags for every YUV <-> RGB conversion: swscale's default is biased by 1-2 levels per trip (measured
    with ffmpeg: rgb (40, 60, 90) -> yuv420p -> (39, 58, 89)); exact rounding and full-resolution chroma keep a
    decode-encode round trip within about a level, so an interpolated video does not drift in colour."""
    from av.video.reformatter import Interpolation

    return Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def is_rgb_format(name: str) -> bool:
    return name.startswith(("rgb", "bgr", "gbr", "argb", "abgr"))


class AvSource(FrameSource):
    """A video decoded by PyAV, each frame with its time (see the module docstring)."""

    def __init__(self, path: Path, rate_override: Fraction | None = None):
        import av

        from footage.audio import probe_audio

        self.path = path
        self.stopping = False
        try:
            colour, width, height, sample_aspect_ratio, nominal, rotation = self._probe_frames()
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                base = stream.time_base
                stamps, audio_ends = [], {}
                for packet in container.demux(stream, *container.streams.audio):
                    if packet.pts is None or not packet.size:
                        continue
                    if packet.stream.type == "video":
                        stamps.append((packet.pts, packet.duration or 0))
                    else:
                        end = (packet.pts + (packet.duration or 0)) * packet.time_base
                        audio_ends[packet.stream.index] = max(end, audio_ends.get(packet.stream.index, end))
                stamps.sort()
                audio = probe_audio(container, audio_ends)
        except av.FFmpegError as error:
            raise VideoIOError(f"cannot read video {path}: {ffmpeg_reason(error)}") from None
        self.first_pts, self.time_base = (stamps[0][0] if stamps else None), base
        times = [(pts - stamps[0][0]) * base for pts, _ in stamps]
        intervals = [b - a for a, b in zip(times, times[1:]) if b > a]
        typical = statistics.median(intervals) if intervals else None
        if nominal is None and typical:
            nominal = snap_rate(float(1 / typical))
        if rate_override is None and nominal is None:
            raise VideoIOError(f"cannot tell the frame rate of {path}: give --input_fps")
        vfr = bool(times) and rate_override is None and any(
            abs(time - index / nominal) > CFR_TOLERANCE / nominal for index, time in enumerate(times))
        rate = rate_override or nominal
        if vfr and len(times) > 1:
            rate = snap_rate(float((len(times) - 1) / times[-1]))       # the average rate
        duration = None
        if times:
            last = stamps[-1][1] * base or typical or 1 / rate
            duration = float(times[-1] + last)
        self.vfr, self.rate = vfr, rate
        start = stamps[0][0] * base if stamps else Fraction(0)
        self.info = SourceInfo(path, "video", width, height, rate, len(times) or None, duration, vfr, start, colour,
                               sample_aspect_ratio, audio,
                               rate_overridden=rate_override is not None and rate_override != nominal,
                               rotation=rotation)

    def _probe_frames(self) -> tuple[ColourInfo, int, int, Fraction | None, Fraction | None, int]:
        """Decode two frames: colour tags, size, sample aspect ratio, the stream's nominal rate, display rotation."""
        import av

        with av.open(str(self.path)) as container:
            if not container.streams.video:
                raise VideoIOError(f"cannot read video {self.path}: no video stream")
            stream = container.streams.video[0]
            frames = []
            for frame in container.decode(stream):
                frames.append(frame)
                if len(frames) == 2:
                    break
            if not frames:
                raise VideoIOError(f"{self.path}: no video frames could be decoded")
            if len(frames) < 2:
                raise VideoIOError(f"{self.path}: only 1 video frame; interpolation needs at least 2")
            first = frames[0]
            colour = ColourInfo.from_tags(int(first.colorspace), int(first.color_range), int(first.color_primaries),
                                          int(first.color_trc), first.height)
            sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
            nominal = next((Fraction(r) for r in (stream.base_rate, stream.guessed_rate, stream.average_rate)
                            if r and 0 < r <= MAX_PLAUSIBLE_RATE), None)
            rotation = round(getattr(first, "rotation", 0) or 0) % 360
            return colour, first.width, first.height, Fraction(sar) if sar else None, nominal, rotation

    def _to_rgb(self, frame, index: int) -> np.ndarray:
        """A decoded av.VideoFrame -> (H, W, 3) uint8 RGB. swscale runs without the GIL, so the pipeline converts
        several frames at once while the decoder (itself multi-threaded) goes on."""
        import av

        info = self.info
        try:
            if is_rgb_format(frame.format.name):
                rgb = frame.to_ndarray(format="rgb24")
            else:
                rgb = frame.reformat(format="rgb24", src_colorspace=info.colour.sws_matrix,
                                     src_color_range=info.colour.colour_range,
                                     interpolation=decoding_flags()).to_ndarray()
        except av.FFmpegError as error:
            raise VideoIOError(f"cannot decode {self.path}: {ffmpeg_reason(error)}") from None
        if rgb.shape[:2] != (info.height, info.width):
            raise VideoIOError(f"{self.path}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]} but the video "
                               f"started at {info.width}x{info.height}; size changes are not supported")
        return rgb if rgb.flags.owndata else rgb.copy()

    def frame_jobs(self) -> Iterator[tuple[FrameJob, Fraction]]:
        import av

        period = 1 / self.rate
        container = av.open(str(self.path))
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"         # libavcodec's frame and slice threads
            previous: Fraction | None = None
            for index, frame in enumerate(container.decode(stream)):
                if self.stopping:
                    return
                if not self.vfr or frame.pts is None or self.first_pts is None:
                    time = index * period
                else:
                    time = (frame.pts - self.first_pts) * self.time_base
                    if previous is not None and time <= previous:      # a repeated or reordered stamp
                        time = previous + period
                previous = time
                yield partial(self._to_rgb, frame, index), time
        except av.FFmpegError as error:
            raise VideoIOError(f"cannot decode {self.path}: {ffmpeg_reason(error)}") from None
        finally:
            container.close()

    def close(self) -> None:
        self.stopping = True


class OpenCVSource(FrameSource):
    """Fallback reader without PyAV: cv2.VideoCapture (rate from CAP_PROP_FPS, no audio, BT.601 assumed)."""

    def __init__(self, path: Path, rate_override: Fraction | None = None):
        self.path = path
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise VideoIOError(f"cannot read video {path} (OpenCV cannot open it)")
            frames = [capture.read()[1] for _ in range(2)]
            if frames[0] is None:
                raise VideoIOError(f"{path}: no video frames could be decoded")
            if frames[1] is None:
                raise VideoIOError(f"{path}: only 1 video frame; interpolation needs at least 2")
            fps = capture.get(cv2.CAP_PROP_FPS)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        finally:
            capture.release()
        # CAP_PROP_FPS is the stream's rational rate as a double: 24000/1001 comes back exactly as that fraction.
        rate = rate_override or (Fraction(fps).limit_denominator(1001) if fps and fps > 0 else None)
        if rate is None:
            raise VideoIOError(f"cannot tell the frame rate of {path}: give --input_fps")
        height, width = frames[0].shape[:2]
        self.info = SourceInfo(path, "video", width, height, rate, count, count / fps if count and fps else None)

    def frames(self) -> Iterator[tuple[np.ndarray, Fraction]]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), index / self.info.rate
                index += 1
        finally:
            capture.release()


def open_source(path: Path, use_pyav: bool, rate: Fraction | None) -> FrameSource:
    """A frame folder or a video file (through PyAV, or OpenCV without it). ``rate`` (--input_fps) overrides a
    video's own rate."""
    if not path.exists():
        raise VideoIOError(f"--input {path} does not exist")
    if path.is_dir():
        return FolderSource(path, rate)
    if not os.access(path, os.R_OK):
        raise VideoIOError(f"--input {path} is not readable (permissions)")
    if path.suffix.lower() in FRAME_SUFFIXES:
        raise VideoIOError(f"--input {path} is a single image; interpolation needs at least 2 frames: give a folder "
                           "of frames or a video")
    return AvSource(path, rate) if use_pyav else OpenCVSource(path, rate)


# --------------------------------------------------------------------------------------------------------
# Output paths
# --------------------------------------------------------------------------------------------------------
def output_kind(path: Path) -> str:
    """"folder" for an existing folder or a path without extension, "video" for a known video extension."""
    if path.is_dir() or not path.suffix:
        return "folder"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    raise VideoIOError(f"--output {path}: unknown extension {path.suffix!r}; use {', '.join(VIDEO_SUFFIXES)} for a "
                       f"video, or a path without extension for a folder of PNG frames")


def check_output(path: Path, overwrite: bool) -> str:
    """Check that ``path`` can be written, before any work and without creating anything; returns its kind.

    Missing parent folders are made by :func:`create_output_parents` once every other check has passed, so a refused
    command leaves no empty folders behind. Writability is probed in the nearest folder that exists.
    """
    kind = output_kind(path)
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise VideoIOError(f"--output {path} exists; pass --overwrite to replace it")
    if path.exists() and kind == "video" and not path.is_file():
        raise VideoIOError(f"--output {path} exists and is not a file")
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise VideoIOError(f"cannot write --output {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise VideoIOError(f"cannot write --output {path}: {error.strerror or error}") from None
    return kind


def create_output_parents(path: Path) -> None:
    """Make the folders above ``path`` that :func:`check_output` found missing (just before the output is written)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VideoIOError(f"cannot write --output {path}: {error.strerror or error}") from None


def temporary_name(final: Path, directory: bool = False) -> Path:
    """Create and return a hidden, unique, clearly unfinished name beside ``final`` that keeps its extension (the muxer
    picks the container by it): out.mp4 -> .out.mp4.3f9a1c2e.partial.mp4. Created exclusively with the usual
    permissions (the umask's), not mkstemp's owner-only ones, since it becomes the user's output file."""
    for _ in range(100):
        token = secrets.token_hex(4)
        if directory:
            path = final.parent / f".{final.name}.{token}.partial"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
        path = final.parent / f".{final.name}.{token}.partial{final.suffix}"
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            continue
    raise VideoIOError(f"cannot create a temporary name beside {final}")


def replace_into_place(temp: Path, final: Path) -> None:
    """os.replace ``temp`` onto ``final``. A folder cannot be renamed over a non-empty folder, so an old one is
    first moved aside (still complete) and deleted only after the new one is in place."""
    aside = None
    if final.is_dir() and any(final.iterdir()) or (temp.is_dir() and final.is_file()):
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent)) / final.name
        os.replace(final, aside)
    os.replace(temp, final)
    if aside is not None:
        shutil.rmtree(aside.parent, ignore_errors=True)


def remove_path(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------------------------
class FrameSink:
    """Takes (H, W, 3) uint8 RGB frames in order; the output appears at ``final`` only in :meth:`finish`."""

    final: Path

    def write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self, frames_written: int) -> list[str]:
        """Complete and rename into place; returns notes for the user (e.g. why audio was not copied)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop and delete everything written so far; safe to call more than once, and after finish."""

    def report(self) -> dict:
        """After :meth:`finish`: what was written beyond the frames ("output": colour, aspect, start, duration;
        "audio": the decision and each track), for --report."""
        return {"output": {}, "audio": {"decision": "none", "tracks": []}}


class FolderSink(FrameSink):
    """Numbered PNG frames (00000000.png, ...), encoded by ``workers`` threads at once (cv2.imwrite releases the GIL;
    a 1080p PNG costs a core tens of milliseconds, so one thread cannot keep up with a GPU). Files are named by their
    index, so the order in which the threads finish does not matter; every file goes into the hidden temporary folder,
    which becomes the output only in :meth:`finish`. The first failed write is raised by the next :meth:`write` or by
    :meth:`finish` (never lost), and :meth:`abort` stops the threads before it deletes the folder.

    workers: encoding threads (default :func:`default_png_writers`). At most ``2 * workers`` frames wait or are being
    encoded at a time, so memory stays bounded when encoding is the slowest stage.
    """

    def __init__(self, final: Path, workers: int | None = None):
        workers = workers or default_png_writers()
        self.final = final
        self.temp: Path | None = temporary_name(final, directory=True)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png")
        self.in_flight: set[Future] = set()
        self.max_in_flight = 2 * workers
        self.count = 0

    @staticmethod
    def _write_png(path: Path, frame: np.ndarray) -> None:
        # PNG_OPTIONS: compression level 1 (several times faster than the default and only slightly larger, still
        # lossless), Huffman coding only, the Paeth filter.
        try:
            written = cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), PNG_OPTIONS)
        except cv2.error as error:
            raise VideoIOError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None
        if not written:
            raise VideoIOError(f"cannot write {path}")

    def _collect(self, wait_for_one: bool) -> None:
        """Drop finished writes; raise the first failure among them. ``wait_for_one``: block until one finishes."""
        if wait_for_one:
            wait(self.in_flight, return_when=FIRST_COMPLETED)
        done = {future for future in self.in_flight if future.done()}
        self.in_flight -= done
        for future in done:
            future.result()                 # re-raises the write's error here, on the writer's thread

    def write(self, frame: np.ndarray) -> None:
        self._collect(wait_for_one=len(self.in_flight) >= self.max_in_flight)
        self.in_flight.add(self.pool.submit(self._write_png, self.temp / OUTPUT_FRAME_PATTERN.format(self.count),
                                            frame))
        self.count += 1

    def finish(self, frames_written: int) -> list[str]:
        while self.in_flight:               # a failure is raised as soon as it is seen; abort() then cleans up
            self._collect(wait_for_one=True)
        self.pool.shutdown()
        replace_into_place(self.temp, self.final)
        self.temp = None
        return []

    def abort(self) -> None:
        # Running writes finish first (a thread cannot be killed), queued ones are dropped: then nothing writes into
        # the folder while it is deleted.
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.in_flight.clear()
        remove_path(self.temp)
        self.temp = None


class AvSink(FrameSink):
    """H.264 (libx264 or NVENC, 4:2:0, --crf) through PyAV, with the source's colour tags, sample aspect ratio and
    audio.

    source: the video the frames come from (its colour conversion, tags, aspect, start and audio are carried over);
        None for frames from a folder (BT.709 for HD, BT.601 for SD, tv range, square pixels, no audio).
    keep_audio: whether the source's audio goes in (not when --input_fps changed the video's timing).
    workers: threads converting RGB to Y'CbCr (swscale, without the GIL; default :func:`default_io_workers`): frames
        are converted several at once, ahead of the encoder, and encoded in order.
    encoder_threads: libx264's own threads (frame-parallel); 0 lets x264 choose from the CPU count.
    encoder: "libx264" or "nvenc" (:data:`H264_ENCODERS`; check :func:`nvenc_unavailable` first), with the options of
        :func:`encoder_options`.
    """

    def __init__(self, final: Path, width: int, height: int, rate: Fraction, crf: int, preset: str = "medium",
                 source: SourceInfo | None = None, keep_audio: bool = True, workers: int | None = None,
                 encoder_threads: int = 0, encoder: str = "libx264"):
        import av

        workers = workers or default_io_workers()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="yuv")
        self.converting: deque[Future] = deque()       # conversions in output order, oldest first
        self.max_converting = 2 * workers
        self.final, self.rate, self.source = final, rate, source
        self.temp: Path | None = temporary_name(final)
        self.notes: list[str] = []
        self.audio = None                   # a footage.audio.AudioCopier when the source's audio goes in
        self.container = None
        self.colour = (source.colour if source is not None and source.colour is not None
                       else ColourInfo.from_tags(0, 0, 0, 0, height))
        self.sample_aspect_ratio = source.sample_aspect_ratio if source is not None else None
        self.pad = (height % 2, width % 2)
        if any(self.pad):
            # 4:2:0 stores chroma per 2x2 block, so libx264 refuses odd sizes: pad one black row/column.
            self.notes.append(f"odd frame size {width}x{height}: padded to {width + width % 2}x{height + height % 2} "
                              f"for yuv420p")
        # The output clock starts at the earlier of the video's and the audio's start, as the source's does.
        tracks = source.audio if source is not None else ()
        self.audio_reason = None
        if tracks and not keep_audio:
            self.audio_reason = "timing"
            tracks = ()
        shift = min([source.start, *(track.start for track in tracks)]) if source is not None else Fraction(0)
        self.video_start = (source.start - shift) if source is not None else Fraction(0)
        self.time_base = 1 / (rate * TICKS_PER_FRAME)
        self.first_tick = round(self.video_start / self.time_base)
        self.flags = decoding_flags()
        self.count = 0
        self.encoder = encoder
        options = {"movflags": "+faststart"} if final.suffix.lower() in (".mp4", ".mov") else {}
        try:
            self.container = av.open(str(self.temp), "w", options=options)
            self.stream = self.container.add_stream(H264_ENCODERS[encoder], rate=rate)
            self.stream.width, self.stream.height = width + width % 2, height + height % 2
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = encoder_options(encoder, crf, preset)
            context = self.stream.codec_context
            if encoder == "libx264":
                # PyAV opens encoders with slice threads, which x264 scales poorly; frame threads are what the ffmpeg
                # command line uses (higher throughput, a few frames of latency, which a file does not mind).
                context.thread_type, context.thread_count = "FRAME", encoder_threads
            context.time_base = self.time_base
            context.colorspace, context.color_range = self.colour.matrix, self.colour.colour_range
            context.color_primaries, context.color_trc = self.colour.primaries, self.colour.transfer
            if self.sample_aspect_ratio:
                context.sample_aspect_ratio = self.sample_aspect_ratio
            self.rotation = source.rotation if source is not None else 0
            if self.rotation:
                self.stream.set_display_rotation(self.rotation)
            if tracks:
                from footage.audio import AudioCopier

                self.audio = AudioCopier(source.path, self.container, tracks, shift)
        except (av.FFmpegError, ValueError) as error:
            self.abort()
            raise VideoIOError(f"cannot write {final}: {ffmpeg_reason(error)}") from None

    def _mux(self, packets) -> None:
        for packet in packets:
            self.container.mux(packet)
            if self.audio is not None and packet.dts is not None:
                self.audio.mux_until(packet.dts * packet.time_base)

    def _to_yuv(self, frame: np.ndarray, pts: int):
        """(H, W, 3) uint8 RGB -> a yuv420p av.VideoFrame stamped ``pts``; runs on a pool thread."""
        import av

        if any(self.pad):
            frame = np.pad(frame, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)))
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video = video.reformat(format="yuv420p", dst_colorspace=self.colour.sws_matrix,
                               dst_color_range=self.colour.colour_range, interpolation=self.flags)
        video.pts = pts
        video.time_base = self.time_base
        return video

    def _encode_oldest(self) -> None:
        import av

        video = self.converting.popleft().result()
        try:
            self._mux(self.stream.encode(video))
        except av.FFmpegError as error:
            raise VideoIOError(f"the encoder stopped while writing {self.final}: {ffmpeg_reason(error)}") from None

    def write(self, frame: np.ndarray) -> None:
        while len(self.converting) >= self.max_converting:
            self._encode_oldest()
        self.converting.append(self.pool.submit(self._to_yuv, frame, self.first_tick + self.count * TICKS_PER_FRAME))
        self.count += 1

    def finish(self, frames_written: int) -> list[str]:
        import av

        period = 1 / self.rate
        video_end = self.video_start + frames_written * period
        while self.converting:
            self._encode_oldest()
        self.pool.shutdown()
        try:
            self._mux(self.stream.encode(None))
            self.audio_record = {"decision": "none", "tracks": []}
            if self.audio is not None:
                notes, self.audio_record = self.audio.finish(video_end, period)
                for record in self.audio_record["tracks"]:
                    record["offset_to_video_s"] = round(float(Fraction(record["start_s"]) - self.source.start), 6)
                self.notes += notes
            elif self.audio_reason == "timing":
                reason = (f"the output lasts {float(frames_written * period):.3f} s but {self.source.path} lasts "
                          f"{self.source.duration:.3f} s (--input_fps changed the video's timing)")
                self.notes.append(f"audio not copied: {reason}")
                self.audio_record = {"decision": "dropped", "reason": reason, "tracks": []}
            self.container.close()
        except av.FFmpegError as error:
            raise VideoIOError(f"encoding {self.final} failed: {ffmpeg_reason(error)}") from None
        self.container = None
        replace_into_place(self.temp, self.final)
        self.temp = None
        self.output_record = {"start_s": float(self.video_start), "duration_s": float(frames_written * period),
                              "encoder": H264_ENCODERS[self.encoder], "colour": self.colour.as_dict(),
                              "rotation": self.rotation,
                              "sample_aspect_ratio": (None if self.sample_aspect_ratio is None
                                                      else str(self.sample_aspect_ratio))}
        return self.notes

    def report(self) -> dict:
        return {"output": self.output_record, "audio": self.audio_record}

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.converting.clear()
        if self.audio is not None:
            self.audio.close()
            self.audio = None
        if self.container is not None:
            try:
                self.container.close()
            except Exception:       # noqa: BLE001 - a half-written file is deleted next anyway
                pass
            self.container = None
        remove_path(self.temp)
        self.temp = None


class OpenCVSink(FrameSink):
    """Fallback writer without PyAV: cv2.VideoWriter with MPEG-4 part 2 (mp4v); no audio, no --crf, no colour tags."""

    def __init__(self, final: Path, width: int, height: int, rate: Fraction):
        self.final = final
        self.temp: Path | None = temporary_name(final)
        self.writer = cv2.VideoWriter(str(self.temp), cv2.VideoWriter_fourcc(*"mp4v"), float(rate), (width, height))
        if not self.writer.isOpened():
            self.abort()
            raise VideoIOError(f"OpenCV cannot write a {final.suffix} video ({final}); install imageio-ffmpeg")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def finish(self, frames_written: int) -> list[str]:
        self.writer.release()
        replace_into_place(self.temp, self.final)
        self.temp = None
        return []

    def abort(self) -> None:
        self.writer.release()
        remove_path(self.temp)
        self.temp = None
