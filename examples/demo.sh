#!/usr/bin/env bash
# The pnnunet demo on the bundled real sample (20 MSD Hippocampus training cases + 4 held-out cases).
# Everything is written under ./demo_workspace (override with PNNUNET_DEMO_DIR); rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
WS=$(python -c "import os,sys; print(os.path.abspath(sys.argv[1]))" "${PNNUNET_DEMO_DIR:-demo_workspace}")
export pnnunet_raw="$WS/raw" pnnunet_preprocessed="$WS/preprocessed" pnnunet_results="$WS/results"
SAMPLE=tests/data/Task04_Hippocampus_sample

# 1. convert the MSD folder (id 4 from "Task04"), verify it, fingerprint, plan, preprocess
pnnunet_plan_and_preprocess -d "$SAMPLE" --verify_dataset_integrity -c 2d 3d_fullres -np 2
