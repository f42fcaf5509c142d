"""Shared fixtures: a tiny Vimeo90K-layout data set with real (smooth, moving) content, built once per session."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest


def moving_pattern(height: int, width: int, shift: float, seed: int) -> np.ndarray:
    """A smooth random texture translated by ``shift`` pixels: frames of a pan, uint8 BGR (H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 4, width // 8 + 4, 3)).astype(np.float32)
    big = cv2.resize(coarse, (width + 32, height + 32), interpolation=cv2.INTER_CUBIC)
    x0 = int(round(8 + shift))
    return (np.clip(big[8:8 + height, x0:x0 + width], 0, 1) * 255).astype(np.uint8)


def write_vimeo(root: Path, train: int, test: int, height: int = 64, width: int = 96) -> Path:
    names = {"tri_trainlist.txt": [], "tri_testlist.txt": []}
    for index in range(train + test):
        name = f"{index // 10 + 1:05d}/{index % 10 + 1:04d}"
        folder = root / "sequences" / name
        folder.mkdir(parents=True, exist_ok=True)
        for frame in range(3):
            cv2.imwrite(str(folder / f"im{frame + 1}.png"), moving_pattern(height, width, 2.0 * frame, seed=index))
        names["tri_trainlist.txt" if index < train else "tri_testlist.txt"].append(name)
    for list_name, entries in names.items():
        (root / list_name).write_text("\n".join(entries) + "\n")
    return root


@pytest.fixture(scope="session")
def vimeo_root(tmp_path_factory) -> Path:
    """8 training and 4 test triplets of 64x96 frames panning by 2 px per frame."""
    return write_vimeo(tmp_path_factory.mktemp("vimeo_triplet"), train=8, test=4)


@pytest.fixture
def failing_graph_capture(monkeypatch):
    """Every CUDA graph capture fails as it would on a GPU with an op that cannot be captured, while graphs look
    possible until then (so the CPU runs the path a failed GPU capture takes)."""
    import model.inference

    class FailingCapture(model.inference.CudaGraphCapture):
        def unavailable_reason(self, device):
            return None

        def record(self, call, warmup_calls):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(model.inference, "CudaGraphCapture", FailingCapture)


def counting_dis(monkeypatch) -> list[str]:
    """Patches the footage pipeline's prior_pair_flows to record the name of the thread of each call (the real DIS
    still runs); returns that list."""
    from footage import pipeline
    from measures.motion import prior_pair_flows

    calls = []

    def count(frame0, frame1):
        calls.append(threading.current_thread().name)
        return prior_pair_flows(frame0, frame1)

    monkeypatch.setattr(pipeline, "prior_pair_flows", count)
    return calls
