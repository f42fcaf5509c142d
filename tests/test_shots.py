"""measures/shots.py: cuts and duplicates on synthetic frames, the cases a fixed mean difference gets wrong.

Each case also states the old rule's number (mean absolute difference, MAD, on a <= 448 px copy: > 30 a cut, <= 0.2
a duplicate), so a reader sees why the rule changed; the assertions are on the new verdicts.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from measures.shots import (PairScore, ShotDetector, ShotSettings, classify_frames, downscale, frame_signature,
                            pair_score)

HD = (1080, 1920)


def texture(height: int, width: int, seed: int, low: int = 0, high: int = 255) -> np.ndarray:
    """(H, W, 3) uint8: random detail at 4, 16 and 64 px scales, stretched to [low, high]."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for scale in (4, 16, 64):
        noise = rng.random((height // scale + 2, width // scale + 2, 3)).astype(np.float32)
        image += cv2.resize(noise, (width + 2 * scale, height + 2 * scale),
                            interpolation=cv2.INTER_CUBIC)[:height, :width]
    image = (image - image.min()) / (image.max() - image.min())
    return (low + image * (high - low)).astype(np.uint8)


def old_mad(a: np.ndarray, b: np.ndarray) -> float:
    """The rule this module replaced: MAD of copies at most 448 px on the longer side."""
    return float(np.abs(downscale(a, 448) - downscale(b, 448)).mean())


def kinds(frames: list[np.ndarray], settings: ShotSettings | None = None) -> list[str]:
    return [verdict.kind for verdict in classify_frames(frames, settings)]


def test_small_object_on_a_still_background_is_motion_not_a_duplicate():
    background = texture(*HD, seed=1, low=40, high=200)
    frames = []
    for index in range(6):
        frame = background.copy()
        x = 500 + 24 * index                         # an 80x80 object moving 24 px per frame
        frame[500:580, x:x + 80] = (220, 60, 60)
        frames.append(frame)
    assert old_mad(frames[0], frames[1]) < 0.2       # the old rule called this a duplicate
    verdicts = classify_frames(frames)
    assert [v.kind for v in verdicts] == ["motion"] * 5
    assert min(v.score.largest_block for v in verdicts) > 5 * ShotSettings().duplicate_block


def test_fast_textured_pan_is_motion_not_a_cut():
    strip = texture(HD[0], HD[1] + 60 * 8, seed=2)
    frames = [np.ascontiguousarray(strip[:, 60 * i:60 * i + HD[1]]) for i in range(8)]    # 60 px per frame
    assert old_mad(frames[0], frames[1]) > 30        # the old rule called every pair a cut
    assert kinds(frames) == ["motion"] * 7


def test_a_pan_that_starts_suddenly_is_not_a_cut():
    strip = texture(270, 480 + 40 * 6, seed=5)
    first = np.ascontiguousarray(strip[:, :480])
    still = [np.clip(first + np.random.default_rng(i).integers(-2, 3, first.shape), 0, 255).astype(np.uint8)
             for i in range(4)]                      # a still shot with grain, then the camera moves 40 px per frame
    moving = [np.ascontiguousarray(strip[:, 40 * i:40 * i + 480]) for i in range(1, 7)]
    assert "cut" not in kinds(still + moving)


def test_sustained_change_that_starts_suddenly_is_not_a_cut():
    """Motion the alignment cannot undo (leaves, water) that starts at once: its first pair has two still and two
    busy neighbours, whose median is half its own change, not a third of it."""
    changes = [0.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3]
    detector = ShotDetector()
    verdicts = []
    for change in changes:
        verdicts += detector.push_score(PairScore(change, change, 0.0, 50.0))
    verdicts += detector.finish()
    assert [v.kind for v in verdicts] == ["motion"] * len(changes)
    assert verdicts[4].baseline == pytest.approx(0.15)


def test_cut_between_two_pans_is_a_cut():
    """Each pan is undone by its global shift, so a cut between two fast pans still stands out."""
    strips = [texture(270, 480 + 40 * 8, seed=s) for s in (7, 8)]
    frames = [np.ascontiguousarray(strips[i // 5][:, 40 * (i % 5):40 * (i % 5) + 480]) for i in range(10)]
    assert kinds(frames) == ["motion"] * 4 + ["cut"] + ["motion"] * 4


def test_cut_between_two_dark_shots_is_a_cut():
    shot_a = texture(*HD, seed=3, low=77, high=128)      # 30-50% brightness, the same histogram in both shots
    shot_b = texture(*HD, seed=4, low=77, high=128)
    frames = [np.roll(shot_a, 3 * i, axis=1) for i in range(4)] + [np.roll(shot_b, 3 * i, axis=1) for i in range(4)]
    assert old_mad(frames[3], frames[4]) < 30         # the old rule blended the two shots
    assert kinds(frames) == ["motion"] * 3 + ["cut"] + ["motion"] * 3


def test_true_duplicates_are_duplicates_even_with_codec_noise():
    frame = texture(360, 640, seed=6)
    grain = np.random.default_rng(0).integers(-1, 2, frame.shape)
    noisy_repeat = np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    moved = np.roll(frame, 4, axis=0)
    verdicts = classify_frames([frame, frame.copy(), noisy_repeat, moved])
    assert [v.kind for v in verdicts] == ["duplicate", "duplicate", "motion"]
    assert verdicts[0].score.largest_block == 0.0
    # -1 turns duplicates off: the same pairs are motion.
    assert kinds([frame, frame.copy(), noisy_repeat], ShotSettings(duplicate_block=-1)) == ["motion", "motion"]


def test_two_cuts_in_a_row_are_both_found():
    """A one-frame shot between two others: the median baseline is not raised by the neighbouring cut."""
    shots = [texture(180, 320, seed=10 + s) for s in range(3)]
    frames = [np.roll(shots[0], 2 * i, axis=1) for i in range(4)] + [shots[1]] + \
             [np.roll(shots[2], 2 * i, axis=1) for i in range(4)]
    assert kinds(frames) == ["motion"] * 3 + ["cut", "cut"] + ["motion"] * 3


def test_stream_matches_the_whole_list_and_looks_ahead_window_frames():
    shots = [texture(90, 160, seed=20 + s) for s in range(2)]
    frames = [np.roll(shots[0], i, axis=0) for i in range(5)] + [np.roll(shots[1], i, axis=0) for i in range(5)]
    frames[2] = frames[1].copy()
    for window in (1, 3):
        settings = ShotSettings(window=window)
        detector = ShotDetector(settings)
        assert detector.lookahead == window
        arrived_with = {}
        for index, frame in enumerate(frames):
            for verdict in detector.push_frame(frame):
                arrived_with[verdict.pair] = index
        for verdict in detector.finish():
            arrived_with[verdict.pair] = len(frames)
        # Pair i is decided by the push of frame i + 1 + window (or at finish for the last window pairs).
        assert arrived_with == {pair: min(pair + 1 + window, len(frames)) for pair in range(len(frames) - 1)}
        whole = classify_frames(frames, settings)
        assert [v.pair for v in whole] == list(range(len(frames) - 1))
        assert [v.kind for v in whole][1] == "duplicate" and [v.kind for v in whole][4] == "cut"


def test_push_score_gives_the_same_verdicts_as_push_frame():
    frames = [texture(90, 160, seed=30 + i // 3) for i in range(7)]
    signatures = [frame_signature(f) for f in frames]
    detector = ShotDetector()
    from_scores = []
    for a, b in zip(signatures, signatures[1:]):
        from_scores += detector.push_score(pair_score(a, b))
    from_scores += detector.finish()
    assert from_scores == classify_frames(frames)


def test_two_frame_clip_uses_the_lone_rule():
    a, b = texture(90, 160, seed=40), texture(90, 160, seed=41)
    verdict, = classify_frames([a, b])
    assert verdict.baseline is None and verdict.kind == "cut"
    assert kinds([a, np.roll(a, 1, axis=1)]) == ["motion"]
    assert kinds([a, b], ShotSettings(cut_ratio=float("inf"))) == ["motion"]      # inf: no cuts, lone or not


def test_grey_and_bgr_frames_score_like_rgb():
    a, b = texture(90, 160, seed=50), texture(90, 160, seed=51)
    rgb = pair_score(frame_signature(a), frame_signature(b))
    bgr = pair_score(frame_signature(a[..., ::-1].copy()), frame_signature(b[..., ::-1].copy()))
    assert rgb == pytest.approx(bgr)
    grey = pair_score(frame_signature(a[..., 0].copy()), frame_signature(b[..., 0].copy()))
    assert 0 <= grey.change <= 1


def test_bad_frames_are_refused_with_their_shape():
    with pytest.raises(ValueError, match="float32"):
        frame_signature(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="different sizes"):
        pair_score(frame_signature(np.zeros((4, 4, 3), np.uint8)), frame_signature(np.zeros((4, 6, 3), np.uint8)))
