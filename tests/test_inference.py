"""model/inference.py: the CUDA-graph bookkeeping with a stand-in model and recorder (CPU), the compiled model's single
graph, the runtime record; graphed-vs-eager parity on real model configs (GPU only)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.eval_core import Evaluator, Protocol
from config import preset
from interpolate import FrameInterpolator
from model import build_model
from model.inference import (CudaGraphCapture, GraphUnavailable, InferenceRunner, Recorded, compile_for_inference,
                             describe_compile_report, describe_runtime, runtime_record)


class Blend(nn.Module):
    """Stand-in model: (1 - t) * img0 + t * img1 scaled by a weight and the flow scale; counts its calls."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))
        self.calls = 0

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False):
        self.calls += 1
        t = torch.as_tensor(t, dtype=img0.dtype).reshape(-1, 1, 1, 1)
        out = ((1 - t) * img0 + t * img1) * self.weight * flow_scale
        return out + 1 if tta else out


class FakeCapture(CudaGraphCapture):
    """Records without a GPU: warm-up calls, one call whose output tensor stays the static output, and a replay that
    recomputes from the static buffers into that same tensor (what a CUDA graph replay does)."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.records = 0

    def unavailable_reason(self, device):
        return None

    def record(self, call, warmup_calls):
        self.records += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        for _ in range(warmup_calls):
            call()
        output = call()
        return Recorded(replay=lambda: output.copy_(call()), output=output)


def images(batch=1, height=8, width=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, 3, height, width, generator=generator) for _ in range(2))


def test_one_graph_per_shape_key_replayed_with_the_eager_values():
    model, capture = Blend(), FakeCapture()
    runner = InferenceRunner(model, "auto", capture=capture, warmup_calls=2)
    a, b = images()
    first = runner(a, b, 0.5)
    entry = next(iter(runner.graphs.values()))
    static0 = entry.img0
    c, d = images(seed=1)
    second = runner(c, d, 0.25)                          # same key: replayed on the new inputs and t
    assert capture.records == 1 and runner.counts == {"replays": 2, "eager_calls": 0, "captures": 1, "evictions": 0}
    assert next(iter(runner.graphs.values())).img0 is static0          # the static buffers are reused
    assert torch.allclose(first, model.inference(a, b, 0.5)) and torch.allclose(second, model.inference(c, d, 0.25))
    assert runner.mode == "graphed"


def test_returned_prediction_is_not_the_static_output():
    """The next replay overwrites the static output: a caller keeping a prediction (halving feeds one into the next
    depth) must get its own tensor."""
    runner = InferenceRunner(Blend(), "auto", capture=FakeCapture())
    a, b = images()
    kept = runner(a, b, 0.5)
    before = kept.clone()
    runner(*images(seed=3), 0.5)
    assert torch.equal(kept, before)


def test_keys_separate_shape_batch_flow_scale_tta_and_autocast_but_not_how_t_is_given():
    capture = FakeCapture()
    runner = InferenceRunner(Blend(), "auto", capture=capture, max_graphs=16)
    a, b = images()
    runner(a, b, 0.5)
    runner(a, b, torch.tensor(0.5))                      # a 0-d tensor: the same (B,) buffer, the same graph
    runner(a, b, torch.tensor([0.5]))
    assert capture.records == 1
    runner(*images(height=16), 0.5)
    runner(*images(batch=2), torch.tensor([0.25, 0.75]))
    runner(a, b, 0.5, flow_scale=0.5)
    runner(a, b, 0.5, tta=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runner(a, b, 0.5)
    assert capture.records == 6 and len(runner.graphs) == 6


class PriorShift(Blend):
    """Stand-in for a --flow_prior model: adds the mean of the prior's first channel to the blend."""

    def inference(self, img0, img1, t=0.5, flow_scale=1.0, tta=False, flow_prior=None):
        assert flow_prior is not None, "a prior model is always called with its prior"
        return super().inference(img0, img1, t, flow_scale, tta) + flow_prior[:, :1].mean(dim=(2, 3), keepdim=True)


