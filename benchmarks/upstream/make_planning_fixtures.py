"""Generate upstream nnU-Net v2 planning fixtures for pnnunet's planner tests.

Runs ONLY in the upstream venv (``/work/venvs/upstream/bin/python``, nnunetv2 + torch inside); the
project never imports it. Planning in nnU-Net v2 is a pure function of
(dataset_fingerprint.json, dataset.json, one example image for the reader choice) -> nnUNetPlans.json
(reference nnunet_behaviour.md §3, Appendix A.1). For each synthetic scenario this script

1. writes a fake raw dataset (``dataset.json`` + ``imagesTr`` holding one tiny example case with the
   right file ending) and a fake preprocessed folder holding a synthetic ``dataset_fingerprint.json``
   (per-case spacings / shapes drawn from a seeded numpy RNG, made-up intensity statistics),
2. runs upstream's ``nnUNetv2_plan_experiment -d ID`` on it,
3. copies the fingerprint and dataset.json it fed in and the plans upstream wrote (byte for byte) to
   ``tests/planning/expected/<scenario>/``.

The ``isbi_2d`` scenario instead copies the real ISBI 2012 PNG dataset and runs upstream's full
``nnUNetv2_plan_and_preprocess`` (real fingerprint).

Usage::

    /work/venvs/upstream/bin/python benchmarks/upstream/make_planning_fixtures.py \
        [--scratch /work/scratch/fixtures] [--only NAME ...]

Deterministic: every scenario has its own fixed seed; nothing depends on wall time.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
EXPECTED = REPO / "tests" / "planning" / "expected"
UPSTREAM_BIN = Path(sys.executable).parent
ISBI_SOURCE = Path("/work/shared/data/ISBI2012_EM_2D")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _r(x: float, nd: int = 6) -> float:
    return round(float(x), nd)


def intensity_props(rng: np.random.Generator, kind: str) -> dict:
    """Plausible (made-up) foreground intensity statistics of one channel, fingerprint key names."""
    if kind == "CT":
        mean = rng.uniform(60, 110)
        std = rng.uniform(40, 80)
        return {"max": _r(rng.uniform(2000, 3100), 4), "mean": _r(mean, 4),
                "median": _r(mean + rng.uniform(-8, 8), 4), "min": _r(-1024.0, 4),
                "percentile_00_5": _r(rng.uniform(-900, -100), 4),
                "percentile_99_5": _r(rng.uniform(250, 400), 4), "std": _r(std, 4)}
    if kind == "unit":  # already in [0, 1]
        return {"max": 1.0, "mean": _r(rng.uniform(0.3, 0.6)), "median": _r(rng.uniform(0.3, 0.6)),
                "min": 0.0, "percentile_00_5": _r(rng.uniform(0.0, 0.05)),
                "percentile_99_5": _r(rng.uniform(0.9, 1.0)), "std": _r(rng.uniform(0.1, 0.25))}
    # MR-like, arbitrary positive units
    scale = rng.uniform(200, 2000)
    mean = scale * rng.uniform(0.8, 1.2)
    return {"max": _r(scale * rng.uniform(4, 8), 4), "mean": _r(mean, 4),
            "median": _r(mean * rng.uniform(0.9, 1.1), 4), "min": 0.0,
            "percentile_00_5": _r(scale * rng.uniform(0.02, 0.1), 4),
            "percentile_99_5": _r(scale * rng.uniform(2.5, 3.5), 4),
            "std": _r(scale * rng.uniform(0.3, 0.6), 4)}


def make_fingerprint(spacings, shapes, channel_kinds, rel_sizes, rng) -> dict:
    """Fingerprint dict in upstream's layout (spacing / shape per case in reader axis order)."""
    return {
        "foreground_intensity_properties_per_channel": {
            str(c): intensity_props(rng, k) for c, k in enumerate(channel_kinds)},
        "median_relative_size_after_cropping": _r(np.median(rel_sizes)),
        "shapes_after_crop": [[int(v) for v in s] for s in shapes],
        "spacings": [[_r(v) for v in s] for s in spacings],
    }


