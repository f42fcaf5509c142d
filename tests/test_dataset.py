"""Tests for dataset.py and tools/video_to_vimeo.py (CPU, tiny fixtures written to tmp_path)."""

from __future__ import annotations

import os
import sys
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # plain `pytest` puts tests/ on the path, not the repository root
    sys.path.insert(0, REPO_ROOT)

import dataset  # noqa: E402
import loaders  # noqa: E402
from dataset import (  # noqa: E402
    AugmentationParams,
    DatasetError,
    MixedDataset,
    VimeoDataset,
    X4KDataset,
    apply_augmentation,
    augmented_pair_flows,
    draw_augmentation,
    sample_indices,
)
from loaders import enable_frame_cache  # noqa: E402
from config import parse_mixed_ratio  # noqa: E402  (one implementation, shared with the CLI)
from tools.make_sample_data import is_complete  # noqa: E402
from tools.video_to_vimeo import ConversionError, video_to_vimeo  # noqa: E402
from tools.video_to_vimeo import main as video_to_vimeo_main  # noqa: E402

VIMEO_W, VIMEO_H = 64, 48
X4K_SIZE = 32
CROP = 16


# ------------------------------------------------------------------------------------------------
# Fixture builders
# ------------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_vimeo(root, train=("00001/0001", "00001/0002", "00002/0001", "00002/0002"),
                test=("00003/0001", "00003/0002"), seed=0):
    """Write a tiny Vimeo90K tree; returns {name: [im1, im2, im3] as BGR arrays}."""
    rng = np.random.default_rng(seed)
    frames = {}
    for name in (*train, *test):
        folder = os.path.join(root, "sequences", *name.split("/"))
        os.makedirs(folder)
        frames[name] = [_noise(rng, VIMEO_H, VIMEO_W) for _ in range(3)]
        for index, image in enumerate(frames[name], start=1):
            assert cv2.imwrite(os.path.join(folder, f"im{index}.png"), image)
    with open(os.path.join(root, "tri_trainlist.txt"), "w") as handle:
        handle.write("\n".join(train) + "\n\n")  # trailing blank line, as in the real list
    with open(os.path.join(root, "tri_testlist.txt"), "w") as handle:
        handle.write("\n".join(f"  {n}  " for n in test) + "\n")  # stray whitespace is tolerated
    return frames


X4K_LAYOUT = {"TypeA": {"clip_a0": 9, "clip_a1": 12}, "TypeB": {"clip_b0": 5}}


def write_x4k(root, layout=X4K_LAYOUT, seed=1):
    """Write train/<type>/<clip>/NNNN.png; returns {clip folder: [frame 0, frame 1, ...] BGR}."""
    rng = np.random.default_rng(seed)
    clips = {}
    for type_name, type_clips in layout.items():
        for clip_name, num_frames in type_clips.items():
            folder = os.path.join(root, "train", type_name, clip_name)
            os.makedirs(folder)
            clips[folder] = [_noise(rng, X4K_SIZE, X4K_SIZE) for _ in range(num_frames)]
            for number, image in enumerate(clips[folder]):
                assert cv2.imwrite(os.path.join(folder, f"{number:04d}.png"), image)
            with open(os.path.join(folder, "notes.txt"), "w") as handle:  # ignored: not a frame
                handle.write("x")
    return clips


def chw_rgb(bgr: np.ndarray) -> torch.Tensor:
    """Reference conversion of a BGR (H, W, 3) array into the datasets' RGB (3, H, W) tensor."""
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).copy())


def fixed_augmentation(**choices):
    """A draw_augmentation replacement returning fixed choices (full crop unless given)."""

    def draw(height, width, crop_size, generator=None):
        base = dict(top=0, left=0, crop_height=crop_size or height, crop_width=crop_size or width)
        base.update(choices)
        return AugmentationParams(**base)

    return draw


@pytest.fixture
def vimeo_root(tmp_path):
    root = tmp_path / "vimeo_triplet"
    frames = write_vimeo(str(root))
    return str(root), frames


@pytest.fixture
def x4k_root(tmp_path):
    root = tmp_path / "X4K1000FPS"
    clips = write_x4k(str(root))
    return str(root), clips


