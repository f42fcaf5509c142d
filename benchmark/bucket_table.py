"""Per-motion-bucket PSNR of several benchmark reports side by side, as a Markdown table.

    python benchmark/bucket_table.py base_s0=r0.json base_s1=r1.json s24_s0=r2.json [--subset test]

Each argument is LABEL=REPORT (a ``--out`` JSON of any benchmark script; the label defaults to the file stem).
Rows: the motion buckets of measures/motion.py, then "all". Columns: count, the frame average and the classical
DIS baseline (from the first report: every report of one test set holds the same baselines), then each report's
PSNR, then the mean over labels that differ only in a trailing ``_s<seed>`` (the mean over seeds).

``--metric KEY`` puts another per-bucket value of the reports in the report columns instead of the prediction's
PSNR: a ``--components`` stage such as ``psnr_blend`` (before RefineNet's residual) or ``psnr_with_dis_mean``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from measures.motion import MOTION_BUCKETS  # noqa: E402


def fail(message: str) -> SystemExit:
    return SystemExit(f"bucket_table: error: {message}")


def load(argument: str, subset: str) -> tuple[str, dict]:
    """LABEL=REPORT -> (label, the report's results for ``subset``); a one-line error naming the file otherwise."""
    label, _, path = argument.rpartition("=")
    path = Path(path)
    if not path.is_file():
        raise fail(f"report not found: {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise fail(f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read {path}: {error}") from None
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, dict):
        raise fail(f"{path} is not a benchmark report (no \"results\" object)")
    if subset not in results:
        raise fail(f"{path} has no subset {subset!r} (it has {', '.join(results) or 'none'})")
    result = results[subset]
    if not isinstance(result, dict) or "by_motion" not in result:
        raise fail(f"{path} has no per-motion results for {subset!r} (run without --no_motion)")
    buckets = result["by_motion"]
    if (not isinstance(buckets, list) or len(buckets) != len(MOTION_BUCKETS) or "count" not in result
            or not all(isinstance(bucket, dict) and "count" in bucket for bucket in buckets)):
        raise fail(f"{path}: the per-motion results for {subset!r} are not {len(MOTION_BUCKETS)} buckets with counts "
                   "(a report of another version?)")
    return label or path.stem, result


def table(reports: list[tuple[str, dict]], metric: str = "psnr") -> str:
    seed_groups: dict[str, list[str]] = {}
    for label, _ in reports:
        seed_groups.setdefault(re.sub(r"_s\d+$", "", label), []).append(label)
    means = {group: labels for group, labels in seed_groups.items() if len(labels) > 1}
    header = ["motion (px)", "count", "frame avg", "DIS flow", *[label for label, _ in reports],
              *[f"{group} (mean of {len(labels)})" for group, labels in means.items()]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first = reports[0][1]
    for index, (bucket, _, _) in enumerate([*MOTION_BUCKETS, ("all", 0, 0)]):
        rows = {label: (result["by_motion"][index] if bucket != "all" else result) for label, result in reports}
        base = rows[reports[0][0]]
        cells = [bucket, str(base["count"] if bucket != "all" else first["count"])]
        cells += [f"{base[key]:.2f}" if key in base else "-" for key in ("psnr_frame_average", "psnr_dis")]
        cells += [f"{rows[label][metric]:.2f}" if metric in rows[label] else "-" for label, _ in reports]
        for labels in means.values():
            values = [rows[label][metric] for label in labels if metric in rows[label]]
            cells.append(f"{sum(values) / len(values):.2f}" if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="LABEL=REPORT.json")
    parser.add_argument("--subset", default="test", help="which subset of the reports (default test)")
    parser.add_argument("--metric", default="psnr",
                        help="which value fills the report columns (default psnr, the prediction's; e.g. psnr_blend, "
                             "psnr_with_dis_mean from --components)")
    args = parser.parse_args(argv)
    reports = [load(argument, args.subset) for argument in args.reports]
    missing = [label for label, result in reports if args.metric not in result]
    if missing:
        raise fail(f"--metric {args.metric}: not in the report(s) of {', '.join(missing)} (run with --components "
                   "for the stages)")
    print(table(reports, args.metric))


if __name__ == "__main__":
    main()
