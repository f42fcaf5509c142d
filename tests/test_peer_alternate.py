"""benchmark/bench_peer_alternate.py on the CPU with a stand-in for the peer's clone: the peer's `model` package is
imported before ours although both have that name, both calls are timed in every round, and a folder that is not a
clone of the peer is refused by name. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The peer's API as the script calls it: IFNet_m()(x with both frames on channels, scales, timestep) returning
# (flows, mask, merged), merged[2] the finest prediction.
STAND_IN = '''
import torch


class IFNet_m(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, scale_list, timestep=0.5):
        blend = self.scale * (x[:, :3] * (1 - timestep) + x[:, 3:6] * timestep)
        return [None] * 3, None, [blend, blend, blend]
'''


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The script with our repository first on PYTHONPATH, where our `model` would shadow the peer's."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(REPO / "benchmark" / "bench_peer_alternate.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def test_alternated_rows_for_ours_and_a_stand_in_peer(tmp_path):
    peer = tmp_path / "ECCV2022-RIFE"
    (peer / "model").mkdir(parents=True)              # a namespace folder, as in the peer's repository
    (peer / "model" / "IFNet_m.py").write_text(STAND_IN)
    out = tmp_path / "rows.json"
    done = run_script("--peer_dir", str(peer), "--sizes", "64x96", "--rounds", "2", "--reps", "2", "--mode", "eager",
                      "--device", "cpu", "--json", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["card"] == "cpu" and report["mode"] == "eager"
    rows = report["rows"]["64x96"]
    assert len(rows) == 2
    for row in rows:
        assert row["ours"] > 0 and row["rife_m"] > 0
        assert abs(row["ratio"] - row["ours"] / row["rife_m"]) <= 1e-3 * max(1.0, row["ratio"])
    assert "64x96 round 1: ours" in done.stdout and "peer IFNet_m eager" in done.stdout


def test_a_folder_without_the_peer_model_is_refused_by_name(tmp_path):
    done = run_script("--peer_dir", str(tmp_path), "--device", "cpu", cwd=tmp_path)
    assert done.returncode != 0
    assert str(tmp_path) in done.stderr and "model/IFNet_m.py" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_size_that_is_neither_named_nor_hxw_is_refused(tmp_path):
    done = run_script("--peer_dir", str(tmp_path), "--sizes", "1080p", "huge", cwd=tmp_path)
    assert done.returncode == 2 and "--sizes: expected one of" in done.stderr and "got 'huge'" in done.stderr
