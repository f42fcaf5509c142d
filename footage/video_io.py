"""Frames in and out of videos and frame folders, for ``interpolate.py``.

A source yields (H, W, 3) uint8 RGB frames in order; a sink takes them in order and makes its output appear only
when it is complete: everything goes to a hidden temporary name in the output's folder (``.NAME.XXXX.partial...``)
and is renamed onto the output by :meth:`FrameSink.finish`, so an interrupted run leaves nothing that looks done.

Video goes through the ffmpeg binary the ``imageio-ffmpeg`` wheel ships, as raw rgb24 over pipes:

    reading:  ffmpeg -i IN -map 0:v:0 -fps_mode passthrough -f rawvideo -pix_fmt rgb24 -   (every decoded frame
              exactly once: no frame is duplicated or dropped to fit a constant rate)
    writing:  raw rgb24 on stdin -> libx264, yuv420p, --crf; the source's audio is copied afterwards by a stream
              copy (no re-encode), when the output lasts as long as the source.

The exact frame rate (24000/1001, not "23.98") is the time base ffmpeg gives its rawvideo encoder, read from a
two-frame ``framecrc`` probe (which also tells the frame size and whether there are two frames to interpolate). Reading through ffmpeg rather than cv2.VideoCapture keeps one decoder for reading,
writing and probing (audio tracks, duration), and gives the rate as a fraction. Without imageio-ffmpeg, OpenCV
reads and writes video instead (mp4v, no audio), after one warning.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Iterator

import cv2
import numpy as np

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")
OUTPUT_FRAME_PATTERN = "{:08d}.png"          # 0-based output frame index; sorts by name up to 10^8 frames
# swscale's default YUV <-> RGB conversion is biased by 1-2 levels per trip (measured: rgb (40, 60, 90) -> yuv420p ->
# (39, 58, 89)); with exact rounding and full-resolution chroma interpolation a decode-encode round trip stays within
# a level, so an interpolated video does not drift in colour from its source.
SWS_FLAGS = ["-sws_flags", "accurate_rnd+full_chroma_int"]
# A "rate" above this is a container time base that leaked through (a stream that declares no rate), not a rate.
MAX_PLAUSIBLE_RATE = 1000


class VideoIOError(RuntimeError):
    """A file or folder that cannot be read or written as asked; one line naming the path."""


def find_ffmpeg() -> str | None:
    """Path of the ffmpeg binary from imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE), or None when there is none."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def read_rgb_uint8(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one image file (cv2 reads BGR; the model works in RGB)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        reason = "file not found" if not path.is_file() else "not a readable image"
        raise VideoIOError(f"cannot read image {path} ({reason})")
    return np.ascontiguousarray(image[..., ::-1])


def natural_key(name: str) -> list:
    """Sort key that orders 'frame2.png' before 'frame10.png': runs of digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def last_line(text: str) -> str:
    """The last non-empty line of a tool's stderr (what it says went wrong), or '' when there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class SourceInfo:
    """What a source knows before decoding everything.

    rate: frames per second as an exact fraction; None for a frame folder without --input_fps.
    frame_count: exact for folders; for video an estimate (duration x rate), only used for the progress bar.
    duration: the container's duration in seconds (video only; None when unknown).
    has_audio: the video has at least one audio stream.
    """

    path: Path
    kind: str                   # "video" or "folder"
    width: int
    height: int
    rate: Fraction | None
    frame_count: int | None
    duration: float | None = None
    has_audio: bool = False

    def describe(self) -> str:
        rate = f"{float(self.rate):.6g} fps" if self.rate else "no frame rate"
        count = (f"{self.frame_count} frames" if self.kind == "folder"
                 else f"~{self.frame_count} frames" if self.frame_count else "frame count unknown")
        audio = ", audio" if self.has_audio else ""
        return f"{self.path} ({self.kind}, {self.width}x{self.height}, {count}, {rate}{audio})"


# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------
class FrameSource:
    """Yields every frame once, in order, as a fresh (H, W, 3) uint8 RGB array (never a reused buffer)."""

    info: SourceInfo

    def frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

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
            first = read_rgb_uint8(files[0])
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

    def frames(self) -> Iterator[np.ndarray]:
        for file in self.files:
            frame = read_rgb_uint8(file)
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise VideoIOError(f"{file} is {frame.shape[1]}x{frame.shape[0]} but the frames before it are "
                                   f"{self.info.width}x{self.info.height}: all frames must have one size")
            yield frame


