"""Tests for measures/motion.py: the DIS motion statistic, the motion buckets and the classical DIS baseline.

CPU only; the frames are a smooth random texture translated by a known number of pixels.
"""

from __future__ import annotations

import json
import math
import os
import sys

import cv2
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from measures.motion import (  # noqa: E402
    MOTION_BUCKETS, FlowPair, bucket_of, classical_frame, flow_pair, frame_motion, interpolate_dis, motion_statistic,
    occlusion_aware_weights, pick_by_warp_agreement, summarize_by_motion, teacher_flows,
)
from model.frames import read_rgb_uint8  # noqa: E402

HEIGHT, WIDTH = 160, 224


def texture(seed: int = 0) -> np.ndarray:
    """(HEIGHT + 120, WIDTH + 120, 3) uint8 RGB: blurred noise, structure at several scales so DIS can match it."""
    rng = np.random.default_rng(seed)
    fine = cv2.GaussianBlur(rng.random((HEIGHT + 120, WIDTH + 120, 3)).astype(np.float32), (0, 0), 2.0)
    coarse = cv2.resize(rng.random(((HEIGHT + 120) // 16, (WIDTH + 120) // 16, 3)).astype(np.float32),
                        (WIDTH + 120, HEIGHT + 120), interpolation=cv2.INTER_CUBIC)
    image = fine + coarse
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).round().astype(np.uint8)


def view(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The (HEIGHT, WIDTH) window of ``image`` moved by (dx, dy): its content appears shifted by (-dx, -dy)."""
    return np.ascontiguousarray(image[20 + dy:20 + dy + HEIGHT, 20 + dx:20 + dx + WIDTH])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) / (255 if a.dtype == np.uint8 else 1)
    b = b.astype(np.float64) / (255 if b.dtype == np.uint8 else 1)
    return float(-10 * np.log10(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("dx, dy", [(0, 0), (6, 0), (8, 6), (0, 12)])
def test_motion_statistic_measures_a_known_shift(dx, dy):
    image = texture()
    measured = frame_motion(view(image, 0, 0), view(image, dx, dy))
    assert measured == pytest.approx(math.hypot(dx, dy), abs=1.0)


def test_motion_statistic_is_the_95th_percentile_of_the_magnitude():
    flow = np.zeros((10, 10, 2), np.float32)
    flow.reshape(-1, 2)[:6, 0] = 30.0      # 6 % of the pixels move 30 px, the rest stand still
    assert motion_statistic(flow) == pytest.approx(30.0)
    flow.reshape(-1, 2)[:6, 0] = 0.0
    flow.reshape(-1, 2)[:4, 1] = -30.0     # 4 %: below the 95th percentile
    assert motion_statistic(flow) == pytest.approx(0.0)


def test_buckets_cover_every_motion_once():
    edges = [0.0, 3.99, 4.0, 15.9, 16.0, 31.9, 32.0, 63.9, 64.0, 500.0]
    assert [bucket_of(m) for m in edges] == ["<4", "<4", "4-16", "4-16", "16-32", "16-32", "32-64", "32-64", ">64",
                                            ">64"]
    records = [{"motion": m, "psnr": float(i)} for i, m in enumerate(edges)]
    rows = summarize_by_motion(records, ["psnr", "psnr_dis"])
    assert [r["bucket"] for r in rows] == [label for label, _, _ in MOTION_BUCKETS]
    assert [r["count"] for r in rows] == [2, 2, 2, 2, 2]
    assert rows[0]["psnr"] == pytest.approx(0.5) and rows[-1]["psnr"] == pytest.approx(8.5)
    assert all("psnr_dis" not in r for r in rows)          # a baseline not computed is left out, not zero
    assert summarize_by_motion([], ["psnr"])[2] == {"bucket": "16-32", "low_px": 16.0, "high_px": 32.0, "count": 0}


def test_dis_baseline_beats_the_frame_average_on_a_translation():
    image = texture(seed=1)
    frame0, middle, frame1 = view(image, 0, 0), view(image, 6, 4), view(image, 12, 8)
    frame_average = (frame0.astype(np.float32) + frame1) / 510
    predicted = interpolate_dis(frame0, frame1, 0.5)
    assert predicted.shape == (HEIGHT, WIDTH, 3) and predicted.dtype == np.float32
    inner = (slice(16, -16), slice(16, -16))              # borders: content that enters the frame is unknowable
    dis_psnr, average_psnr = psnr(predicted[inner], middle[inner]), psnr(frame_average[inner], middle[inner])
    assert dis_psnr > average_psnr + 10.0, (dis_psnr, average_psnr)
    # Same flows reused at another t: a quarter of the way lands on the quarter shift.
    flows = flow_pair(frame0, frame1)
    quarter = interpolate_dis(frame0, frame1, 0.25, flows=flows)
    assert psnr(quarter[inner], view(image, 3, 2)[inner]) > psnr(predicted[inner], view(image, 3, 2)[inner]) + 5


def test_classical_frame_hands_out_the_warps_it_blended():
    """Where both samples are trusted (the inner frame of a plain translation) the blend is the two warps' average,
    and the frame is interpolate_dis's."""
    image = texture(seed=1)
    frame0, frame1 = view(image, 0, 0), view(image, 12, 8)
    parts = classical_frame(frame0, frame1, 0.5)
    np.testing.assert_array_equal(parts.frame, interpolate_dis(frame0, frame1, 0.5))
    inner = (slice(24, -24), slice(24, -24))
    np.testing.assert_allclose(parts.frame[inner], ((parts.warped0 + parts.warped1) / 2)[inner], atol=1e-5)
    assert psnr(parts.warped0[inner], parts.warped1[inner]) > 30      # right flows: both warps show the same scene


def test_pick_by_warp_agreement_takes_each_region_from_the_candidate_whose_warps_agree():
    """Candidate A's warps agree on the left half and disagree on the right, B's the other way round: the pick is
    A's frame on the left and B's on the right (away from the seam by more than the box), whatever the order."""
    rng = np.random.default_rng(0)
    scene, other = rng.random((48, 64, 3), dtype=np.float32), rng.random((48, 64, 3), dtype=np.float32)
    left = np.zeros((48, 64, 1), bool)
    left[:, :32] = True
    frame_a, frame_b = np.full((48, 64, 3), 0.2, np.float32), np.full((48, 64, 3), 0.8, np.float32)
    candidate_a = (frame_a, scene, np.where(left, scene, other))
    candidate_b = (frame_b, scene, np.where(left, other, scene))
    for candidates in ([candidate_a, candidate_b], [candidate_b, candidate_a]):
        picked = pick_by_warp_agreement(candidates)
        assert picked.shape == (48, 64, 3) and picked.dtype == np.float32
        np.testing.assert_array_equal(picked[:, :28], frame_a[:, :28])
        np.testing.assert_array_equal(picked[:, 36:], frame_b[:, 36:])
    np.testing.assert_array_equal(pick_by_warp_agreement([candidate_a]), frame_a)
    with pytest.raises(ValueError, match="at least one"):
        pick_by_warp_agreement([])
    with pytest.raises(ValueError, match=r"same \(H, W, C\)"):
        pick_by_warp_agreement([candidate_a, (frame_b[:40], scene[:40], scene[:40])])


def test_occlusion_rule_gives_way_to_the_trusted_frame():
    trusted0 = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
    trusted1 = np.array([[1.0, 1.0, 0.0, 0.0]], np.float32)
    weight0, weight1 = occlusion_aware_weights(0.5, trusted0, trusted1, occluded_weight=0.0)
    np.testing.assert_allclose(weight0 + weight1, 1.0)
    np.testing.assert_allclose(weight0, [[0.5, 0.0, 1.0, 0.5]])     # both / only I1 / only I0 / neither trusted
    weight0, _ = occlusion_aware_weights(0.25, trusted0, trusted1, occluded_weight=0.0)
    np.testing.assert_allclose(weight0, [[0.75, 0.0, 1.0, 0.75]])   # the time weights where both agree


def test_bad_input_is_refused_with_the_shapes():
    with pytest.raises(ValueError, match="differ in size"):
        interpolate_dis(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        frame_motion(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("dx, dy", [(6, 0), (4, -6)])
def test_teacher_flows_point_from_the_middle_frame_to_each_input(dx, dy):
    """(4, H, W) = [F_t->0, F_t->1] in the model's convention: middle(p) ~ frame_k(p + F_t->k(p))."""
    image = texture(1)
    frame0, middle, frame1 = view(image, -dx, -dy), view(image, 0, 0), view(image, dx, dy)
    flows = teacher_flows(frame0, middle, frame1)
    assert flows.shape == (4, HEIGHT, WIDTH) and flows.dtype == np.float32
    inner = (slice(None), slice(16, -16), slice(16, -16))
    median = np.median(flows[inner].reshape(4, -1), axis=1)
    # frame0 is the window moved by (-dx, -dy): middle(p) = frame0(p + (dx, dy)); frame1 the other way.
    assert median == pytest.approx([dx, dy, -dx, -dy], abs=0.5)


# ------------------------------------------------------------------------------------- tools/classical_variants.py
def small_corpus(root, shifts=((0, 0), (4, 2), (10, 0))) -> list[str]:
    """A corpus in the Vimeo90K layout with one triplet per (dx, dy): the middle frame moved by it, the outer two by
    none and twice it; returns the names in tri_trainlist.txt."""
    image = texture(3)
    names = []
    for index, (dx, dy) in enumerate(shifts, start=1):
        name = f"00001/{index:04d}"
        folder = root / "sequences" / name
        folder.mkdir(parents=True)
        for k, step in enumerate((0, 1, 2), start=1):
            cv2.imwrite(str(folder / f"im{k}.png"), view(image, step * dx, step * dy)[..., ::-1])
        names.append(name)
    (root / "tri_trainlist.txt").write_text("\n".join(names) + "\n")
    return names


def test_classical_variants_today_is_the_benchmarks_rule_and_bilinear_warps_reproduce_it(tmp_path):
    from tools import classical_variants as cv
    names = small_corpus(tmp_path)
    records = cv.score(tmp_path, names, ["today", "plain"])
    for name, record in zip(names, records):
        frames = [read_rgb_uint8(tmp_path / "sequences" / name / f"im{k}.png") for k in (1, 2, 3)]
        if record["today"] < 100:                   # the still pair's error is 0: both PSNRs are their epsilon's
            assert record["today"] == pytest.approx(psnr(interpolate_dis(frames[0], frames[2]), frames[1]), abs=1e-4)
        pair = cv.Pair(frames[0], frames[2], flow_pair(frames[0], frames[2]))
        # the warp-kernel variants' own code path, with the bilinear kernel, is the rule itself; another kernel
        # reaches the image warps (the moving pairs' flows fall between pixels)
        linear = pair.classical_with(pair.flows, cv2.INTER_LINEAR).frame
        np.testing.assert_allclose(linear, interpolate_dis(frames[0], frames[2]), atol=1e-5)
        if record["today"] < 100:
            assert np.abs(pair.classical_with(pair.flows, cv2.INTER_CUBIC).frame - linear).max() > 1e-4
        # at t = 0.5 the plain blend treats the two frames alike: swapped inputs (and flows), the same frame
        swapped = cv.Pair(frames[2], frames[0], FlowPair(pair.flows.backward, pair.flows.forward))
        np.testing.assert_allclose(cv.plain_blend(pair.classical), cv.plain_blend(swapped.classical), atol=1e-6)
    # a still pair is interpolated exactly by every rule; a moving one better than by the frame average
    assert records[0]["today"] > 60 and records[0]["plain"] > 60
    for name, record in zip(names[1:], records[1:]):
        frames = [read_rgb_uint8(tmp_path / "sequences" / name / f"im{k}.png") for k in (1, 2, 3)]
        average = (frames[0].astype(np.float32) + frames[2]) / 2 / 255
        assert record["plain"] > psnr(average, frames[1]) + 3


def test_classical_variants_cli_writes_the_bucket_table_and_names_a_missing_corpus(tmp_path, capsys):
    from tools import classical_variants as cv
    small_corpus(tmp_path / "corpus")
    out = tmp_path / "variants.json"
    variants = ["today", "median5", "ensemble6_plain", "meanflow6"]
    assert cv.main(["--corpus", str(tmp_path / "corpus"), "--count", "3", "--variants", *variants,
                    "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["overall"]["count"] == 3 and sum(row["count"] for row in report["buckets"]) == 3
    assert {*variants, "motion", "name"} <= set(report["records"][0])
    # the still pair: every DIS flow is zero there, so every rule, ensembles included, gives the frame back
    still = min(report["records"], key=lambda record: record["motion"])
    assert all(still[variant] > 60 for variant in variants)
    assert "median5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cv.main(["--corpus", str(tmp_path / "nothing")])
    assert "nothing has no tri_trainlist.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main(["--corpus", str(tmp_path / "corpus"), "--count", "4"])
    assert "--count must be between 1 and the 3" in capsys.readouterr().err
    first = (tmp_path / "corpus" / "tri_trainlist.txt").read_text().split()[0]
    (tmp_path / "corpus" / "sequences" / first / "im2.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit, match=f"classical_variants.py: error: cannot read image .*{first}/im2.png "
                                         r"\(not a readable image\)"):
        cv.main(["--corpus", str(tmp_path / "corpus"), "--count", "3"])
