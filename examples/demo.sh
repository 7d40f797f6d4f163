#!/usr/bin/env bash
# The pnnunet demo on the bundled real sample (20 MSD Hippocampus training cases + 4 held-out cases).
# Everything is written under ./demo_workspace (override with PNNUNET_DEMO_DIR); rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
WS=$(python -c "import os,sys; print(os.path.abspath(sys.argv[1]))" "${PNNUNET_DEMO_DIR:-demo_workspace}")
export pnnunet_raw="$WS/raw" pnnunet_preprocessed="$WS/preprocessed" pnnunet_results="$WS/results"
SAMPLE=tests/data/Task04_Hippocampus_sample
EPOCHS=${PNNUNET_DEMO_EPOCHS:-20}

# 1. convert the MSD folder (id 4 from "Task04"), verify it, fingerprint, plan and preprocess with
#    nnU-Net's default planner (the plans a full run would use) ...
pnnunet_plan_and_preprocess -d "$SAMPLE" --verify_dataset_integrity -c 3d_fullres -np 2 --no_pbar
# 2. ... and with the small "tiny" preset, so that CPU training takes minutes, not days
pnnunet_plan_and_preprocess -d 4 -pl tiny -c 3d_fullres -np 2 --no_pbar
# 3. a short training of fold 0 (16 training / 4 validation cases), then its final validation (Dice per class)
pnnunet_train 3d_fullres 0 -d 4 -p pnnunetTinyPlans --epochs "$EPOCHS" --iterations_per_epoch 25 \
    --val_iterations_per_epoch 5 --c --no_pbar
# 4. predict the 4 held-out cases (imagesTs; converted from the MSD folder) with that fold, TTA on
pnnunet_predict -i "$pnnunet_raw/Dataset004_Hippocampus_sample/imagesTs" -o "$WS/predictions" -d 4 \
    -c 3d_fullres -p pnnunetTinyPlans -f 0 --continue_prediction --no_pbar
# 5. the Dice table against their labels, and a PNG of one slice with the predicted labels
pnnunet_evaluate -ref "$SAMPLE/labelsTs" -pred "$WS/predictions" -d 4
pnnunet_plot_overlay -i "$pnnunet_raw/Dataset004_Hippocampus_sample/imagesTs/hippocampus_045_0000.nii.gz" \
    -s "$WS/predictions/hippocampus_045.nii.gz" -o "$WS/hippocampus_045_overlay.png"
