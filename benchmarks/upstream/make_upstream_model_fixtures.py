"""Small nnU-Net v2 models trained by upstream itself, and upstream's predictions with them (issue 11).

Run in the upstream venv (nnunetv2 2.8.1 + torch CPU), never in pnnunet's (see tests/data/upstream_models/README.md
for the command that made the committed fixtures):

    nice -n 19 /work/venvs/upstream/bin/python benchmarks/upstream/make_upstream_model_fixtures.py \
        --sample tests/data/Task04_Hippocampus_sample --out OUT [--work /tmp/um] [--reuse] \
        [--steps 2000] [--model_steps 2d=5000] [--validate] [--models TAG ...]

1. converts the bundled MSD sample (``nnUNetv2_convert_MSD_dataset``) and plans/preprocesses it
   (``nnUNetv2_plan_and_preprocess -c 2d 3d_fullres``);
2. shrinks the plans to 3 stages with 4/8/16 features and a 3d patch of 24x32x24 (``nnUNetPlansTiny``, same
   preprocessed data), derives a ResidualEncoderUNet plan (``nnUNetResEncUNetPlansTiny``) and a cascade
   (``nnUNetPlansTinyCascade``: 3d_lowres at 2 mm, preprocessed with ``nnUNetv2_preprocess``, and
   3d_cascade_fullres);
3. initialises fold 0 of each model with upstream's ``nnUNetTrainer`` and takes ``--steps`` SGD steps with its
   ``train_step`` (its optimizer, loss and gradient clipping; deep supervision off) on batches of 2 patches cut
   here: around a foreground voxel 2 times in 3, random flips along the TTA axes (2d: one slice); a cascade
   stage gets the reference labels shifted by up to 2 voxels as its previous-stage channels. Saves
   ``checkpoint_best.pth`` (half-way) and ``checkpoint_final.pth`` with its ``save_checkpoint``.
   ``--validate``: also its final validation and ``nnUNetv2_find_best_configuration -f 0`` (3d_fullres, 2d);
4. predicts 2 test cases with upstream's ``nnUNetPredictor`` (TTA on, step 0.5, CPU, float32 inputs; a cascade
   stage from its previous stage's predictions): label maps + probabilities (``--save_probabilities``), the
   foreground Dice against the sample's labelsTs, and the raw sliding-window logits of upstream's own
   preprocessing of the first case;
5. copies the small outputs to ``--out`` in upstream's results layout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = ("3d_fullres", "2d")
PLANS = "nnUNetPlansTiny"
RESENC_PLANS = "nnUNetResEncUNetPlansTiny"
CASCADE_PLANS = "nnUNetPlansTinyCascade"
MODELS = {"3d_fullres": (PLANS, "3d_fullres"), "2d": (PLANS, "2d"), "resenc_3d_fullres": (RESENC_PLANS, "3d_fullres"),
          "cascade_3d_lowres": (CASCADE_PLANS, "3d_lowres"),
          "cascade_3d_cascade_fullres": (CASCADE_PLANS, "3d_cascade_fullres")}
TRAINER = "nnUNetTrainer"
DATASET = "Dataset004_Hippocampus"
TEST_CASES = ("hippocampus_045", "hippocampus_048")


def run(cmd: list[str], env: dict) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


TINY_PATCH_3D = [24, 32, 24]  # smaller than the cases: sliding windows with several tiles, and fast steps


def tiny_plans(plans: dict) -> dict:
    plans = json.loads(json.dumps(plans))
    plans["plans_name"] = PLANS
    plans["configurations"] = {k: v for k, v in plans["configurations"].items() if k in CONFIGS}
    for cfg in plans["configurations"].values():
        kw = cfg["architecture"]["arch_kwargs"]
        n = 3
        kw.update(n_stages=n, features_per_stage=[4, 8, 16], kernel_sizes=kw["kernel_sizes"][:n],
                  strides=kw["strides"][:n], n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
        cfg["batch_size"] = 2
        if len(cfg["patch_size"]) == 3:
            cfg["patch_size"] = TINY_PATCH_3D
    return plans


def tiny_resenc_plans(tiny: dict) -> dict:
    """The tiny 3d_fullres plan with upstream's ResidualEncoderUNet (1/2/2 blocks, 1 decoder conv per stage)."""
    plans = json.loads(json.dumps(tiny))
    plans["plans_name"] = RESENC_PLANS
    plans["configurations"] = {"3d_fullres": plans["configurations"]["3d_fullres"]}
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kw = arch["arch_kwargs"]
    kw.pop("n_conv_per_stage")
    kw.update(n_blocks_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 1])
    return plans