def assert_one_line_error(error_info, *fragments):
    message = str(error_info.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"


# ------------------------------------------------------------------------------------------------
# Vimeo90K
# ------------------------------------------------------------------------------------------------
def test_vimeo_train_items_have_expected_shapes_and_types(vimeo_root):
    root, _ = vimeo_root
    data = VimeoDataset(root, split="train", crop_size=CROP, augment=True)
    assert len(data) == 4
    torch.manual_seed(0)
    for index in range(len(data)):
        item = data[index]
        assert set(item) == {"img0", "gt", "img1", "t"}
        for key in ("img0", "gt", "img1"):
            assert item[key].dtype == torch.uint8
            assert item[key].shape == (3, CROP, CROP)
            assert item[key].is_contiguous()
        assert item["t"].dtype == torch.float32 and item["t"].shape == ()
        assert item["t"].item() == 0.5


def test_teacher_flow_items_carry_dis_flows_of_the_augmented_frames(vimeo_root, monkeypatch):
    """With teacher_flow set, an item also holds (4, h, w) float32 DIS flows computed from the frames as augmented
    (so a temporal swap, flip or rotation needs no vector bookkeeping): exactly teacher_flows of the item's own
    img0, gt, img1."""
    from measures.motion import teacher_flows
    root, _ = vimeo_root
    monkeypatch.setattr(dataset, "draw_augmentation", fixed_augmentation(
        top=3, left=5, flip_horizontal=True, flip_vertical=False, rot90=1, swap_time=True, channel_order=(2, 0, 1)))
    data = VimeoDataset(root, crop_size=CROP)
    assert "flow_teacher" not in data[0]
    data.teacher_flow = True
    item = data[0]
    assert item["flow_teacher"].dtype == torch.float32 and item["flow_teacher"].shape == (4, CROP, CROP)
    frames = [item[key].permute(1, 2, 0).numpy() for key in ("img0", "gt", "img1")]
    assert torch.equal(item["flow_teacher"], torch.from_numpy(teacher_flows(*frames)))


def test_flow_prior_items_carry_dis_flows_between_the_augmented_inputs(vimeo_root, monkeypatch):
    """With flow_prior set (--flow_prior dis), an item also holds the (4, h, w) float32 pair flows both ways,
    computed from the inputs as augmented (crop, flips, rotation, temporal swap: no vector bookkeeping): exactly
    prior_pair_flows of the item's own img0 and img1. Without the switch the item has no prior."""
    from measures.motion import prior_pair_flows
    root, _ = vimeo_root
    monkeypatch.setattr(dataset, "draw_augmentation", fixed_augmentation(
        top=3, left=5, flip_horizontal=True, flip_vertical=True, rot90=3, swap_time=True, channel_order=(1, 2, 0)))
    data = VimeoDataset(root, crop_size=CROP)
    assert "flow_prior" not in data[0]
    data.flow_prior = True
    item = data[0]
    assert item["flow_prior"].dtype == torch.float32 and item["flow_prior"].shape == (4, CROP, CROP)
    img0, img1 = (item[key].permute(1, 2, 0).numpy() for key in ("img0", "img1"))
    assert torch.equal(item["flow_prior"], torch.from_numpy(prior_pair_flows(img0, img1)))
    assert "flow_teacher" not in item                      # the two switches are independent
    data.teacher_flow = True
    both = data[0]
    assert torch.equal(both["flow_prior"], item["flow_prior"]) and both["flow_teacher"].shape == (4, CROP, CROP)


def _augmented_views_of(frame: np.ndarray, params: AugmentationParams) -> np.ndarray:
    """One (H, W, C) array through the sample's crop, flips and rotation (channels untouched)."""
    return dataset._augmented_views([frame, frame, frame], params)[0]


@pytest.mark.parametrize("rot90", [0, 1, 2, 3])
@pytest.mark.parametrize("flip_horizontal, flip_vertical", [(False, False), (True, False), (False, True), (True, True)])
def test_augmented_pair_flows_commute_with_warping(rot90, flip_horizontal, flip_vertical):
    """Warping the augmented frame 1 by the augmented F_0->1 is the augmented warp of frame 1 by F_0->1 (and the same
    for frame 0 and F_1->0), for every flip and quarter turn after a crop: the vectors turn with the pixels. Integer
    flows, so the warp reads whole pixels and the two sides are equal exactly where the source lies in the crop."""
    from measures.motion import backward_warp
    rng = np.random.default_rng(7)
    height, width, crop = 20, 28, 16
    frames = [rng.random((height, width, 3), dtype=np.float32) for _ in range(2)]
    pair = rng.integers(-3, 4, size=(4, height, width)).astype(np.float32)      # [F_0->1 (x, y), F_1->0 (x, y)]
    params = AugmentationParams(top=2, left=7, crop_height=crop, crop_width=crop, flip_horizontal=flip_horizontal,
                                flip_vertical=flip_vertical, rot90=rot90)
    flows = augmented_pair_flows(pair, params)
    assert flows.shape == (4, crop, crop) and flows.dtype == np.float32
    rows, cols = np.mgrid[0:crop, 0:crop]
    for source, planes in ((frames[1], slice(0, 2)), (frames[0], slice(2, 4))):
        # Crop first (so both sides warp the same pixels), then the crop's own flips and turns.
        cropped = AugmentationParams(top=2, left=7, crop_height=crop, crop_width=crop)
        crop_frame, crop_flow = _augmented_views_of(source, cropped), _augmented_views_of(
            np.moveaxis(pair[planes], 0, -1), cropped)
        expected = _augmented_views_of(backward_warp(np.ascontiguousarray(crop_frame), np.ascontiguousarray(crop_flow)),
                                       replace_crop(params, crop))
        flow = np.moveaxis(flows[planes], 0, -1)
        warped = backward_warp(np.ascontiguousarray(_augmented_views_of(crop_frame, replace_crop(params, crop))),
                               np.ascontiguousarray(flow))
        inside = ((cols + flow[..., 0] >= 0) & (cols + flow[..., 0] <= crop - 1)
                  & (rows + flow[..., 1] >= 0) & (rows + flow[..., 1] <= crop - 1))
        assert inside.mean() > 0.5
        np.testing.assert_allclose(warped[inside], expected[inside], atol=1e-6)


def replace_crop(params: AugmentationParams, crop: int) -> AugmentationParams:
    """The same flips and turns over a whole (already cropped) crop x crop frame."""
    return AugmentationParams(top=0, left=0, crop_height=crop, crop_width=crop, flip_horizontal=params.flip_horizontal,
                              flip_vertical=params.flip_vertical, rot90=params.rot90)


def test_augmented_pair_flows_swap_exchanges_the_directions_and_refuses_other_layouts():
    """The temporal swap makes old frame 1 the new frame 0: the new F_0->1 is the old F_1->0 and the reverse; the
    channel order moves no vector. A (2, H, W) field is refused naming the layout."""
    pair = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    params = AugmentationParams(top=1, left=2, crop_height=4, crop_width=4, swap_time=True, channel_order=(2, 0, 1))
    flows = augmented_pair_flows(pair, params)
    np.testing.assert_array_equal(flows, np.concatenate([pair[2:4], pair[0:2]])[:, 1:5, 2:6])
    with pytest.raises(ValueError, match=r"\(4, H, W\)"):
        augmented_pair_flows(pair[:2], params)


def test_context_prior_is_dis_on_the_window_and_its_margin_carried_through_the_augmentation():
    """A margin that covers the frame gives the whole pair's DIS flows augmented; no margin gives the crop's own DIS
    flows (no flips: the same pixels); a margin in between runs DIS on the window grown by it, clipped to the frame."""
    from measures.motion import prior_pair_flows
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.random((60, 80, 3), dtype=np.float32), (0, 0), 2.0)
    frame0, frame1 = base, np.ascontiguousarray(np.roll(base, 3, axis=1))
    turned = AugmentationParams(top=20, left=30, crop_height=16, crop_width=16, flip_vertical=True, rot90=1,
                                swap_time=True)
    whole = dataset.context_prior(frame0, frame1, turned, margin=100)
    np.testing.assert_array_equal(whole, augmented_pair_flows(prior_pair_flows(frame0, frame1), turned))
    plain = AugmentationParams(top=20, left=30, crop_height=16, crop_width=16)
    crop0, crop1 = (np.ascontiguousarray(f[20:36, 30:46]) for f in (frame0, frame1))
    np.testing.assert_array_equal(dataset.context_prior(frame0, frame1, plain, margin=0),
                                  prior_pair_flows(crop0, crop1))
    grown = prior_pair_flows(frame0[10:46, 20:56], frame1[10:46, 20:56])[:, 10:26, 10:26]
    np.testing.assert_array_equal(dataset.context_prior(frame0, frame1, plain, margin=10), grown)


def test_prior_from_context_items_carry_the_context_prior(vimeo_root, monkeypatch):
    """--prior_from context: the item's prior is context_prior of the stored pair under the sample's augmentation
    (not DIS on the augmented crop)."""
    from measures.motion import prior_pair_flows
    root, frames = vimeo_root
    choices = dict(top=3, left=5, flip_horizontal=True, rot90=1, swap_time=True, channel_order=(1, 2, 0))
    monkeypatch.setattr(dataset, "draw_augmentation", fixed_augmentation(**choices))
    data = VimeoDataset(root, crop_size=CROP)
    data.flow_prior = data.prior_from_context = True
    item = data[0]
    rgb = [np.ascontiguousarray(frame[..., ::-1]) for frame in frames["00001/0001"]]
    params = AugmentationParams(crop_height=CROP, crop_width=CROP, **choices)
    assert torch.equal(item["flow_prior"], torch.from_numpy(dataset.context_prior(rgb[0], rgb[2], params)))
    img0, img1 = (item[key].permute(1, 2, 0).numpy() for key in ("img0", "img1"))
    assert not torch.equal(item["flow_prior"], torch.from_numpy(prior_pair_flows(img0, img1)))   # not the crop's


def test_prior_from_needs_the_prior_and_reaches_the_training_parts_only(vimeo_root, capsys):
    """--prior_from context without --flow_prior dis is refused in one line naming both flags; with it the training
    set computes the context prior and the validation set (whole frames already) keeps its own."""
    from config import config_from_argv
    argv = ["--data_path", vimeo_root[0], "--phase", "2", "--crop_size", "32", "--model_size", "tiny"]
    with pytest.raises(SystemExit) as stop:
        config_from_argv(argv + ["--prior_from", "context"])
    assert stop.value.code == 2
    printed = capsys.readouterr().err
    assert "train.py: error: --prior_from context" in printed and "--flow_prior dis" in printed
    train_set, val_set, _ = loaders.build_datasets(config_from_argv(argv + ["--flow_prior", "dis", "--prior_from",
                                                                           "context"]))
    assert train_set.prior_from_context and train_set.flow_prior and not val_set.prior_from_context
    train_set, _, _ = loaders.build_datasets(config_from_argv(argv + ["--flow_prior", "dis"]))
    assert not train_set.prior_from_context


def test_flow_prior_reaches_every_training_and_validation_part(vimeo_root, x4k_root, monkeypatch):
    """loaders.build_datasets with --flow_prior dis: the Vimeo and X4K parts of a phase-3 mix and the validation set
    (full frames) all carry the prior of their own inputs, so every batch holds one; without the flag none does."""
    from config import config_from_argv
    from measures.motion import prior_pair_flows
    argv = ["--data_path", vimeo_root[0], "--x4k_path", x4k_root[0], "--phase", "3", "--crop_size", "32",
            "--model_size", "tiny"]                                    # a multiple of 32, as train.py asks
    train_set, val_set, x4k = loaders.build_datasets(config_from_argv(argv + ["--flow_prior", "dis"]))
    vimeo_index = next(i for i in range(len(train_set)) if train_set.locate(i)[0] == "vimeo")
    x4k_index = next(i for i in range(len(train_set)) if train_set.locate(i)[0] == "x4k")
    for item in (train_set[vimeo_index], train_set[x4k_index], val_set[0]):
        height, width = item["img0"].shape[-2:]
        assert item["flow_prior"].shape == (4, height, width)
        img0, img1 = (item[key].permute(1, 2, 0).numpy() for key in ("img0", "img1"))
        assert torch.equal(item["flow_prior"], torch.from_numpy(prior_pair_flows(img0, img1)))
    assert val_set[0]["flow_prior"].shape == (4, VIMEO_H, VIMEO_W)
    batch = next(iter(DataLoader(train_set, batch_size=len(train_set))))
    assert batch["flow_prior"].shape == (len(train_set), 4, 32, 32)
    train_set, val_set, _ = loaders.build_datasets(config_from_argv(argv))
    assert not any("flow_prior" in item for item in (train_set[vimeo_index], train_set[x4k_index], val_set[0]))


