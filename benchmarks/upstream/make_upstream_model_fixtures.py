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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/upstream_model_fixtures"))
    ap.add_argument("--reuse", action="store_true", help="keep the converted and preprocessed data of --work")
    ap.add_argument("--steps", type=int, default=20, help="SGD steps per configuration (upstream's train_step)")
    ap.add_argument("--validate", action="store_true", help="also run upstream's final validation and "
                    "nnUNetv2_find_best_configuration (inference_information.json, postprocessing.pkl)")
    args = ap.parse_args()
    work = args.work.resolve()
    reuse = args.reuse and (work / "pre" / DATASET / "nnUNetPlans.json").is_file()
    if work.exists() and not reuse:
        shutil.rmtree(work)
    for stale in ("res", "test_inputs"):
        shutil.rmtree(work / stale, ignore_errors=True)
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
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainers = {}
    for cfg in CONFIGS:
        torch.manual_seed(1234)
        rs = np.random.RandomState(1234)
        # nnUNetv2_train's run_training sets (and the trainer pops) continue_training
        trainer = nnUNetTrainer({**plans, "continue_training": False}, cfg, 0, dataset_json,
                                device=torch.device("cpu"))
        trainer.enable_deep_supervision = False  # one output: the steps below need no downsampled targets
        trainer.initialize()
        dataset_tr, _ = trainer.get_tr_and_val_datasets()
        keys = sorted(dataset_tr.identifiers)
        patch = trainer.configuration_manager.patch_size
        t0 = time.time()
        os.makedirs(trainer.output_folder, exist_ok=True)
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
        print(f"trained {cfg}: {args.steps} SGD steps in {time.time() - t0:.0f} s", flush=True)
        trainers[cfg] = trainer
    res = work / "res" / DATASET
    out = args.out.resolve() / DATASET
    if out.exists():
        shutil.rmtree(out)
    inputs = work / "test_inputs"
    inputs.mkdir()
    for case in TEST_CASES:
        shutil.copy(work / "raw" / DATASET / "imagesTs" / f"{case}_0000.nii.gz", inputs)
    arrays = {}
    for cfg in CONFIGS:
        name = f"{TRAINER}__{PLANS}__{cfg}"
        src, dst = res / name, out / name
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
        pred_dir = args.out.resolve() / "predictions" / cfg
        if pred_dir.exists():
            shutil.rmtree(pred_dir)
        predictor.predict_from_files_sequential(str(inputs), str(pred_dir), save_probabilities=True, overwrite=True)
        for f in pred_dir.glob("*.pkl"):
            f.unlink()  # upstream's pickled properties: not needed, and pickles are not committed
        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        data, _, _ = preprocessor.run_case([str(inputs / f"{TEST_CASES[0]}_0000.nii.gz")], None,
                                           predictor.plans_manager, predictor.configuration_manager,
                                           predictor.dataset_json)
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float().numpy()
        arrays[f"{cfg}/data"] = data.astype(np.float32)
        arrays[f"{cfg}/logits"] = logits.astype(np.float32)
    np.savez_compressed(args.out.resolve() / "predictions" / "upstream_logits.npz", **arrays)
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
    import nnunetv2  # noqa: F401
    (args.out.resolve() / "made_with.json").write_text(json.dumps(
        {"nnunetv2": version("nnunetv2"), "torch": torch.__version__, "numpy": np.__version__,
         "date": time.strftime("%Y-%m-%d"), "test_cases": list(TEST_CASES)}, indent=1))


if __name__ == "__main__":
    main()
