"""The GPU session's scripts, checked on the CPU: every command `benchmark/reproduce_perf.sh` would run names a script
that exists and flags that script accepts.

Why: device time is scarce and a session's commands run unattended; a renamed flag or a typo in a command added
without a GPU (as several were) would cost a whole stage. The script runs here with its commands stubbed out: bash
functions named python3, torchrun, timeout, nvidia-smi (four GPUs, so every stage and branch runs) and
tools/large_motion_runs.sh record each invocation instead of running it; then each recorded command's arguments go
through that script's own argparse parser (stopped right after parsing), and each run name of the large-motion
stage through the case list of tools/large_motion_runs.sh and train.py's parser.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEPARATOR = "\x1f"

STUBS = r"""
record() { local IFS=$'\x1f'; printf '%s\n' "$*" >> "$STUB_LOG"; }
python3() { record python3 "$@"; [[ "${1:-}" == "-" ]] && cat > /dev/null; return 0; }
torchrun() { record torchrun "$@"; }
timeout() { while [[ "${1:-}" == -* ]]; do shift; done; shift; "$@"; }
nvidia-smi() { if [[ "${1:-}" == -L ]]; then printf 'GPU 0\nGPU 1\nGPU 2\nGPU 3\n'; else echo "stub GPU, 1 MiB"; fi; }
tools/large_motion_runs.sh() { record large_motion_runs "${RUNS:-}" "$@"; }
"""


class ParsedOnly(Exception):
    """Raised right after a script's parser accepted its arguments: nothing else of the script runs."""


@pytest.fixture(scope="module")
def invocations(tmp_path_factory) -> list[list[str]]:
    """Every command reproduce_perf.sh runs with all its stages (in an empty folder: its rm/cp touch nothing here)."""
    folder = tmp_path_factory.mktemp("reproduce")
    (folder / ".peers" / "ECCV2022-RIFE").mkdir(parents=True)   # so the alternated comparison with RIFE_m runs too
    log = folder / "commands.txt"
    wrapper = folder / "wrapper.sh"
    wrapper.write_text(STUBS + f'\nsource "{REPO / "benchmark" / "reproduce_perf.sh"}" "$@"\n')
    result = subprocess.run(["bash", str(wrapper), str(folder / "out")], cwd=folder, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, STUB_LOG=str(log)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line.split(SEPARATOR) for line in log.read_text().splitlines()]


def script_and_args(command: list[str]) -> tuple[str, list[str]] | None:
    """(our script's path, its arguments) for a python3 or torchrun command that runs a repository script."""
    for index, word in enumerate(command[1:], start=1):
        if word.endswith(".py"):
            return word, command[index + 1:]
        if not word.startswith("-"):
            return None           # python3 -, python3 -c CODE, python3 -m MODULE: not a script of ours
    return None


def parse_only(script: str, args: list[str], monkeypatch) -> None:
    """Run ``script`` as __main__ with ``args`` until its argparse parser has parsed them; a rejected flag fails."""
    original = argparse.ArgumentParser.parse_args       # (our scripts all call parse_args, which refuses extras)

    def parse_then_stop(self, *positional, **keywords):
        original(self, *positional, **keywords)
        raise ParsedOnly

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.chdir(REPO)
    with pytest.raises(ParsedOnly):
        runpy.run_path(str(REPO / script), run_name="__main__")


def test_every_stage_and_branch_ran_under_the_stubs(invocations):
    scripts = {found[0] for command in invocations if (found := script_and_args(command))}
    assert {"train.py", "interpolate.py", "benchmark/bench_model.py", "benchmark/bench_loader.py",
            "benchmark/bench_pipeline.py", "benchmark/check_kernels.py", "benchmark/ablation.py",
            "benchmark/bench_peer_alternate.py",
            "tools/make_sample_data.py", "tools/video_to_vimeo.py"} <= scripts
    assert any(command[0] == "torchrun" for command in invocations)            # the scaling stage (4 stub GPUs)
    assert any(command[0] == "large_motion_runs" for command in invocations)   # the motion stage


def test_every_command_names_an_existing_script_and_flags_it_accepts(invocations, monkeypatch, capsys):
    checked = 0
    for command in invocations:
        found = script_and_args(command)
        if found is None or found[0].startswith(("/", "..")) or "$" in found[0]:
            continue              # the peers' timing script lives outside the repository
        script, args = found
        assert (REPO / script).is_file(), f"{script} (in: {' '.join(command)})"
        try:
            parse_only(script, args, monkeypatch)
        except SystemExit as stop:
            pytest.fail(f"{script} refused its arguments ({stop.code}): {' '.join(args)}\n{capsys.readouterr().err}")
        checked += 1
    assert checked >= 25


def test_the_test_files_the_gpu_stage_runs_exist(invocations):
    runs = [command for command in invocations if command[:3] == ["python3", "-m", "pytest"]]
    assert runs
    for command in runs:
        for word in command[3:]:
            if word.startswith("tests/"):
                assert (REPO / word).is_file(), word