def make_dataset_json(name: str, channel_names: list[str], labels: dict, num_training: int,
                      file_ending: str = ".nii.gz", **extra) -> dict:
    d = {"channel_names": {str(i): n for i, n in enumerate(channel_names)},
         "labels": labels, "numTraining": num_training, "file_ending": file_ending, "name": name}
    d.update(extra)
    return d


def organ_labels(names: list[str]) -> dict:
    return {n: i for i, n in enumerate(["background"] + names)}


def _clip_round(x, lo, hi):
    return np.clip(np.round(x), lo, hi).astype(int)


# ----------------------------------------------------------------------------------------------
# scenarios: each returns (dataset_json, fingerprint); spacings / shapes in reader axis order
# ----------------------------------------------------------------------------------------------

def sc_ct_abdomen_lowres(rng):
    """AMOS-like abdominal CT: 512x512 in-plane, 100-300 slices of ~2.5 mm, 14 labels."""
    n = 30
    sz = rng.choice([2.0, 2.5, 2.5, 2.5, 3.0], size=n)
    sxy = np.round(rng.uniform(0.70, 0.90, size=n), 6)
    nz = rng.integers(100, 301, size=n)
    ny = _clip_round(rng.uniform(430, 512, size=n), 1, 512)
    nx = _clip_round(rng.uniform(470, 512, size=n), 1, 512)
    spacings = np.stack([sz, sxy, sxy], 1)
    shapes = np.stack([nz, ny, nx], 1)
    rel = ny * nx / (512.0 * 512.0)
    fp = make_fingerprint(spacings, shapes, ["CT"], rel, rng)
    labels = organ_labels(["spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
                           "stomach", "aorta", "postcava", "pancreas", "right adrenal gland",
                           "left adrenal gland", "duodenum"])
    ds = make_dataset_json("ct_abdomen_lowres", ["CT"], labels, n)
    return ds, fp


def _prostate_like(rng, n, coarse_axis):
    sz = np.round(np.clip(rng.normal(3.6, 0.12, size=n), 3.0, 4.0), 4)
    sxy = np.round(np.clip(rng.normal(0.62, 0.03, size=n), 0.55, 0.75), 6)
    nz = rng.integers(15, 25, size=n)
    nxy = _clip_round(rng.normal(320, 18, size=n), 256, 384)
    nxy2 = _clip_round(nxy - rng.integers(0, 8, size=n), 256, 384)
    if coarse_axis == 0:
        spacings = np.stack([sz, sxy, sxy], 1)
        shapes = np.stack([nz, nxy, nxy2], 1)
    else:
        raise ValueError(coarse_axis)
    rel = np.clip(rng.normal(0.6, 0.05, size=n), 0.4, 0.8)
    return spacings, shapes, rel


def sc_prostate_aniso(rng):
    """MSD-prostate-like: 2 MR channels (T2, ADC), spacing ~(3.6, 0.62, 0.62), shapes ~(20, 320, 320)."""
    n = 32
    spacings, shapes, rel = _prostate_like(rng, n, 0)
    fp = make_fingerprint(spacings, shapes, ["MR", "MR"], rel, rng)
    ds = make_dataset_json("prostate_aniso", ["T2", "ADC"], organ_labels(["PZ", "TZ"]), n)
    return ds, fp


