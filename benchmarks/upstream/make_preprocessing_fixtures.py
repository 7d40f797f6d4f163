"""Make tests/data/upstream_preprocessing/ with upstream nnU-Net v2's DefaultPreprocessor.

Runs ONLY in the upstream venv (nnunetv2 2.8.x, batchgenerators 0.25.5, torch), never in tests:

    nnUNet_raw=/work/scratch/pre/raw nnUNet_preprocessed=/work/scratch/pre/pp nnUNet_results=/work/scratch/pre/res \
        /work/venvs/upstream/bin/python benchmarks/upstream/make_preprocessing_fixtures.py \
        --hippocampus /work/shared/data/Task04_Hippocampus \
        --plans /work/shared/reference/upstream_hippocampus_220/nnUNetPlans.json \
        --out tests/data/upstream_preprocessing

Fixtures: three real Hippocampus cases (3d_fullres and 2d of upstream's plans for the 220 cases)
and three synthetic cases (separate-z from the current spacing with a transposition, CT + masked
z-score, a 2d configuration and an inference call without seg; separate-z triggered by the target
spacing with regions + ignore label; isotropic order-3 resampling). Each fixture is an npz with
upstream's outputs (and, for synthetic cases, the inputs); fixtures.json says how to rebuild the
inputs and which plans/configuration/dataset.json were used.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
from importlib import metadata
from pathlib import Path

import numpy as np


def _blob(shape, centre, radii):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def synthetic_a(rs):
    """(2, 40, 24, 20) reader order, spacing (0.8, 0.8, 4.0): CT channel + MR channel, labels 1/2."""
    shape = (40, 24, 20)
    body = _blob(shape, (21, 12, 10), (14, 9, 8))
    hole = _blob(shape, (21, 12, 10), (2, 2, 2))  # zero inside the body: binary_fill_holes keeps it
    ct = np.where(body, rs.randint(-150, 400, shape), 0).astype(np.float32)
    ct[hole] = 0
    mr = np.where(body, rs.gamma(2.0, 50.0, shape), 0).astype(np.float32)
    mr[hole] = 0
    seg = np.zeros(shape, np.float32)
    seg[_blob(shape, (18, 10, 9), (5, 4, 4)) & body] = 1
    seg[_blob(shape, (26, 14, 11), (4, 3, 3)) & body] = 2
    return np.stack([ct, mr]), seg[None], [0.8, 0.8, 4.0]


def synthetic_b(rs):
    """(3, 18, 30, 26), spacing (1.2, 1.0, 1.0): labels 1..3 painted as nested regions, ignore 4."""
    shape = (18, 30, 26)
    body = _blob(shape, (9, 15, 13), (9, 13, 11))
    chans = [np.where(body, rs.normal(100, 20, shape), 0), np.where(body, rs.uniform(5, 50, shape), 0),
             np.where(body, rs.randint(0, 9, shape), 0)]
    seg = np.zeros(shape, np.float32)
    seg[_blob(shape, (9, 15, 13), (6, 9, 8))] = 1
    seg[_blob(shape, (9, 14, 13), (4, 6, 5))] = 2
    seg[_blob(shape, (9, 14, 12), (2, 3, 3))] = 3
    seg[:, :3, :] = 4  # an unannotated strip
    seg[~body & (seg != 4)] = 0
    return np.stack(chans).astype(np.float32), seg[None], [1.2, 1.0, 1.0]


def synthetic_c(rs):
    """(1, 22, 26, 24), spacing (1.3, 0.9, 1.1): isotropic target, z-score with mask, labels 1..3."""
    shape = (22, 26, 24)
    body = _blob(shape, (11, 13, 12), (9, 11, 10))
    img = np.where(body, rs.normal(300, 80, shape), 0).astype(np.float32)
    seg = np.zeros(shape, np.float32)
    seg[_blob(shape, (8, 10, 12), (4, 5, 4)) & body] = 1
    seg[_blob(shape, (14, 16, 12), (4, 4, 5)) & body] = 2
    seg[_blob(shape, (11, 13, 6), (3, 3, 2)) & body] = 3
    return img[None], seg[None], [1.3, 0.9, 1.1]


def synthetic_plans(base: dict, transpose, configs: dict, n_channels: int) -> dict:
    plans = copy.deepcopy(base)
    plans["transpose_forward"] = list(transpose)
    plans["transpose_backward"] = [int(i) for i in np.argsort(transpose)]
    plans["foreground_intensity_properties_per_channel"] = {
        str(c): {"max": 400.0, "mean": 120.5 + c, "median": 100.0, "min": -150.0, "percentile_00_5": -100.25,
                 "percentile_99_5": 350.75, "std": 87.3 + c} for c in range(n_channels)}
    template = plans["configurations"]["3d_fullres"]
    plans["configurations"] = {}
    for name, (spacing, schemes, masks) in configs.items():
        cfg = copy.deepcopy(template)
        cfg.update({"data_identifier": f"synthetic_{name}", "spacing": spacing,
                    "normalization_schemes": schemes, "use_mask_for_norm": masks})
        plans["configurations"][name] = cfg
    return plans


def save_fixture(path: Path, data, seg, props, inputs=None) -> dict:
    arrays = {"data": data.astype(np.float32), "seg": seg.astype(np.int16),
              "bbox": np.asarray(props["bbox_used_for_cropping"], np.int64),
              "shape_before_cropping": np.asarray(props["shape_before_cropping"], np.int64),
              "shape_after_cropping": np.asarray(props["shape_after_cropping_and_before_resampling"], np.int64)}
    keys = []
    for k, v in props.get("class_locations", {}).items():
        keys.append(str(k))
        arrays[f"loc {k}"] = np.asarray(v, np.int64).reshape(-1, 4)
    if inputs is not None:
        arrays.update(inputs)
    np.savez_compressed(path, **arrays)
    return {"file": path.name, "seg_dtype": str(seg.dtype), "class_location_keys": keys,
            "has_class_locations": "class_locations" in props}


def main() -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ap = argparse.ArgumentParser()
    ap.add_argument("--hippocampus", type=Path, required=True)
    ap.add_argument("--plans", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ref_plans = json.loads(args.plans.read_text())
    pp = DefaultPreprocessor(verbose=False)
    versions = {name: metadata.version(name) for name in
                ("nnunetv2", "batchgenerators", "numpy", "scipy", "scikit-image", "SimpleITK")}
    index = {"made_with": {**versions, "date": datetime.date.today().isoformat()},
             "fixtures": {}}

    hippo_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                  "numTraining": 220, "file_ending": ".nii.gz"}
    pm = PlansManager(ref_plans)
    for case in ("hippocampus_243", "hippocampus_160", "hippocampus_225"):
        for config in ("3d_fullres", "2d"):
            image = args.hippocampus / "imagesTr" / f"{case}.nii.gz"
            label = args.hippocampus / "labelsTr" / f"{case}.nii.gz"
            data, seg, props = pp.run_case([str(image)], str(label), pm, pm.get_configuration(config), hippo_json)
            name = f"{case}__{config}"
            entry = save_fixture(args.out / f"{name}.npz", data, seg, props)
            entry.update({"source": "hippocampus", "case": case, "configuration": config, "plans": "reference",
                          "dataset_json": hippo_json})
            index["fixtures"][name] = entry

    rs = np.random.RandomState(20260714)
    synth = {
        "synthA": (synthetic_a(rs), [2, 0, 1],
                   {"3d_fullres": ([3.0, 1.0, 1.0], ["CTNormalization", "ZScoreNormalization"], [False, True]),
                    "2d": ([1.0, 1.0], ["CTNormalization", "ZScoreNormalization"], [False, False])},
                   {"channel_names": {"0": "CT", "1": "T1"}, "labels": {"background": 0, "a": 1, "b": 2},
                    "numTraining": 1, "file_ending": ".nii.gz"}, True),
        "synthB": (synthetic_b(rs), [0, 1, 2],
                   {"3d_fullres": ([3.5, 0.9, 1.1], ["ZScoreNormalization", "RescaleTo01Normalization",
                                                     "NoNormalization"], [False, False, False])},
                   {"channel_names": {"0": "T2", "1": "rescale_to_0_1", "2": "noNorm"},
                    "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3, "ignore": 4},
                    "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"}, False),
        "synthC": (synthetic_c(rs), [0, 1, 2],
                   {"3d_fullres": ([1.0, 1.0, 1.0], ["ZScoreNormalization"], [True])},
                   {"channel_names": {"0": "T2"}, "labels": {"background": 0, "x": 1, "y": 2, "z": 3},
                    "numTraining": 1, "file_ending": ".nii.gz"}, False),
    }
    for case, ((data, seg, spacing), transpose, configs, dataset_json, with_inference) in synth.items():
        plans = synthetic_plans(ref_plans, transpose, configs, data.shape[0])
        spm = PlansManager(plans)
        inputs = {"input_data": data, "input_seg": seg, "input_spacing": np.asarray(spacing)}
        runs = [(c, True) for c in configs] + ([("3d_fullres", False)] if with_inference else [])
        for config, use_seg in runs:
            out = pp.run_case_npy(data.copy(), seg.copy() if use_seg else None, {"spacing": list(spacing)}, spm,
                                  spm.get_configuration(config), dataset_json)
            name = f"{case}__{config}" + ("" if use_seg else "__noseg")
            entry = save_fixture(args.out / f"{name}.npz", *out, inputs=inputs)
            entry.update({"source": "synthetic", "case": case, "configuration": config, "plans": plans,
                          "dataset_json": dataset_json, "with_seg": use_seg})
            index["fixtures"][name] = entry
    (args.out / "fixtures.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {len(index['fixtures'])} fixtures to {args.out}")


if __name__ == "__main__":
    main()