def test_teacher_flows_in_forked_workers_after_the_parent_used_opencv_threads(vimeo_root):
    """DIS runs in forked DataLoader workers. When the parent process had used OpenCV's thread pool before the fork
    (any earlier blur or resize, here one big blur), a worker start that called ``cv2.setNumThreads`` deadlocked in the
    worker's first DIS call. Run in a child process with a timeout, so a hang fails this test instead of the suite."""
    import subprocess
    root, _ = vimeo_root
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cv2, numpy as np, torch\n"
        "import loaders; from dataset import VimeoDataset\n"
        "cv2.GaussianBlur(np.random.rand(1500, 1500, 3).astype(np.float32), (31, 31), 5)\n"
        "data = VimeoDataset(sys.argv[2], crop_size=32); data.teacher_flow = True\n"
        "loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=1, worker_init_fn=loaders.start_worker,\n"
        "                                     multiprocessing_context='fork')\n"
        "print(tuple(next(iter(loader))['flow_teacher'].shape))\n")
    result = subprocess.run([sys.executable, "-c", script, REPO_ROOT, str(root)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(2, 4, 32, 32)")


def test_vimeo_test_split_is_full_frame_rgb_and_deterministic(vimeo_root):
    root, frames = vimeo_root
    data = VimeoDataset(root, split="test")  # default crop/augment must be ignored for test
    assert len(data) == 2
    for index, name in enumerate(["00003/0001", "00003/0002"]):
        first, second = data[index], data[index]
        assert first["name"] == name
        assert torch.equal(first["img0"], chw_rgb(frames[name][0]))
        assert torch.equal(first["gt"], chw_rgb(frames[name][1]))
        assert torch.equal(first["img1"], chw_rgb(frames[name][2]))
        assert first["img0"].shape == (3, VIMEO_H, VIMEO_W)
        for key in ("img0", "gt", "img1", "t"):
            assert torch.equal(first[key], second[key])


def test_vimeo_default_collate_batches(vimeo_root):
    root, _ = vimeo_root
    loader = DataLoader(VimeoDataset(root, crop_size=CROP), batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["img0"].shape == (4, 3, CROP, CROP) and batch["img0"].dtype == torch.uint8
    assert batch["t"].shape == (4,) and batch["t"].dtype == torch.float32
    test_batch = next(iter(DataLoader(VimeoDataset(root, split="test"), batch_size=2)))
    assert test_batch["name"] == ["00003/0001", "00003/0002"]


def test_vimeo_full_frames_without_crop_keep_their_shape(vimeo_root):
    root, _ = vimeo_root
    data = VimeoDataset(root, crop_size=None, augment=True)
    torch.manual_seed(3)
    shapes = {tuple(data[i % len(data)]["gt"].shape) for i in range(40)}
    assert shapes == {(3, VIMEO_H, VIMEO_W)}  # no 90/270 rotation of a non-square frame


@pytest.mark.parametrize(
    "choices,cv2_flip_code,cv2_rotation",
    [
        (dict(top=5, left=7, flip_horizontal=True, flip_vertical=False, rot90=1, swap_time=True,
              channel_order=(2, 0, 1)), 1, cv2.ROTATE_90_COUNTERCLOCKWISE),
        (dict(top=32, left=48, flip_horizontal=False, flip_vertical=True, rot90=3, swap_time=False,
              channel_order=(1, 2, 0)), 0, cv2.ROTATE_90_CLOCKWISE),
        (dict(top=0, left=1, flip_horizontal=True, flip_vertical=True, rot90=2, swap_time=False,
              channel_order=(0, 1, 2)), -1, cv2.ROTATE_180),
    ],
)
def test_vimeo_forced_choices_match_independent_reference(
    vimeo_root, monkeypatch, choices, cv2_flip_code, cv2_rotation
):
    root, frames = vimeo_root
    monkeypatch.setattr(dataset, "draw_augmentation", fixed_augmentation(**choices))
    item = VimeoDataset(root, crop_size=CROP)[0]
    top, left = choices["top"], choices["left"]

    def reference(bgr):
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[top : top + CROP, left : left + CROP]
        rgb = cv2.rotate(cv2.flip(rgb, cv2_flip_code), cv2_rotation)
        return torch.from_numpy(rgb[..., list(choices["channel_order"])].transpose(2, 0, 1).copy())

    im1, im2, im3 = frames["00001/0001"]
    first, last = (im3, im1) if choices["swap_time"] else (im1, im3)
    assert torch.equal(item["img0"], reference(first))
    assert torch.equal(item["gt"], reference(im2))
    assert torch.equal(item["img1"], reference(last))
    assert item["t"].item() == 0.5


def test_apply_augmentation_temporal_swap_maps_t_to_one_minus_t():
    rng = np.random.default_rng(5)
    frames = [_noise(rng, 8, 8) for _ in range(3)]
    base = AugmentationParams(top=0, left=0, crop_height=8, crop_width=8)
    same, t_same = apply_augmentation(frames, 0.25, base)
    swapped, t_swapped = apply_augmentation(frames, 0.25, AugmentationParams(0, 0, 8, 8, swap_time=True))
    assert t_same == 0.25 and t_swapped == 0.75
    for original, kept in zip(frames, same, strict=True):
        assert np.array_equal(original, kept)
    for original, reversed_frame in zip(frames[::-1], swapped, strict=True):
        assert np.array_equal(original, reversed_frame)


def test_draw_augmentation_is_reproducible_and_covers_all_choices():
    torch.manual_seed(123)
    first = [draw_augmentation(VIMEO_H, VIMEO_W, CROP) for _ in range(300)]
    torch.manual_seed(123)
    second = [draw_augmentation(VIMEO_H, VIMEO_W, CROP) for _ in range(300)]
    assert first == second
    assert all(0 <= p.top <= VIMEO_H - CROP and 0 <= p.left <= VIMEO_W - CROP for p in first)
    assert {p.rot90 for p in first} == {0, 1, 2, 3}
    assert {p.swap_time for p in first} == {False, True}
    assert {p.flip_horizontal for p in first} == {False, True}
    assert {p.flip_vertical for p in first} == {False, True}
    assert len({p.channel_order for p in first}) == 6
    assert all(sorted(p.channel_order) == [0, 1, 2] for p in first)
    assert {p.top for p in first} == set(range(VIMEO_H - CROP + 1))
    full_frame = [draw_augmentation(VIMEO_H, VIMEO_W, None) for _ in range(100)]
    assert {p.rot90 for p in full_frame} == {0, 2}


# ------------------------------------------------------------------------------------------------
# X4K1000FPS
# ------------------------------------------------------------------------------------------------
def test_x4k_walks_two_levels_and_finds_every_clip(x4k_root):
    root, clips = x4k_root
    data = X4KDataset(root, crop_size=CROP)
    assert len(data) == 3
    assert sorted(c.folder for c in data.clips) == sorted(clips)
    assert [len(c.frame_names) for c in data.clips] == [9, 12, 5]
    torch.manual_seed(0)
    item = data[1]
    assert item["gt"].shape == (3, CROP, CROP) and item["gt"].dtype == torch.uint8
    assert 0.0 < item["t"].item() < 1.0


def test_x4k_frames_sort_numerically(tmp_path):
    folder = tmp_path / "x4k" / "train" / "TypeA" / "clip"
    folder.mkdir(parents=True)
    for number in (10, 9, 8, 11):  # unpadded names: lexical order would put 10 and 11 first
        cv2.imwrite(str(folder / f"{number}.png"), np.full((X4K_SIZE, X4K_SIZE, 3), number, np.uint8))
    data = X4KDataset(str(tmp_path / "x4k"), crop_size=CROP)
    assert data.clips[0].frame_names == ("8.png", "9.png", "10.png", "11.png")


def test_x4k_loads_the_sampled_frames_with_matching_t(x4k_root, monkeypatch):
    root, clips = x4k_root
    data = X4KDataset(root, crop_size=None, augment=False, max_gap=8)
    drawn = []

    def recording_sample_indices(num_frames, min_gap, max_gap, generator=None):
        indices = sample_indices(num_frames, min_gap, max_gap, generator)
        drawn.append(indices)
        return indices

    monkeypatch.setattr(dataset, "sample_indices", recording_sample_indices)
    torch.manual_seed(7)
    for step in range(60):
        index = step % len(data)
        item = data[index]
        i0, it, i1 = drawn[-1]
        frames = clips[data.clips[index].folder]
        assert torch.equal(item["img0"], chw_rgb(frames[i0]))
        assert torch.equal(item["gt"], chw_rgb(frames[it]))
        assert torch.equal(item["img1"], chw_rgb(frames[i1]))
        assert item["t"].item() == pytest.approx((it - i0) / (i1 - i0))


def test_x4k_temporal_swap_reverses_frames_and_t(x4k_root, monkeypatch):
    root, clips = x4k_root
    monkeypatch.setattr(dataset, "sample_indices", lambda n, lo, hi, generator=None: (0, 1, 4))
    monkeypatch.setattr(dataset, "draw_augmentation", fixed_augmentation(swap_time=True))
    data = X4KDataset(root, crop_size=None)
    item = data[0]
    frames = clips[data.clips[0].folder]
    assert item["t"].item() == pytest.approx(0.75)  # 1 - 1/4
    assert torch.equal(item["img0"], chw_rgb(frames[4]))
    assert torch.equal(item["gt"], chw_rgb(frames[1]))
    assert torch.equal(item["img1"], chw_rgb(frames[0]))


@pytest.mark.parametrize("num_frames,min_gap,max_gap", [(3, 2, 32), (5, 2, 3), (65, 2, 32), (65, 4, 8), (9, 2, 100)])
def test_sample_indices_stay_inside_the_clip(num_frames, min_gap, max_gap):
    generator = torch.Generator().manual_seed(num_frames * 1000 + max_gap)
    largest = min(max_gap, num_frames - 1)
    gaps = Counter()
    for _ in range(2000):
        i0, it, i1 = sample_indices(num_frames, min_gap, max_gap, generator)
        assert 0 <= i0 < it < i1 <= num_frames - 1
        assert min_gap <= i1 - i0 <= largest
        t = (it - i0) / (i1 - i0)
        assert 0.0 < t < 1.0
        gaps[i1 - i0] += 1
    assert set(gaps) == set(range(min_gap, largest + 1))  # every allowed gap occurs


def test_sample_indices_rejects_impossible_requests():
    with pytest.raises(ValueError):
        sample_indices(2, 2, 4, None)
    with pytest.raises(ValueError):
        sample_indices(10, 1, 4, None)
    with pytest.raises(ValueError):
        sample_indices(3, 3, 8, None)


def test_x4k_max_gap_is_respected_and_settable(x4k_root):
    root, _ = x4k_root
    data = X4KDataset(root, crop_size=CROP, augment=False, max_gap=2)
    torch.manual_seed(11)
    assert {data[i % 3]["t"].item() for i in range(30)} == {0.5}  # gap 2 leaves one target: t = 1/2
    data.set_max_gap(8)
    assert data.max_gap == 8
    assert len({data[i % 3]["t"].item() for i in range(60)}) > 3
    data.max_gap = 4
    assert data.max_gap == 4
    with pytest.raises(ValueError):
        data.set_max_gap(1)
    with pytest.raises(ValueError):
        data.max_gap = 1
    with pytest.raises(ValueError):
        X4KDataset(root, max_gap=1)
    assert data.max_gap == 4


def test_x4k_dataloader_workers_see_new_max_gap_and_are_reproducible(x4k_root):
    root, _ = x4k_root
    data = X4KDataset(root, crop_size=CROP, augment=False, max_gap=2)

    def epoch_ts(seed):
        torch.manual_seed(seed)
        loader = DataLoader(data, batch_size=3, num_workers=2, shuffle=False)
        return torch.cat([batch["t"] for _ in range(4) for batch in loader]).tolist()

    assert set(epoch_ts(0)) == {0.5}
    data.set_max_gap(11)  # the trainer does this between epochs, in the main process
    first, second = epoch_ts(1), epoch_ts(1)
    assert first == second
    assert len(set(first)) > 1


def test_x4k_flat_layout_is_rejected(tmp_path):
    train = tmp_path / "x4k" / "train"
    train.mkdir(parents=True)
    for number in range(5):
        cv2.imwrite(str(train / f"{number:04d}.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError) as error:
        X4KDataset(str(tmp_path / "x4k"))
    assert_one_line_error(error, str(train), "train/<type>/<clip>/0000.png")


def test_x4k_one_level_layout_is_rejected(tmp_path):
    clip = tmp_path / "x4k" / "train" / "clip0"
    clip.mkdir(parents=True)
    for number in range(5):
        cv2.imwrite(str(clip / f"{number:04d}.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError) as error:
        X4KDataset(str(tmp_path / "x4k"))
    assert_one_line_error(error, str(clip))


def test_x4k_bad_inputs_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as error:
        X4KDataset(str(missing))
    assert_one_line_error(error, str(missing))

    no_train = tmp_path / "no_train"
    no_train.mkdir()
    with pytest.raises(DatasetError) as error:
        X4KDataset(str(no_train))
    assert_one_line_error(error, str(no_train / "train"))

    short_root = tmp_path / "short"
    write_x4k(str(short_root), layout={"TypeA": {"ok": 5, "too_short": 2}})
    with pytest.raises(DatasetError) as error:
        X4KDataset(str(short_root))
    assert_one_line_error(error, os.path.join(str(short_root), "train", "TypeA", "too_short"))

    gap_root = tmp_path / "gap"
    clips = write_x4k(str(gap_root), layout={"TypeA": {"holey": 6}})
    holey = next(iter(clips))
    os.remove(os.path.join(holey, "0003.png"))
    with pytest.raises(DatasetError) as error:
        X4KDataset(str(gap_root))
    assert_one_line_error(error, holey, "3")


# ------------------------------------------------------------------------------------------------
# Mixing
# ------------------------------------------------------------------------------------------------
def test_mixed_dataset_interleaves_exactly_two_to_one(tmp_path):
    names = tuple(f"00001/{i:04d}" for i in range(1, 7))
    write_vimeo(str(tmp_path / "vimeo"), train=names, test=("00002/0001",))
    write_x4k(str(tmp_path / "x4k"))
    vimeo = VimeoDataset(str(tmp_path / "vimeo"), crop_size=CROP)
    x4k = X4KDataset(str(tmp_path / "x4k"), crop_size=CROP)
    mixed = MixedDataset(vimeo, x4k, ratio=(2, 1))
    assert len(mixed) == 9  # ceil(6 * 3 / 2)
    sources = [mixed.locate(i) for i in range(len(mixed))]
    assert Counter(source for source, _ in sources) == {"vimeo": 6, "x4k": 3}
    assert [source for source, _ in sources[:3]] == ["vimeo", "vimeo", "x4k"]
    assert sorted(i for s, i in sources if s == "vimeo") == list(range(6))  # each Vimeo item once
    assert sorted(i for s, i in sources if s == "x4k") == [0, 1, 2]
    with pytest.raises(IndexError):
        mixed.locate(len(mixed))

    torch.manual_seed(0)
    batch = next(iter(DataLoader(mixed, batch_size=9, shuffle=True)))
    assert batch["img0"].shape == (9, 3, CROP, CROP)
    assert (batch["t"] == 0.5).sum() >= 6  # all Vimeo items (and X4K items that drew t = 1/2)

    assert len(MixedDataset(vimeo, x4k, ratio=(3, 2))) == 10  # ceil(6 * 5 / 3)
    mixed.set_max_gap(3)
    assert x4k.max_gap == 3


def test_mixed_dataset_requires_one_crop_size(vimeo_root, x4k_root):
    vimeo = VimeoDataset(vimeo_root[0], crop_size=CROP)
    x4k = X4KDataset(x4k_root[0], crop_size=CROP * 2)
    with pytest.raises(DatasetError) as error:
        MixedDataset(vimeo, x4k)
    assert_one_line_error(error, vimeo_root[0], x4k_root[0])
    with pytest.raises(DatasetError):
        MixedDataset(VimeoDataset(vimeo_root[0], split="test"), X4KDataset(x4k_root[0], crop_size=None))


@pytest.mark.parametrize("text,expected", [("2:1", (2, 1)), (" 3 : 2 ", (3, 2)), ("1:1", (1, 1))])
def test_parse_mixed_ratio_accepts_valid_ratios(text, expected):
    assert parse_mixed_ratio(text) == expected


@pytest.mark.parametrize("text", ["2-1", "0:1", "1:0", "a:b", "2:1:1", "", "2", "-1:2", "1.5:1"])
def test_parse_mixed_ratio_rejects_malformed_text(text):
    with pytest.raises(ValueError) as error:
        parse_mixed_ratio(text)
    assert_one_line_error(error, repr(text), "A:B")


# ------------------------------------------------------------------------------------------------
# Bad Vimeo inputs: DatasetError with a one-line message naming the path
# ------------------------------------------------------------------------------------------------
def test_vimeo_missing_root(tmp_path):
    missing = tmp_path / "vimeo_triplet"
    with pytest.raises(DatasetError) as error:
        VimeoDataset(str(missing))
    assert_one_line_error(error, str(missing), "--data_path")


def test_vimeo_missing_list_file(vimeo_root):
    root, _ = vimeo_root
    list_path = os.path.join(root, "tri_trainlist.txt")
    os.remove(list_path)
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root)
    assert_one_line_error(error, list_path)


def test_vimeo_empty_list_file(vimeo_root):
    root, _ = vimeo_root
    list_path = os.path.join(root, "tri_testlist.txt")
    with open(list_path, "w") as handle:
        handle.write("\n   \n")
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root, split="test")
    assert_one_line_error(error, list_path, "empty")


def test_vimeo_malformed_line(vimeo_root):
    root, _ = vimeo_root
    list_path = os.path.join(root, "tri_trainlist.txt")
    with open(list_path, "w") as handle:
        handle.write("00001/0001\n\nabc\n")
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root)
    assert_one_line_error(error, list_path, "line 3", "'abc'")


def test_vimeo_missing_sequence_folder(vimeo_root):
    root, _ = vimeo_root
    with open(os.path.join(root, "tri_trainlist.txt"), "a") as handle:
        handle.write("00009/0009\n")
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root)
    assert_one_line_error(error, os.path.join(root, "sequences", "00009", "0009"), "tri_trainlist.txt")


def test_vimeo_unreadable_image(vimeo_root):
    root, _ = vimeo_root
    bad = os.path.join(root, "sequences", "00001", "0002", "im2.png")
    with open(bad, "wb") as handle:
        handle.write(b"this is not a png" * 10)
    data = VimeoDataset(root, crop_size=CROP)
    data[0]  # other items still load
    with pytest.raises(DatasetError) as error:
        data[1]
    assert_one_line_error(error, bad)


def test_vimeo_missing_image_file(vimeo_root):
    root, _ = vimeo_root
    gone = os.path.join(root, "sequences", "00001", "0001", "im3.png")
    os.remove(gone)
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root, crop_size=CROP)[0]
    assert_one_line_error(error, gone)


def test_vimeo_crop_larger_than_image(vimeo_root):
    root, _ = vimeo_root
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root, crop_size=VIMEO_H + 1)[0]
    assert_one_line_error(error, os.path.join(root, "sequences", "00001", "0001", "im1.png"), "crop")


def test_vimeo_mismatched_frame_sizes(vimeo_root):
    root, _ = vimeo_root
    folder = os.path.join(root, "sequences", "00001", "0001")
    cv2.imwrite(os.path.join(folder, "im3.png"), np.zeros((VIMEO_H, VIMEO_W - 2, 3), np.uint8))
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root, crop_size=CROP)[0]
    assert_one_line_error(error, folder, "im3.png")


