#!/usr/bin/env bash
# Accuracy at the same budget as upstream (reference/upstream_runs.md): Hippocampus (220 cases),
# 3d_fullres fold 0 of upstream's split, 20 epochs x 50 iterations, 10 validation iterations per
# epoch, CPU, defaults otherwise. Resumable: rerun the same command after a kill (uses --c).
#   bash benchmarks/accuracy_hippocampus.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WS=$(python -c "import os,sys; print(os.path.abspath(sys.argv[1]))" "${1:-/tmp/pnnunet_accuracy}")
export pnnunet_raw="$WS/raw" pnnunet_preprocessed="$WS/preprocessed" pnnunet_results="$WS/results"
DATA=${PNNUNET_HIPPO:-../shared/data/Task04_Hippocampus}
REF=${PNNUNET_UPSTREAM_REF:-../shared/reference/upstream_hippocampus_220}
pnnunet_plan_and_preprocess -d "$DATA" -c 3d_fullres -np 2 --no_pbar
# use upstream's split file (pnnunet makes the same split; this makes the comparison independent of that)
cp "$REF/splits_final.json" "$WS/preprocessed/Dataset004_Hippocampus/splits_final.json"
pnnunet_train 3d_fullres 0 -d 4 -tr pnnunetTrainer_20epochs --iterations_per_epoch 50 \
    --val_iterations_per_epoch 10 -device cpu --c --no_pbar