def large_motion_variant(name: str, cur_psnr: str = "") -> tuple[str, list[str]]:
    """(training folder, train.py flags) that tools/large_motion_runs.sh gives the run ``name``, WORK being /w: its
    own case list run with its own `fast` array and `curated_threshold` and `best_percent` functions, taken from the
    script's text."""
    source = (REPO / "tools" / "large_motion_runs.sh").read_text()
    case_block = re.search(r"\n(\s*case \$\{run%_s\*\} in\n.*?\n\s*esac)\n", source, re.S).group(1)
    fast = re.search(r"^fast=\(.*\)", source, re.M).group(0)
    threshold, percent = (re.search(rf"^{function}\(\) \{{.*\}}$", source, re.M).group(0)
                          for function in ("curated_threshold", "best_percent"))
    snippet = (f'set -u; run="$1"; work=/w; data=/w/corpus; variant=(); {fast}\n{threshold}\n{percent}\n{case_block}\n'
               f'printf "%s\\n" "$data" "${{variant[@]}}"')
    env = dict(os.environ, CUR_PSNR=cur_psnr) if cur_psnr else {k: v for k, v in os.environ.items() if k != "CUR_PSNR"}
    result = subprocess.run(["bash", "-c", snippet, "_", name], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, f"run name {name}: {result.stdout.strip()} {result.stderr.strip()}"
    data, *flags = result.stdout.split("\n")[:-1]
    return data, flags


def test_every_large_motion_run_name_is_a_variant_whose_flags_train_py_accepts(invocations, monkeypatch):
    names = [name for command in invocations if command[0] == "large_motion_runs" for name in command[1].split()]
    assert names
    names += ["priorlr5e-5_s0", "priorema_s0", "priorctx_s0",      # the eleventh round's ranking (docs/LARGE_MOTION.md)
              "priorhalf_s0", "priorfast_s0", "priorfastema_s1",   # --refine_finest half's quality (docs/PERF.md 10.15)
              "prioranchor0.01_s0"]                                 # the thirteenth round's
    for name in names:
        data, flags = large_motion_variant(name)
        assert re.fullmatch(r"s\d+", name.rsplit("_", 1)[1]), f"run name {name} has no _s<seed> suffix"
        parse_only("train.py", ["--phase", "2", "--data_path", data, *flags], monkeypatch)


# run name -> (training folder under WORK=/w, the config fields in which the run differs from the defaults)
PRIOR = {"model.flow_prior": "dis"}
FAST = {**PRIOR, "model.refine_finest": "half", "model.flow_scales": (8, 4, 2)}     # the prior, the fast arrangement
LARGE_MOTION_VARIANTS = {
    "base_s0": ("/w/corpus", {}),
    "s24_s1": ("/w/corpus_s24", {}),
    "narrow_s0": ("/w/corpus_narrow", {}),
    "lr5_s0": ("/w/corpus", {"train.lr": 5e-4}),
    "fs842_s0": ("/w/corpus", {"model.flow_scales": (8, 4, 2)}),
    "teach0.05_s0": ("/w/corpus", {"loss.flow_teacher": 0.05}),
    "prior_s0": ("/w/corpus", PRIOR),
    "priornoter_s0": ("/w/corpus", {**PRIOR, "loss.ter": 0.0}),
    "priorlr5e-5_s0": ("/w/corpus", {**PRIOR, "train.lr": 5e-5}),
    "priorctx_s0": ("/w/corpus", {**PRIOR, "data.prior_from": "context"}),
    "prioranchor0.01_s0": ("/w/corpus", {**PRIOR, "loss.prior_anchor": 0.01}),
    "priorfast_s0": ("/w/corpus", FAST),
    "priorfastprev_s0": ("/w/corpus_prev", FAST),
    "priorfastcur_s0": ("/w/corpus_cur27", FAST),
    "priorfastcur36_s1": ("/w/corpus_cur36", FAST),
    "priorfastemacur30_s0": ("/w/corpus_cur30", {**FAST, "train.ema_decay": 0.999}),
    "priorfastfrozen_s0": ("/w/corpus", {**FAST, "train.freeze_flow": True}),
    "priorfastfrozencur36_s2": ("/w/corpus_cur36", {**FAST, "train.freeze_flow": True}),
    "priorfastfrozenbest33_s0": ("/w/corpus_best33", {**FAST, "train.freeze_flow": True}),
}


@pytest.mark.parametrize("name", sorted(LARGE_MOTION_VARIANTS))
def test_each_large_motion_variant_trains_on_its_corpus_with_its_flags(name):
    """What each run name of tools/large_motion_runs.sh trains with, read back through train.py's own config: the
    variants' meaning checked in a second each, so the script's end-to-end smoke test (tests/test_corpus.py) needs only
    a few of them."""
    from config import parse_train_argv
    expected_data, expected = LARGE_MOTION_VARIANTS[name]
    data, flags = large_motion_variant(name)
    assert data == expected_data
    cfg, _ = parse_train_argv(["--phase", "2", "--data_path", data, *flags])
    defaults, _ = parse_train_argv(["--phase", "2", "--data_path", data])
    changed = {f"{section}.{key}" for section in ("model", "train", "loss", "data")
               for key, value in vars(getattr(cfg, section)).items() if value != vars(getattr(defaults, section))[key]}
    assert changed == set(expected), f"{name}: {sorted(changed)}"
    for dotted, value in expected.items():
        section, key = dotted.split(".")
        assert getattr(getattr(cfg, section), key) == value, dotted
    assert large_motion_variant("priorfastcur_s0", cur_psnr="20")[0] == "/w/corpus_cur20"   # CUR_PSNR sets the default