def test_a_flow_prior_is_a_static_buffer_of_its_own_graph_refilled_per_call():
    model, capture = PriorShift(), FakeCapture()
    runner = InferenceRunner(model, "auto", capture=capture, max_graphs=4)
    a, b = images()
    first, second = torch.zeros(1, 4, 8, 12), torch.full((1, 4, 8, 12), 3.0)
    assert torch.allclose(runner(a, b, 0.5, flow_prior=first), model.inference(a, b, 0.5, flow_prior=first))
    assert torch.allclose(runner(a, b, 0.5, flow_prior=second), model.inference(a, b, 0.5, flow_prior=second))
    assert capture.records == 1 and runner.counts["replays"] == 2
    assert next(iter(runner.graphs.values())).flow_prior is not second          # copied in, not aliased
    assert runner.key(a, 1.0, False, True) != runner.key(a, 1.0, False, False)
    with pytest.raises(ValueError, match=r"flow_prior must be \(B, 4, H, W\) = \(1, 4, 8, 12\)"):
        runner(a, b, 0.5, flow_prior=torch.zeros(1, 2, 8, 12))
    eager = InferenceRunner(model, "off")
    assert torch.allclose(eager(a, b, 0.5, flow_prior=second), model.inference(a, b, 0.5, flow_prior=second))


def test_per_sample_t_reaches_the_graph():
    model = Blend()
    runner = InferenceRunner(model, "auto", capture=FakeCapture())
    a, b = images(batch=2)
    t = torch.tensor([0.25, 0.75])
    runner(a, b, t)
    assert torch.allclose(runner(a, b, t.flip(0)), model.inference(a, b, t.flip(0)))
    with pytest.raises(ValueError, match="one value per sample"):
        runner(a, b, torch.tensor([0.1, 0.2, 0.3]))


def test_graph_cache_is_bounded_least_recently_used_first():
    capture = FakeCapture()
    runner = InferenceRunner(Blend(), "auto", capture=capture, max_graphs=2)
    runner(*images(height=8), 0.5)
    runner(*images(height=16), 0.5)
    runner(*images(height=8), 0.5)                       # 8 is now the most recent
    runner(*images(height=24), 0.5)                      # evicts 16
    assert [key.height for key in runner.graphs] == [8, 24]
    assert runner.counts["evictions"] == 1 and capture.records == 3
    runner(*images(height=16), 0.5)                      # recorded again
    assert capture.records == 4 and len(runner.graphs) == 2


def test_capture_after_keeps_shapes_seen_once_eager():
    model, capture = Blend(), FakeCapture()
    runner = InferenceRunner(model, "auto", capture=capture, capture_after=2, warmup_calls=0)
    a, b = images()
    runner(a, b, 0.5)
    assert capture.records == 0 and runner.counts["eager_calls"] == 1 and runner.mode == "eager"
    runner(a, b, 0.5)
    assert capture.records == 1 and runner.mode == "graphed"


def test_cpu_model_runs_eagerly_and_on_refuses():
    model = Blend()
    runner = InferenceRunner(model, "auto")              # the real recorder: graphs need CUDA
    a, b = images()
    assert torch.equal(runner(a, b, 0.5), model.inference(a, b, 0.5))
    assert not runner.graphs_enabled and runner.mode == "eager" and runner.counts["eager_calls"] == 1
    with pytest.raises(GraphUnavailable, match="--cuda_graph on is not possible here: CUDA graphs need a CUDA "
                                               "device"):
        InferenceRunner(model, "on")
    assert InferenceRunner(model, "off", capture=FakeCapture()).graph_reason == "eager (--cuda_graph off)"
    with pytest.raises(ValueError, match="cuda_graph must be one of"):
        InferenceRunner(model, "yes")


def test_failed_capture_falls_back_to_eager_once_and_says_so_once(caplog):
    model, capture = Blend(), FakeCapture(fail=True)
    runner = InferenceRunner(model, "auto", capture=capture)
    a, b = images()
    with caplog.at_level(logging.WARNING, logger="model.inference"):
        results = [runner(a, b, 0.5) for _ in range(3)]
    assert all(torch.equal(r, model.inference(a, b, 0.5)) for r in results)
    assert capture.records == 1                          # the failed key is not tried again
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "CUDA graph capture failed for 1x3x8x12" in messages[0]
    with pytest.raises(GraphUnavailable, match="capture failed"):
        InferenceRunner(model, "on", capture=FakeCapture(fail=True))(a, b, 0.5)