def sc_aniso_transposed(rng):
    """Coarse axis LAST in reader order: spacing ~(0.7, 0.7, 5.0), shapes ~(256, 256, 24)."""
    n = 24
    sz = np.round(np.clip(rng.normal(5.0, 0.25, size=n), 4.0, 6.0), 4)
    sxy = np.round(np.clip(rng.normal(0.7, 0.03, size=n), 0.6, 0.8), 6)
    nz = rng.integers(18, 31, size=n)
    nx = _clip_round(rng.normal(256, 12, size=n), 200, 300)
    ny = _clip_round(rng.normal(250, 12, size=n), 200, 300)
    spacings = np.stack([sxy, sxy, sz], 1)
    shapes = np.stack([nx, ny, nz], 1)
    rel = np.clip(rng.normal(0.6, 0.05, size=n), 0.4, 0.8)
    fp = make_fingerprint(spacings, shapes, ["MR", "MR"], rel, rng)
    ds = make_dataset_json("aniso_transposed", ["T2", "ADC"], organ_labels(["PZ", "TZ"]), n)
    return ds, fp


def sc_aniso_10th_percentile(rng):
    """ACDC-like cine MR: slice spacing 5-10 mm spread over cases (10th percentile != median)."""
    n = 30
    sz = rng.choice([5.0, 6.0, 6.5, 7.0, 8.0, 9.0, 10.0, 10.0, 10.0], size=n)
    sxy = np.round(rng.uniform(1.25, 1.75, size=n), 6)
    nz = rng.integers(6, 19, size=n)
    ny = rng.integers(150, 260, size=n)
    nx = rng.integers(150, 260, size=n)
    spacings = np.stack([sz, sxy, sxy], 1)
    shapes = np.stack([nz, ny, nx], 1)
    rel = np.clip(rng.normal(0.9, 0.05, size=n), 0.7, 1.0)
    fp = make_fingerprint(spacings, shapes, ["cineMRI"], rel, rng)
    ds = make_dataset_json("aniso_10th_percentile", ["cineMRI"], organ_labels(["RV", "MLV", "LVC"]), n)
    return ds, fp


def sc_aniso_10th_percentile_clamp(rng):
    """As aniso_10th_percentile, but 5 of 30 cases are thin-slice (1.0-1.4 mm) volumes, so the 10th
    percentile of the coarse spacing is below max(median of the other axes) -> the `+1e-5` clamp."""
    n = 30
    n_thin = 5
    sz_thick = rng.choice([6.0, 7.0, 8.0, 10.0], size=n - n_thin)
    sz_thin = np.round(rng.uniform(1.0, 1.4, size=n_thin), 4)
    sz = np.concatenate([sz_thick, sz_thin])
    sxy = np.round(rng.uniform(1.3, 1.7, size=n), 6)
    ext_z = rng.uniform(70, 110, size=n)  # mm covered along the slice axis
    nz = np.maximum(np.round(ext_z / sz).astype(int), 6)
    ny = rng.integers(150, 260, size=n)
    nx = rng.integers(150, 260, size=n)
    order = rng.permutation(n)  # thin-slice cases anywhere in the case list
    spacings = np.stack([sz, sxy, sxy], 1)[order]
    shapes = np.stack([nz, ny, nx], 1)[order]
    rel = np.clip(rng.normal(0.9, 0.05, size=n), 0.7, 1.0)
    fp = make_fingerprint(spacings, shapes, ["cineMRI"], rel, rng)
    ds = make_dataset_json("aniso_10th_percentile_clamp", ["cineMRI"], organ_labels(["RV", "MLV", "LVC"]), n)
    return ds, fp


def sc_multichannel_mixed_norm(rng):
    """4 channels -> CT, NoNorm, RescaleTo01, ZScore; isotropic 1 mm; median relative size 0.5.
    Every axis uses a different permutation of the same multiset of sizes, so the median shape is
    equal on all axes (ties in the patch-shrink axis choice, §3.6 step 6)."""
    n = 20
    sizes = rng.integers(130, 200, size=n)
    shapes = np.stack([rng.permutation(sizes) for _ in range(3)], 1)
    spacings = np.ones((n, 3))
    rel = np.clip(rng.normal(0.5, 0.05, size=n), 0.3, 0.7)
    fp = make_fingerprint(spacings, shapes, ["CT", "MR", "unit", "MR"], rel, rng)
    ds = make_dataset_json("multichannel_mixed_norm", ["CT", "noNorm", "rescale_to_0_1", "MRI"],
                           organ_labels(["lesion", "edema"]), n)
    return ds, fp


