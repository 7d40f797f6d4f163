"""Upstream's sliding-window logits of the fixture inputs, once more with a float32 accumulator (issue 11).

Upstream nnU-Net v2 2.8.1 sums the tiles' logits and Gaussian weights in ``torch.half``
(``predict_sliding_window_return_logits``), so its logits carry float16 rounding (up to a few 1e-4 of the largest
logit per addition). This script runs the same upstream code with ``torch.half`` mapped to ``torch.float32`` in
that module only, on the arrays of ``predictions/upstream_logits.npz``, and writes ``{tag}/logits_fp32_accumulator``
beside them: the reference that shows whether a remaining difference is upstream's float16 or pnnunet's.
Run in the upstream venv:

    nice -n 19 /work/venvs/upstream/bin/python benchmarks/upstream/upstream_logits_fp32_accumulator.py \\
        --fixtures tests/data/upstream_models [--tags TAG ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference import predict_from_raw_data
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

DATASET = "Dataset004_Hippocampus"
MODELS = {"3d_fullres": "nnUNetTrainer__nnUNetPlansTiny__3d_fullres", "2d": "nnUNetTrainer__nnUNetPlansTiny__2d",
          "resenc_3d_fullres": "nnUNetTrainer__nnUNetResEncUNetPlansTiny__3d_fullres",
          "cascade_3d_lowres": "nnUNetTrainer__nnUNetPlansTinyCascade__3d_lowres",
          "cascade_3d_cascade_fullres": "nnUNetTrainer__nnUNetPlansTinyCascade__3d_cascade_fullres"}


class _Float32Half:
    """``torch`` as seen by upstream's predictor module, with ``torch.half`` meaning float32."""

    def __getattr__(self, name):
        return torch.float32 if name in ("half", "float16") else getattr(torch, name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", type=Path, required=True)
    ap.add_argument("--tags", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = args.fixtures / "predictions" / "upstream_logits.npz"
    arrays = dict(np.load(path))
    predict_from_raw_data.torch = _Float32Half()
    for tag in args.tags:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(args.fixtures / DATASET / MODELS[tag]), use_folds=(0,),
                                                       checkpoint_name="checkpoint_final.pth")
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(arrays[f"{tag}/data"]))
        assert logits.dtype == torch.float32, logits.dtype
        arrays[f"{tag}/logits_fp32_accumulator"] = logits.numpy()
        diff = np.max(np.abs(logits.numpy() - arrays[f"{tag}/logits"])) / np.max(np.abs(arrays[f"{tag}/logits"]))
        print(f"{tag}: upstream float16 vs float32 accumulator: max rel {diff:.2e}", flush=True)
    np.savez_compressed(path, **arrays)


if __name__ == "__main__":
    main()