def test_evaluator_and_interpolator_run_through_the_runner_and_report_runtime(tmp_path):
    model, capture = Blend(), FakeCapture()
    runner = InferenceRunner(model, "auto", capture=capture)
    evaluator = Evaluator(model, Protocol("video"), "cpu", "fp32", progress=False, runner=runner)
    a, b = images(height=32, width=32)
    assert torch.allclose(evaluator.predict(a, b, 0.5), model.inference(a, b, 0.5).clamp(0, 1))
    assert capture.records == 1
    engine = FrameInterpolator(model, torch.device("cpu"), None, False, 1.0, batch_size=2, halving=True,
                               runner=InferenceRunner(model, "auto", capture=FakeCapture()))
    assert engine.fixed_batch                            # a graph is specific to its batch: short batches are filled
    engine.interpolate([(a, b, [Fraction(0), Fraction(1, 2)])])
    assert "model-only" in engine.model_rate(frames_out=2) and "graphed" in engine.model_rate(frames_out=2)


def test_runtime_record_and_line():
    record = runtime_record(12.3456, "graphed", "cpu", None, 720, 1280, timed_calls=3)
    assert record == {"ms_per_frame": 12.346, "mode": "graphed", "device": "cpu", "peak_gib": None, "height": 720,
                      "width": 1280, "timed_calls": 3}
    assert describe_runtime(record) == "runtime 12.3 ms per output frame at 720x1280 (graphed, cpu)"
    # A --flow_prior model: the prior's CPU cost per input pair, beside (never inside) the model's ms.
    record = runtime_record(12.3456, "graphed", "cpu", None, 720, 1280, prior_ms_per_pair=45.6789, prior_pairs=3)
    assert record["prior_ms_per_pair"] == 45.679 and record["prior_pairs"] == 3 and record["ms_per_frame"] == 12.346
    assert describe_runtime(record) == ("runtime 12.3 ms per output frame at 720x1280 (graphed, cpu); + DIS flow prior "
                                        "45.7 ms per input pair on one CPU core (not in the model's time)")
    assert "prior_ms_per_pair" not in runtime_record(1.0, "eager", "cpu", None, prior_ms_per_pair=None)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA-event path needs a CUDA device"))])
def test_model_clock_keeps_the_most_recent_times_and_counts_every_call(device):
    """A clock lives as long as a video: it counts every call but keeps only the last ``keep`` times. On CUDA the
    times come from events read back without waiting, so the last calls may still be pending until read."""
    from model.inference import ModelClock
    clock = ModelClock(torch.device(device), keep=3)
    work = torch.ones(256, 256, device=device)
    for _ in range(5):
        with clock:
            work = work @ work / 256
    assert clock.calls == 5
    assert len(clock.times_ms) == 3 and all(value >= 0 for value in clock.times_ms)
    assert clock.median_ms() == sorted(clock.times_ms)[1]


def test_compiled_model_traces_once_across_calls():
    """The backward warp's grid cache used to be filled from inside the compiled forward; Dynamo guards on the dict,
    so the second call recompiled the whole model (minutes at 1080p: interpolate.py --compile ran 12x slower than
    eager on a 64-frame clip). The Dynamo-only backend keeps this test fast; Inductor sees the same guards."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    model = build_model(preset(2, "tiny")).eval()
    model.compile(dynamic=False, backend="eager")
    counters.clear()
    a, b = images(height=32, width=64)
    with torch.inference_mode():
        for t in (0.5, 0.5, 0.5):
            model.inference(a, b, t)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("flow_widths", [None, (24, 14, 10)])
def test_channel_aligned_phase2_model_predicts_what_the_original_predicts(flow_widths):
    """The aligned flow estimator inside a whole tiny Phase-2 model (backbone features into every block): the same
    prediction in float32, with the preset's widths (halves 12, 8, 6) and with odd halves (12, 7, 5)."""
    import copy
    from dataclasses import replace

    from model.flow import align_flow_channels_
    torch.manual_seed(0)
    cfg = preset(2, "tiny").model
    model = build_model(replace(cfg, flow_widths=flow_widths) if flow_widths else cfg).eval()
    aligned = copy.deepcopy(model)
    assert align_flow_channels_(aligned) == 3
    assert [block.residual_stack[0][0].in_channels for block in aligned.flow_estimator.blocks] == [24, 16, 16]
    a, b = images(batch=2, height=36, width=52)
    with torch.no_grad():
        for t, flow_scale in ((0.5, 1.0), (0.3, 0.5)):
            torch.testing.assert_close(aligned.inference(a, b, t, flow_scale=flow_scale),
                                       model.inference(a, b, t, flow_scale=flow_scale), rtol=1e-5, atol=1e-5)