def _kits_like(rng, n, crop_inplane=False):
    thin = [0.5, 0.625, 0.7, 0.8, 1.0]
    mid = [1.25, 1.5, 2.0, 2.5]
    thick = [3.0, 5.0]
    group = rng.choice(3, size=n, p=[0.4, 0.25, 0.35])
    sz = np.array([rng.choice([thin, mid, thick][g]) for g in group], dtype=float)
    sxy = np.round(rng.uniform(0.70, 0.92, size=n), 6)
    ext_z = rng.uniform(150, 450, size=n)
    nz = np.round(ext_z / sz).astype(int)
    spacings = np.stack([sxy, sxy, sz], 1)
    if crop_inplane:  # images pre-cropped around the kidneys (zero outside): crop-to-nonzero shrinks them
        nx = rng.integers(275, 316, size=n)
        ny = rng.integers(275, 316, size=n)
        rel = nx * ny / 512.0 ** 2
    else:
        nx = ny = np.full(n, 512)
        rel = np.clip(rng.normal(0.97, 0.02, size=n), 0.85, 1.0)
    shapes = np.stack([nx, ny, nz], 1)
    return spacings, shapes, rel


def sc_kits_like(rng):
    """KiTS-like CT: spacing ~(0.78, 0.78, 0.5-5) (mixed slice thickness, coarse axis last), 512x512xN."""
    n = 30
    spacings, shapes, rel = _kits_like(rng, n)
    fp = make_fingerprint(spacings, shapes, ["CT"], rel, rng)
    ds = make_dataset_json("kits_like", ["CT"], organ_labels(["kidney", "tumor", "cyst"]), n)
    return ds, fp


def sc_kits_like_ignore_label(rng):
    """kits_like geometry (in-plane cropped) with labels {background 0, a 1, b 2, ignore 3}.

    The ignore label counts as an output class in upstream's VRAM estimate. The in-plane sizes
    (275-315 voxels, 2d patch 320x320) were chosen such that dropping "ignore" from the labels
    changes upstream's 2d batch size (32 with 3 classes, 31 with 4), so a planner that does not
    count the ignore label fails the comparison."""
    n = 30
    spacings, shapes, rel = _kits_like(rng, n, crop_inplane=True)
    fp = make_fingerprint(spacings, shapes, ["CT"], rel, rng)
    ds = make_dataset_json("kits_like_ignore_label", ["CT"],
                           {"background": 0, "a": 1, "b": 2, "ignore": 3}, n)
    return ds, fp


def sc_small_dataset_bs_cap(rng):
    """5 cases of ~64^3 at 1 mm: the 5 % batch cap rounds below 2 and the minimum batch size wins."""
    n = 5
    shapes = rng.integers(60, 69, size=(n, 3))
    spacings = np.ones((n, 3))
    rel = np.clip(rng.normal(0.95, 0.03, size=n), 0.8, 1.0)
    fp = make_fingerprint(spacings, shapes, ["T1"], rel, rng)
    ds = make_dataset_json("small_dataset_bs_cap", ["T1"], organ_labels(["structure"]), n)
    return ds, fp


def sc_bs_from_vram_3d(rng):
    """200 cases of ~90^3 at 1 mm: the 3d patch is the (padded) median shape, below the VRAM
    reference, so the 3d batch size comes from the VRAM ratio (above 2, below the 5 % cap)."""
    n = 200
    shapes = np.stack([rng.integers(82, 100, size=n), rng.integers(84, 100, size=n),
                       rng.integers(80, 98, size=n)], 1)
    spacings = np.ones((n, 3))
    rel = np.clip(rng.normal(0.8, 0.05, size=n), 0.6, 1.0)
    fp = make_fingerprint(spacings, shapes, ["T1"], rel, rng)
    ds = make_dataset_json("bs_from_vram_3d", ["T1"], organ_labels(["structure"]), n)
    return ds, fp


