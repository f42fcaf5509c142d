#!/usr/bin/env bash
# Reproduces the GPU numbers of docs/PERF.md and the table of docs/ABLATIONS.md on one CUDA machine, from the
# repository root:
#   bash benchmark/reproduce_perf.sh OUT_DIR [STAGE ...]        (no stage names: all stages, in this order)
# Stages:
#   setup     the sample sets: data/sample_vimeo (448x256) and data/sample_720p (the same clip at 1280x720)
#   start     a fresh process's first optimizer step (Phase 2, batch 16), then 80 steps on the sample set
#   kernels   SSD Triton vs PyTorch and FlashAttention vs math parity, the SSD scan by chunk length at inference
#             shapes (benchmark/check_kernels.py)
#   infer4k   4K 2x inference of the Phase-2 model, eager and compiled (bench_model.py --compile_infer)
#   peers     the side-by-side rows: ours (Phases 1, 2) with bench_model.py --peer_table; RIFE_m and
#             EMA-VFI-small with PEER_PERF (a side-by-side timing script for the peers' own code, run with the same
#             definitions; default ../shared/bench/peer_perf.py, skipped when absent) when PEERS_DIR (default .peers)
#             holds their repositories (fetched, git-ignored, never copied into the project); ours and RIFE_m
#             timed call by call in turn in one process (benchmark/bench_peer_alternate.py) when
#             PEERS_DIR/ECCV2022-RIFE exists; then train.py's own step (CUDA graphs and eager) for Phases 1 and 2
#             with bench_model.py --trainer_step
#   loader    train.py's own steady samples/s (graphed, 320 steps of b16) on the 720p set (Phase 2) and on an
#             X4K-layout 2160x2160 fixture (Phase 3); the bare DataLoader on both
#   interp    interpolate.py 4x on the clip upscaled to 1080p, with the checkpoint of `start`
#   inference docs/PERF.md section 10 (issue 21): the GPU tests of the step graph and of inference; graphed vs eager
#             on the trained checkpoint of `start` (--parity_vs_eager); ours eager
#             and graphed at 256, 720p, 1080p (flow 1.0) and 4K (flow 0.25), and at 720p and 1080p with --flow_scales
#             8 4 2 (1080p also compiled+graphed), and at 720p and 1080p with --flow_prior dis (the DIS prior's CPU
#             cost beside); compiled+graphed at 1080p with RefineNet's finest level full and half (and half with
#             --flow_scales 8 4 2, that in Inductor's default mode and with --compile_mode tune-kernels, each with
#             the bf16 warps through ATen and through the Triton kernel); compiled+graphed at 1080p with and without
#             channel alignment,
#             then again in a second process (it reads Inductor's cache: the warm start); the footage pipeline's
#             stages (bench_pipeline.py) and interpolate.py 1080p 2x to PNG and to H.264 (x264 medium and faster, and
#             --encoder auto: NVENC where the card has one) with the checkpoint of `start`.
#             Peers: stage `peers`, in the same call
#   motion    docs/LARGE_MOTION.md: the corpus, then the issue's budget: the recipe with the classical flow prior
#             (--flow_prior dis) and the base, 9,000 steps each, the two sharing the GPU (about 1,000 s: each run has
#             about 8 minutes of the GPU alone), scored per motion bucket (tools/large_motion_runs.sh; needs data/cache
#             from make_corpus.py). The 2,000-step comparison of 2026-12-05 (base, prior x 2 seeds) and the script's
#             other variants run the same way, e.g.
#             RUNS="base_s0 prior_s0 prior_s1" MFS=0 tools/large_motion_runs.sh data/cache /tmp/lm/work OUT 20 480
#   ablation  benchmark/ablation.py on every visible GPU (--gpus when more than one): every Phase-1 variant,
#             ABL_STEPS (default 1500) steps at batch 16, seeds 0 and 1; then Phase 2 hybrid vs hybrid_inter
#             (ABL2_STEPS, default 1500, steps; seeds 0 and 1)
#   scaling   (needs 2+ GPUs, else skipped) torchrun data-parallel Phase 2 on 1, 2, 4 and all GPUs, batch 16 per
#             process, 120 steps on a 160-repeat view of the sample set, with the graphed step and with the eager
#             DDP step, and a table of steady samples/s with the linear-scaling efficiency of each
# Needs: torch, triton, timm, einops, opencv, tensorboard, tqdm; the mamba-ssm wheel
# (its Triton kernels; no CUDA extension needed) and imageio-ffmpeg, installed or as wheels in .whl/;
# data/cache/bigbuckbunny.mp4 (python tools/make_sample_data.py fetches it once).
# Every stage has a time limit, so one slow stage cannot eat a whole GPU session. Its commands are checked on the CPU
# (tests/test_gpu_scripts.py: each names an existing script and flags that script accepts).
set -uo pipefail
out=${1:-perf_out}; shift || true
stages=${*:-setup start kernels infer4k peers loader interp inference motion ablation scaling}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
want() { [[ " $stages " == *" $1 "* ]]; }
stage() { local limit=$1; shift; echo "=== [$(date +%T)] $*"; timeout "$limit" "$@"; echo "=== exit $? [$(date +%T)]"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
ABL_STEPS=${ABL_STEPS:-1500}
ABL2_STEPS=${ABL2_STEPS:-1500}
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
[[ "$ngpu" =~ ^[0-9]+$ ]] && [ "$ngpu" -ge 1 ] || ngpu=1
gpu_list=$(seq -s, 0 $((ngpu - 1)))

if want setup; then
  stage 60 python3 tools/make_sample_data.py --out data/sample_vimeo
  stage 90 python3 tools/video_to_vimeo.py data/cache/bigbuckbunny.mp4 data/sample_720p --size 1280x720 --stride 3 \
    --test_fraction 0.25 --test_position start
fi
if want start; then   # a fresh process: the first step compiles the Triton SSD kernels (pinned autotuning)
  rm -rf ckpt/perf_p2_* log/perf_p2
  stage 240 python3 train.py --phase 2 --data_path data/sample_vimeo --batch_size 16 --epochs 2 --steps_per_epoch 40 \
    --eval_interval 2 --warmup_steps 10 --lr 3e-4 --exp_name perf_p2 --log_every 20
  cp log/perf_p2/summary.json "$out/start_summary.json" 2>/dev/null
fi
want kernels && stage 240 python3 benchmark/check_kernels.py --ssd_chunks 64 128 256 --json "$out/kernels.json"
# 4K 2x inference, eager and compiled (interpolate.py --compile): about 2.5 minutes of compilation
want infer4k && stage 420 python3 benchmark/bench_model.py --phase 2 --infer 4k --compile_infer --reps 12 \
  --json "$out/infer4k.json"
if want peers; then
  for phase in 1 2; do
    stage 150 python3 benchmark/bench_model.py --phase "$phase" --peer_table --json "$out/peer_ours_p$phase.json"
  done
  for phase in 1 2; do   # train.py's own step: CUDA graphs and eager
    stage 240 python3 benchmark/bench_model.py --phase "$phase" --trainer_step --json "$out/trainer_p$phase.json"
  done
  if [ -d "${PEERS_DIR:-.peers}/ECCV2022-RIFE" ]; then   # ours and RIFE_m in turn, call by call (PERF.md 10.24)
    stage 420 python3 benchmark/bench_peer_alternate.py --peer_dir "${PEERS_DIR:-.peers}/ECCV2022-RIFE" \
      --json "$out/peer_alternate.json"
  fi
  peer_perf=${PEER_PERF:-../shared/bench/peer_perf.py}
  if [ -d "${PEERS_DIR:-.peers}" ] && [ -f "$peer_perf" ]; then
    for peer in rife_m emavfi_small; do
      stage 150 python3 "$peer_perf" "$peer" "$(realpath "$out")/peer_$peer.json"
    done
  fi
fi
if want loader; then   # train.py's steady rate on full-size frames; compare with the trainer_p2 b16 graph row
  python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from benchmark.ablation import one_epoch_view; one_epoch_view('data/sample_720p', Path('/tmp/view_720'), 60); one_epoch_view('data/sample_vimeo', Path('/tmp/view_vimeo'), 40)"
  stage 90 python3 benchmark/bench_loader.py --make_x4k /tmp/x4k_fixture --clips 2 --frames 17 --size 2160
  rm -rf ckpt/perf_720_* log/perf_720 ckpt/perf_x4k_* log/perf_x4k
  stage 200 python3 train.py --phase 2 --data_path /tmp/view_720 --batch_size 16 --epochs 1 --steps_per_epoch 320 \
    --warmup_steps 10 --exp_name perf_720 --log_every 80 --num_workers 8
  cp log/perf_720/summary.json "$out/loader_720_summary.json" 2>/dev/null
  stage 200 python3 train.py --phase 3 --data_path /tmp/view_vimeo --x4k_path /tmp/x4k_fixture --batch_size 16 \
    --epochs 1 --steps_per_epoch 320 --warmup_steps 10 --exp_name perf_x4k --log_every 80 --num_workers 8
  cp log/perf_x4k/summary.json "$out/loader_x4k_summary.json" 2>/dev/null
  stage 90 python3 benchmark/bench_loader.py --data_path data/sample_720p --batch_size 16 --json "$out/loader_720.json"
  stage 90 python3 benchmark/bench_loader.py --phase 3 --data_path data/sample_vimeo --x4k_path /tmp/x4k_fixture \
    --batch_size 16 --curriculum --json "$out/loader_x4k.json"
fi
if want interp; then
  ffmpeg_bin=$(python3 -c 'import imageio_ffmpeg as i; print(i.get_ffmpeg_exe())')
  "$ffmpeg_bin" -y -loglevel error -i data/cache/bigbuckbunny.mp4 -vf scale=1920:1080:flags=lanczos \
    -c:v libx264 -crf 16 -pix_fmt yuv420p -an /tmp/bbb1080.mp4
  stage 240 python3 interpolate.py --model perf_p2_last --input /tmp/bbb1080.mp4 --output /tmp/bbb1080_4x.mp4 \
    --multi 4 --no_progress --overwrite --report "$out/interp.json"
  # Compiled ahead of time (docs/PERF.md 10.9): the first process compiles and saves, the second loads; each
  # report's summary has the start-up steps and the compiled file's record
  for run in cold warm; do
    stage 300 python3 interpolate.py --model perf_p2_last --input /tmp/bbb1080.mp4 --output /tmp/bbb1080_aot.mp4 \
      --multi 2 --no_progress --overwrite --aot_compile --report "$out/interp_aot_$run.json"
  done
fi
if want inference; then
  stage 300 python3 -m pytest -q -p no:cacheprovider -rs tests/test_step_graph.py tests/test_inference.py \
    tests/test_ops.py   # GPU tests (and the CPU ones of those files)
  # Parity on the trained checkpoint of `start`: every test pair graphed and eager, bf16 and fp32 (PERF.md 10.5)
  for amp in bf16 fp32; do
    stage 200 python3 benchmark/Vimeo90K.py --model perf_p2_last --path data/sample_vimeo --amp "$amp" --cuda_graph on \
      --parity_vs_eager --no_progress --out "$out/parity_$amp.json"
  done
  stage 300 python3 benchmark/bench_model.py --phase 2 --infer 256@1.0 720p@1.0 1080p@1.0 4k@0.25 --infer_only \
    --cuda_graph on --flops --json "$out/infer_graphed.json"
  # A model with the classical flow prior (--flow_prior dis): eager and graphed at 720p and 1080p, its GFLOP, and the
  # DIS prior's CPU ms per pair at each (one core, prior_ms; docs/PERF.md 10.4)
  stage 300 python3 benchmark/bench_model.py --phase 2 --flow_prior dis --infer 720p@1.0 1080p@1.0 --infer_only \
    --cuda_graph on --flops --json "$out/infer_graphed_prior.json"
  # The same with the flow blocks one octave coarser (--flow_scales 8 4 2; docs/PERF.md 10.2): its quality is
  # tools/large_motion_runs.sh's fs842 run
  stage 420 python3 benchmark/bench_model.py --phase 2 --flow_scales 8 4 2 --infer 720p@1.0 1080p@1.0 --infer_only \
    --cuda_graph on --flops --compile_infer --json "$out/infer_graphed_fs842.json"
  # RefineNet's finest level full and half resolution in one process, then half with the coarser flow blocks, compiled
  # + graphed at 1080p (docs/PERF.md 10.15; their quality: the runs script's priorhalf and priorfast)
  stage 420 python3 benchmark/bench_model.py --phase 2 --infer 1080p@1.0 --infer_only --cuda_graph on --compile_infer \
    --refine_finest full half --json "$out/infer_refine_finest.json"
  stage 300 python3 benchmark/bench_model.py --phase 2 --infer 1080p@1.0 --infer_only --cuda_graph on --compile_infer \
    --refine_finest half --flow_scales 8 4 2 --json "$out/infer_refine_half_fs842.json"
  # That fast arrangement in Inductor's default mode and with its kernel tuning (--compile_mode tune-kernels), each with
  # the half-precision warps through ATen and through the Triton kernel (docs/PERF.md 10.17, 10.18), with the kernels
  # by family
  stage 900 python3 benchmark/bench_model.py --phase 2 --infer 1080p@1.0 --infer_only --cuda_graph on --compile_infer \
    --refine_finest half --flow_scales 8 4 2 --warp_kernel aten triton --compile_mode default tune-kernels \
    --kernel_profile --json "$out/infer_fast_tuned.json"
  # Cold: the compiled 1080p rows with the flow estimator's channel alignment and without (docs/PERF.md 10.3), each
  # compiled from scratch in one process; warm: a second process finds the aligned graph in Inductor's cache
  stage 540 python3 benchmark/bench_model.py --phase 2 --infer 720p@1.0 1080p@1.0 --infer_only --compile_infer \
    --cuda_graph on --align_channels on,off --json "$out/infer_compiled_cold.json"
  stage 420 python3 benchmark/bench_model.py --phase 2 --infer 720p@1.0 1080p@1.0 --infer_only --compile_infer \
    --cuda_graph on --align_channels on --json "$out/infer_compiled_warm.json"
  # 4K with the model on half-size frames (--work_scale 0.5, docs/PERF.md 10.7): eager, graphed and compiled + graphed,
  # with its GFLOP; beside the full-size 4K row of infer_graphed.json above
  stage 540 python3 benchmark/bench_model.py --phase 2 --infer 4k@0.25 --infer_only --cuda_graph on --flops \
    --work_scale 0.5 --compile_infer --json "$out/infer_4k_work_scale_0.5.json"
  # Compiled + graphed at 720p, the 720p target against RIFE_m (--compile_infer compiles the last --infer size only)
  stage 300 python3 benchmark/bench_model.py --phase 2 --infer 720p@1.0 --infer_only --cuda_graph on --compile_infer \
    --json "$out/infer_compiled_720p.json"
  stage 240 python3 benchmark/bench_pipeline.py --model_ms 13 --frames 96 --outputs folder,mp4 --io_workers 8,auto,16
  python3 - <<'PY'
import cv2, os
os.makedirs("/tmp/frames1080", exist_ok=True)
video = cv2.VideoCapture("data/cache/bigbuckbunny.mp4")
for index in range(96):
    ok, frame = video.read()
    if not ok:
        break
    cv2.imwrite(f"/tmp/frames1080/{index:05d}.png", cv2.resize(frame, (1920, 1080), interpolation=cv2.INTER_LANCZOS4))
PY
  stage 180 python3 interpolate.py --model perf_p2_last --input /tmp/frames1080 --output /tmp/out1080_png --multi 2 \
    --no_progress --overwrite
  stage 180 python3 interpolate.py --model perf_p2_last --input /tmp/frames1080 --output /tmp/out1080.mp4 --multi 2 \
    --input_fps 24 --encoder libx264 --no_progress --overwrite
  # x264 at `medium` makes about 4 frames/s of 1080p per core here (docs/PERF.md 10): whether 16 cores keep up
  stage 180 python3 interpolate.py --model perf_p2_last --input /tmp/frames1080 --output /tmp/out1080f.mp4 --multi 2 \
    --input_fps 24 --encoder libx264 --preset faster --no_progress --overwrite
  # The default encoder choice: NVENC on a card that has one (docs/PERF.md 10.11), else libx264 medium again
  stage 180 python3 interpolate.py --model perf_p2_last --input /tmp/frames1080 --output /tmp/out1080a.mp4 --multi 2 \
    --input_fps 24 --encoder auto --no_progress --overwrite
fi
if want motion; then
  RUNS="prior_s0 base_s0" MFS=0 stage 1500 tools/large_motion_runs.sh data/cache /tmp/lm/work "$out/motion" 90 1150
fi
if want ablation; then
  common="--data_path data/sample_vimeo --batch_size 16 --crop_size 256 --num_workers 8"
  [ "$ngpu" -gt 1 ] && common="$common --gpus $gpu_list"
  echo "ablation on $ngpu GPU(s)"
  stage $((3600 / ngpu + 300)) python3 benchmark/ablation.py $common --steps "$ABL_STEPS" --seeds 0,1 \
    --out "$out/ablation_p1/table.md"
  stage $((1200 / ngpu + 300)) python3 benchmark/ablation.py $common --steps "$ABL2_STEPS" --seeds 0,1 --phase 2 \
    --variants hybrid,hybrid_inter --out "$out/ablation_p2/table.md"
fi
if want scaling; then
  if [ "$ngpu" -lt 2 ]; then
    echo "scaling: skipped ($ngpu GPU visible, needs at least 2)"
  else
    # 160 repeats: 120 steps of batch 16 on each of 4 ranks fit in one epoch, so every run takes the same 120 steps
    # (a shorter epoch on more ranks leaves the warm-up and capture a larger share of the steady time).
    python3 -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from benchmark.ablation import one_epoch_view; one_epoch_view('data/sample_vimeo', Path('/tmp/scale_view'), 160)"
    scale="--phase 2 --data_path /tmp/scale_view --batch_size 16 --epochs 1 --steps_per_epoch 120 --warmup_steps 10 \
      --log_every 40"
    counts=""
    for n in 1 2 4; do [ "$n" -le "$ngpu" ] && counts="$counts $n"; done
    [[ " $counts " == *" $ngpu "* ]] || counts="$counts $ngpu"
    for n in $counts; do
      for mode in graph eager; do
        name="scale_${mode}_g$n"
        rm -rf ckpt/"$name"* log/"$name"
        flag=$([ "$mode" = eager ] && echo "--cuda_graph off" || echo "--cuda_graph on")
        stage 300 torchrun --standalone --nproc_per_node="$n" train.py $scale --exp_name "$name" $flag
        cp "log/$name/summary.json" "$out/$name.json" 2>/dev/null
      done
    done
    python3 - "$out" $counts <<'PY'
import json, sys
from pathlib import Path
out, counts = Path(sys.argv[1]), [int(n) for n in sys.argv[2:]]
def rate(name):
    try:
        return json.loads((out / f"{name}.json").read_text()).get("steady_samples_per_sec")
    except (OSError, ValueError):
        return None
print("| step | GPUs | steady samples/s | vs n x 1 GPU of the same step |")
print("|---|---:|---:|---:|")
for mode in ("graph", "eager"):
    base = rate(f"scale_{mode}_g1")
    for n in counts:
        r = rate(f"scale_{mode}_g{n}")
        eff = f"{r / (n * base):.2f}" if r and base else "-"
        print(f"| {mode} | {n} | {f'{r:.1f}' if r else '-'} | {eff} |")
PY
  fi
fi
exit 0
