#!/usr/bin/env bash
# The docs/LARGE_MOTION.md experiment on one GPU: build the corpus, train Phase 2 from scratch in several runs that
# share the GPU (same wall clock, same steps), score each run's last checkpoint on the corpus's held-out clip per
# motion bucket, and print the tables.
#
#   tools/large_motion_runs.sh CACHE WORK OUT [EPOCHS] [LIMIT_S]
#
# CACHE: tools/make_corpus.py's cache (bigbuckbunny.mp4 and debian/ with the unpacked clips: runs offline).
# WORK: scratch folder (corpus, checkpoints, logs). OUT: reports, training logs and tables.
# EPOCHS x 100 steps per run (default 10), batch 16, crop 256; a run still going after LIMIT_S seconds
# (default 360) is stopped and scored from its last saved epoch (the table says how many steps it made).
# Runs (RUNS, default "base_s0 base_s1 s24_s0 s24_s1"; the name's prefix picks the variant, its _s<N> the seed):
#   base: strides 1-4 (the corpus as built), lr 2e-4;
#   s24:  the same corpus without its stride-1 training triplets (more of the signal from large motion);
#   lr5:  base with lr 5e-4;
#   teach: base with the DIS flow teacher (--flow_teacher 0.01); teach<W> (e.g. teach0.05) with weight W;
#   fs842: base with the flow blocks one octave coarser (--flow_scales 8 4 2: a quarter of the flow arithmetic,
#          docs/PERF.md 10.2); fs842teach: the same with the teacher at 0.01;
#   prior: base with the classical flow prior (--flow_prior dis: the flow estimator starts from the pair's DIS flows,
#          which the loader's workers compute, about 13 ms of one core per 256x256 sample); priorteach: the prior
#          and the teacher at 0.01 (twice that loader cost);
#   priornoter: the prior without the ternary (census) term of the loss (--ter_weight 0: LapLoss alone scores the
#          pixels; the CPU toy's RefineNet residual stopped costing PSNR on the held-out clip, LARGE_MOTION seventh round);
#   noter: base with --ter_weight 0;
#   priorlr<LR> (e.g. priorlr5e-5): the prior with lr LR (the learned updates move less far from the prior per step;
#          LARGE_MOTION eleventh round); priorema: the prior with an EMA of the weights (--ema_decay 0.999), which
#          the held-out scoring and the checkpoint's evaluation use (the high-lr jitter of the eleventh round averaged);
#          priorctx: the prior's DIS on each crop and 64 px of the frame around it (--prior_from context), nearer to test
#          time's whole frame than the crop alone (about 2.3x the loaders' DIS time: WORKERS matter).
#   priorhalf: the prior with RefineNet's finest level at 1/2 (--refine_finest half, docs/PERF.md 10.15: less
#          full-resolution arithmetic at inference); priorfast: that and the coarser flow blocks (--flow_scales 8 4 2);
#          priorfastema: priorfast with priorema's EMA (LARGE_MOTION twelfth round); prioranchor<W> (e.g.
#          prioranchor0.01): the prior with --prior_anchor W (the flow held to the prior's where moving off it did not
#          improve the warp; thirteenth round).
#   priorfastprev: priorfast on the corpus without the eighteenth round's clips (opencv-doc's box and cup);
#   priorfastcur, priorfastemacur: priorfast and priorfastema on the corpus built with --min_classical_psnr CUR_PSNR
#          (default 27): training spans whose classical interpolation scores below it left out (eighteenth round);
#          priorfastcur<DB>, priorfastemacur<DB> (e.g. priorfastcur30): the same with that threshold instead.
#   priorfastfrozen, priorfastfrozencur[<DB>]: priorfast (on the whole or the curated corpus) with --freeze_flow: the
#          flow stays the prior's, the blend and RefineNet's residual learn (twentieth round).
#   priorfastfrozenbest<PCT> (e.g. priorfastfrozenbest33): priorfastfrozen on each training clip's best PCT% of its
#          triplets by the classical interpolation's score (make_corpus.py --best_per_clip: every clip keeps its
#          cleanest spans, where one threshold keeps almost none of a noisy clip's), derived from the lowest *cur
#          threshold's scored corpus (one scored at 0 dB, keeping all, when no *cur run asks for a threshold).
# Every variant trains on the corpus as make_corpus.py builds it by default (since the eighth round with the
# moving-camera clips); narrow and priornarrow are base and prior on the corpus of rounds one to seven (without them).
# With MFS=1 (default) each run is also scored with --motion_flow_scale (flow scale halved from 32 px of motion).
# With TTA=1 (default 0) each run is also scored with --tta (the prediction averaged with the one on both frames turned
# by 180 degrees, the prior's flows with them; table columns <variant>_tta_s<seed>).
# With EVAL_EVERY=N each run also scores the corpus's held-out clip every N epochs while it trains, and curve.md tabulates
# those scores by step: how the held-out PSNR moves with training (a diagnostic: no checkpoint is chosen by it, the
# tables score each run's last checkpoint). Default: once, at the last epoch.
# With VAL_CLIP=NAME (e.g. vtest) that clip is left out of every training corpus and its triplets (VAL_STEP frames
# apart, default 8) make a validation set of their own: every run is also scored on it (table_val.md, eval_*_val.json),
# so a choice among runs (a threshold, a schedule) can be made on footage the held-out clip's score did not pick.
# Not with a --skip_clips in CORPUS_ARGS, nor with the *narrow and *prev variants (which set their own).
set -euo pipefail
cache=$1; work=$2; out=$3; epochs=${4:-10}; limit=${5:-360}
python=${PYTHON:-python3}
# Smoke tests only (defaults are the experiment): TRAIN_EXTRA="--model_size tiny", STEPS=2, BATCH=2, CROP=64,
# EVAL_LIMIT=2, CORPUS_ARGS="--no_bundled --clips DIR --crop 64".
steps=${STEPS:-100}; batch=${BATCH:-16}; crop=${CROP:-256}; extra=${TRAIN_EXTRA:-}
limit_eval=${EVAL_LIMIT:+--limit $EVAL_LIMIT}; corpus_args=${CORPUS_ARGS:-}
val_clip=${VAL_CLIP:-}
if [[ -n $val_clip ]]; then
    if [[ " $corpus_args ${RUNS:-} " == *--skip_clips* || " ${RUNS:-} " == *narrow* || " ${RUNS:-} " == *prev* ]]; then
        echo "VAL_CLIP=$val_clip: not with a --skip_clips in CORPUS_ARGS or the *narrow / *prev runs" >&2
        exit 2
    fi