# ------------------------------------------------------------------------------------------------
# tools/video_to_vimeo.py
# ------------------------------------------------------------------------------------------------
def write_synthetic_video(path, num_frames=40, cut_at=20, frozen_from=16, size=(64, 48)):
    """Moving square; frames frozen_from..cut_at-1 repeat a frame; a cut to a bright scene at cut_at.

    Returns the per-frame scene label (0 dark, 1 bright) so tests can check that no triplet mixes
    scenes.
    """
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    assert writer.isOpened()
    scenes = []
    for index in range(num_frames):
        bright = index >= cut_at
        position = min(index, frozen_from - 1) if not bright else index - cut_at
        frame = np.full((height, width, 3), 200 if bright else 30, np.uint8)
        frame[:, :, 1] = np.linspace(0, 60, width, dtype=np.uint8)[None]  # some texture
        x = 2 + 2 * position
        frame[16:28, x : x + 10] = (0, 0, 255) if bright else (255, 255, 255)
        writer.write(frame)
        scenes.append(int(bright))
    writer.release()
    return scenes


def test_video_to_vimeo_builds_a_loadable_set_and_skips_cuts(tmp_path):
    video = tmp_path / "clip.avi"
    write_synthetic_video(video)
    out = tmp_path / "converted"
    counts = video_to_vimeo(video, out, size=(64, 48), stride=1, test_fraction=0.25)
    # 40 frames -> 38 candidate starts. Cut between frames 19|20: starts 18, 19. Frozen frames
    # 15..19 (diffs 15..18 are zero): starts 14..17 (start 18 is counted as a cut). Test block is
    # frames 30..39, so starts 28, 29 straddle the boundary.
    assert counts["frames_read"] == 40
    assert counts["candidates"] == 38
    assert counts["scene_cuts"] == 1
    assert counts["skipped_scene_cut"] == 2
    assert counts["skipped_static"] == 4
    assert counts["skipped_split_boundary"] == 2
    assert (counts["train"], counts["test"]) == (22, 8)

    train = VimeoDataset(str(out), split="train", crop_size=CROP)
    test = VimeoDataset(str(out), split="test")
    assert (len(train), len(test)) == (22, 8)
    assert test[0]["gt"].shape == (3, 48, 64)
    assert len(os.listdir(out / "sequences" / "00001")) == 30  # straddling triplets were deleted
    for data in (train, test):
        for index in range(len(data)):
            folder = data.sequence_folder(index)
            brightness = [cv2.imread(os.path.join(folder, f"im{k}.png")).mean() for k in (1, 2, 3)]
            assert max(brightness) - min(brightness) < 40, f"{folder} spans the scene cut"
    assert is_complete(str(out))
    os.remove(os.path.join(test.sequence_folder(0), "im2.png"))
    assert not is_complete(str(out))


