"""Compiled inference saved to a file and loaded by a later process (model/precompiled.py, interpolate.py
--aot_compile). CPU only, with torch.compile's "aot_eager" backend (no compiler toolchain, seconds instead of
minutes); what is checked is the bookkeeping: one file per key, loaded instead of compiled, never another key's or
another code's file, an unreadable file compiled again, a failing ahead-of-time compile falling back. The GPU
measurement of the start-up it saves is docs/PERF.md 10.9's."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

import model.precompiled as precompiled
from config import preset
from model import build_model
from model.inference import GraphKey, InferenceRunner
from model.precompiled import PrecompiledCalls, aot_compile_available

pytestmark = pytest.mark.skipif(not aot_compile_available(), reason="this torch has no ahead-of-time compile")

BACKEND = "aot_eager"


@dataclass(frozen=True)
class StandInConfig:
    width: int = 8


class StandIn(nn.Module):
    """A two-convolution 'model' with ``inference`` and a config, compiled in well under a second."""

    def __init__(self, config: StandInConfig = StandInConfig()):
        super().__init__()
        self.config = config
        self.encode = nn.Conv2d(6, config.width, 3, padding=1)
        self.decode = nn.Conv2d(config.width, 3, 3, padding=1)

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        t = torch.as_tensor(t, dtype=img0.dtype, device=img0.device).reshape(-1, 1, 1, 1)
        blend = (1 - t) * img0 + t * img1
        return blend + flow_scale * self.decode(torch.relu(self.encode(torch.cat([img0, img1], 1))))


def key_of(image: torch.Tensor, flow_scale: float = 1.0, tta: bool = False) -> GraphKey:
    batch, _, height, width = image.shape
    return GraphKey("cpu", batch, height, width, image.dtype, flow_scale, tta, None, False)


def counting(function):
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return wrapped, calls


def test_a_later_process_loads_the_saved_model_instead_of_compiling(tmp_path):
    """The tiny Phase-2 model: compiled once and saved; a fresh PrecompiledCalls over the same folder (what a new
    process builds) loads the file, compiles nothing, and predicts what eager predicts."""
    torch.manual_seed(0)
    model = build_model(preset(2, size="tiny")).eval()
    img0, img1 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    t = torch.full((1,), 0.5)
    with torch.no_grad():
        expected = model.inference(img0, img1, t, flow_scale=1.0)
        compile_ahead, compiles = counting(precompiled._compile_ahead)
        first = PrecompiledCalls(model, tmp_path, BACKEND, compile_ahead=compile_ahead)
        out = first(key_of(img0), img0, img1, t)
        assert len(compiles) == 1 and [r.source for r in first.records] == ["compiled"]
        assert [p.name for p in tmp_path.iterdir()] == [first.path_for(key_of(img0)).name]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        first(key_of(img0), img0, img1, t)                   # the same key again: nothing compiled or loaded
        assert len(compiles) == 1 and len(first.records) == 1

        compile_again, compiles_again = counting(precompiled._compile_ahead)
        later = PrecompiledCalls(model, tmp_path, BACKEND, compile_ahead=compile_again)
        out = later(key_of(img0), img0, img1, t)
    assert compiles_again == [] and [r.source for r in later.records] == ["loaded"]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert later.records[0].describe().startswith("aot:    loaded the compiled model in ")


def test_each_key_code_and_architecture_has_a_file_of_its_own(tmp_path, monkeypatch):
    model = StandIn()
    calls = PrecompiledCalls(model, tmp_path, BACKEND)
    image = torch.rand(1, 3, 16, 16)
    base = calls.path_for(key_of(image))
    others = [calls.path_for(key_of(torch.rand(1, 3, 16, 32))), calls.path_for(key_of(torch.rand(2, 3, 16, 16))),
              calls.path_for(key_of(image, flow_scale=0.5)), calls.path_for(key_of(image, tta=True)),
              calls.path_for(replace(key_of(image), autocast_dtype=torch.bfloat16)),
              PrecompiledCalls(StandIn(StandInConfig(width=16)), tmp_path, BACKEND).path_for(key_of(image)),
              PrecompiledCalls(model, tmp_path, "inductor").path_for(key_of(image))]
    # The weights are not part of it: a retrained checkpoint of the same architecture finds the same file.
    retrained = StandIn()
    assert PrecompiledCalls(retrained, tmp_path, BACKEND).path_for(key_of(image)) == base
    monkeypatch.setattr(precompiled, "source_fingerprint", lambda: "other code")
    others.append(PrecompiledCalls(model, tmp_path, BACKEND).path_for(key_of(image)))
    assert len({base, *others}) == len(others) + 1
    assert base.parent == tmp_path and base.suffix == ".aot"


def first_call_with_warnings(calls: PrecompiledCalls, caplog) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of a 16x16 pair through ``calls`` (warnings captured) and the model's eager prediction of it."""
    image0, image1, t = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.full((1,), 0.25)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="model.precompiled"):
        return calls(key_of(image0), image0, image1, t), calls.model.inference(image0, image1, t)


def test_an_unreadable_file_is_compiled_again_and_replaced(tmp_path, caplog):
    model = StandIn().eval()
    calls = PrecompiledCalls(model, tmp_path, BACKEND)
    path = calls.path_for(key_of(torch.rand(1, 3, 16, 16)))
    path.write_bytes(b"half a file")
    out, expected = first_call_with_warnings(calls, caplog)
    assert calls.records[0].source == "compiled" and "could not be loaded" in calls.records[0].note
    assert "could not be loaded" in caplog.text
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    again = PrecompiledCalls(model, tmp_path, BACKEND)
    first_call_with_warnings(again, caplog)
    assert again.records[0].source == "loaded"                 # the replacement is a whole, loadable file
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]      # no temporary file left


def test_a_failing_ahead_of_time_compile_falls_back_to_the_lazy_compile(tmp_path, caplog):
    def refuse(call, example, backend):
        raise RuntimeError("graph break in fullgraph mode")

    calls = PrecompiledCalls(StandIn().eval(), tmp_path, BACKEND, compile_ahead=refuse)
    out, expected = first_call_with_warnings(calls, caplog)
    assert calls.records[0].source == "lazy" and "graph break" in calls.records[0].note
    assert "compiles it lazily instead" in caplog.text
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert list(tmp_path.iterdir()) == []


def test_the_runner_sends_every_call_through_its_key_s_compiled_function(tmp_path):
    model = StandIn().eval()
    calls = PrecompiledCalls(model, tmp_path, BACKEND)
    runner = InferenceRunner(model, "off", precompiled=calls)
    image0, image1 = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = runner(image0, image1, 0.5, flow_scale=1.0)                       # t as a Python float
        expected = model.inference(image0, image1, 0.5)
        runner(image0[:1], image1[:1], torch.full((1,), 0.5))                    # another key: another file
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert runner.mode == "compiled" and runner.compiled
    assert [r.source for r in calls.records] == ["compiled", "compiled"] and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="pass one"):
        InferenceRunner(model, "off", compile=True, precompiled=calls)
