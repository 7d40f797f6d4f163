"""Tiny nnU-Net v2 models trained by upstream itself, and upstream's predictions with them (issue 11).

Run in the upstream venv (nnunetv2 2.8.1 + torch CPU), never in pnnunet's:

    /work/venvs/upstream/bin/python benchmarks/upstream/make_upstream_model_fixtures.py \
        --sample tests/data/Task04_Hippocampus_sample --out tests/data/upstream_models [--work /tmp/um] \
        [--steps 20] [--validate]

1. converts the bundled MSD sample (``nnUNetv2_convert_MSD_dataset``) and plans/preprocesses it
   (``nnUNetv2_plan_and_preprocess -c 2d 3d_fullres``);
2. shrinks the plans to 3 stages with 4/8/16 features (``nnUNetPlansTiny``, same preprocessed data);
3. initialises fold 0 of 3d_fullres and 2d with upstream's ``nnUNetTrainer`` and takes ``--steps``
   SGD steps with its ``train_step`` (its optimizer, loss and gradient clipping; batches of 2 whole
   cases padded to the patch, no augmentation, deep supervision off) and saves ``checkpoint_best.pth``
   (half-way) and ``checkpoint_final.pth`` with its ``save_checkpoint``. (Upstream's full training
   loop took 520-760 s per 25-iteration epoch of this tiny network on the loaded machine.)
   ``--validate``: also its final validation and ``nnUNetv2_find_best_configuration -f 0``;
4. predicts 2 test cases with upstream's ``nnUNetPredictor`` (TTA on, step 0.5, CPU, float32 inputs):
   label maps + probabilities (``--save_probabilities``), and the raw sliding-window logits of
   upstream's own preprocessing of the first case;
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
MODELS = {"3d_fullres": (PLANS, "3d_fullres"), "2d": (PLANS, "2d"), "resenc_3d_fullres": (RESENC_PLANS, "3d_fullres")}
TRAINER = "nnUNetTrainer"
DATASET = "Dataset004_Hippocampus"
TEST_CASES = ("hippocampus_045", "hippocampus_048")


def run(cmd: list[str], env: dict) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/upstream_model_fixtures"))
    ap.add_argument("--reuse", action="store_true", help="keep the converted and preprocessed data of --work")
    ap.add_argument("--steps", type=int, default=20, help="SGD steps per configuration (upstream's train_step)")
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(MODELS))
    ap.add_argument("--validate", action="store_true", help="also run upstream's final validation and "
                    "nnUNetv2_find_best_configuration (inference_information.json, postprocessing.pkl)")
    args = ap.parse_args()
    work = args.work.resolve()
    reuse = args.reuse and (work / "pre" / DATASET / "nnUNetPlans.json").is_file()
    if work.exists() and not reuse:
        shutil.rmtree(work)
    shutil.rmtree(work / "test_inputs", ignore_errors=True)
    if not reuse:
        shutil.rmtree(work / "res", ignore_errors=True)
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "res"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", OMP_NUM_THREADS="2")
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

    torch.set_num_threads(2)
    pre = work / "pre" / DATASET
    plans = tiny_plans(json.loads((pre / "nnUNetPlans.json").read_text()))
    (pre / f"{PLANS}.json").write_text(json.dumps(plans, indent=4))
    all_plans = {PLANS: plans, RESENC_PLANS: tiny_resenc_plans(plans)}
    (pre / f"{RESENC_PLANS}.json").write_text(json.dumps(all_plans[RESENC_PLANS], indent=4))
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
        for step in range(args.steps):
            datas, segs = [], []
            for key in rs.choice(keys, 2, replace=False):
                data, seg, _, _ = dataset_tr.load_case(key)
                data, seg = np.asarray(data, np.float32), np.asarray(seg, np.int16)
                if len(patch) == 2:  # one random slice
                    z = rs.randint(data.shape[1])
                    data, seg = data[:, z], seg[:, z]
                pad = [(0, 0)] + [(0, max(0, p - n)) for p, n in zip(patch, data.shape[1:])]
                data, seg = np.pad(data, pad), np.pad(seg, pad)
                crop = (slice(None),) + tuple(slice(0, p) for p in patch)
                datas.append(data[crop])
                segs.append(np.maximum(seg[crop], 0))
            out = trainer.train_step({"data": torch.from_numpy(np.stack(datas)),
                                      "target": torch.from_numpy(np.stack(segs).astype(np.float32))})
            print(f"{cfg} step {step}: loss {float(out['loss']):.4f}", flush=True)
            if step == args.steps // 2 - 1:
                trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
        trainer.current_epoch = 0
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
        print(f"trained {tag}: {args.steps} SGD steps in {time.time() - t0:.0f} s", flush=True)
    res = work / "res" / DATASET
    out = args.out.resolve() / DATASET
    inputs = work / "test_inputs"
    inputs.mkdir()
    for case in TEST_CASES:
        shutil.copy(work / "raw" / DATASET / "imagesTs" / f"{case}_0000.nii.gz", inputs)
    logits_file = args.out.resolve() / "predictions" / "upstream_logits.npz"
    arrays = dict(np.load(logits_file)) if logits_file.is_file() else {}
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
        predictor.predict_from_files_sequential(str(inputs), str(pred_dir), save_probabilities=True, overwrite=True)
        for f in pred_dir.glob("*.pkl"):
            f.unlink()  # upstream's pickled properties: not needed, and pickles are not committed
        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        data, _, _ = preprocessor.run_case([str(inputs / f"{TEST_CASES[0]}_0000.nii.gz")], None,
                                           predictor.plans_manager, predictor.configuration_manager,
                                           predictor.dataset_json)
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

    (args.out.resolve() / "made_with.json").write_text(json.dumps(
        {"nnunetv2": version("nnunetv2"), "torch": torch.__version__, "numpy": np.__version__,
         "date": time.strftime("%Y-%m-%d"), "test_cases": list(TEST_CASES)}, indent=1))


if __name__ == "__main__":
    main()
