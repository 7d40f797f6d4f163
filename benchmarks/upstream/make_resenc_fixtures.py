"""Upstream nnU-Net v2 ResEnc fixtures: ResEnc M/L/XL plans, network parameter counts, tiny networks.

Runs ONLY in the upstream venv (``/work/venvs/upstream/bin/python``: nnunetv2 2.8.1, torch CPU); the
project never imports it. Our own code calling upstream's; nothing of upstream is copied.

1. Plans: for every planning scenario (the synthetic ones in ``tests/planning/expected/``, the
   Hippocampus-220 fingerprint in ``tests/data/upstream_hippocampus_220`` and upstream's fingerprint of
   the bundled sample in ``tests/data/upstream_preprocessed_b2nd``) it writes a fake raw dataset
   (dataset.json + one tiny example image for the reader choice; the real ISBI PNGs for ``isbi_2d``)
   and the fingerprint into a scratch ``nnUNet_preprocessed``, then runs upstream's
   ``nnUNetPlannerResEncM`` / ``L`` / ``XL`` (``plan_experiment()``, what ``nnUNetv2_plan_experiment
   -pl nnUNetPlannerResEncM`` calls) and copies the plans to ``tests/planning/expected_resenc/``.
2. Parameter counts: for every planned configuration (cascade excluded: it only adds input channels)
   upstream's network is built with ``get_network_from_plans(..., deep_supervision=True)``; its
   parameter count and ``compute_conv_feature_map_size(patch_size)`` (the planner's VRAM estimate,
   deep supervision off as the planner builds it) go to ``tests/data/upstream_resenc/param_counts.json``.
3. Tiny networks (2D, 3D) covering every skip kind: upstream's state_dict names and shapes (aliases
   ``all_modules`` and ``decoder.encoder`` dropped) and forward probes with deterministic weights
   (parameter k in registration order = 0.5·sin(0.37·j + 1.3·k), input cos(0.11·j)) →
   ``tests/data/upstream_resenc/tiny_networks.json``.

Usage::

    /work/venvs/upstream/bin/python benchmarks/upstream/make_resenc_fixtures.py [--scratch DIR]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PLANNING = REPO / "tests" / "planning" / "expected"
OUT_PLANS = REPO / "tests" / "planning" / "expected_resenc"
OUT_DATA = REPO / "tests" / "data" / "upstream_resenc"
ISBI_SOURCE = Path("/work/shared/data/ISBI2012_EM_2D")
PLANNERS = ("nnUNetPlannerResEncM", "nnUNetPlannerResEncL", "nnUNetPlannerResEncXL")
HIPPO_DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                      "numTraining": 220, "file_ending": ".nii.gz"}


def write_json(obj, path: Path, sort_keys: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, sort_keys=sort_keys, indent=4)
        f.write("\n")


def scenarios() -> dict[str, dict]:
    """name → {id, dataset_json path or dict, fingerprint path}."""
    index = json.loads((PLANNING / "index.json").read_text())["scenarios"]
    out = {}
    for name, entry in sorted(index.items()):
        out[name] = {"id": entry["dataset_id"], "dataset_json": PLANNING / name / "dataset.json",
                     "fingerprint": PLANNING / name / "dataset_fingerprint.json"}
    out["hippocampus_220"] = {"id": 951, "dataset_json": HIPPO_DATASET_JSON,
                              "fingerprint": REPO / "tests/data/upstream_hippocampus_220/dataset_fingerprint.json"}
    out["hippocampus_sample"] = {"id": 952, "dataset_json": REPO / "tests/data/upstream_preprocessed_b2nd/dataset.json",
                                 "fingerprint": REPO / "tests/data/upstream_preprocessed_b2nd/dataset_fingerprint.json"}
    return out


def write_example_case(raw: Path, ds: dict, spacing_reader_order) -> None:
    import SimpleITK as sitk

    images = raw / "imagesTr"
    images.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((4, 4, 4), dtype=np.float32)
    for c in ds["channel_names"]:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing([float(s) for s in spacing_reader_order[::-1]])
        sitk.WriteImage(img, str(images / f"case_000_{int(c):04d}{ds['file_ending']}"))


def prepare(name: str, sc: dict, scratch: Path) -> str:
    dname = f"Dataset{sc['id']:03d}_{name}"
    raw = scratch / "nnUNet_raw" / dname
    pre = scratch / "nnUNet_preprocessed" / dname
    for d in (raw, pre):
        if d.exists():
            shutil.rmtree(d)
    ds = sc["dataset_json"] if isinstance(sc["dataset_json"], dict) else json.loads(sc["dataset_json"].read_text())
    fp = json.loads(sc["fingerprint"].read_text())
    if name == "isbi_2d":
        shutil.copytree(ISBI_SOURCE, raw)
    else:
        write_json(ds, raw / "dataset.json")
        write_example_case(raw, ds, fp["spacings"][0])
    pre.mkdir(parents=True)
    shutil.copyfile(sc["fingerprint"], pre / "dataset_fingerprint.json")
    return dname


def count(plans: dict, config: str, dataset_json: dict) -> dict:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(config)
    n_in = len(dataset_json.get("channel_names") or dataset_json["modality"])
    n_out = len(dataset_json["labels"])
    arch = cm.network_arch_init_kwargs
    net = get_network_from_plans(cm.network_arch_class_name, arch, cm.network_arch_init_kwargs_req_import, n_in,
                                 n_out, allow_init=False, deep_supervision=True)
    n_params = int(sum(p.numel() for p in net.parameters()))
    net.decoder.deep_supervision = False  # the planner's estimate is made without deep supervision
    fmap = int(net.compute_conv_feature_map_size(cm.patch_size))
    return {"input_channels": n_in, "num_classes": n_out, "n_params": n_params, "conv_feature_map_size": fmap}


TINY = {
    # stage 1: stride + channels (avg-pool + 1x1 projection), stage 2: channels only (projection only),
    # stage 3: stride only (avg-pool only)
    "tiny_3d": dict(input_channels=1, n_stages=4, features_per_stage=[4, 8, 16, 16], conv_op="Conv3d",
                    kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                    strides=[[1, 1, 1], [1, 2, 2], [1, 1, 1], [2, 2, 2]], n_blocks_per_stage=[1, 3, 2, 2],
                    num_classes=2, n_conv_per_stage_decoder=[1, 2, 1], x_shape=[1, 1, 4, 8, 8]),
    "tiny_2d": dict(input_channels=2, n_stages=3, features_per_stage=[4, 8, 16], conv_op="Conv2d",
                    kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]], n_blocks_per_stage=[1, 2, 2],
                    num_classes=3, n_conv_per_stage_decoder=[1, 1], x_shape=[2, 2, 8, 12]),
}


def tiny_networks() -> dict:
    import torch
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from torch import nn

    out = {}
    for name, spec in TINY.items():
        spec = dict(spec)
        x_shape = spec.pop("x_shape")
        dim = 3 if spec["conv_op"] == "Conv3d" else 2
        spec["conv_op"] = nn.Conv3d if dim == 3 else nn.Conv2d
        net = ResidualEncoderUNet(**spec, conv_bias=True, norm_op=nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d,
                                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                                  nonlin_kwargs={"inplace": True}, deep_supervision=True)
        net.apply(net.initialize)
        sd = net.state_dict()
        # every norm weight that upstream's initialisation leaves at zero (He init + init_last_bn_before_add_to_0)
        zero_norms = sorted(k for k, v in sd.items() if k.endswith(".norm.weight") and "all_modules" not in k
                            and not k.startswith("decoder.encoder.") and not v.abs().sum().item())
        keys = [k for k in sd if "all_modules" not in k and not k.startswith("decoder.encoder.")]
        with torch.no_grad():
            for k, p in enumerate(net.parameters()):
                n = p.numel()
                p.copy_(torch.from_numpy((0.5 * np.sin(0.37 * np.arange(n) + 1.3 * k)).reshape(p.shape)).float())
            x = torch.from_numpy(np.cos(0.11 * np.arange(int(np.prod(x_shape)))).reshape(x_shape)).float()
            outs = net(x)
        probes = []
        for o in outs:
            a = o.numpy().astype(np.float64)
            w = np.cos(0.5 * np.arange(a.size)).reshape(a.shape)
            probes.append([float(a.sum()), float((a * a).sum()), float((a * w).sum())])
        kwargs = {k: v for k, v in TINY[name].items() if k != "x_shape"}
        out[name] = {"kwargs": kwargs, "x_shape": x_shape,
                     "state_dict": [[k, list(sd[k].shape)] for k in keys],
                     "zero_initialised": zero_norms,
                     "n_params": int(sum(p.numel() for p in net.parameters())),
                     "probes": probes}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", type=Path, default=Path("/work/scratch/resenc_fixtures"))
    args = p.parse_args(argv)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = str(args.scratch / k)
        (args.scratch / k).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    import torch

    torch.set_num_threads(2)
    from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners as rp

    versions = {m: importlib.metadata.version(m) for m in ("nnunetv2", "dynamic_network_architectures", "torch",
                                                           "numpy")}
    counts, index = [], {}
    for name, sc in scenarios().items():
        if name == "isbi_2d" and not ISBI_SOURCE.is_dir():
            print(f"skip {name}: {ISBI_SOURCE} missing", file=sys.stderr)
            continue
        dname = prepare(name, sc, args.scratch)
        ds = json.loads((args.scratch / "nnUNet_raw" / dname / "dataset.json").read_text())
        index[name] = {"dataset_id": sc["id"], "dataset_name": dname, "plans": {}}
        for planner in PLANNERS:
            cls = getattr(rp, planner)
            pl = cls(sc["id"])
            pl.plan_experiment()
            plans_file = args.scratch / "nnUNet_preprocessed" / dname / f"{pl.plans_identifier}.json"
            dest = OUT_PLANS / name / plans_file.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plans_file, dest)
            plans = json.loads(plans_file.read_text())
            summary = {}
            for config, cfg in plans["configurations"].items():
                if "patch_size" not in cfg:
                    continue
                entry = count(plans, config, ds)
                counts.append({"scenario": name, "plans": pl.plans_identifier, "configuration": config, **entry})
                summary[config] = {"patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"],
                                   "n_params": entry["n_params"]}
                print(name, pl.plans_identifier, config, summary[config], flush=True)
            index[name]["plans"][pl.plans_identifier] = summary
    write_json({"versions": versions, "scenarios": index}, OUT_PLANS / "index.json")
    write_json({"versions": versions, "counts": counts}, OUT_DATA / "param_counts.json", sort_keys=False)
    write_json({"versions": versions, "networks": tiny_networks()}, OUT_DATA / "tiny_networks.json", sort_keys=False)


if __name__ == "__main__":
    main()
