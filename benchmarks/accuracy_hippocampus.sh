#!/usr/bin/env bash
# Accuracy at the same budget as upstream (reference/upstream_runs.md): Hippocampus (220 cases),
# 3d_fullres fold 0 of upstream's split, 20 epochs x 50 iterations, 10 validation iterations per
# epoch, CPU, defaults otherwise. Resumable: rerun the same command after a kill (uses --c).
#   bash benchmarks/accuracy_hippocampus.sh [--bf16] [WORKDIR]
# --bf16: bfloat16 mixed-precision convolutions (pnnunet_train --bf16; float32 on a CPU without native
# bfloat16, which the training log then says). Its results go to WORKDIR/results_bf16, beside the
# float32 run's WORKDIR/results; the preprocessed data is shared. Compare the two summary.json files:
#   WORKDIR/results{,_bf16}/Dataset004_Hippocampus/pnnunetTrainer_20epochs__pnnunetPlans__3d_fullres/fold_0/validation/summary.json
set -euo pipefail
cd "$(dirname "$0")/.."
PRECISION=fp32
ARGS=()
for a in "$@"; do
    case "$a" in
        --bf16) PRECISION=bf16 ;;
        --fp32) PRECISION=fp32 ;;
        -*) echo "unknown option $a (use --bf16 or --fp32)" >&2; exit 1 ;;
        *) ARGS+=("$a") ;;
    esac
done
WS=$(python -c "import os,sys; print(os.path.abspath(sys.argv[1]))" "${ARGS[0]:-/tmp/pnnunet_accuracy}")
RESULTS="$WS/results"
TRAIN_FLAGS=(--fp32)  # explicit: the default is bfloat16 on CPUs that have it
if [ "$PRECISION" = bf16 ]; then RESULTS="$WS/results_bf16"; TRAIN_FLAGS=(--bf16); fi
export pnnunet_raw="$WS/raw" pnnunet_preprocessed="$WS/preprocessed" pnnunet_results="$RESULTS"
DATA=${PNNUNET_HIPPO:-../shared/data/Task04_Hippocampus}
REF=${PNNUNET_UPSTREAM_REF:-../shared/reference/upstream_hippocampus_220}
pnnunet_plan_and_preprocess -d "$DATA" -c 3d_fullres -np 2 --no_pbar
# use upstream's split file (pnnunet makes the same split; this makes the comparison independent of that)
cp "$REF/splits_final.json" "$WS/preprocessed/Dataset004_Hippocampus/splits_final.json"
pnnunet_train 3d_fullres 0 -d 4 -tr pnnunetTrainer_20epochs --iterations_per_epoch 50 \
    --val_iterations_per_epoch 10 -device cpu --c --no_pbar "${TRAIN_FLAGS[@]}"