def test_compile_for_inference_aligns_the_flow_estimator_in_place_unless_asked_not_to(tmp_path, monkeypatch):
    """In place, as documented: the model given is the one compiled and aligned (its weights replaced by padded ones,
    so its state_dict refuses); align_channels=False leaves the weights as trained; a model without flow blocks is
    compiled as before. Compilation is lazy, so nothing is compiled here."""
    from model.flow import AlignedForInferenceError
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = build_model(preset(2, "tiny")).train()
    trained = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    plain = build_model(preset(2, "tiny"))
    plain.load_state_dict(trained)
    assert compile_for_inference(plain, align_channels=False) is plain
    assert all(torch.equal(plain.state_dict()[name], tensor) for name, tensor in trained.items())
    assert compile_for_inference(model) is model and not model.training
    blocks = model.flow_estimator.blocks
    assert [block.channel_multiple for block in blocks] == [8, 8, 8]
    assert [block.stage1[0].weight.shape[0] for block in blocks] == [16, 8, 8]            # halves 12, 8, 6
    assert torch.equal(blocks[2].stage1[0].weight[:6], trained["flow_estimator.blocks.2.stage1.0.weight"])
    with pytest.raises(AlignedForInferenceError, match="flow_estimator.blocks.0 was channel-aligned"):
        model.state_dict()
    assert compile_for_inference(nn.Linear(2, 2)).weight.shape == (2, 2)


def test_runner_compiles_in_the_inductor_mode_it_is_given(monkeypatch):
    """InferenceRunner(compile=True, compile_mode=...) hands the mode to the compilation (interpolate.py and the
    benchmarks' --compile_mode); a mode without compile=True is refused. Compilation is lazy: nothing compiles here."""
    modes, options = [], []

    def record(module, *args, **kwargs):
        modes.append(kwargs.get("mode"))
        options.append(kwargs.get("options"))

    monkeypatch.setattr(nn.Module, "compile", record)
    InferenceRunner(nn.Linear(2, 2), "off", compile=True, compile_mode="max-autotune-no-cudagraphs")
    InferenceRunner(nn.Linear(2, 2), "off", compile=True)
    InferenceRunner(nn.Linear(2, 2), "off", compile=True, compile_mode="tune-kernels")
    assert modes == ["max-autotune-no-cudagraphs", None, None]
    # Our option set: Inductor's tuning of the kernels it generates, a setting this torch's Inductor has (torch.compile
    # would refuse an unknown one).
    assert options == [None, None, {"coordinate_descent_tuning": True}]
    from torch._inductor import config as inductor_config
    assert hasattr(inductor_config, "coordinate_descent_tuning")
    with pytest.raises(ValueError, match="compile_mode is a setting of compile=True"):
        InferenceRunner(nn.Linear(2, 2), "off", compile_mode="max-autotune-no-cudagraphs")


COMPILE_CACHE_WORKER = Path(__file__).with_name("compile_cache_worker.py")


