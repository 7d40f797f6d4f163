"""Time upstream nnU-Net v2's nnUNetPredictor on a folder (run in the upstream venv, CPU).

Builds an upstream model folder with random weights for a plan (``<model_dir>/{plans.json,
dataset.json, fold_K/checkpoint_final.pth}``, one random network per fold) unless it exists, then
predicts the input folder as ``nnUNetv2_predict -device cpu`` would (torch threads = cores,
mirroring on, step 0.5) and writes the timing as JSON. Called by ``benchmarks/predict_speed.py``:

    /work/venvs/upstream/bin/python predict_speed_upstream.py --plans nnUNetPlans.json \
        --dataset_json dataset.json --configuration 3d_fullres --model_dir MODEL --folds 0 \
        -i INPUT -o OUTPUT --result result.json [-npp 2 -nps 2] [--disable_tta]
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import torch


def make_model_folder(model_dir: Path, plans_file: Path, dataset_json_file: Path, configuration: str,
                      n_folds: int) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plans_file, model_dir / "plans.json")
    shutil.copyfile(dataset_json_file, model_dir / "dataset.json")
    plans = json.loads(plans_file.read_text())
    dataset_json = json.loads(dataset_json_file.read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    for fold in range(n_folds):
        ckpt = model_dir / f"fold_{fold}" / "checkpoint_final.pth"
        if ckpt.is_file():
            continue
        torch.manual_seed(fold)
        if "plans_manager" in inspect.signature(nnUNetTrainer.build_network_architecture).parameters:
            net = nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
        else:
            net = nnUNetTrainer.build_network_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                                           cm.network_arch_init_kwargs_req_import, n_in, n_out,
                                                           enable_deep_supervision=False)
        ckpt.parent.mkdir(exist_ok=True)
        torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                                  "dataset_json": dataset_json},
                    "inference_allowed_mirroring_axes": (0, 1, 2) if len(cm.patch_size) == 3 else (0, 1)}, ckpt)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--plans", type=Path, required=True)
    p.add_argument("--dataset_json", type=Path, required=True)
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("-i", dest="input", type=Path, required=True)
    p.add_argument("-o", dest="output", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("-npp", type=int, default=2)
    p.add_argument("-nps", type=int, default=2)
    p.add_argument("--disable_tta", action="store_true")
    args = p.parse_args()

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    make_model_folder(args.model_dir, args.plans, args.dataset_json, args.configuration, max(args.folds) + 1)
    torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_predict -device cpu
    t0 = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not args.disable_tta,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(args.model_dir), tuple(args.folds), "checkpoint_final.pth")
    t1 = time.perf_counter()
    if args.output.exists():
        shutil.rmtree(args.output)
    predictor.predict_from_files(str(args.input), str(args.output), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=args.npp, num_processes_segmentation_export=args.nps)
    t2 = time.perf_counter()
    n = len(list(args.output.glob("*.nii.gz")))
    args.result.write_text(json.dumps({"tool": "upstream", "load_seconds": t1 - t0, "predict_seconds": t2 - t1,
                                       "cases": n, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
