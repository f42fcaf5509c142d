"""Worker for tests/test_run_endings.py: one backward of the tiny Phase-1 and Phase-2 models under DDP on one gloo
rank (a fresh process: PyTorch gives the gradient-stride warning once per process), printing every warning's
first line. Usage: ``ddp_layout_worker.py PORT``."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import preset        # noqa: E402
from distributed import wrap_ddp  # noqa: E402
from model import build_model    # noqa: E402

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for phase in (1, 2):
        torch.manual_seed(0)
        model = wrap_ddp(build_model(preset(phase, "tiny").model), None)   # as the Trainer wraps it
        img0, img1 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        model(img0, img1, 0.5).pred.square().mean().backward()
dist.destroy_process_group()
for warning in caught:
    print(f"warning: {str(warning.message).splitlines()[0]}")
print("done")