def compile_in_fresh_process(home: Path, out: Path) -> dict:
    """Run tests/compile_cache_worker.py (a model part through the SSD custom operator, bf16 autocast) in a new
    Python process whose cache home (XDG_CACHE_HOME) is ``home`` and which sets no Inductor or Triton variable, so
    :func:`compile_for_inference` chooses the folder; returns the worker's :func:`compile_report`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    env["XDG_CACHE_HOME"] = str(home)
    done = subprocess.run([sys.executable, str(COMPILE_CACHE_WORKER), "part", "default", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_second_process_compiles_from_the_default_cache_folder(tmp_path):
    """A second process must reuse the first one's compiled graph from the documented folder
    (``$XDG_CACHE_HOME/thesis_vfi/inductor``): Inductor's FX graph cache and AOTAutograd's cache both hit, nothing
    missed or bypassed. The folder used to be torch's /tmp default instead (importing torch._dynamo sets
    TORCHINDUCTOR_CACHE_DIR, and compile_for_inference kept any value that was set), lost with the machine. A graph the
    caches refuse (an op they cannot hash) or whose key changes per process (a value baked in at trace time) would
    compile again at every start, minutes at 1080p (docs/PERF.md, section 10). The graph holds the custom SSD
    operator as a GPU run's does."""
    folder = tmp_path / "home" / "thesis_vfi" / "inductor"
    first = compile_in_fresh_process(tmp_path / "home", tmp_path / "first.json")
    second = compile_in_fresh_process(tmp_path / "home", tmp_path / "second.json")
    assert first["operator_calls"] > 0 and second["operator_calls"] > 0       # the operator is in the graph
    assert first["cache_dir"] == second["cache_dir"] == str(folder) and any(folder.iterdir())
    assert first["fx_graph_cache"] == {"hit": 0, "miss": 1, "bypass": 0}
    assert second["fx_graph_cache"] == {"hit": 1, "miss": 0, "bypass": 0}
    assert second["aot_autograd_cache"] == {"hit": 1, "miss": 0, "bypass": 0}
    line = describe_compile_report(second)
    assert "FX graph 1 hit, 0 miss, 0 bypass" in line and str(folder) in line


def test_compile_keeps_a_cache_folder_the_user_chose_and_replaces_torchs_default(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_for_inference(nn.Linear(2, 2))                       # compiles lazily: nothing runs here
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())      # what importing torch._dynamo sets
    compile_for_inference(nn.Linear(2, 2))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "thesis_vfi" / "inductor")
    compile_for_inference(nn.Linear(2, 2), cache_dir=tmp_path / "given")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "given")