def test_video_to_vimeo_keeps_a_small_object_moving_on_a_still_background(tmp_path):
    """The mean difference of such frames is tiny (the old rule, MAD < 0.2, dropped every triplet as static); the
    largest block difference (measures/shots.py) sees the object move."""
    video = tmp_path / "object.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 360))
    background = np.random.default_rng(0).integers(60, 180, (360, 640, 3), dtype=np.uint8)
    for index in range(12):
        frame = background.copy()
        frame[100:112, 40 + 6 * index:52 + 6 * index] = (255, 255, 255)
        writer.write(frame)
    writer.release()
    counts = video_to_vimeo(video, tmp_path / "out", size=(160, 90), test_fraction=0.25)
    assert counts["skipped_static"] == counts["skipped_scene_cut"] == 0
    assert counts["train"] + counts["test"] + counts["skipped_split_boundary"] == 10


def test_video_to_vimeo_can_take_the_test_block_from_the_start(tmp_path):
    video = tmp_path / "clip.avi"
    write_synthetic_video(video)
    out = tmp_path / "converted"
    counts = video_to_vimeo(video, out, size=(64, 48), stride=1, test_fraction=0.25, test_position="start")
    # Test block = frames 0..9: starts 0..7 are test, 8 and 9 straddle frame 10; the cut and frozen frames
    # (starts 14..19) stay as before, so the training block holds starts 10..13 and 20..37.
    assert counts["boundary_frame"] == 10
    assert (counts["test"], counts["skipped_split_boundary"], counts["train"]) == (8, 2, 22)
    test_names = (out / "tri_testlist.txt").read_text().split()
    train_names = (out / "tri_trainlist.txt").read_text().split()
    assert max(test_names) < min(train_names)      # names follow the source order: test frames come first
    with pytest.raises(ValueError, match="test_position"):
        video_to_vimeo(video, tmp_path / "other", test_position="middle")


