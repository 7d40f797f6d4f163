#!/usr/bin/env bash
# The pnnunet demo on the bundled real sample (20 MSD Hippocampus training cases + 4 held-out cases).
# Everything is written under ./demo_workspace (override with PNNUNET_DEMO_DIR); rerunning resumes.
# The recipe: nnU-Net's default plans, the 2d configuration (its batch of 28 slices learns the
# hippocampus in minutes on a CPU, where a 3D patch takes hours), fold 0 trained 20 epochs x 25 iterations.
# Beside it, the pretrained 3d_fullres model bundled in the package (pnnunet/pretrained: 20 x 50 iterations on
# 220 MSD cases) segments the same 4 held-out cases in seconds.
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
if python -c "import sys; from pnnunet import pretrained; sys.exit(0 if pretrained.is_bundled('hippocampus') else 1)"; then
    stage "6. the same 4 cases with the bundled pretrained 3d_fullres model (20 x 50 iterations on 220 MSD cases, among them 048-050; not 045)"
    pnnunet_predict -i "$RAW/imagesTs" -o "$WS/predictions_pretrained" -m pretrained:hippocampus --continue_prediction --no_pbar
    pnnunet_evaluate -ref "$SAMPLE/labelsTs" -pred "$WS/predictions_pretrained" -d 4
    pnnunet_plot_overlay -i "$RAW/imagesTs/hippocampus_045_0000.nii.gz" -s "$WS/predictions_pretrained/hippocampus_045.nii.gz" \
    -ref "$SAMPLE/labelsTs/hippocampus_045.nii.gz" -djfile "$RAW/dataset.json" -o "$WS/hippocampus_045_overlay_pretrained.png"
    stage "7. side by side: foreground Dice per case"
    python - "$WS/predictions/summary.json" "$WS/predictions_pretrained/summary.json" <<'PY'
import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
print(f"{'case':<18}{'short 2d training':>20}{'pretrained 3d':>16}")
per_case = [{c["prediction_file"].rsplit("/", 1)[-1]: c["metrics"] for c in r["metric_per_case"]} for r in runs]
for case in sorted(per_case[0]):
    print(f"{case.removesuffix('.nii.gz'):<18}" + "".join(
        f"{sum(m['Dice'] for m in p[case].values()) / len(p[case]):>{w}.3f}" for p, w in zip(per_case, (20, 16))))
print(f"{'mean':<18}{runs[0]['foreground_mean']['Dice']:>20.3f}{runs[1]['foreground_mean']['Dice']:>16.3f}")
PY
else
    stage "6-7. skipped: the bundled pretrained model's weights are not in this version of pnnunet (README: \"The bundled pretrained model\")"
fi
stage "done: $(ls "$WS"/hippocampus_045_overlay*.png | tr '\n' ' ')"
