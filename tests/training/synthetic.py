"""A tiny 3D plan, a Trainer built from it and fixed batches, for tests that drive training steps
directly (no preprocessed data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pnnunet.runtime.distributed import DistContext
from pnnunet.training.config import make_train_config
from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales
from pnnunet.training.trainer import Trainer, TrainingJob

PATCH = [8, 12, 8]
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "A": 1, "B": 2}, "numTraining": 4,
                "file_ending": ".nii.gz"}


def tiny_plans(batch_size: int = 4, batch_dice: bool = True) -> dict:
    config = {"data_identifier": "tiny_3d", "batch_size": batch_size, "patch_size": PATCH, "spacing": [1.0, 1.0, 1.0],
              "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], "batch_dice": batch_dice,
              "architecture": {"network_class_name": "pnnunet.runtime.network.PlainConvUNet",
                               "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16],
                                               "conv_op": "paddle.nn.Conv3D", "kernel_sizes": [[3, 3, 3]] * 3,
                                               "strides": STRIDES, "n_conv_per_stage": [2, 2, 2],
                                               "n_conv_per_stage_decoder": [2, 2], "conv_bias": True}}}
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "tiny", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO",
            "foreground_intensity_properties_per_channel": {}, "configurations": {"3d_fullres": config}}


def make_trainer(tmp: Path, dist: DistContext = DistContext(), batch_size: int = 4, batch_dice: bool = True,
                 fast_cpu: bool = True, device: str = "cpu", cpu_bf16: bool | None = False) -> Trainer:
    """The tiny plan's Trainer; float32 unless ``cpu_bf16`` says otherwise (these tests compare exact
    algebra: data-parallel sums, scaler steps; bfloat16 training has its own tests)."""
    cfg = make_train_config(fast_cpu_convolutions=fast_cpu, num_workers=0, cpu_bf16=cpu_bf16)
    job = TrainingJob(Path(tmp) / "pre" / "Dataset999_Tiny", Path(tmp) / "res", tiny_plans(batch_size, batch_dice),
                      "3d_fullres", 0, DATASET_JSON, "pnnunetTrainer", cfg, device, progress_bar=False, dist=dist)
    return Trainer(job)


def fixed_batches(n: int, batch_size: int = 4, seed: int = 0) -> list[dict]:
    """``n`` global batches: random images, labels with all classes, DS targets at the plan's scales."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        data = rng.normal(size=(batch_size, 1, *PATCH)).astype(np.float32)
        seg = rng.integers(0, 3, size=(batch_size, 1, *PATCH)).astype(np.int16)
        out.append({"data": data, "target": downsample_seg_for_ds(seg, ds_scales(STRIDES))})
    return out


def rank_slice(batch: dict, sizes: list[int], rank: int) -> dict:
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    return {"data": batch["data"][lo:hi], "target": [t[lo:hi] for t in batch["target"]]}