def sc_large_inplane_ties(rng):
    """Slab-like volumes with ~1100-1500 voxel in-plane size; x and y use permutations of the same
    sizes, so the 2d median shape is tied and the 2d patch (shrunk from 1280x1280) shows which
    tied axis upstream reduces first (§3.6 step 6)."""
    n = 12
    inplane = rng.integers(1100, 1500, size=n)
    shapes = np.stack([rng.integers(20, 41, size=n), rng.permutation(inplane), rng.permutation(inplane)], 1)
    spacings = np.stack([np.full(n, 2.0), np.full(n, 1.0), np.full(n, 1.0)], 1)
    rel = np.clip(rng.normal(0.7, 0.05, size=n), 0.5, 0.9)
    fp = make_fingerprint(spacings, shapes, ["MR"], rel, rng)
    ds = make_dataset_json("large_inplane_ties", ["MR"], organ_labels(["tissue"]), n)
    return ds, fp


def sc_float_median_shape(rng):
    """Thick slabs of 7 or 8 slices (4 mm, no anisotropy rule): the median slice count is 7.5. Upstream
    clips the initial patch to the float median (7.5 < 8, so the slice axis is never pooled and the
    patch is padded to 8); rounding the median to 8 first would pool that axis once (§3.6 step 1)."""
    n = 20
    nz = rng.permutation(np.array([7] * (n // 2) + [8] * (n // 2)))
    sxy = np.round(rng.uniform(1.4, 1.6, size=n), 6)
    spacings = np.stack([np.full(n, 4.0), sxy, sxy], 1)
    shapes = np.stack([nz, rng.integers(200, 261, size=n), rng.integers(200, 261, size=n)], 1)
    rel = np.clip(rng.normal(0.85, 0.05, size=n), 0.6, 1.0)
    fp = make_fingerprint(spacings, shapes, ["MR"], rel, rng)
    ds = make_dataset_json("float_median_shape", ["MR"], organ_labels(["lesion"]), n)
    return ds, fp


# name -> (dataset id, seed, builder); isbi_2d is handled separately (real data)
SCENARIOS = {
    "ct_abdomen_lowres": (901, 1001, sc_ct_abdomen_lowres),
    "prostate_aniso": (902, 1002, sc_prostate_aniso),
    "aniso_transposed": (903, 1003, sc_aniso_transposed),
    "aniso_10th_percentile": (904, 1004, sc_aniso_10th_percentile),
    "aniso_10th_percentile_clamp": (905, 1005, sc_aniso_10th_percentile_clamp),
    "multichannel_mixed_norm": (906, 1006, sc_multichannel_mixed_norm),
    "kits_like": (907, 1007, sc_kits_like),
    "kits_like_ignore_label": (908, 1008, sc_kits_like_ignore_label),
    "small_dataset_bs_cap": (910, 1010, sc_small_dataset_bs_cap),
    "bs_from_vram_3d": (911, 1011, sc_bs_from_vram_3d),
    "large_inplane_ties": (912, 1012, sc_large_inplane_ties),
    "float_median_shape": (913, 1013, sc_float_median_shape),
}
ISBI_ID = 909
ALL_NAMES = list(SCENARIOS) + ["isbi_2d"]

# what each scenario is meant to exercise (reference nnunet_behaviour.md sections), for index.json
EXERCISES = {
    "ct_abdomen_lowres": ["3d_lowres + 3d_cascade_fullres creation (§3.7)", "anisotropic spacing without the "
                          "voxel condition (§3.1 step 4: no 10th percentile)", "CTNormalization",
                          "batch_dice True for fullres when lowres exists"],
    "prostate_aniso": ["§3.1 step 5 anisotropy rule (10th percentile)", "(1,3,3) kernels / [1,2,2] strides "
                       "(§3.5)", "use_mask_for_norm True for ZScore (median relative size < 0.75, §3.4)",
                       "2 input channels"],
    "aniso_transposed": ["coarse axis last in reader order -> transpose_forward [2,0,1] (§3.2)",
                         "§3.1 step 5 on a non-first axis", "original_median_*_after_transp"],
    "aniso_10th_percentile": ["§3.1 step 5: 10th percentile (5.9) differs from the median (7.5)"],
    "aniso_10th_percentile_clamp": ["§3.1 step 5: 10th percentile below max(other axes) -> max + 1e-5 clamp"],
    "multichannel_mixed_norm": ["4 channels: CT, NoNormalization, RescaleTo01Normalization, ZScore (§3.4)",
                                "use_mask_for_norm only for ZScore", "equal median shape on all axes -> "
                                "tie rule of the shrink axis (§3.6 step 6)"],
    "kits_like": ["mixed slice thickness, coarse axis last (transpose [2,0,1])", "3d_lowres with "
                  "coarse-axis-first spacing increase (§3.7)"],
    "kits_like_ignore_label": ["ignore label counted as an output class in the VRAM estimate (§3.6 step 4): "
                               "2d batch 31 with it, 32 if 'ignore' were dropped"],
    "small_dataset_bs_cap": ["5 % batch cap rounds to 0 in 3d -> min batch size 2 (§3.6 step 7)",
                             "patch padded above the median shape", "3d_lowres dropped"],
    "bs_from_vram_3d": ["3d batch size from the VRAM ratio (6), below the 5 % cap (§3.6 step 7)"],
    "large_inplane_ties": ["tied 2d median shape: the highest tied axis is reduced first (§3.6 step 6)",
                           "2d patch shrink loop", "3d_lowres"],
    "float_median_shape": ["initial patch clipped to a float median (7.5): no pooling on that axis, padded to 8 "
                           "(§3.5, §3.6 step 1)"],
    "isbi_2d": ["real 2D data: only the 2d configuration (§3.3)", "real upstream fingerprint (spacing 999 on "
                "axis 0)", "2d batch from the 5 % cap"],
}


# ----------------------------------------------------------------------------------------------
# running upstream
# ----------------------------------------------------------------------------------------------

def upstream_env(scratch: Path) -> dict:
    env = dict(os.environ)
    env["nnUNet_raw"] = str(scratch / "nnUNet_raw")
    env["nnUNet_preprocessed"] = str(scratch / "nnUNet_preprocessed")
    env["nnUNet_results"] = str(scratch / "nnUNet_results")
    env["nnUNet_def_n_proc"] = "2"
    env["OMP_NUM_THREADS"] = "1"
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    return env


def write_json(obj, path: Path, sort_keys: bool = True) -> None:
    """Same formatting as batchgenerators' save_json (indent 4, sorted keys by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, sort_keys=sort_keys, indent=4)
        f.write("\n")


def write_example_case(raw: Path, ds: dict, spacing_reader_order) -> None:
    """One tiny readable example case (all channels) in imagesTr; only used for the reader choice."""
    import SimpleITK as sitk  # available in the upstream venv

    images = raw / "imagesTr"
    images.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((4, 4, 4), dtype=np.float32)
    arr[1:3, 1:3, 1:3] = 1
    for c in ds["channel_names"]:
        img = sitk.GetImageFromArray(arr)
        # SimpleITKIO reverses the ITK axis order; so does the spacing
        img.SetSpacing([float(s) for s in spacing_reader_order[::-1]])
        sitk.WriteImage(img, str(images / f"case_000_{int(c):04d}{ds['file_ending']}"))


def run(cmd: list[str], env: dict, log: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def build_synthetic(name: str, scratch: Path, env: dict) -> dict:
    dataset_id, seed, builder = SCENARIOS[name]
    rng = np.random.default_rng(seed)
    ds, fp = builder(rng)
    dname = f"Dataset{dataset_id:03d}_{name}"
    raw = scratch / "nnUNet_raw" / dname
    pre = scratch / "nnUNet_preprocessed" / dname
    for d in (raw, pre):
        if d.exists():
            shutil.rmtree(d)
    write_json(ds, raw / "dataset.json")
    write_example_case(raw, ds, fp["spacings"][0])
    write_json(fp, pre / "dataset_fingerprint.json")
    run([str(UPSTREAM_BIN / "nnUNetv2_plan_experiment"), "-d", str(dataset_id)], env,
        scratch / f"{name}.log")
    return {"dataset_id": dataset_id, "dataset_name": dname, "seed": seed,
            "command": f"nnUNetv2_plan_experiment -d {dataset_id}",
            "description": (builder.__doc__ or "").strip().split("\n")[0],
            "raw": raw, "pre": pre}


def build_isbi(scratch: Path, env: dict) -> dict:
    dname = f"Dataset{ISBI_ID:03d}_ISBI2012_EM_2D"
    raw = scratch / "nnUNet_raw" / dname
    pre = scratch / "nnUNet_preprocessed" / dname
    for d in (raw, pre):
        if d.exists():
            shutil.rmtree(d)
    shutil.copytree(ISBI_SOURCE, raw)
    cmd = [str(UPSTREAM_BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(ISBI_ID), "-c", "2d", "3d_fullres",
           "--verify_dataset_integrity", "-np", "2", "-npfp", "2"]
    run(cmd, env, scratch / "isbi_2d.log")
    return {"dataset_id": ISBI_ID, "dataset_name": dname, "seed": None,
            "command": " ".join(["nnUNetv2_plan_and_preprocess"] + cmd[1:]),
            "description": "Real ISBI 2012 EM 2D PNG dataset (30 cases of 512x512), real upstream fingerprint",
            "raw": raw, "pre": pre}


def store(name: str, info: dict) -> dict:
    out = EXPECTED / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(info["raw"] / "dataset.json", out / "dataset.json")
    shutil.copyfile(info["pre"] / "dataset_fingerprint.json", out / "dataset_fingerprint.json")
    shutil.copyfile(info["pre"] / "nnUNetPlans.json", out / "upstream_plans.json")
    plans = json.loads((out / "upstream_plans.json").read_text())
    entry = {k: info[k] for k in ("dataset_id", "dataset_name", "seed", "command", "description")}
    entry["exercises"] = EXERCISES[name]
    entry["transpose_forward"] = plans["transpose_forward"]
    entry["configurations"] = {
        c: ({k: cfg[k] for k in ("spacing", "patch_size", "batch_size")} if "patch_size" in cfg else cfg)
        for c, cfg in plans["configurations"].items()}
    return entry


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", type=Path, default=Path("/work/scratch/fixtures"))
    p.add_argument("--only", nargs="+", choices=ALL_NAMES, default=None)
    args = p.parse_args(argv)
    env = upstream_env(args.scratch)
    names = args.only or ALL_NAMES

    index_file = EXPECTED / "index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    index.setdefault("scenarios", {})
    for name in names:
        info = build_isbi(args.scratch, env) if name == "isbi_2d" else build_synthetic(name, args.scratch, env)
        index["scenarios"][name] = store(name, info)
        print(f"{name}: {list(index['scenarios'][name]['configurations'])}", flush=True)
    index["scenarios"] = {k: index["scenarios"][k] for k in ALL_NAMES if k in index["scenarios"]}
    index["generator"] = "benchmarks/upstream/make_planning_fixtures.py"
    index["upstream_versions"] = {pkg: importlib.metadata.version(pkg) for pkg in
                                  ("nnunetv2", "batchgenerators", "dynamic_network_architectures", "torch",
                                   "numpy")}
    write_json(index, index_file, sort_keys=False)


if __name__ == "__main__":
    main()