def test_video_to_vimeo_refuses_existing_output_and_overwrites_on_request(tmp_path):
    video = tmp_path / "clip.avi"
    write_synthetic_video(video)
    out = tmp_path / "converted"
    video_to_vimeo(video, out, size=(32, 24), test_fraction=0.25)
    with pytest.raises(ConversionError) as error:
        video_to_vimeo(video, out, size=(32, 24), test_fraction=0.25)
    assert_one_line_error(error, str(out))
    counts = video_to_vimeo(video, out, size=(32, 24), stride=2, test_fraction=0.25, overwrite=True)
    assert counts["train"] == len(VimeoDataset(str(out), crop_size=None))


def test_video_to_vimeo_errors_are_one_line_and_name_the_video(tmp_path, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(ConversionError) as error:
        video_to_vimeo(garbage, tmp_path / "out1")
    assert_one_line_error(error, str(garbage))
    assert not (tmp_path / "out1").exists()

    missing = tmp_path / "missing.avi"
    assert video_to_vimeo_main([str(missing), str(tmp_path / "out2")]) == 2
    assert str(missing) in capsys.readouterr().err

    frozen = tmp_path / "frozen.avi"
    write_synthetic_video(frozen, num_frames=12, cut_at=99, frozen_from=1)
    with pytest.raises(ConversionError) as error:
        video_to_vimeo(frozen, tmp_path / "out3")
    assert_one_line_error(error, str(frozen), "static")


# ------------------------------------------------------------------------------------------------
# Stop before training: crop, --data_path
# ------------------------------------------------------------------------------------------------
def test_crop_larger_than_frames_is_refused_when_the_set_is_built(vimeo_root, x4k_root):
    root, _ = vimeo_root
    with pytest.raises(DatasetError) as error:
        VimeoDataset(root, crop_size=VIMEO_H + 1)  # no item is loaded: the header of the first frame tells
    assert_one_line_error(error, os.path.join(root, "sequences", "00001", "0001", "im1.png"),
                          f"crop size {VIMEO_H + 1}", f"{VIMEO_W}x{VIMEO_H}")
    VimeoDataset(root, crop_size=VIMEO_H)  # the largest crop that fits
    VimeoDataset(root, split="test", crop_size=VIMEO_H + 1)  # the test split never crops

    x4k, clips = x4k_root
    with pytest.raises(DatasetError) as error:
        X4KDataset(x4k, crop_size=X4K_SIZE + 1)
    assert_one_line_error(error, os.path.join(sorted(clips)[0], "0000.png"), f"{X4K_SIZE}x{X4K_SIZE}")


def test_every_frame_header_is_checked_against_the_crop_not_only_the_first(vimeo_root, x4k_root, tmp_path):
    """One smaller triplet late in the list (and one smaller X4K clip) is refused at construction, naming the first
    offending file and how many there are, not found at the step that loads it."""
    import shutil
    root, _ = vimeo_root
    copy = tmp_path / "vimeo"
    shutil.copytree(root, copy)
    small = copy / "sequences" / "00002" / "0002"
    for name in ("im1.png", "im2.png", "im3.png"):
        cv2.imwrite(str(small / name), np.zeros((VIMEO_H - 8, VIMEO_W, 3), np.uint8))
    with pytest.raises(DatasetError) as error:
        VimeoDataset(copy, crop_size=VIMEO_H)
    assert_one_line_error(error, str(small / "im1.png"), f"{VIMEO_W}x{VIMEO_H - 8}", "3 of 12 frames",
                          f"--crop_size at most {VIMEO_H - 8}")
    VimeoDataset(copy, crop_size=VIMEO_H - 8)

    x4k, clips = x4k_root
    x4k_copy = tmp_path / "x4k"
    shutil.copytree(x4k, x4k_copy)
    last_clip = x4k_copy / os.path.relpath(sorted(clips)[-1], x4k)
    last_frame = sorted(last_clip.glob("*.png"))[-1]
    cv2.imwrite(str(last_frame), np.zeros((X4K_SIZE - 4, X4K_SIZE, 3), np.uint8))
    with pytest.raises(DatasetError) as error:
        X4KDataset(x4k_copy, crop_size=X4K_SIZE)
    assert_one_line_error(error, str(last_frame), f"{X4K_SIZE}x{X4K_SIZE - 4}")


def test_train_refuses_a_crop_larger_than_the_frames_before_the_first_step(vimeo_root, tmp_path, capsys):
    import train

    root, _ = vimeo_root
    status = train.main(["--data_path", root, "--model_size", "tiny", "--crop_size", "64", "--batch_size", "2",
                         "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir",
                         str(tmp_path / "log"), "--exp_name", "too_big"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "crop size 64" in err and "im1.png" in err, err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "log").exists()  # stopped before training


def test_data_path_that_is_a_file_points_to_video_to_vimeo(tmp_path, capsys):
    video = tmp_path / "holiday.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(DatasetError) as error:
        VimeoDataset(str(video))
    assert_one_line_error(error, str(video), "tools/video_to_vimeo.py", "--data_path")
    with pytest.raises(DatasetError) as error:
        VimeoDataset(str(tmp_path / "missing"))
    assert_one_line_error(error, "tools/video_to_vimeo.py")
    (tmp_path / "frames").mkdir()  # a folder, but not the triplet layout
    with pytest.raises(DatasetError) as error:
        VimeoDataset(str(tmp_path / "frames"))
    assert_one_line_error(error, "sequences", "tools/video_to_vimeo.py")

    import train

    assert train.main(["--data_path", str(video), "--model_size", "tiny", "--num_workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tools/video_to_vimeo.py" in err and str(video) in err, err


def test_image_size_reads_png_headers_and_decodes_other_formats(tmp_path):
    png, jpg = str(tmp_path / "a.png"), str(tmp_path / "b.jpg")
    cv2.imwrite(png, np.zeros((7, 11, 3), np.uint8))
    cv2.imwrite(jpg, np.zeros((5, 9, 3), np.uint8))
    assert dataset.image_size(png) == (7, 11)
    assert dataset.image_size(jpg) == (5, 9)
    with pytest.raises(DatasetError) as error:
        dataset.image_size(str(tmp_path / "gone.png"))
    assert_one_line_error(error, "gone.png", "missing")


# ------------------------------------------------------------------------------------------------
# The uint8 sample path, the decoded-frame cache, persistent workers
# ------------------------------------------------------------------------------------------------
def pre_change_sample(paths, t, crop_size, augment):
    """The sample path as it was before the frame cache and the fused copy (commit 9dbe232), kept verbatim as
    the reference: cv2 decode, BGR->RGB view, draw, crop/flip/rotate, fancy-index channels, transpose."""
    frames = [cv2.imread(p, cv2.IMREAD_COLOR)[..., ::-1] for p in paths]
    height, width = frames[0].shape[:2]
    if augment:
        params = draw_augmentation(height, width, crop_size)
    else:
        params = dataset.center_crop_params(height, width, crop_size)
    bottom, right = params.top + params.crop_height, params.left + params.crop_width
    out = []
    for frame in frames:
        view = frame[params.top:bottom, params.left:right]
        if params.flip_horizontal:
            view = view[:, ::-1]
        if params.flip_vertical:
            view = view[::-1]
        if params.rot90:
            view = np.rot90(view, k=params.rot90, axes=(0, 1))
        out.append(np.ascontiguousarray(view[..., list(params.channel_order)]))
    if params.swap_time:
        out.reverse()
        t = 1.0 - t
    img0, gt, img1 = (torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))) for f in out)
    return {"img0": img0, "gt": gt, "img1": img1, "t": torch.tensor(t, dtype=torch.float32)}


def assert_same_samples(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert set(a) == set(b)
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key]


@pytest.mark.parametrize("cached", [False, True])
def test_uint8_samples_match_the_pre_change_loader(vimeo_root, x4k_root, cached):
    root, _ = vimeo_root
    vimeo = VimeoDataset(root, crop_size=CROP)
    if cached:
        enable_frame_cache(vimeo, budget_bytes=2**30)
        assert vimeo.frame_cache is not None and len(vimeo.frame_cache) == 12
    order = [0, 3, 1, 1, 2, 0, 3, 2] * 8  # 64 draws: every rotation, flip, swap and channel order occurs
    torch.manual_seed(21)
    new = [vimeo[i] for i in order]
    torch.manual_seed(21)
    reference = [pre_change_sample([vimeo.frame_path(i, k) for k in range(3)], 0.5, CROP, True) for i in order]
    assert_same_samples(new, reference)

    full = VimeoDataset(root, crop_size=None, augment=True)  # non-square: 0/180 degrees only
    torch.manual_seed(4)
    new = [full[i % 4] for i in range(16)]
    torch.manual_seed(4)
    reference = [pre_change_sample([full.frame_path(i % 4, k) for k in range(3)], 0.5, None, True) for i in range(16)]
    assert_same_samples(new, reference)

    x4k_dir, _ = x4k_root
    x4k = X4KDataset(x4k_dir, crop_size=CROP, max_gap=6)
    if cached:
        enable_frame_cache(x4k, budget_bytes=2**30)
        assert len(x4k.frame_cache) == 26
    torch.manual_seed(5)
    new = [x4k[i % 3] for i in range(30)]
    torch.manual_seed(5)
    reference = []
    for i in range(30):
        clip = x4k.clips[i % 3]
        i0, it, i1 = sample_indices(len(clip.frame_names), 2, 6)
        paths = [os.path.join(clip.folder, clip.frame_names[k]) for k in (i0, it, i1)]
        reference.append(pre_change_sample(paths, (it - i0) / (i1 - i0), CROP, True))
    assert_same_samples(new, reference)


def test_augmented_sample_equals_apply_augmentation_then_transpose():
    rng = np.random.default_rng(9)
    frames = [_noise(rng, 20, 30)[..., ::-1] for _ in range(3)]  # a BGR->RGB view, as the datasets pass
    torch.manual_seed(0)
    for crop in (None, 12, 20):
        for _ in range(40):
            params = draw_augmentation(20, 30, crop)
            fast = dataset.augmented_sample(frames, 0.25, params)
            slow, t = apply_augmentation(frames, 0.25, params)
            for key, frame in zip(("img0", "gt", "img1"), slow, strict=True):
                assert torch.equal(fast[key], torch.from_numpy(frame.transpose(2, 0, 1).copy()))
                assert fast[key].is_contiguous()
            assert fast["t"].item() == t


def test_frame_cache_holds_each_file_once_within_budget_and_is_read_only(tmp_path):
    names = ("00001/0001", "00001/0002", "00001/0001", "00001/0003", "00001/0001")  # a list with repeats
    write_vimeo(str(tmp_path), train=("00001/0001", "00001/0002", "00001/0003"), test=("00002/0001",))
    (tmp_path / "tri_trainlist.txt").write_text("\n".join(names) + "\n")
    data = VimeoDataset(str(tmp_path), crop_size=CROP)
    frame_bytes = VIMEO_H * VIMEO_W * 3
    cache = enable_frame_cache(data, budget_bytes=9 * frame_bytes)
    assert (len(cache), cache.candidates, cache.nbytes) == (9, 9, 9 * frame_bytes)
    partial = enable_frame_cache(data, budget_bytes=4 * frame_bytes + 5)
    assert (len(partial), partial.candidates) == (4, 9)  # the first four distinct frames, in list order
    assert partial.get(data.frame_path(0, 0)) is not None and partial.get(data.frame_path(3, 0)) is None
    assert partial.get(data.frame_path(1, 1)) is None
    cached = partial.get(data.frame_path(1, 0))
    assert np.array_equal(cached, cv2.imread(data.frame_path(1, 0)))
    with pytest.raises(ValueError):
        cached[0, 0, 0] = 1  # shared with forked workers: nobody may write to it
    torch.manual_seed(2)
    with_partial = [data[i] for i in range(5) for _ in range(3)]
    data.frame_cache = None
    torch.manual_seed(2)
    assert_same_samples(with_partial, [data[i] for i in range(5) for _ in range(3)])
    assert enable_frame_cache(data, budget_bytes=0).nbytes == 0 and data.frame_cache is None


def test_frame_cache_fill_names_an_unreadable_frame(vimeo_root):
    root, _ = vimeo_root
    bad = os.path.join(root, "sequences", "00002", "0001", "im2.png")
    with open(bad, "rb") as handle:
        header = handle.read(33)  # a valid PNG header, then garbage
    with open(bad, "wb") as handle:
        handle.write(header + b"garbage" * 20)
    data = VimeoDataset(root, crop_size=CROP)
    with pytest.raises(DatasetError) as error:
        enable_frame_cache(data, budget_bytes=2**30, threads=2)
    assert_one_line_error(error, bad)


def make_training_loader(data, workers, seed=0, persistent=True, rank=0):
    """The training loader as loaders.make_loaders builds it, over a plain dataset."""
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = DataLoader(loaders.EpochSeededDataset(data), batch_size=3,
                        sampler=loaders.EpochSeededSampler(sampler, seed, rank), num_workers=workers,
                        persistent_workers=persistent, drop_last=True)
    return loader, sampler


def epoch_batches(loader, sampler, epoch):
    sampler.set_epoch(epoch)
    return [batch for batch in loader]


def assert_same_batches(first, second):
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        for key in ("img0", "gt", "img1", "t"):
            assert torch.equal(a[key], b[key]), key


def test_persistent_workers_see_the_curriculum_gap_and_restart_their_streams_each_epoch(x4k_root):
    root, _ = x4k_root
    x4k = X4KDataset(root, crop_size=CROP, max_gap=2)
    mixed_like = torch.utils.data.ConcatDataset([x4k] * 4)  # 12 items: four batches of three
    loader, sampler = make_training_loader(mixed_like, workers=2)
    epoch0 = epoch_batches(loader, sampler, 0)
    assert torch.cat([b["t"] for b in epoch0]).unique().tolist() == [0.5]  # gap 2: the only target is t = 1/2
    workers = loader._iterator._workers
    x4k.set_max_gap(11)  # between epochs, in the main process, as train.py does
    epoch1 = epoch_batches(loader, sampler, 1)
    assert loader._iterator._workers is workers  # the same worker processes ...
    assert len(set(torch.cat([b["t"] for b in epoch1]).tolist())) > 2  # ... drew with the new gap

    # A fresh loader started at epoch 1 (a run resumed there) and a non-persistent one draw the same batches.
    fresh, fresh_sampler = make_training_loader(mixed_like, workers=2, persistent=False)
    assert_same_batches(epoch_batches(fresh, fresh_sampler, 1), epoch1)
    # An epoch abandoned part-way (steps_per_epoch) leaves queued samples behind; the next epoch is unaffected.
    sampler.set_epoch(2)
    next(iter(loader))
    epoch3 = epoch_batches(loader, sampler, 3)
    assert_same_batches(epoch_batches(fresh, fresh_sampler, 3), epoch3)
    assert not all(torch.equal(a["img0"], b["img0"]) for a, b in zip(epoch1, epoch3))  # epochs differ


def test_cached_training_loader_gives_the_same_batches_as_the_uncached_one(tmp_path):
    from config import config_from_argv

    names = tuple(f"00001/{i:04d}" for i in range(1, 9))
    write_vimeo(str(tmp_path / "vimeo"), train=names, test=("00002/0001",))
    cfg = config_from_argv(["--data_path", str(tmp_path / "vimeo"), "--model_size", "tiny", "--crop_size", "32",
                            "--batch_size", "2", "--num_workers", "2"])
    runs = []
    for cache_bytes in (0, 2**30):
        train_set, val_set, _ = loaders.build_datasets(cfg)
        loader, sampler, _ = loaders.make_loaders(cfg, train_set, val_set, torch.device("cpu"), cache_bytes=cache_bytes)
        assert (train_set.frame_cache is not None) == (cache_bytes > 0)
        assert loader.persistent_workers and loader.num_workers == 2
        runs.append([batch for epoch in range(2) for batch in epoch_batches(loader, sampler, epoch)])
    assert_same_batches(runs[0], runs[1])


def test_cache_stays_on_when_the_default_start_method_is_not_fork(tmp_path, monkeypatch):
    """Python 3.14 starts workers with "forkserver" by default on Linux: the training loader then forks its workers
    itself, so they still share the one cached copy instead of decoding every sample."""
    from config import config_from_argv

    names = tuple(f"00001/{i:04d}" for i in range(1, 5))
    write_vimeo(str(tmp_path / "vimeo"), train=names, test=("00002/0001",))
    cfg = config_from_argv(["--data_path", str(tmp_path / "vimeo"), "--model_size", "tiny", "--crop_size", "32",
                            "--batch_size", "2", "--num_workers", "2"])
    monkeypatch.setattr(torch.multiprocessing, "get_start_method", lambda allow_none=False: "forkserver")
    train_set, val_set, _ = loaders.build_datasets(cfg)
    loader, sampler, _ = loaders.make_loaders(cfg, train_set, val_set, torch.device("cpu"), cache_bytes=2**30)
    assert train_set.frame_cache is not None and len(train_set.frame_cache) == 12
    assert loader.multiprocessing_context.get_start_method() == "fork"
    assert len(list(epoch_batches(loader, sampler, 0))) == 2


def test_resume_with_persistent_workers_and_the_cache_is_bit_identical(vimeo_root, tmp_path):
    import train
    from checkpoint import load_checkpoint

    def run(name, *extra):
        return train.main(["--data_path", vimeo_root[0], "--model_size", "tiny", "--batch_size", "2", "--crop_size",
                           "32", "--num_workers", "2", "--epochs", "3", "--steps_per_epoch", "1", "--eval_interval",
                           "3", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "log"),
                           "--exp_name", name, *extra])

    # One step of the two each epoch holds: every epoch is abandoned with samples still queued in the workers.
    assert run("straight") == 0
    assert run("broken", "--stop_after_epoch", "1") == 0
    assert run("broken", "--resume", "broken_last") == 0
    straight = load_checkpoint(tmp_path / "ckpt" / "straight_last.pt")
    resumed = load_checkpoint(tmp_path / "ckpt" / "broken_last.pt")
    assert straight["step"] == resumed["step"] == 3
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_epoch_seeded_dataset_refuses_the_main_process(vimeo_root):
    data = loaders.EpochSeededDataset(VimeoDataset(vimeo_root[0], crop_size=CROP))
    with pytest.raises(RuntimeError, match="num_workers=0"):
        data[(123, 0)]


