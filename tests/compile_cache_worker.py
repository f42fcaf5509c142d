"""Worker for tests/test_inference.py: compiles a tiny Phase-2 model for inference in a fresh process and writes what
Inductor's caches did (:func:`model.inference.compile_report`) as JSON.

What it compiles is what a GPU run compiles, as far as the CPU allows: the model through
:func:`model.inference.compile_for_inference` with ``cache_dir``, one call under bf16 autocast (the precision every
run uses), and the SSD scan through the custom operator ``thesis_vfi::triton_ssd_inference`` (its Triton kernel
stood in for by the PyTorch scan, as in tests/test_ops.py), so the graph holds the same opaque operator node.

``part`` compiles one piece of that model instead (its last LGS stage, whose Mamba2 branch calls the operator,
and a backward warp with its float32 region), which builds in seconds rather than minutes on a CPU; ``model``
compiles the whole model (what docs/PERF.md's CPU figures used).

Usage: ``compile_cache_worker.py {part,model} CACHE_DIR OUT.json``; CACHE_DIR ``default`` compiles with
:func:`model.inference.compile_for_inference`'s own choice of folder.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model.ops.ssd as ssd_module                              # noqa: E402
from config import preset                                       # noqa: E402
from model import build_model                                   # noqa: E402
from model.inference import compile_for_inference, compile_report   # noqa: E402
from model.warplayer import BackwardWarp                        # noqa: E402


STAND_IN_CALLS = []


def stand_in_kernel(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False):
    STAND_IN_CALLS.append(tuple(x.shape))
    return ssd_module._ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus)


class ModelPart(nn.Module):
    """(N, C, 4, 4) features and a (N, 2, 2, 2) flow -> the last LGS stage's output warped by the flow."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.stage = model.backbone.lgs_stages[-1]
        self.warp = BackwardWarp()

    def forward(self, features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return self.warp(self.stage(features), flow)


def main(what: str, cache_dir: str | None, out: str) -> None:
    cache_dir = None if cache_dir == "default" else cache_dir
    ssd_module.load_triton_ssd = lambda: (stand_in_kernel, "stand-in for the test")
    ssd_module.resolve_backend = lambda backend, device: "triton"
    torch.manual_seed(0)
    # The tiny Phase-2 preset with one block per stage and one flow layer: the same kinds of graph nodes, fewer of
    # them (the CPU compiles every kernel with a C++ compiler).
    cfg = replace(preset(2, "tiny").model, conv_depths=(1, 1, 1), lgs_depths=(1, 1), flow_res_layers=1)
    model = build_model(cfg)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if what == "model":
            compile_for_inference(model, cache_dir=cache_dir).inference(torch.rand(1, 3, 32, 32),
                                                                        torch.rand(1, 3, 32, 32), 0.5)
        else:
            part = compile_for_inference(ModelPart(model), cache_dir=cache_dir)
            part(torch.rand(2, cfg.lgs_channels[0], 4, 4), torch.rand(2, 2, 2, 2))
    Path(out).write_text(json.dumps(dict(compile_report(), operator_calls=len(STAND_IN_CALLS))))


if __name__ == "__main__":
    main(*sys.argv[1:4])
