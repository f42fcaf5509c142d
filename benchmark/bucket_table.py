"""Per-motion-bucket PSNR of several benchmark reports side by side, as a Markdown table.

    python benchmark/bucket_table.py base_s0=r0.json base_s1=r1.json s24_s0=r2.json [--subset test]

Each argument is LABEL=REPORT (a ``--out`` JSON of any benchmark script; the label defaults to the file stem).
Rows: the motion buckets of measures/motion.py, then "all". Columns: count, the frame average and the classical
DIS baseline (from the first report: every report of one test set holds the same baselines), then each report's
PSNR, then the mean over labels that differ only in a trailing ``_s<seed>`` (the mean over seeds).

``--metric KEY`` puts another per-bucket value of the reports in the report columns instead of the prediction's
PSNR: a ``--components`` stage such as ``psnr_blend`` (before RefineNet's residual) or ``psnr_with_dis_mean``.
``--rows stride`` (Corpus.py reports) gives one row per temporal stride instead of per motion bucket: the mean of
the samples' values, from the samples' names ("<clip> s<stride> f<start>").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from benchmark.Corpus import stride_of  # noqa: E402
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


def stride_rows(result: dict, keys: tuple[str, ...], label: str) -> list[tuple[str, dict]]:
    """A report's samples grouped by the stride in their names: [("s1", {"count": n, key: mean, ...}), ..., ("all",
    ...)], each key averaged over the samples that have it; a one-line error where the names carry no stride."""
    samples = result.get("samples")
    if not isinstance(samples, list) or not samples:
        raise fail(f"{label}: no per-sample records (--rows stride needs them)")
    groups: dict[int, list[dict]] = {}
    for sample in samples:
        stride = stride_of(str(sample.get("name", "")))
        if stride is None:
            raise fail(f"{label}: sample {sample.get('name')!r} has no stride in its name (--rows stride is for "
                       "Corpus.py reports: \"<clip> s<stride> f<start>\")")
        groups.setdefault(stride, []).append(sample)

    def summary(members: list[dict]) -> dict:
        row = {"count": len(members)}
        for key in keys:
            values = [member[key] for member in members if key in member]
            if len(values) == len(members):
                row[key] = sum(values) / len(values)
        return row
    return [(f"s{stride}", summary(groups[stride])) for stride in sorted(groups)] + [("all", summary(samples))]


def table(reports: list[tuple[str, dict]], metric: str = "psnr", rows_by: str = "motion") -> str:
    seed_groups: dict[str, list[str]] = {}
    for label, _ in reports:
        seed_groups.setdefault(re.sub(r"_s\d+$", "", label), []).append(label)
    means = {group: labels for group, labels in seed_groups.items() if len(labels) > 1}
    header = ["motion (px)" if rows_by == "motion" else "stride", "count", "frame avg", "DIS flow",
              *[label for label, _ in reports],
              *[f"{group} (mean of {len(labels)})" for group, labels in means.items()]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if rows_by == "motion":
        names = [bucket for bucket, _, _ in MOTION_BUCKETS] + ["all"]
        per_report = {label: [*result["by_motion"], result] for label, result in reports}
    else:
        keys = ("psnr_frame_average", "psnr_dis", metric)
        grouped = {label: dict(stride_rows(result, keys, label)) for label, result in reports}
        names = list(grouped[reports[0][0]])
        if any(list(rows) != names for rows in grouped.values()):
            raise fail("--rows stride: the reports hold different strides (reports of different test sets?)")
        per_report = {label: [rows[name] for name in names] for label, rows in grouped.items()}
    for index, bucket in enumerate(names):
        rows = {label: per_report[label][index] for label, _ in reports}
        base = rows[reports[0][0]]
        cells = [bucket, str(base["count"])]
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
    parser.add_argument("--rows", choices=("motion", "stride"), default="motion",
                        help="one row per motion bucket (default) or per temporal stride (Corpus.py reports)")
    parser.add_argument("--metric", default="psnr",
                        help="which value fills the report columns (default psnr, the prediction's; e.g. psnr_blend, "
                             "psnr_with_dis_mean from --components)")
    args = parser.parse_args(argv)
    reports = [load(argument, args.subset) for argument in args.reports]
    missing = [label for label, result in reports if args.metric not in result]
    if missing:
        raise fail(f"--metric {args.metric}: not in the report(s) of {', '.join(missing)} (run with --components "
                   "for the stages)")
    print(table(reports, args.metric, args.rows))


if __name__ == "__main__":
    main()
