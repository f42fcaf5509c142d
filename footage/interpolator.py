"""The model side of the footage pipeline: batched model calls for many frame pairs, with recursive halving for
checkpoints trained only at t = 0.5 (:func:`footage.timeplan.halving_rounds`), and the flow prior of a
``--flow_prior dis`` model (one per input pair, computed by the pipeline; :func:`sub_pair_prior` for halving)."""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import torch
from torch import nn

from footage.timeplan import halving_rounds
from model.frames import crop_padding, pad_centred
from model.inference import InferenceRunner, ModelClock

PAD_MULTIPLE = 32       # centred replicate padding, as the benchmarks' protocols (benchmark.eval_core.Protocol)


def sub_pair_prior(pair_flows: torch.Tensor, start: Fraction, stop: Fraction) -> torch.Tensor:
    """The prior of the sub-pair (frame at ``start``, frame at ``stop``) of an input pair, from the input pair's own
    prior: (B, 4, H, W) [F_0->1, F_1->0] in pixels -> (B, 4, H, W) [F_start->stop, F_stop->start].

    Recursive halving makes a prediction an input of the next depth (t = 1/4 is the t = 0.5 frame of 0 and 1/2), and
    a predicted frame has no DIS of its own. Computing DIS on it would put the CPU between two GPU depths (the frame
    must come back to the host first) and serialise the pipeline; giving every t directly from the original pair
    would show a Phase-2 model times it never saw, which is what halving avoids. Instead the sub-pair's flows come
    from the pair's by the linear-motion model the prior already rests on (model/ops/prior.py): a point at time s
    moves with v(s) = (1 - s) F_0->1 - s F_1->0 (read at the target pixel, as ``flows_at_t`` does), so
    F_start->stop = (stop - start) v(start) and F_stop->start = -(stop - start) v(stop). Since v is linear in s,
    the model's own conversion of this prior to t = 0.5 is exactly the original pair's prior converted to the
    midpoint's time: the estimator starts where a direct call at that time would start, and no DIS is added.
    (start, stop) = (0, 1) is the pair's prior itself.
    """
    if start == 0 and stop == 1:
        return pair_flows
    forward, backward = pair_flows[:, 0:2], pair_flows[:, 2:4]
    span = float(stop - start)

    def velocity(time_: Fraction) -> torch.Tensor:
        return (1 - float(time_)) * forward - float(time_) * backward

    return torch.cat([span * velocity(start), -span * velocity(stop)], dim=1)


