"""One line that explains a short training run: the data set, untrained -> trained PSNR, and the frame average.

``make demo`` ends with it::

    python benchmark/demo_summary.py --report log/demo_phase1/benchmark.json --name "Big Buck Bunny sample"
    demo: Big Buck Bunny sample (75 train / 20 test triplets, 448x256): PSNR untrained 25.064 dB -> trained
          25.443 dB; frame average 25.436 dB (trained: 0.006 dB above it)

The trained PSNR and the frame-average PSNR come from the benchmark report (``benchmark/Vimeo90K.py --out``). The
untrained PSNR is measured here: the checkpoint's architecture is built afresh with the run's seed, which gives
the weights the run started from, and scored on the same samples under the same protocol. A Vimeo90K-layout
folder is assumed (``tri_trainlist.txt``, ``tri_testlist.txt``, ``sequences/``), as the demo's sample data has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # run as a script: make the repository importable
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402

from benchmark import Vimeo90K  # noqa: E402
from benchmark.eval_core import BenchmarkError, Evaluator, Subset, exit_on_user_error  # noqa: E402
from checkpoint import starting_model_from_checkpoint  # noqa: E402


def count_lines(path: Path) -> int:
    """Non-blank lines of a list file; 0 when it does not exist."""
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def frame_size(samples: Subset) -> str:
    """"WxH" of the first ground-truth frame."""
    image = cv2.imread(str(samples.samples[0].gt), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise BenchmarkError(f"cannot read image {samples.samples[0].gt}")
    return f"{image.shape[1]}x{image.shape[0]}"


def untrained_psnr(checkpoint: Path, subset: Subset, device: torch.device) -> float:
    """Mean PSNR of the checkpoint's architecture with the weights its run started from (seeded like train.py)."""
    model, _ = starting_model_from_checkpoint(str(checkpoint), device)
    return Evaluator(model, subset.protocol, device, progress=False).evaluate(subset.samples)["psnr"]


def summary_line(name: str, train_count: int, test_count: int, size: str, untrained: float, trained: float,
                 frame_average: float) -> str:
    """The demo's closing line; says in words whether the trained model beat the frame average.

    Two decimals, or three when two would print the trained PSNR and the frame average as the same number.
    """
    digits = 2 if f"{trained:.2f}" != f"{frame_average:.2f}" else 3
    difference = trained - frame_average
    verdict = f"{abs(difference):.{digits}f} dB {'above' if difference >= 0 else 'below'} it"
    return (f"demo: {name} ({train_count} train / {test_count} test triplets, {size}): PSNR untrained "
            f"{untrained:.{digits}f} dB -> trained {trained:.{digits}f} dB; frame average {frame_average:.{digits}f} dB "
            f"(trained: {verdict})")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", required=True, help="JSON written by benchmark/Vimeo90K.py --out")
    parser.add_argument("--name", default=None, help="what to call the data set (default: its folder name)")
    parser.add_argument("--device", default="cpu", help="torch device for the untrained model (default cpu)")
    args = parser.parse_args(argv)
    with exit_on_user_error("demo_summary"):
        report_path = Path(args.report)
        if not report_path.is_file():
            raise BenchmarkError(f"benchmark report not found: {report_path} (run benchmark/Vimeo90K.py --out first)")
        report = json.loads(report_path.read_text())
        if report.get("benchmark") != "Vimeo90K" or "test" not in report.get("results", {}):
            raise BenchmarkError(f"{report_path} is not a Vimeo90K benchmark report")
        result = report["results"]["test"]
        root = Path(report["dataset"])
        samples = Vimeo90K.enumerate_samples(root)
        if report.get("limit"):
            samples = samples[:report["limit"]]
        subset = Subset("test", Vimeo90K.PROTOCOL, tuple(samples))
        untrained = untrained_psnr(Path(report["checkpoint"]), subset, torch.device(args.device))
        line = summary_line(args.name or root.name, count_lines(root / "tri_trainlist.txt"), len(samples),
                            frame_size(subset), untrained, result["psnr"], result["psnr_frame_average"])
    print(line)
    return line


if __name__ == "__main__":
    main()