def tiny_cascade_plans(tiny: dict) -> dict:
    """The tiny 3d_fullres plan plus a 3d_lowres stage (2 mm) and a 3d_cascade_fullres stage on top of it, written
    the way upstream's planner writes a cascade (lowres ``next_stage``, cascade ``inherits_from`` 3d_fullres and
    ``previous_stage``). The sample's cases are too small for upstream's planner to plan a cascade itself."""
    plans = json.loads(json.dumps(tiny))
    plans["plans_name"] = CASCADE_PLANS
    full = plans["configurations"]["3d_fullres"]
    low = json.loads(json.dumps(full))
    factor = 2.0
    low.update(data_identifier=f"{CASCADE_PLANS}_3d_lowres", spacing=[s * factor for s in full["spacing"]],
               median_image_size_in_voxels=[round(n / factor, 1) for n in full["median_image_size_in_voxels"]],
               patch_size=[16, 24, 16], next_stage="3d_cascade_fullres")
    plans["configurations"] = {"3d_fullres": full, "3d_lowres": low, "3d_cascade_fullres": {
        "inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
    return plans


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/upstream_model_fixtures"))
    ap.add_argument("--reuse", action="store_true", help="keep the converted and preprocessed data of --work")
    ap.add_argument("--steps", type=int, default=20, help="SGD steps per configuration (upstream's train_step)")
    ap.add_argument("--model_steps", nargs="*", default=[], metavar="TAG=N", help="--steps for one model")
    ap.add_argument("--lr", type=float, default=None, help="constant SGD learning rate (default: the trainer's "
                    "initial_lr, 1e-2)")
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(MODELS))
    ap.add_argument("--validate", action="store_true", help="also run upstream's final validation and "
                    "nnUNetv2_find_best_configuration (inference_information.json, postprocessing.pkl)")
    args = ap.parse_args()
    model_steps = {tag: int(n) for tag, n in (item.split("=") for item in args.model_steps)}
    work = args.work.resolve()
    reuse = args.reuse and (work / "pre" / DATASET / "nnUNetPlans.json").is_file()
    if work.exists() and not reuse:
        shutil.rmtree(work)
    shutil.rmtree(work / "test_inputs", ignore_errors=True)
    if not reuse:
        shutil.rmtree(work / "res", ignore_errors=True)
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "res"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", OMP_NUM_THREADS="1")
    os.environ.update(env, nnUNet_n_proc_DA="0")  # training in this process: augmentation without workers
    bindir = Path(sys.executable).parent
    if not reuse:
        shutil.copytree(args.sample, work / "Task04_Hippocampus")
        run([str(bindir / "nnUNetv2_convert_MSD_dataset"), "-i", str(work / "Task04_Hippocampus"), "-overwrite_id",
             "4", "-np", "1"], env)
        run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", *CONFIGS, "-np", "1", "1"], env)

    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(1)  # niced on a shared 2-core machine: one thread waits less
    pre = work / "pre" / DATASET
    plans = tiny_plans(json.loads((pre / "nnUNetPlans.json").read_text()))
    (pre / f"{PLANS}.json").write_text(json.dumps(plans, indent=4))
    all_plans = {PLANS: plans, RESENC_PLANS: tiny_resenc_plans(plans)}
    (pre / f"{RESENC_PLANS}.json").write_text(json.dumps(all_plans[RESENC_PLANS], indent=4))
    all_plans[CASCADE_PLANS] = tiny_cascade_plans(plans)
    (pre / f"{CASCADE_PLANS}.json").write_text(json.dumps(all_plans[CASCADE_PLANS], indent=4))
    if any(MODELS[t][0] == CASCADE_PLANS for t in args.models) and not (pre / f"{CASCADE_PLANS}_3d_lowres").is_dir():
        run([str(bindir / "nnUNetv2_preprocess"), "-d", "4", "-plans_name", CASCADE_PLANS, "-c", "3d_lowres",
             "-np", "1"], env)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainers = {}
    for tag in args.models:
        plans_name, cfg = MODELS[tag]
        plans = all_plans[plans_name]
        torch.manual_seed(1234)
        rs = np.random.RandomState(1234)
        # nnUNetv2_train's run_training sets (and the trainer pops) continue_training
        trainer = nnUNetTrainer({**plans, "continue_training": False}, cfg, 0, dataset_json,
                                device=torch.device("cpu"))
        trainer.enable_deep_supervision = False  # one output: the steps below need no downsampled targets
        trainer.initialize()
        # set in get_dataloaders by nnUNetTrainer's own loop: the axes TTA may mirror, saved in the checkpoint
        trainer.inference_allowed_mirroring_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3]
        # a cascade stage trains on the previous stage's cross-validation predictions; these tiny fixtures use the
        # reference segmentation instead, shifted by up to 2 voxels (below), so no previous-stage folder is read
        cascade_labels = trainer.label_manager.foreground_labels if trainer.is_cascaded else None
        trainer.folder_with_segs_from_previous_stage = None
        dataset_tr, _ = trainer.get_tr_and_val_datasets()
        keys = sorted(dataset_tr.identifiers)
        patch = trainer.configuration_manager.patch_size
        t0 = time.time()
        os.makedirs(trainer.output_folder, exist_ok=True)
        # what nnUNetTrainer.on_train_start copies into the model folder
        base = Path(trainer.output_folder_base)
        (base / "plans.json").write_text(json.dumps(plans, indent=4))
        shutil.copy(pre / "dataset.json", base / "dataset.json")
        shutil.copy(pre / "dataset_fingerprint.json", base / "dataset_fingerprint.json")
        trainers[tag] = trainer
        if reuse and (Path(trainer.output_folder) / "checkpoint_final.pth").is_file():
            print(f"{tag}: reusing {trainer.output_folder}/checkpoint_final.pth", flush=True)
            for name in ("checkpoint_best.pth", "checkpoint_final.pth"):  # saved again with the mirroring axes
                axes = trainer.inference_allowed_mirroring_axes
                trainer.load_checkpoint(os.path.join(trainer.output_folder, name))
                trainer.inference_allowed_mirroring_axes = axes
                trainer.save_checkpoint(os.path.join(trainer.output_folder, name))
            continue
        if args.lr is not None:
            for group in trainer.optimizer.param_groups:
                group["lr"] = args.lr
        cases = {key: dataset_tr.load_case(key)[:2] for key in keys}
        steps = model_steps.get(tag, args.steps)
        for step in range(steps):
            datas, segs = [], []
            for key in rs.choice(keys, 2, replace=False):
                data, seg = cases[key]
                data, seg = np.asarray(data, np.float32), np.asarray(seg, np.int16)
                if cascade_labels is not None:  # the input channels upstream's predictor appends: one-hot prev. seg
                    prev = np.roll(np.maximum(seg[0], 0), rs.randint(-2, 3, size=3), axis=(0, 1, 2))
                    data = np.concatenate([data, np.stack([prev == lab for lab in cascade_labels]).astype(np.float32)])
                if len(patch) == 2:  # one random slice, with foreground 2 times in 3
                    fg = np.flatnonzero((seg[0] > 0).any(axis=(1, 2)))
                    z = rs.choice(fg) if len(fg) and rs.rand() < 2 / 3 else rs.randint(data.shape[1])
                    data, seg = data[:, z], seg[:, z]
                for axis in trainer.inference_allowed_mirroring_axes:  # random flips along the TTA axes
                    if rs.rand() < 0.5:
                        data, seg = np.flip(data, axis + 1), np.flip(seg, axis + 1)
                pad = [(0, 0)] + [(0, max(0, p - n)) for p, n in zip(patch, data.shape[1:])]
                data, seg = np.pad(data, pad), np.pad(seg, pad)
                fg = np.argwhere(seg[0] > 0)
                if len(fg) and rs.rand() < 2 / 3:  # a patch around a foreground voxel 2 times in 3
                    centre = fg[rs.randint(len(fg))]
                    starts = [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, data.shape[1:])]
                else:
                    starts = [rs.randint(n - p + 1) for p, n in zip(patch, data.shape[1:])]
                crop = (slice(None),) + tuple(slice(s0, s0 + p) for s0, p in zip(starts, patch))
                datas.append(data[crop])
                segs.append(np.maximum(seg[crop], 0))
            out = trainer.train_step({"data": torch.from_numpy(np.stack(datas)),
                                      "target": torch.from_numpy(np.stack(segs).astype(np.float32))})
            if step % 100 == 0 or step == steps - 1:
                print(f"{tag} step {step}: loss {float(out['loss']):.4f}", flush=True)
            if step == steps // 2 - 1:
                trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
        trainer.current_epoch = 0
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
        print(f"trained {tag}: {steps} SGD steps in {time.time() - t0:.0f} s", flush=True)
    res = work / "res" / DATASET
    out = args.out.resolve() / DATASET
    inputs = work / "test_inputs"
    inputs.mkdir()
    for case in TEST_CASES:
        shutil.copy(work / "raw" / DATASET / "imagesTs" / f"{case}_0000.nii.gz", inputs)
    logits_file = args.out.resolve() / "predictions" / "upstream_logits.npz"
    arrays = dict(np.load(logits_file)) if logits_file.is_file() else {}
    made_with = args.out.resolve() / "made_with.json"
    dice = json.loads(made_with.read_text()).get("dice", {}) if made_with.is_file() else {}
    for tag in args.models:
        plans_name, cfg = MODELS[tag]
        name = f"{TRAINER}__{plans_name}__{cfg}"
        src, dst = res / name, out / name
        shutil.rmtree(dst, ignore_errors=True)
        (dst / "fold_0").mkdir(parents=True)
        for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            shutil.copy(src / f, dst / f)
        for f in ("checkpoint_final.pth", "checkpoint_best.pth"):
            if (src / "fold_0" / f).is_file():
                shutil.copy(src / "fold_0" / f, dst / "fold_0" / f)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(src), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
        pred_dir = args.out.resolve() / "predictions" / tag
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        pred_dir.mkdir(parents=True)
        prev_stage = predictor.configuration_manager.previous_stage_name
        prev_dir = None
        if prev_stage:  # upstream predicts a cascade stage from the previous stage's predictions of the same cases
            prev_tag = next(t for t, (pn, c) in MODELS.items() if pn == plans_name and c == prev_stage)
            prev_dir = args.out.resolve() / "predictions" / prev_tag
        predictor.predict_from_files_sequential(str(inputs), str(pred_dir), save_probabilities=True, overwrite=True,
                                                folder_with_segs_from_prev_stage=str(prev_dir) if prev_dir else None)
        for f in pred_dir.glob("*.pkl"):
            f.unlink()  # upstream's pickled properties: not needed, and pickles are not committed
        import SimpleITK as sitk

        for case in TEST_CASES:  # foreground Dice of upstream's labels against the sample's held-out labels
            ours = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / f"{case}.nii.gz")))
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(args.sample / "labelsTs" / f"{case}.nii.gz")))
            dice[f"{tag}/{case}"] = {str(lab): round(float(2 * np.sum((ours == lab) & (ref == lab))
                                                           / max(1, np.sum(ours == lab) + np.sum(ref == lab))), 4)
                                     for lab in sorted(set(np.unique(ref)) - {0})}
            print(f"{tag} {case}: upstream's foreground voxels {int(np.sum(ours > 0))}, Dice {dice[f'{tag}/{case}']}",
                  flush=True)
        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        data, prev_seg, _ = preprocessor.run_case(
            [str(inputs / f"{TEST_CASES[0]}_0000.nii.gz")],
            str(prev_dir / f"{TEST_CASES[0]}.nii.gz") if prev_dir else None,
            predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
        if prev_dir:  # what upstream's predictor appends for a cascade stage
            from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

            data = np.vstack((data, convert_labelmap_to_one_hot(prev_seg[0], predictor.label_manager.foreground_labels,
                                                                data.dtype)))
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float().numpy()
        arrays[f"{tag}/data"] = data.astype(np.float32)
        arrays[f"{tag}/logits"] = logits.astype(np.float32)
    np.savez_compressed(logits_file, **arrays)
    if args.validate:  # upstream's final validation, then find_best_configuration
        for cfg in CONFIGS:
            trainers[cfg].perform_actual_validation(save_probabilities=False)
        run([str(bindir / "nnUNetv2_find_best_configuration"), "4", "-c", *CONFIGS, "-p", PLANS, "-f", "0",
             "--disable_ensembling", "-np", "1"], env)
        shutil.copy(res / "inference_information.json", out / "inference_information.json")
        for folder in res.glob("*/crossval_results_folds_0"):
            dst = out / folder.parent.name / folder.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("postprocessing.pkl", "postprocessing.json", "summary.json"):
                if (folder / f).is_file():
                    shutil.copy(folder / f, dst / f)
    from importlib.metadata import version

    made_with.write_text(json.dumps(
        {"nnunetv2": version("nnunetv2"), "torch": torch.__version__, "numpy": np.__version__,
         "date": time.strftime("%Y-%m-%d"), "test_cases": list(TEST_CASES), "dice": dice}, indent=1))


if __name__ == "__main__":
    main()
