"""Output times: where each output frame falls between two input frames, and how a t = 0.5-only model reaches it.

Input frame i sits at time i (in input frames); with ``ratio`` = input frames per output frame, output frame k sits
at time k * ratio (the rules are spelled out in ``interpolate.py``'s help).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence


def pair_times(pair: int, ratio: Fraction) -> list[Fraction]:
    """Times t in [0, 1) of the output frames from input frame ``pair`` up to (not including) ``pair + 1``.

    ratio: input frames per output frame (1/N for --multi N). Output frame k is at input time k * ratio.
    """
    times, k = [], math.ceil(pair / ratio)
    while k * ratio < pair + 1:
        times.append(k * ratio - pair)
        k += 1
    return times


def output_frame_count(frames_in: int, ratio: Fraction) -> int:
    """Output frames for ``frames_in`` input frames: every k with k * ratio <= frames_in - 1."""
    return math.floor((frames_in - 1) / ratio) + 1


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def halving_rounds(times: Iterable[Fraction]) -> list[list[Fraction]]:
    """Dyadic times in (0, 1) -> the midpoints to compute at depth 1, 2, ... (one list per depth, sorted).

    t = k / 2^d with k odd is the t = 0.5 interpolation of (k-1) / 2^d and (k+1) / 2^d, which have smaller
    denominators: they come from earlier depths, or are the input frames (0 and 1). Only the ancestors the requested
    times need are listed, so --fps 24 -> 48 costs one call per pair, not a whole tree.
    """
    needed: set[Fraction] = set()
    stack = [Fraction(t) for t in times]
    while stack:
        t = stack.pop()
        if t <= 0 or t >= 1 or t in needed:
            continue
        if not is_power_of_two(t.denominator):
            raise ValueError(f"t = {t} is not a dyadic fraction: it cannot be reached by halving")
        needed.add(t)
        step = Fraction(1, t.denominator)
        stack += [t - step, t + step]
    depth = max((t.denominator.bit_length() - 1 for t in needed), default=0)
    return [sorted(t for t in needed if t.denominator == 2 ** d) for d in range(1, depth + 1)]


def describe_times(values: Sequence[Fraction], limit: int = 4) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


@dataclass(frozen=True)
class TimePlan:
    """Where output frames fall, in seconds since the first input frame: output frame k at ``k * period``.

    period: seconds per output frame (for a frame folder without a rate: input frames per output frame).
    end: None: output frames up to the last input frame (``k * period <= last``), the rule for a constant rate,
        where ``--multi N`` gives (n - 1) * N + 1 frames. A time: output frames while ``k * period < end`` (a VFR
        video: its duration, so the output lasts as long as the input and its last frame is held as long).
    """

    period: Fraction
    end: Fraction | None = None

    def times_between(self, start: Fraction, stop: Fraction) -> list[Fraction]:
        """t in [0, 1) of the output frames in [start, stop), the times of two consecutive input frames.
        With a constant rate this is :func:`pair_times` exactly (start = i / rate)."""
        span = stop - start
        times, k = [], math.ceil(start / self.period)
        while k * self.period < stop:
            times.append((k * self.period - start) / span)
            k += 1
        return times

    def tail(self, last: Fraction) -> int:
        """How many output frames fall at or after the last input frame (copies of it)."""
        k = math.ceil(last / self.period)
        if self.end is None:
            return int(k * self.period == last)
        return max(0, math.ceil(self.end / self.period) - k)
