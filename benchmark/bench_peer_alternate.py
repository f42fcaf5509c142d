"""Ours and RIFE_m timed call by call in turn in one process: the 2x inference comparison without the host's drift.

    python benchmark/bench_peer_alternate.py --peer_dir .peers/ECCV2022-RIFE [--sizes 1080p 720p 256] [--rounds 3]
        [--reps 50] [--mode compiled] [--json OUT.json]

Why: RIFE_m runs eager, as its repository does, so its time is the host's time to launch its kernels, and that
moves between processes and between rows of one process (its 1080p row measured 12.0 to 18.7 ms on H100s in
docs/PERF.md 10.17-10.21), while our compiled and graphed call replays one graph. Timed in turn, one call of each per
round (:func:`benchmark.timing.measure_alternating`), a drift of the host falls on both alike.

What is timed: one 2x pair (batch 1, t = 0.5) of random frames under bf16 autocast on CUDA, flow at full resolution;
ours in the fast arrangement (``--refine_finest half --flow_scales 8 4 2``, random weights, Phase 2) through
:class:`model.inference.InferenceRunner` (``--mode``: eager, graphed, or compiled and graphed), RIFE_m as its
repository's ``IFNet_m`` on the frames padded to multiples of 64, as the peer rows of docs/PERF.md were timed, with
scales [4, 2, 1]. (Its own inference script pads to 32: the same sizes at 256² and 1080p; at 720p 768 rows instead of
736, 4% more work for RIFE_m.) Median of ``--reps`` timed pairs
after 5 untimed ones, per round; compilation, capture and cuDNN's autotuning happen before the first round.

The peer's code is imported from ``--peer_dir`` (a clone of hzwer/ECCV2022-RIFE) for measuring only. Its ``model``
folder shares its name with our package: it is imported first with our repository off ``sys.path``, then its
modules are dropped from ``sys.modules`` (its classes keep references to theirs) and ours are imported.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))      # run as a file: make the repository importable (load_peer_class steps it aside)

from benchmark.timing import RESOLUTIONS, measure_alternating, parse_resolution  # noqa: E402  (imports no `model`)

MODES = ("eager", "graphed", "compiled")


def load_peer_class(peer_dir: Path, module: str = "model.IFNet_m", name: str = "IFNet_m") -> type:
    """``name`` from ``module`` of the peer's clone at ``peer_dir``, imported before ours (same package name).

    Raises SystemExit naming the folder when it has no such module."""
    if not (peer_dir / (module.replace(".", "/") + ".py")).is_file():
        raise SystemExit(f"--peer_dir {peer_dir}: no {module.replace('.', '/')}.py there (a clone of "
                         "hzwer/ECCV2022-RIFE is expected)")
    if "model" in sys.modules and not _is_peer_module(sys.modules["model"], peer_dir):
        raise RuntimeError("load_peer_class must run before our model package is imported")
    ours_on_path = [p for p in sys.path if Path(p or ".").resolve() == REPO]
    sys.path[:] = [str(peer_dir)] + [p for p in sys.path if p not in ours_on_path]
    try:
        peer_class = getattr(importlib.import_module(module), name)
    finally:
        for loaded in [n for n in sys.modules if n == "model" or n.startswith("model.")]:
            del sys.modules[loaded]
        sys.path[:] = [str(REPO)] + [p for p in sys.path if p != str(peer_dir)]
    return peer_class


def _is_peer_module(module, peer_dir: Path) -> bool:
    paths = [Path(p).resolve() for p in getattr(module, "__path__", [])]
    return any(peer_dir.resolve() in (p, *p.parents) for p in paths)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer_dir", type=Path, required=True, help="a clone of hzwer/ECCV2022-RIFE")
    parser.add_argument("--sizes", nargs="+", default=["1080p", "720p", "256"],
                        help=f"named sizes ({', '.join(RESOLUTIONS)}) or HEIGHTxWIDTH")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternated pairs, each with its median")
    parser.add_argument("--reps", type=int, default=50, help="timed pairs of calls per round")
    parser.add_argument("--mode", choices=MODES, default="compiled",
                        help="ours: eager, graphed, or compiled and graphed (default; graphs need CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    for size in args.sizes:            # kept as given: a row is named by it
        try:
            parse_resolution(size)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--sizes: {error}")
    if args.rounds < 1 or args.reps < 1:
        parser.error("--rounds and --reps must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    peer_dir = args.peer_dir.resolve()
    peer_class = load_peer_class(peer_dir)
    from config import config_from_argv
    from model import build_model
    from model.inference import InferenceRunner

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cfg = config_from_argv(["--phase", "2", "--data_path", "unused", "--refine_finest", "half",
                            "--flow_scales", "8", "4", "2"])
    ours = build_model(cfg.model).to(device).eval()
    runner = InferenceRunner(ours, "off" if args.mode == "eager" else "on", compile=args.mode == "compiled")
    peer = peer_class().to(device).eval()
    autocast = dict(device_type=device.type, dtype=torch.bfloat16)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"card {card}, torch {torch.__version__}, ours {args.mode}, peer {peer_class.__name__} eager", flush=True)
    report = {"card": card, "torch": torch.__version__, "mode": args.mode, "rows": {}}
    for size in args.sizes:
        height, width = parse_resolution(size)
        generator = torch.Generator(device=device).manual_seed(1)
        img0, img1 = (torch.rand(1, 3, height, width, device=device, generator=generator) for _ in range(2))
        pad = (0, (-width) % 64, 0, (-height) % 64)
        peer_input = torch.cat([torch.nn.functional.pad(x, pad) for x in (img0, img1)], 1)

        def call_ours():
            with torch.no_grad(), torch.autocast(**autocast):
                return runner(img0, img1, 0.5, flow_scale=1.0)

        def call_peer():
            with torch.no_grad(), torch.autocast(**autocast):
                return peer(peer_input, [4, 2, 1], timestep=0.5)[2][2]

        call_ours()                                 # compilation, capture, cuDNN's autotuning: untimed
        call_peer()
        rows = []
        for round_index in range(args.rounds):
            timing = measure_alternating({"ours": call_ours, "rife_m": call_peer}, device, warmup=5, reps=args.reps)
            row = {name: round(t.median_ms, 3) for name, t in timing.items()}
            row["ratio"] = round(row["ours"] / row["rife_m"], 3)
            rows.append(row)
            print(f"{size} round {round_index}: ours {row['ours']:.3f} ms, rife_m {row['rife_m']:.3f} ms, "
                  f"ratio {row['ratio']:.3f}", flush=True)
        report["rows"][size] = rows
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