fi
mkdir -p "$work" "$out"
start=$(date +%s)
if [[ -n $val_clip ]]; then
    # Built first, from every clip (its training list is not used): the clip's triplets as its test list.
    $python tools/make_corpus.py --cache "$cache" --out "$work/corpus_val_$val_clip" --workers 4 $corpus_args \
        --test_clips "$val_clip" --test_step "${VAL_STEP:-8}" | tee "$out/corpus_val.log"
    corpus_args="$corpus_args --skip_clips $val_clip"
fi
$python tools/make_corpus.py --cache "$cache" --out "$work/corpus" --workers 4 $corpus_args | tee "$out/corpus.log"
# The stride 2-4 view: the same sequences, a training list without stride 1 (the test list is unchanged).
mkdir -p "$work/corpus_s24"
ln -sfn "$work/corpus/sequences" "$work/corpus_s24/sequences"
cp "$work/corpus/tri_testlist.txt" "$work/corpus/corpus.json" "$work/corpus_s24/"
$python - "$work/corpus" "$work/corpus_s24" <<'PY'
import json, sys
source, target = sys.argv[1:]
triplets = json.load(open(f"{source}/corpus.json"))["triplets"]
names = [n for n in open(f"{source}/tri_trainlist.txt").read().split() if triplets[n][1] >= 2]
open(f"{target}/tri_trainlist.txt", "w").write("\n".join(names) + "\n")
print(f"stride 2-4 training list: {len(names)} triplets")
PY
read -r -a runs <<< "${RUNS:-base_s0 base_s1 s24_s0 s24_s1}"
# Loader workers per run (WORKERS; default: the host's cores less 4, shared by the runs, 3 to 10 each: 3 for four runs
# on a 16-core host, 10 for one run alone, whose prior flows then keep the GPU fed).
# (nproc without OMP_NUM_THREADS: GNU nproc reports that variable's value when it is set.)
workers=${WORKERS:-$(( ($(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) - 4) / ${#runs[@]} ))}
(( workers < 3 )) && workers=3
(( workers > 10 )) && workers=10
# The corpus without clips added in a later round (a tools/make_corpus.py tuple of names), of those this build has:
# the same build without them, so its test triplets are the same. corpus_without FOLDER TUPLE
corpus_without() {
    local skip
    skip=$($python - "$work/corpus/corpus.json" "$2" <<'PY'
import json, sys
import tools.make_corpus as make_corpus
built = {clip["name"] for clip in json.load(open(sys.argv[1]))["clips"]}
print(",".join(name for name in getattr(make_corpus, sys.argv[2]) if name in built))
PY
)
    $python tools/make_corpus.py --cache "$cache" --out "$work/$1" --workers 4 $corpus_args \
        ${skip:+--skip_clips "$skip"} | tee "$out/$1.log"
}
# Rounds one to seven's corpus (before the moving-camera clips of the eighth round), for the *narrow variants; the
# corpus before the eighteenth round's clips (opencv-doc's box and cup), for the *prev variants.
if [[ " ${runs[*]} " == *narrow* ]]; then corpus_without corpus_narrow ADDED_IN_ROUND_EIGHT; fi
if [[ " ${runs[*]} " == *prev* ]]; then corpus_without corpus_prev ADDED_IN_ROUND_EIGHTEEN; fi
# The curated corpora, for the *cur variants: the same clips, training spans that linear motion does not explain left
# out, one corpus per threshold (the number after "cur" in the run's name, else CUR_PSNR). The lowest threshold's is
# built from the clips (scoring every training triplet: minutes), the others derived from its scores (--from_corpus).
# sorted_unique NUMBER...: the numbers in increasing order, each once, on one line (for read -a)
sorted_unique() { printf '%s\n' "$@" | sort -g -u | tr '\n' ' '; }
curated_threshold() { local name=${1%_s*}; local digits=${name##*cur}; echo "${digits:-${CUR_PSNR:-27}}"; }
thresholds=()
for run in "${runs[@]}"; do [[ ${run%_s*} == *cur* ]] && thresholds+=("$(curated_threshold "$run")"); done
best_percent() { local name=${1%_s*}; echo "${name##*best}"; }
percents=()
for run in "${runs[@]}"; do [[ ${run%_s*} == *best[0-9]* ]] && percents+=("$(best_percent "$run")"); done
(( ${#percents[@]} && ! ${#thresholds[@]} )) && thresholds=(0)     # the per-clip selections need a scored corpus
read -r -a thresholds <<< "$(sorted_unique "${thresholds[@]}")"
lowest=${thresholds[0]:-}
for threshold in "${thresholds[@]}"; do
    if [[ $threshold == "$lowest" ]]; then
        $python tools/make_corpus.py --cache "$cache" --out "$work/corpus_cur$threshold" \
            --workers "$(env -u OMP_NUM_THREADS nproc)" $corpus_args --min_classical_psnr "$threshold"
    else
        $python tools/make_corpus.py --from_corpus "$work/corpus_cur$lowest" --out "$work/corpus_cur$threshold" \
            --min_classical_psnr "$threshold"
    fi | tee "$out/corpus_cur$threshold.log"
done
read -r -a percents <<< "$(sorted_unique "${percents[@]}")"
for percent in "${percents[@]}"; do
    $python tools/make_corpus.py --from_corpus "$work/corpus_cur$lowest" --out "$work/corpus_best$percent" \
        --best_per_clip "$(awk -v p="$percent" 'BEGIN { print p / 100 }')" | tee "$out/corpus_best$percent.log"
done
echo "corpus ready after $(( $(date +%s) - start )) s"

mfs_on=${MFS:-1}; tta_on=${TTA:-0}
fast=(--flow_prior dis --refine_finest half --flow_scales 8 4 2)     # the prior with the fast arrangement
for run in "${runs[@]}"; do
    data=$work/corpus; variant=()
    case ${run%_s*} in
        base) ;;
        s24) data=$work/corpus_s24 ;;
        lr5) variant=(--lr 5e-4) ;;
        teach) variant=(--flow_teacher 0.01) ;;
        teach[0-9]*) weight=${run%_s*}; variant=(--flow_teacher "${weight#teach}") ;;
        fs842) variant=(--flow_scales 8 4 2) ;;
        fs842teach) variant=(--flow_scales 8 4 2 --flow_teacher 0.01) ;;
        prior) variant=(--flow_prior dis) ;;
        priorteach) variant=(--flow_prior dis --flow_teacher 0.01) ;;
        priornoter) variant=(--flow_prior dis --ter_weight 0) ;;
        narrow) data=$work/corpus_narrow ;;
        priornarrow) data=$work/corpus_narrow; variant=(--flow_prior dis) ;;
        noter) variant=(--ter_weight 0) ;;
        priorctx) variant=(--flow_prior dis --prior_from context) ;;
        priorema) variant=(--flow_prior dis --ema_decay 0.999) ;;
        priorlr[0-9]*) lr=${run%_s*}; variant=(--flow_prior dis --lr "${lr#priorlr}") ;;
        priorhalf) variant=(--flow_prior dis --refine_finest half) ;;
        priorfast) variant=("${fast[@]}") ;;
        priorfastema) variant=("${fast[@]}" --ema_decay 0.999) ;;
        priorfastprev) data=$work/corpus_prev; variant=("${fast[@]}") ;;
        priorfastcur|priorfastcur[0-9]*) data=$work/corpus_cur$(curated_threshold "$run"); variant=("${fast[@]}") ;;
        priorfastemacur|priorfastemacur[0-9]*) data=$work/corpus_cur$(curated_threshold "$run")
            variant=("${fast[@]}" --ema_decay 0.999) ;;
        priorfastfrozen) variant=("${fast[@]}" --freeze_flow) ;;
        priorfastfrozencur|priorfastfrozencur[0-9]*) data=$work/corpus_cur$(curated_threshold "$run")
            variant=("${fast[@]}" --freeze_flow) ;;
        priorfastfrozenbest[0-9]*) data=$work/corpus_best$(best_percent "$run"); variant=("${fast[@]}" --freeze_flow) ;;
        prioranchor[0-9]*) weight=${run%_s*}; variant=(--flow_prior dis --prior_anchor "${weight#prioranchor}") ;;
        *) echo "unknown variant in run name $run"; exit 2 ;;
    esac
    seed=${run##*_s}
    # One OpenCV thread per process (read when each process first uses OpenCV's pool: no cv2.setNumThreads call,
    # which deadlocks in a forked worker, loaders.start_worker) and a lower priority: several runs' loader workers
    # compute DIS flows and augment at once, and at OpenCV's default (a pool as wide as the machine in every worker)
    # 4 runs x 3 workers ask for 12 x 16 threads on a 16-core host. Whatever else runs there (the GPU machine's own
    # agent, the evaluation) keeps its share. The training itself is GPU-bound and loses nothing measurable.
    OPENCV_FOR_THREADS_NUM=1 timeout --signal=INT "$limit" nice -n 10 $python train.py --phase 2 --data_path "$data" --batch_size "$batch" --crop_size "$crop" \
        --lr 2e-4 --warmup_steps 100 --epochs "$epochs" --steps_per_epoch "$steps" --eval_interval "${EVAL_EVERY:-1000}" $extra \
        --num_workers "$workers" --seed "$seed" --exp_name "lm_$run" --ckpt_dir "$work/ckpt" --log_dir "$work/log" \
        --image_every 100000 "${variant[@]}" > "$out/train_$run.log" 2>&1 &
done
wait || true
echo "training done after $(( $(date +%s) - start )) s (${#runs[@]} runs sharing one GPU)"
$python - "$work/ckpt" "$epochs" "${runs[@]}" <<'PY' | tee "$out/steps.txt"
import sys, torch
folder, planned, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for run in runs:
    try:
        payload = torch.load(f"{folder}/lm_{run}_last.pt", map_location="cpu", weights_only=True)
        # A run cut by the time limit is scored before its learning rate reached the floor: runs compared in one
        # call should all end their schedule (docs/LARGE_MOTION.md, twelfth round).
        unfinished = "" if payload["epoch"] >= planned else \
            f"; stopped by the time limit before the end of its {planned}-epoch schedule"
        print(f"{run}: last checkpoint after {payload['step']} steps ({payload['epoch']} epochs{unfinished})")
    except FileNotFoundError:
        print(f"{run}: no checkpoint")
PY

# score RUN SUFFIX CORPUS [FLAGS]: the run's last checkpoint on CORPUS's test list -> $out/eval_<RUN><SUFFIX>.json
score() {
    local run=$1 suffix=$2 corpus=$3; shift 3
    $python benchmark/Corpus.py --model "lm_${run}_last" --ckpt_dir "$work/ckpt" --path "$corpus" "$@" \
        --out "$out/eval_${run}${suffix}.json" --no_progress $limit_eval > "$out/eval_${run}${suffix}.log" 2>&1
}
for run in "${runs[@]}"; do
    [[ -f $work/ckpt/lm_${run}_last.pt ]] || continue
    # --components: the blend before RefineNet (and a prior model's own start) per sample, beside the prediction.
    score "$run" "" "$work/corpus" --components &
    (( mfs_on )) && score "$run" _mfs "$work/corpus" --motion_flow_scale &
    (( tta_on )) && score "$run" _tta "$work/corpus" --tta &
    [[ -n $val_clip ]] && score "$run" _val "$work/corpus_val_$val_clip" &
done
wait || true
echo "evaluation done after $(( $(date +%s) - start )) s"
args=(); variants=(); val=()   # variants: the same checkpoints scored with --motion_flow_scale or --tta
for run in "${runs[@]}"; do
    [[ -f $out/eval_$run.json ]] && args+=("$run=$out/eval_$run.json")
    [[ -f $out/eval_${run}_val.json ]] && val+=("$run=$out/eval_${run}_val.json")
    [[ -f $out/eval_${run}_mfs.json ]] && variants+=("${run%_s*}_mfs_s${run##*_s}=$out/eval_${run}_mfs.json")
    [[ -f $out/eval_${run}_tta.json ]] && variants+=("${run%_s*}_tta_s${run##*_s}=$out/eval_${run}_tta.json")
done
for run in "${runs[@]}"; do grep -h "steps/epoch\|done:\|first optimizer" "$out/train_$run.log" | sed "s/^/$run: /" || true; done
if (( ${#args[@]} )); then
    $python benchmark/bucket_table.py "${args[@]}" "${variants[@]}" | tee "$out/table.md"
    $python benchmark/bucket_table.py "${args[@]}" "${variants[@]}" --rows stride | tee "$out/table_stride.md"
    if (( ${#val[@]} )); then
        echo "validation clip $val_clip (left out of training):"
        $python benchmark/bucket_table.py "${val[@]}" | tee "$out/table_val.md"
    fi
else
    echo "no evaluation reports (see $out/train_*.log and $out/eval_*.log)"
fi
if [[ -n ${EVAL_EVERY:-} ]]; then
    $python - "$steps" "$out" "${runs[@]}" <<'PY' | tee "$out/curve.md"
import re, sys
steps, out, runs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
scores = {}                                  # run -> {step: held-out PSNR while training}
for run in runs:
    try:
        text = open(f"{out}/train_{run}.log").read()
    except FileNotFoundError:
        continue
    scores[run] = {int(epoch) * steps: float(psnr) for epoch, psnr in re.findall(r"epoch (\d+): val PSNR ([\d.]+) dB", text)}
print("| step | " + " | ".join(scores) + " |")
print("|---:|" + "---:|" * len(scores))
for step in sorted({step for curve in scores.values() for step in curve}):
    print(f"| {step} | " + " | ".join(f"{curve[step]:.2f}" if step in curve else "" for curve in scores.values()) + " |")
PY
fi
