#!/usr/bin/env bash
# Reproduces the GPU numbers of docs/PERF.md on a CUDA machine (one or two GPUs), from the repository root:
#   bash benchmark/reproduce_perf.sh OUT_DIR [STAGE ...]        (no stage names: all stages)
# Stages (run in this order): kernels data train_p1 ddp train_p2 bench_p2 compile bench_p1 bench_p1_b16
# Needs: torch, triton, timm, einops, opencv, tensorboard; the mamba-ssm wheel (bash ../shared/gpu/build-wheels.sh)
# installed or in .whl/; data/cache/bigbuckbunny.mp4 (python tools/make_sample_data.py fetches it).
# Every stage has a time limit so that one slow stage cannot eat a whole GPU session.
set -uo pipefail
out=${1:-perf_out}; shift || true
stages=${*:-kernels data train_p1 ddp train_p2 bench_p2 compile bench_p1 bench_p1_b16}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1 OMP_NUM_THREADS=4
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
want() { [[ " $stages " == *" $1 "* ]]; }
stage() { local limit=$1; shift; echo "=== [$(date +%T)] $*"; timeout "$limit" "$@"; echo "=== exit $?"; }
ngpu=$(python3 -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
common="--data_path data/sample_vimeo --batch_size 4 --crop_size 256 --num_workers 6 --log_every 19"
want kernels && stage 420 python3 benchmark/check_kernels.py --json "$out/kernels.json"
want data && stage 60 python3 tools/make_sample_data.py --out data/sample_vimeo
# Phase 1: ~250 optimizer steps (75 training triplets, 18 steps/epoch), validation every 2 epochs.
want train_p1 && rm -rf ckpt/gpu_p1_* log/gpu_p1 && \
  stage 150 python3 train.py --phase 1 $common --epochs 14 --eval_interval 2 --warmup_steps 30 --exp_name gpu_p1
if want ddp && [ "$ngpu" -ge 2 ]; then
  rm -rf ckpt/gpu_ddp_* log/gpu_ddp
  stage 80 torchrun --standalone --nproc_per_node=2 train.py --phase 1 $common --epochs 4 --eval_interval 2 \
    --warmup_steps 5 --exp_name gpu_ddp --resume gpu_p1_best
fi
# Phase 2 warm-started from Phase 1 (the spec's recipe).
want train_p2 && rm -rf ckpt/gpu_p2_* log/gpu_p2 && \
  stage 100 python3 train.py --phase 2 $common --epochs 10 --eval_interval 2 --warmup_steps 20 --exp_name gpu_p2 \
    --resume gpu_p1_best
want bench_p2 && stage 90 python3 benchmark/bench_model.py --phase 2 --modes hybrid --ssd_backends triton --batch 4 \
  --size 256 --reps 10 --infer 1080p 2k 4k --compare_unchunked_warp --json "$out/bench_p2.json"
want compile && stage 150 python3 benchmark/bench_model.py --phase 1 --modes hybrid --ssd_backends triton \
  --batch 4 --size 256 --reps 20 --compile --json "$out/bench_p1_compile.json"
want bench_p1 && stage 80 python3 benchmark/bench_model.py --phase 1 --modes hybrid mamba2_only gated_attn_only \
  --ssd_backends triton torch --batch 4 --size 256 --reps 20 --json "$out/bench_p1.json"
want bench_p1_b16 && stage 60 python3 benchmark/bench_model.py --phase 1 --modes hybrid --ssd_backends torch triton \
  --batch 16 --size 256 --reps 10 --json "$out/bench_p1_b16.json"
exit 0
