"""The source's audio in the output video: copied packet by packet, in sync, trimmed to the video.

Every time is on the source's clock minus ``shift`` (the earlier of the video's and the audio's start), so the output
starts at 0 and keeps the source's offset between audio and video (a video that starts 63 ms after its audio still
does). Tracks are stream-copied (no re-encode); a codec the output container cannot hold is re-encoded to AAC.
Audio that runs past the video's end is trimmed (packets that start after it are left out); audio that ends before
it is kept as it is (players play silence for the rest). Neither drops the track.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

AAC_BITRATE = 192_000


@dataclass(frozen=True)
class AudioTrack:
    """One audio stream of the source. start, end: seconds on the source's clock (end None when unknown)."""

    index: int
    codec: str
    start: Fraction
    end: Fraction | None

    def as_dict(self) -> dict:
        return {"stream": self.index, "codec": self.codec, "start_s": round(float(self.start), 6),
                "end_s": None if self.end is None else round(float(self.end), 6)}


def probe_audio(container: av.container.InputContainer, packet_ends: dict[int, Fraction]) -> tuple[AudioTrack, ...]:
    """The audio tracks of an open input container. packet_ends: stream index -> the end of its last packet
    (seconds), from a pass over the packets; containers such as Matroska give no duration per stream."""
    tracks = []
    for stream in container.streams.audio:
        base = stream.time_base or Fraction(1, stream.rate or 1)
        start = Fraction(stream.start_time) * base if stream.start_time is not None else Fraction(0)
        end = packet_ends.get(stream.index)
        if end is None and stream.duration is not None:
            end = start + Fraction(stream.duration) * base
        tracks.append(AudioTrack(stream.index, stream.codec_context.name, start, end))
    return tuple(tracks)


def can_copy(format_name: str, stream: av.audio.stream.AudioStream) -> bool:
    """Whether a container of ``format_name`` takes ``stream``'s packets as they are: a dry run into memory (the
    container's codec list alone is too lenient; some refusals only come when the header is written)."""
    with av.open(io.BytesIO(), "w", format=format_name) as probe:
        try:
            probe.add_stream_from_template(stream)
            probe.start_encoding()
        except (ValueError, av.FFmpegError):
            return False
    return True


class AudioCopier:
    """Muxes the source's audio tracks into ``output`` as the video is written (interleaved, one pass).

    Call :meth:`mux_until` with the output time of each video packet muxed, then :meth:`finish` with the video's end.
    """

    def __init__(self, source: Path, output: av.container.OutputContainer, tracks: tuple[AudioTrack, ...],
                 shift: Fraction):
        self.input = av.open(str(source))
        try:
            self._add_streams(output, tracks, shift)
        except BaseException:
            self.input.close()          # the caller never gets this object to close: close the source here
            raise
        self.packets = self.input.demux(*[self.input.streams[track.index] for track in tracks])
        self.pending: av.Packet | None = None
        self.exhausted = False

    def _add_streams(self, output: av.container.OutputContainer, tracks: tuple[AudioTrack, ...],
                     shift: Fraction) -> None:
        """One output stream per track: a copy where the container takes the packets, else AAC."""
        self.output, self.tracks, self.shift = output, tracks, shift
        self.routes: dict[int, tuple[av.stream.Stream, av.AudioResampler | None]] = {}
        self.reencoded: list[int] = []
        for track in tracks:
            stream = self.input.streams[track.index]
            if can_copy(output.format.name, stream):
                self.routes[track.index] = (output.add_stream_from_template(stream), None)
            else:
                encoder = output.add_stream("aac", rate=stream.rate)
                encoder.layout = stream.layout.name
                encoder.bit_rate = AAC_BITRATE
                resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
                self.routes[track.index] = (encoder, resampler)
                self.reencoded.append(track.index)

    def _output_time(self, packet: av.Packet) -> Fraction:
        return Fraction(packet.pts) * packet.time_base - self.shift

    def mux_until(self, time: Fraction) -> None:
        """Mux every audio packet that starts before ``time`` (seconds on the output clock)."""
        while not self.exhausted:
            packet, self.pending = self.pending, None
            if packet is None:
                packet = next(self.packets, None)
                if packet is None:
                    self.exhausted = True
                    return
            if packet.pts is None or packet.size == 0:        # the demuxer's end-of-stream markers
                continue
            if self._output_time(packet) >= time:
                self.pending = packet
                return
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        stream, resampler = self.routes[packet.stream.index]
        if resampler is None:
            ticks = round(self.shift / packet.time_base)
            packet.pts -= ticks
            if packet.dts is not None:
                packet.dts -= ticks
            packet.stream = stream
            self.output.mux(packet)
            return
        for frame in packet.decode():
            rate = frame.sample_rate
            frame.pts = round((Fraction(frame.pts) * frame.time_base - self.shift) * rate)
            frame.time_base = Fraction(1, rate)
            for resampled in resampler.resample(frame):
                self.output.mux(stream.encode(resampled))

    def finish(self, video_end: Fraction, frame_period: Fraction) -> tuple[list[str], dict]:
        """Mux up to the video's end, flush, close. Returns (notes for the user, the audio part of --report)."""
        self.mux_until(video_end)
        for stream, resampler in self.routes.values():
            if resampler is not None:
                for resampled in resampler.resample(None):
                    self.output.mux(stream.encode(resampled))
                self.output.mux(stream.encode(None))
        self.input.close()
        notes, tracks = [], []
        for track in self.tracks:
            record = {**track.as_dict(), "decision": "re-encoded to AAC" if track.index in self.reencoded else "copied"}
            if track.end is not None:
                overrun = track.end - self.shift - video_end
                record["trimmed_s"] = round(float(max(overrun, Fraction(0))), 6)
                record["shorter_than_video_s"] = round(float(max(-overrun, Fraction(0))), 6)
                if overrun > frame_period:
                    notes.append(f"audio stream {track.index}: the last {float(overrun):.3f} s (after the video's end) "
                                 f"trimmed")
                elif -overrun > frame_period:
                    notes.append(f"audio stream {track.index} ends {float(-overrun):.3f} s before the video (kept; "
                                 f"players play silence after it)")
            if track.index in self.reencoded:
                notes.append(f"audio stream {track.index} re-encoded to AAC: the output container cannot hold "
                             f"{track.codec}")
            tracks.append(record)
        return notes, {"decision": "kept", "tracks": tracks}

    def close(self) -> None:
        """Release the source (after an error); safe after :meth:`finish`."""
        try:
            self.input.close()
        except Exception:       # noqa: BLE001 - closing after a failure must not hide the failure
            pass