class FrameInterpolator:
    """Predicts the frames at given times between many frame pairs, a batch of model calls at a time.

    model: anything with ``inference(img0, img1, t, flow_scale, tta)`` (ThesisModel); it runs as the benchmarks'
        ``Evaluator`` runs it (:meth:`predict`: centred padding to 32, autocast, crop, clamp, from model/frames.py),
        so a video frame is predicted exactly as a benchmark frame is. A model whose ``needs_flow_prior`` is True
        (``--flow_prior dis``) also takes ``flow_prior=``: every pair handed to :meth:`interpolate` then comes with
        its prior, (1, 4, H, W) ``measures.motion.prior_pair_flows`` of its two frames, padded here as the frames
        are.
    amp_dtype: the model's autocast precision (torch.bfloat16 or torch.float16), None for plain fp32
        (``config.AMP_DTYPES`` maps the ``--amp`` names to it).
    batch_size: model calls (pair, t) per forward pass.
    halving: reach every t by repeated t = 0.5 calls (:func:`halving_rounds`) instead of passing t.
    runner: how the model runs (:class:`model.inference.InferenceRunner`: CUDA graphs, compiled); default eager.
    """

    def __init__(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, tta: bool,
                 flow_scale: float, batch_size: int, halving: bool, fixed_batch: bool = False,
                 runner: InferenceRunner | None = None):
        if amp_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype!r}")
        self.model, self.amp_dtype, self.tta, self.flow_scale = model, amp_dtype, tta, flow_scale
        self.device, self.batch_size, self.halving = device, batch_size, halving
        self.runner = runner or InferenceRunner(model, "off")
        # A compiled model or a CUDA graph is specialised to one batch size: a short last batch would compile (minutes
        # at 4K) or capture again, so it is filled up with copies of its last request, whose predictions are dropped.
        self.fixed_batch = fixed_batch or self.runner.graphs_enabled or self.runner.compiled
        self.needs_prior = bool(getattr(model, "needs_flow_prior", False))
        self.model_calls = 0
        self.clock = ModelClock(device)     # the model's own time per forward pass (GPU time on CUDA)

    def model_rate(self, frames_out: int) -> str:
        """The output frames/s the model alone would allow: median forward-pass time (the first pass, which
        captures or compiles, is left out) spread over the output frames it serves."""
        times = sorted(self.clock.times_ms[1:] or self.clock.times_ms)
        if not times or not self.model_calls or not frames_out:
            return "model-only n/a"
        ms_per_call = times[len(times) // 2] / self.batch_size
        rate = frames_out / (self.model_calls * ms_per_call / 1000)
        return f"model-only {rate:.2f} out-frames/s ({ms_per_call:.1f} ms per model call, {self.runner.mode})"

    def predict(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor,
                flow_prior: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) inputs in [0, 1], t (B,) and, for a prior model, the pairs' flows (B, 4, H, W) in pixels ->
        (B, 3, H, W) float32 prediction clamped to [0, 1]. The prior is padded as the frames are (replicate: the
        motion at the border continues into the padding)."""
        padded0, padding = pad_centred(img0, PAD_MULTIPLE)
        padded1, _ = pad_centred(img1, PAD_MULTIPLE)
        prior = None if flow_prior is None else pad_centred(flow_prior, PAD_MULTIPLE)[0]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                    enabled=self.amp_dtype is not None):
            prediction = self.runner(padded0, padded1, t=t, flow_scale=self.flow_scale, tta=self.tta,
                                     flow_prior=prior)
        return crop_padding(prediction.float(), padding).clamp(0, 1)

    def calls_needed(self, times: Sequence[Fraction]) -> int:
        """Model calls (batch entries) that one pair with these output times costs."""
        inner = [t for t in times if t > 0]
        return sum(len(r) for r in halving_rounds(inner)) if self.halving else len(inner)

    def interpolate(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor, Sequence[Fraction]]],
                    priors: Sequence[torch.Tensor] | None = None) -> list[dict[Fraction, torch.Tensor]]:
        """[(img0, img1, times)] with images (1, 3, H, W) in [0, 1] -> per pair {t: (1, 3, H, W) prediction} for
        every t in (0, 1) of ``times`` (halving also leaves its intermediate times in the dict).

        priors: for a prior model (``needs_prior``), one (1, 4, H, W) prior per pair, on the model's device; it
        serves every t of its pair (the model converts it to t), and halving's sub-pairs get
        :func:`sub_pair_prior` of it. None for a model without a prior.
        """
        if self.needs_prior != (priors is not None) or (priors is not None and len(priors) != len(pairs)):
            raise ValueError(f"this model {'needs' if self.needs_prior else 'takes no'} flow prior: pass "
                             f"{'one prior per pair' if self.needs_prior else 'priors=None'}")
        values: list[dict[Fraction, torch.Tensor]] = [{Fraction(0): a, Fraction(1): b} for a, b, _ in pairs]

        def prior_of(index: int, start: Fraction, stop: Fraction) -> torch.Tensor | None:
            return None if priors is None else sub_pair_prior(priors[index], start, stop)

        if self.halving:
            per_pair = [halving_rounds(t for t in times if t > 0) for _, _, times in pairs]
            for depth in range(max((len(r) for r in per_pair), default=0)):
                requests = []
                for index, rounds in enumerate(per_pair):
                    if depth < len(rounds):
                        step = Fraction(1, 2 ** (depth + 1))
                        requests += [(index, t, values[index][t - step], values[index][t + step], Fraction(1, 2),
                                      prior_of(index, t - step, t + step)) for t in rounds[depth]]
                self._run(requests, values)
        else:
            self._run([(index, t, a, b, t, prior_of(index, Fraction(0), Fraction(1)))
                       for index, (a, b, times) in enumerate(pairs) for t in times if t > 0], values)
        return values

    def _run(self, requests: list[tuple[int, Fraction, torch.Tensor, torch.Tensor, Fraction, torch.Tensor | None]],
             values: list[dict[Fraction, torch.Tensor]]) -> None:
        """requests: (pair index, output time, left image, right image, t given to the model, prior or None)."""
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            filled = chunk + chunk[-1:] * (self.batch_size - len(chunk)) if self.fixed_batch else chunk
            img0 = torch.cat([r[2] for r in filled])
            img1 = torch.cat([r[3] for r in filled])
            prior = torch.cat([r[5] for r in filled]) if self.needs_prior else None
            t = torch.tensor([float(r[4]) for r in filled], dtype=torch.float32)
            if self.device.type == "cuda":
                # From pageable memory a copy waits for the GPU to finish everything queued before it; pinned and
                # non-blocking, the main thread keeps queueing work instead.
                t = t.pin_memory()
            t = t.to(self.device, non_blocking=True)
            with self.clock:
                predictions = self.predict(img0, img1, t, prior)
            self.model_calls += len(chunk)
            for (index, time_, *_), prediction in zip(chunk, predictions.split(1)):
                values[index][time_] = prediction