# ------------------------------------------------------------------------------------------------
# Worker count
# ------------------------------------------------------------------------------------------------
def test_default_num_workers_is_capped_at_the_cores_per_rank(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert loaders.default_num_workers(8) == (6, 6)
    assert loaders.default_num_workers(8, local_world_size=4) == (1, 1)
    assert loaders.default_num_workers(8, local_world_size=8) == (1, 1)  # never zero: one per rank at least
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert loaders.default_num_workers(8, local_world_size=2) == (8, 32)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 5 workers on 2 cores, as asked
def test_train_loader_caps_only_the_default_worker_count_and_says_so_once(vimeo_root, monkeypatch, capsys):
    from config import config_from_argv

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    base = ["--data_path", vimeo_root[0], "--model_size", "tiny", "--crop_size", "32", "--batch_size", "2"]
    cfg = config_from_argv(base)
    assert cfg.data.num_workers is None  # "default", resolved per machine
    loader, _, val_loader = loaders.make_loaders(cfg, *loaders.build_datasets(cfg)[:2], torch.device("cpu"),
                                                 cache_bytes=0)
    assert loader.num_workers == 2 and val_loader.num_workers == 2
    out = capsys.readouterr().out
    assert out.count("DataLoader:") == 1 and "2 workers" in out and "2 CPU cores" in out, out

    cfg = config_from_argv(base + ["--num_workers", "5"])  # given explicitly: respected as given
    loader, _, _ = loaders.make_loaders(cfg, *loaders.build_datasets(cfg)[:2], torch.device("cpu"), cache_bytes=0)
    assert loader.num_workers == 5 and "DataLoader:" not in capsys.readouterr().out

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine share its cores
    cfg = config_from_argv(base)
    loader, _, _ = loaders.make_loaders(cfg, *loaders.build_datasets(cfg)[:2], torch.device("cpu"), cache_bytes=0)
    assert loader.num_workers == 1 and "1 workers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        config_from_argv(base + ["--num_workers", "-1"])


def test_video_to_vimeo_keeps_the_aspect_ratio_by_default(tmp_path, capsys):
    """A 640x272 (2.35:1) clip at --size 448x256 used to be squeezed to 1.75:1: a square became 48x64. Now it is
    resized to cover (602x256) and centre-cropped; --fit stretch keeps the old squeeze, and says so."""
    video = tmp_path / "wide.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 272))
    for index in range(12):
        frame = np.full((272, 640, 3), 40, np.uint8)
        frame[102:170, 260 + 4 * index:328 + 4 * index] = 255              # a 68x68 square moving right
        writer.write(frame)
    writer.release()

    def square_shape(out):
        image = cv2.imread(str(out / "sequences" / "00001" / "0001" / "im1.png"))
        rows, cols = np.nonzero(image[..., 0] > 150)
        return image.shape[:2], (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)

    assert video_to_vimeo_main([str(video), str(tmp_path / "crop"), "--size", "448x256", "--test_fraction",
                                "0.25"]) == 0
    assert "resized to 602x256 and centre-cropped to 448x256: aspect ratio kept" in capsys.readouterr().out
    (height, width), (square_h, square_w) = square_shape(tmp_path / "crop")
    assert (height, width) == (256, 448) and abs(square_h - 64) <= 2 and abs(square_w - square_h) <= 2
    assert video_to_vimeo_main([str(video), str(tmp_path / "stretch"), "--size", "448x256", "--test_fraction",
                                "0.25", "--fit", "stretch"]) == 0
    assert "aspect ratio NOT kept (--fit stretch)" in capsys.readouterr().out
    _, (square_h, square_w) = square_shape(tmp_path / "stretch")
    assert abs(square_w - 48) <= 2 and abs(square_h - 64) <= 2


def test_video_to_vimeo_takes_the_shot_flags_as_interpolate_does(tmp_path, capsys):
    """--cut_ratio and --duplicate_block come from measures.shots.add_shot_arguments: a cut ratio of 1 or below
    (every pair a cut) is refused before any video is read, as in interpolate.py."""
    with pytest.raises(SystemExit) as exit_info:
        video_to_vimeo_main([str(tmp_path / "any.mp4"), str(tmp_path / "out"), "--cut_ratio", "1"])
    assert exit_info.value.code == 2
    assert "argument --cut_ratio: must be a number above 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
