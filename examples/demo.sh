#!/usr/bin/env bash
# The pnnunet demo on the bundled real sample (20 MSD Hippocampus training cases + 4 held-out cases).
# Everything is written under ./demo_workspace (override with PNNUNET_DEMO_DIR); rerunning resumes.
# The recipe: nnU-Net's default plans, the 2d configuration (its batch of 28 slices learns the
# hippocampus in minutes on a CPU, where a 3D patch takes hours), fold 0 trained 20 epochs x 25 iterations.
set -euo pipefail
cd "$(dirname "$0")/.."
WS=$(python -c "import os,sys; print(os.path.abspath(sys.argv[1]))" "${PNNUNET_DEMO_DIR:-demo_workspace}")
export pnnunet_raw="$WS/raw" pnnunet_preprocessed="$WS/preprocessed" pnnunet_results="$WS/results"
SAMPLE=tests/data/Task04_Hippocampus_sample
RAW="$pnnunet_raw/Dataset004_Hippocampus_sample"
EPOCHS=${PNNUNET_DEMO_EPOCHS:-20}
SECONDS=0
stage() { echo; echo "=== [${SECONDS} s] $*"; }

stage "1. convert the MSD folder (id 4 from 'Task04'), verify it, fingerprint, plan (nnU-Net's default planner) and preprocess"
pnnunet_plan_and_preprocess -d "$SAMPLE" --verify_dataset_integrity -c 2d -np 2 --no_pbar
stage "2. train fold 0 (16 training / 4 validation cases), then its final validation (Dice per class)"
pnnunet_train 2d 0 -d 4 --epochs "$EPOCHS" --iterations_per_epoch 25 --val_iterations_per_epoch 5 --c --no_pbar
stage "3. predict the 4 held-out cases (imagesTs, converted from the MSD folder) with that fold, TTA on"
pnnunet_predict -i "$RAW/imagesTs" -o "$WS/predictions" -d 4 -c 2d -f 0 --continue_prediction --no_pbar
stage "4. the Dice table against their labels"
pnnunet_evaluate -ref "$SAMPLE/labelsTs" -pred "$WS/predictions" -d 4
stage "5. a PNG of one slice: image | prediction | reference"
pnnunet_plot_overlay -i "$RAW/imagesTs/hippocampus_045_0000.nii.gz" -s "$WS/predictions/hippocampus_045.nii.gz" \
    -ref "$SAMPLE/labelsTs/hippocampus_045.nii.gz" -djfile "$RAW/dataset.json" -o "$WS/hippocampus_045_overlay.png"
stage "done: $WS/hippocampus_045_overlay.png"
