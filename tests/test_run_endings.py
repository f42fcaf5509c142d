"""Runs that end well (issue 17): mixed frame sizes under torchrun, Ctrl-C, refused flags, plain progress lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

import train
from checkpoint import load_checkpoint
from conftest import moving_pattern, write_vimeo
from dataset import SameSizeBatchSampler, VimeoDataset, item_frame_sizes
from torch.utils.data import Subset

REPO = Path(__file__).resolve().parents[1]


def base_args(data, tmp_path, name, *extra):
    return ["--data_path", str(data), "--model_size", "tiny", "--batch_size", "2", "--crop_size", "32",
            "--num_workers", "0", "--ckpt_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "log"),
            "--exp_name", name, "--eval_interval", "1", "--log_every", "1", *extra]


def mixed_size_vimeo(root: Path) -> Path:
    """4 training and 4 test triplets; the test list is 64x96, 64x96, 96x64, 96x64 in that order, so two ranks
    (rank r takes items r, r + 2) each get one of each size: a batch of two would not stack."""
    write_vimeo(root, train=4, test=4, height=64, width=96)
    for index in (6, 7):
        folder = root / "sequences" / f"{index // 10 + 1:05d}" / f"{index % 10 + 1:04d}"
        for frame in range(3):
            cv2.imwrite(str(folder / f"im{frame + 1}.png"), moving_pattern(96, 64, 2.0 * frame, seed=index))
    return root


# ---------------------------------------------------------------------------------------------- mixed sizes
def test_same_size_batches_hold_one_size_and_every_index_once(tmp_path):
    root = mixed_size_vimeo(tmp_path / "vimeo")
    test_set = VimeoDataset(root, "test")
    sizes = item_frame_sizes(test_set)
    assert sizes == [(64, 96), (64, 96), (96, 64), (96, 64)]
    assert item_frame_sizes(Subset(test_set, [3, 0])) == [(96, 64), (64, 96)]
    batches = list(SameSizeBatchSampler([0, 2, 1, 3], sizes, batch_size=4))
    assert batches == [[0, 1], [2, 3]]
    assert list(SameSizeBatchSampler([0, 2], sizes, batch_size=2)) == [[0], [2]]      # rank 0's shard of two
    assert list(SameSizeBatchSampler(range(4), sizes, batch_size=1)) == [[0], [1], [2], [3]]


def test_torchrun_validation_on_a_mixed_size_set(tmp_path):
    """Two gloo ranks through train.py on a test list of two frame sizes: the first evaluation used to fail in the
    collate (stack expects each tensor to be equal size)."""
    root = mixed_size_vimeo(tmp_path / "vimeo")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train.py"), *base_args(root, tmp_path, "mixed", "--epochs", "1", "--steps_per_epoch", "1")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 x cpu" in result.stdout and "epoch 1: val PSNR" in result.stdout
    assert "on 4 samples" in result.stdout                        # every test sample once across both ranks
    assert "weights identical on all ranks: yes" in result.stdout