# --------------------------------------------------------------------------------------------------------
# GPU: graphed vs eager on real model configs
# --------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("phase", [1, 2])
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_graphed_inference_matches_eager_on_the_gpu(phase, amp):
    torch.manual_seed(0)
    model = build_model(preset(phase, "small")).cuda().eval()
    runner = InferenceRunner(model, "on")
    generator = torch.Generator(device="cuda").manual_seed(0)
    pairs = [tuple(torch.rand(1, 3, 256, 448, device="cuda", generator=generator) for _ in range(2))
             for _ in range(2)]
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        for img0, img1 in pairs:
            graphed = runner(img0, img1, 0.5)
            eager = model.inference(img0, img1, 0.5)
            difference = (graphed.float() - eager.float()).abs().flatten()
            p999 = difference.topk(max(1, difference.numel() // 1000)).values.min()
            assert p999 <= 1 / 255, float(p999)
            if amp is None:
                assert torch.allclose(graphed, eager, atol=1e-4), float(difference.max())
    assert runner.counts["captures"] == 1 and runner.counts["replays"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("tta", [False, True])
def test_graphed_inference_with_a_flow_prior_matches_eager_on_the_gpu(tta):
    """A --flow_prior dis model (tiny phase 2): the prior is one more static buffer of the graph, refilled per replay
    (model/inference.py); two pairs with different priors replay one graph and each predicts what eager predicts with
    its own prior (TTA: the model flips the prior inside the recorded call). float32, as the other parity tests."""
    from dataclasses import replace
    torch.manual_seed(0)
    cfg = preset(2, "tiny")
    model = build_model(replace(cfg.model, flow_prior="dis")).cuda().eval()
    runner = InferenceRunner(model, "on")
    generator = torch.Generator(device="cuda").manual_seed(0)
    for scale in (1.0, 6.0):                       # a prior of a few px, then a larger one: each must reach the graph
        img0, img1 = (torch.rand(1, 3, 128, 192, device="cuda", generator=generator) for _ in range(2))
        prior = torch.randn(1, 4, 128, 192, device="cuda", generator=generator) * scale
        graphed = runner(img0, img1, 0.5, tta=tta, flow_prior=prior)
        eager = model.inference(img0, img1, 0.5, tta=tta, flow_prior=prior)
        difference = (graphed - eager).abs()
        assert torch.allclose(graphed, eager, atol=1e-4), float(difference.max())
        assert not torch.allclose(graphed, model.inference(img0, img1, 0.5, tta=tta, flow_prior=prior * 0),
                                  atol=1e-3)          # the prior matters to the prediction
    assert runner.counts["captures"] == 1 and runner.counts["replays"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("refine_finest", ["full", "half"])
def test_compiled_and_graphed_inference_matches_eager_on_the_gpu(refine_finest):
    """The compiled path as interpolate.py --compile runs it on CUDA: the flow estimator channel-aligned, the warps'
    opaque grid_sample, the SSD custom operator, Inductor, replayed as a CUDA graph, against eager inference of the
    unaligned model: within 1/255 at the 99.9th percentile. float32 on both sides: with random weights the flows are
    arbitrary and a bf16 rounding of them moves samples of noise images by a visible amount (docs/PERF.md 10).
    Both RefineNet arrangements (``half``: a stride-2 entry and a transposed-convolution head)."""
    import copy
    from dataclasses import replace
    torch.manual_seed(0)
    cfg = preset(2, "tiny")
    model = build_model(replace(cfg.model, refine_finest=refine_finest)).cuda().eval()
    reference_model = copy.deepcopy(model)
    runner = InferenceRunner(model, "on", compile=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    img0, img1 = (torch.rand(1, 3, 128, 192, device="cuda", generator=generator) for _ in range(2))
    with torch.no_grad():
        eager = reference_model.inference(img0, img1, 0.5)
    for _ in range(2):
        compiled = runner(img0, img1, 0.5)
    difference = (compiled.float() - eager).abs().flatten()
    assert difference.topk(max(1, difference.numel() // 1000)).values.min() <= 1 / 255
    assert runner.counts["captures"] == 1 and runner.counts["replays"] >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_precompiled_and_graphed_inference_matches_eager_and_loads_on_the_gpu(tmp_path):
    """interpolate.py --aot_compile on CUDA: compiled ahead of time with Inductor (channels aligned, the SSD custom
    operator inside), saved, replayed as a CUDA graph, within 1/255 of eager at the 99.9th percentile; a second
    PrecompiledCalls over the same folder (a later process) loads the file and predicts the same."""
    import copy

    from model.precompiled import aot_compile_available, precompile_for_inference
    if not aot_compile_available():
        pytest.skip("this torch has no ahead-of-time compile")
    torch.manual_seed(0)
    model = build_model(preset(2, "tiny")).cuda().eval()
    reference_model = copy.deepcopy(model)
    generator = torch.Generator(device="cuda").manual_seed(0)
    img0, img1 = (torch.rand(1, 3, 128, 192, device="cuda", generator=generator) for _ in range(2))
    with torch.no_grad():
        eager = reference_model.inference(img0, img1, 0.5)
    outputs = []
    for _ in range(2):                  # the first runner compiles and saves, the second loads
        calls = precompile_for_inference(copy.deepcopy(reference_model), tmp_path)
        runner = InferenceRunner(calls.model, "on", precompiled=calls)
        for _ in range(2):
            outputs.append(runner(img0, img1, 0.5))
        assert runner.counts["captures"] == 1 and runner.mode == "compiled+graphed"
        assert [record.source for record in calls.records] == (["compiled"] if len(outputs) == 2 else ["loaded"])
    for output in outputs:
        difference = (output.float() - eager).abs().flatten()
        assert difference.topk(max(1, difference.numel() // 1000)).values.min() <= 1 / 255
    torch.testing.assert_close(outputs[-1], outputs[1], rtol=0, atol=1e-5)