def snap_rate(fps: float) -> Fraction:
    """A rate ffmpeg printed rounded ("23.98") -> the NTSC fraction it stands for (24000/1001), else as printed."""
    for nominal in (24, 30, 48, 60, 120, 240, 15, 25, 50, 100):
        ntsc = Fraction(nominal * 1000, 1001)
        if abs(fps - float(ntsc)) < 0.006:
            return ntsc
    return Fraction(fps).limit_denominator(1000)


class FfmpegSource(FrameSource):
    """A video decoded by ffmpeg to raw rgb24 on a pipe (see the module docstring)."""

    def __init__(self, path: Path, ffmpeg: str, rate_override: Fraction | None = None):
        self.path, self.ffmpeg = path, ffmpeg
        self.process: subprocess.Popen | None = None
        self.info = self._probe(rate_override)

    def _probe(self, rate_override: Fraction | None) -> SourceInfo:
        """Decode the first two frames into a framecrc listing: size, exact rate, and whether there are >= 2."""
        command = [self.ffmpeg, "-hide_banner", "-nostdin", "-i", str(self.path), "-map", "0:v:0", "-frames:v", "2",
                   "-fps_mode", "passthrough", "-c:v", "rawvideo", "-pix_fmt", "rgb24", "-f", "framecrc", "-"]
        result = subprocess.run(command, capture_output=True, text=True, errors="replace")
        header = result.stderr.split("\nOutput #0")[0]
        if result.returncode != 0:
            reason = last_line(result.stderr)
            if "fps_mode" in reason:
                raise VideoIOError(f"{self.ffmpeg} is too old: ffmpeg 5.1 or newer is needed (-fps_mode); "
                                   f"pip install -U imageio-ffmpeg, or unset IMAGEIO_FFMPEG_EXE")
            if "matches no streams" in reason:
                reason = "no video stream"
            raise VideoIOError(f"cannot read video {self.path}: {reason or f'ffmpeg exit status {result.returncode}'}")
        time_base = re.search(r"^#tb 0: (\d+)/(\d+)", result.stdout, re.M)
        size = re.search(r"^#dimensions 0: (\d+)x(\d+)", result.stdout, re.M)
        decoded = len([line for line in result.stdout.splitlines() if line and not line.startswith("#")])
        if decoded == 0 or size is None:
            raise VideoIOError(f"{self.path}: no video frames could be decoded")
        if decoded < 2:
            raise VideoIOError(f"{self.path}: only 1 video frame; interpolation needs at least 2")
        width, height = int(size.group(1)), int(size.group(2))

        rate = Fraction(int(time_base.group(2)), int(time_base.group(1))) if time_base else None
        if rate is None or rate > MAX_PLAUSIBLE_RATE:
            printed = re.search(r"Video:.*?([\d.]+) fps", header)
            rate = snap_rate(float(printed.group(1))) if printed and float(printed.group(1)) > 0 else None
        duration_match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", header)
        duration = (int(duration_match.group(1)) * 3600 + int(duration_match.group(2)) * 60
                    + float(duration_match.group(3))) if duration_match else None
        estimate = round(duration * rate) if duration and rate else None     # the file's own rate, not --input_fps
        has_audio = re.search(r"Stream #\d+:\d+.*: Audio:", header) is not None
        if rate_override is not None:
            rate = rate_override
        if rate is None:
            raise VideoIOError(f"cannot tell the frame rate of {self.path}: give --input_fps")
        return SourceInfo(self.path, "video", width, height, rate, estimate, duration, has_audio)

    def frames(self) -> Iterator[np.ndarray]:
        width, height = self.info.width, self.info.height
        frame_bytes = width * height * 3
        with tempfile.TemporaryFile() as log:           # a file, not a pipe: a chatty decoder can never block
            command = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(self.path),
                       "-map", "0:v:0", "-fps_mode", "passthrough", *SWS_FLAGS,
                       "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
            # Own session: Ctrl-C reaches only Python, which then stops the decoder itself (close()).
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, bufsize=frame_bytes,
                                            start_new_session=True)
            stream = self.process.stdout
            while True:
                frame = np.empty((height, width, 3), dtype=np.uint8)
                view, filled = memoryview(frame).cast("B"), 0
                while filled < frame_bytes:
                    count = stream.readinto(view[filled:])
                    if not count:
                        break
                    filled += count
                if filled == 0:
                    break
                if filled < frame_bytes:
                    raise VideoIOError(f"{self.path}: the decoder stopped in the middle of a frame")
                yield frame
            if self.process.wait() != 0:
                log.seek(0)
                reason = last_line(log.read().decode(errors="replace"))
                raise VideoIOError(f"cannot decode {self.path}: {reason or 'ffmpeg failed'}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class OpenCVSource(FrameSource):
    """Fallback reader without imageio-ffmpeg: cv2.VideoCapture (rate from CAP_PROP_FPS, no audio)."""

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

    def frames(self) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(frame[..., ::-1])
        finally:
            capture.release()


def open_source(path: Path, ffmpeg: str | None, rate: Fraction | None) -> FrameSource:
    """A frame folder or a video file. ``rate`` (--input_fps) overrides a video's own rate."""
    if not path.exists():
        raise VideoIOError(f"--input {path} does not exist")
    if path.is_dir():
        return FolderSource(path, rate)
    if not os.access(path, os.R_OK):
        raise VideoIOError(f"--input {path} is not readable (permissions)")
    return FfmpegSource(path, ffmpeg, rate) if ffmpeg else OpenCVSource(path, rate)


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


def prepare_output(path: Path, overwrite: bool) -> str:
    """Check that ``path`` can be written (creating its parent folders) before any work; returns its kind."""
    kind = output_kind(path)
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise VideoIOError(f"--output {path} exists; pass --overwrite to replace it")
    if path.exists() and kind == "video" and not path.is_file():
        raise VideoIOError(f"--output {path} exists and is not a file")
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise VideoIOError(f"cannot write --output {path}: {blocking} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise VideoIOError(f"cannot write --output {path}: {error.strerror or error}") from None
    return kind


def temporary_name(final: Path, directory: bool = False) -> Path:
    """Create and return a hidden, unique, clearly unfinished name beside ``final`` that keeps its extension (ffmpeg
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


class FolderSink(FrameSink):
    """Numbered PNG frames (00000000.png, ...), encoded by a few threads (cv2.imwrite releases the GIL)."""

    def __init__(self, final: Path, workers: int = 4):
        self.final = final
        self.temp: Path | None = temporary_name(final, directory=True)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png")
        self.in_flight: deque[Future] = deque()
        self.max_in_flight = 2 * workers
        self.count = 0

    def _write_png(self, path: Path, frame: np.ndarray) -> None:
        # Compression level 1: several times faster than the default and only slightly larger (still lossless).
        if not cv2.imwrite(str(path), np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise VideoIOError(f"cannot write {path}")

    def write(self, frame: np.ndarray) -> None:
        while len(self.in_flight) >= self.max_in_flight:
            self.in_flight.popleft().result()          # re-raises a failed write here
        self.in_flight.append(self.pool.submit(self._write_png, self.temp / OUTPUT_FRAME_PATTERN.format(self.count),
                                               frame))
        self.count += 1

    def finish(self, frames_written: int) -> list[str]:
        while self.in_flight:
            self.in_flight.popleft().result()
        self.pool.shutdown()
        replace_into_place(self.temp, self.final)
        self.temp = None
        return []

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.in_flight.clear()
        remove_path(self.temp)
        self.temp = None


class FfmpegSink(FrameSink):
    """H.264 (libx264, yuv420p, --crf) through ffmpeg; then the source's audio, stream-copied, when durations match.

    audio_from: the source video, when it has audio; its duration decides whether the audio still fits.
    """

    def __init__(self, final: Path, ffmpeg: str, width: int, height: int, rate: Fraction, crf: int,
                 preset: str = "medium", audio_from: SourceInfo | None = None):
        self.final, self.ffmpeg, self.rate, self.audio_from = final, ffmpeg, rate, audio_from
        self.temp: Path | None = temporary_name(final)
        self.muxed: Path | None = None
        self.log: IO[bytes] = tempfile.TemporaryFile()
        self.notes: list[str] = []
        filters = []
        if width % 2 or height % 2:
            # yuv420p stores chroma per 2x2 block, so libx264 refuses odd sizes: pad one black row/column.
            filters = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
            self.notes.append(f"odd frame size {width}x{height}: padded to {width + width % 2}x{height + height % 2} "
                              f"for yuv420p")
        command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                   "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "-", *filters,
                   *SWS_FLAGS, "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
                   *self._container_flags(final), str(self.temp)]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=self.log, start_new_session=True)
        except OSError as error:
            remove_path(self.temp)
            raise VideoIOError(f"cannot start ffmpeg ({ffmpeg}): {error.strerror or error}") from None

    @staticmethod
    def _container_flags(path: Path) -> list[str]:
        # The index at the front: the file starts playing before it has fully downloaded.
        return ["-movflags", "+faststart"] if path.suffix.lower() in (".mp4", ".mov") else []

    def _ffmpeg_error(self) -> str:
        self.log.seek(0)
        return last_line(self.log.read().decode(errors="replace")) or f"ffmpeg exit status {self.process.returncode}"

    def write(self, frame: np.ndarray) -> None:
        try:
            self.process.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, ValueError):
            self.process.wait()
            raise VideoIOError(f"the encoder stopped while writing {self.final}: {self._ffmpeg_error()}") from None

    def finish(self, frames_written: int) -> list[str]:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        if self.process.wait() != 0:
            raise VideoIOError(f"encoding {self.final} failed: {self._ffmpeg_error()}")
        result = self.temp
        if self.audio_from is not None:
            result = self._add_audio(frames_written)
        replace_into_place(result, self.final)
        remove_path(self.temp)
        self.temp = self.muxed = None
        self.log.close()
        return self.notes

    def _add_audio(self, frames_written: int) -> Path:
        """Mux the source's audio onto the finished video; the video alone when the durations disagree or the
        container refuses the codec even after re-encoding to AAC."""
        source = self.audio_from
        video_seconds = float(frames_written / self.rate)
        # Output frames span the input's frames (the last input frame is kept), so a correct output differs from the
        # container duration by at most a frame or two, plus the audio's own padding: anything beyond means the
        # timing was changed (--input_fps) and the audio would drift.
        tolerance = max(2 / float(source.rate), 0.1)
        if source.duration is not None and abs(video_seconds - source.duration) > tolerance:
            self.notes.append(f"audio not copied: the output lasts {video_seconds:.3f} s but {source.path} lasts "
                              f"{source.duration:.3f} s")
            return self.temp
        self.muxed = temporary_name(self.final)
        for audio_codec in (["-c:a", "copy"], ["-c:a", "aac", "-b:a", "192k"]):
            command = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(self.temp),
                       "-i", str(source.path), "-map", "0:v:0", "-map", "1:a", "-c:v", "copy", *audio_codec,
                       *self._container_flags(self.final), str(self.muxed)]
            result = subprocess.run(command, capture_output=True, text=True, errors="replace")
            if result.returncode == 0:
                if audio_codec[1] != "copy":
                    self.notes.append(f"audio re-encoded to AAC: {self.final.suffix} cannot hold the source's codec")
                return self.muxed
            reason = last_line(result.stderr)
        self.notes.append(f"audio not copied: {reason}")
        remove_path(self.muxed)
        self.muxed = None
        return self.temp

    def abort(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        remove_path(self.temp)
        remove_path(self.muxed)
        self.temp = self.muxed = None
        if not self.log.closed:
            self.log.close()


class OpenCVSink(FrameSink):
    """Fallback writer without imageio-ffmpeg: cv2.VideoWriter with MPEG-4 part 2 (mp4v); no audio, no --crf."""

    def __init__(self, final: Path, width: int, height: int, rate: Fraction):
        self.final = final
        self.temp: Path | None = temporary_name(final)
        self.writer = cv2.VideoWriter(str(self.temp), cv2.VideoWriter_fourcc(*"mp4v"), float(rate), (width, height))
        if not self.writer.isOpened():
            self.abort()
            raise VideoIOError(f"OpenCV cannot write a {final.suffix} video ({final}); install imageio-ffmpeg")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(np.ascontiguousarray(frame[..., ::-1]))

    def finish(self, frames_written: int) -> list[str]:
        self.writer.release()
        replace_into_place(self.temp, self.final)
        self.temp = None
        return []

    def abort(self) -> None:
        self.writer.release()
        remove_path(self.temp)
        self.temp = None
