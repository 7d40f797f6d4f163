"""``pnnunet_predict -i INPUT -o OUTPUT``: segment a folder of images (reference §7, §9.2).

Which model: ``-m MODEL_DIR`` (or ``-m pretrained:hippocampus``, the model bundled in the package);
else ``-c`` (with ``-tr``/``-p``) in the dataset's results folder; else the choice of
``pnnunet_find_best_config`` (``inference_instructions.json``: one model, or an ensemble predicted
member by member with probabilities and averaged, then its postprocessing; upstream's
``inference_information.json`` too); else the only trained configuration (said so). Model folders
trained by upstream nnU-Net v2 predict as they are.

``pnnunet_predict_from_modelfolder -i -o -m MODEL_DIR`` is upstream's name for the ``-m`` form.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pnnunet.cli.common import add_dataset_arg, default_num_processes, get_roots, run_cli
from pnnunet.dataset.dicom import looks_like_dicom_input, prediction_input
from pnnunet.dataset.dicom_seg import require_highdicom
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS, DEFAULT_TRAINER
from pnnunet.errors import PnnunetError
from pnnunet.evaluation.clinical_outputs import write_clinical_outputs
from pnnunet.fileio import read_json_file
from pnnunet.paths import env_int
from pnnunet.pretrained import MODELS, PREFIX, resolve_model_arg
from pnnunet.runtime.device import import_paddle

PRETRAINED_NAMES = ", ".join(PREFIX + name for name in MODELS)


def _parser(from_modelfolder: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_predict_from_modelfolder" if from_modelfolder else "pnnunet_predict",
                                description="Segment every case of an input folder with a trained model (the "
                                            "folds' logits averaged, mirroring test-time augmentation) and write "
                                            "the segmentations in the input's geometry. Model folders trained by "
                                            "nnU-Net v2 (fold_K/checkpoint_final.pth) work as they are.")
    p.add_argument("-i", dest="input", required=True, type=Path,
                   help="input folder: CASE_0000.nii.gz, CASE_0001.nii.gz, ... (one file per channel; a "
                        "single-channel model also takes CASE.nii.gz), or a DICOM folder or .zip (every image "
                        "series becomes a case, as pnnunet_convert_dicom)")
    p.add_argument("-o", dest="output", required=True, type=Path, help="output folder (created)")
    if from_modelfolder:
        p.add_argument("-m", dest="model_dir", type=Path, required=True,
                       help="a model folder <Trainer>__<Plans>__<config> (pnnunet's or nnU-Net v2's), or "
                            f"{PRETRAINED_NAMES} (bundled)")
    else:
        add_dataset_arg(p)
        p.add_argument("-c", dest="configuration", default=None,
                       help="configuration (2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres). Default: the choice of "
                            "pnnunet_find_best_config, else the only trained configuration")
        p.add_argument("-p", dest="plans", default=None,
                       help=f"plans name (default {DEFAULT_PLANS}, else nnU-Net's nnUNetPlans)")
        p.add_argument("-tr", dest="trainer", default=None,
                       help=f"trainer (default {DEFAULT_TRAINER}, else nnU-Net's nnUNetTrainer)")
        p.add_argument("-m", dest="model_dir", type=Path, default=None,
                       help="a model folder <Trainer>__<Plans>__<config>, pnnunet's or nnU-Net v2's (instead of "
                            f"-d/-c/-tr/-p), or a bundled pretrained model: {PRETRAINED_NAMES}")
    p.add_argument("-f", dest="folds", nargs="+", default=None,
                   help="folds to ensemble, e.g. 0 1 2 3 4 or all (default: every trained fold)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final",
                   help="checkpoint_final (default), checkpoint_best or checkpoint_latest")
    p.add_argument("-step_size", "--step_size", dest="step_size", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch (default 0.5; larger is faster, less accurate)")
    p.add_argument("--disable_tta", "--disable-tta", action="store_true",
                   help="no mirroring test-time augmentation (8x faster in 3D, slightly less accurate)")
    p.add_argument("--save_probabilities", "--save-probabilities", action="store_true",
                   help="also write CASE.npz (softmax probabilities) + CASE.json, needed for ensembling")
    p.add_argument("--continue_prediction", "--continue-prediction", "--continue", dest="continue_prediction",
                   action="store_true", help="skip cases whose output already exists")
    p.add_argument("-npp", type=int, default=None,
                   help="background preprocessing processes (default: env pnnunet_npp or min(3, cores)); 0 = none")
    p.add_argument("-nps", type=int, default=None,
                   help="background export processes (default: env pnnunet_nps or min(3, cores)); 0 = none")
    p.add_argument("-device", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    p.add_argument("-prev_stage_predictions", "--prev_stage_predictions", type=Path, default=None,
                   help="cascade (3d_cascade_fullres) only: folder with the previous stage's predictions of the "
                        "same cases. Default: the previous stage (3d_lowres, same trainer and plans) is "
                        "predicted first, into a hidden folder under the output that is removed afterwards")
    p.add_argument("--tile_batch_size", "--tile-batch-size", type=int, default=None,
                   help="patches per network call (default: measured best for the device)")
    p.add_argument("--fp32", "--disable_mixed_precision", dest="fp32", action="store_true",
                   help="float32 everywhere. Default on CPUs with native bfloat16 (AVX512-BF16/AMX): convolutions "
                        "in bfloat16 with float32 accumulation, ~2x faster (as upstream uses float16 on GPUs)")
    p.add_argument("--eager", action="store_true",
                   help="run the dynamic-graph network instead of the exported static graph (slower; for debugging)")
    p.add_argument("-num_parts", "--num_parts", type=int, default=1,
                   help="split the cases into this many parts (sorted case ids [part_id::num_parts], as upstream); "
                        "run one process per part, on one or several machines, into the same output folder")
    p.add_argument("-part_id", "--part_id", type=int, default=0, help="which part this process predicts (0-based)")
    p.add_argument("--stats", action="store_true",
                   help="also write CASE_statistics.json and statistics.csv (volume mL, intensity, components, ...)")
    p.add_argument("--report", action="store_true", help="also write CASE_report.html and CASE_report.png")
    p.add_argument("--dicom_seg", "--dicom-seg", action="store_true",
                   help="DICOM input only: also write CASE_seg.dcm, a DICOM-SEG referencing the source series "
                        '(needs pip install "pnnunet[dicom]")')
    p.add_argument("--cache_dir", "--cache-dir", type=Path, default=None,
                   help="nnU-Net v2 models: where their .pth checkpoints are converted (once) when the model folder "
                        "is read-only (default: env pnnunet_cache_dir; else beside each checkpoint, fold_K/pnnunet/)")
    p.add_argument("--disable_progress_bar", "--no_pbar", "--no-pbar", dest="no_pbar", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p


def _dataset_name(args: argparse.Namespace, roots) -> str:
    spec = args.dataset
    if spec is not None and ("/" in spec or "\\" in spec or Path(spec).expanduser().is_dir()):
        return resolve_dataset(spec, roots.raw, roots.preprocessed, dataset_id=args.dataset_id)
    return resolve_dataset(spec, roots.results, None)


def _run(args: argparse.Namespace) -> int:
    if args.dicom_seg and not looks_like_dicom_input(args.input):
        raise PnnunetError(f"{args.input}: --dicom_seg needs a DICOM input (a folder or zip of DICOM files)\n"
                           "  fix: pass the DICOM series to -i, or leave --dicom_seg out")
    if args.dicom_seg:  # before Paddle: Paddle 2.6's bundled zlib crashes libraries loaded after it (pnnunet/__init__)
        require_highdicom()
    import_paddle()  # the install hint, before anything that needs Paddle is imported
    from pnnunet.inference import pipeline  # deferred: imports Paddle at load time

    settings = pipeline.PredictionSettings(
        checkpoint=args.checkpoint, folds=args.folds, device=args.device, use_tta=not args.disable_tta,
        step_size=args.step_size, tile_batch_size=args.tile_batch_size, use_static_graph=not args.eager,
        precision="fp32" if args.fp32 or args.eager else "auto", save_probabilities=args.save_probabilities,
        continue_prediction=args.continue_prediction,
        num_preprocessing_workers=args.npp if args.npp is not None else env_int("pnnunet_npp",
                                                                                default_num_processes(3)),
        num_export_workers=args.nps if args.nps is not None else env_int("pnnunet_nps", default_num_processes(3)),
        previous_stage_predictions=args.prev_stage_predictions, progress=not args.no_pbar,
        part=(args.part_id, args.num_parts), cache_dir=args.cache_dir)
    if args.model_dir is not None:
        choice = pipeline.ModelChoice((resolve_model_arg(args.model_dir),))
    else:
        roots = get_roots()
        choice = pipeline.choose_models(roots.results / _dataset_name(args, roots), args.configuration, args.trainer,
                                        args.plans, args.checkpoint)
    clinical = args.stats or args.report or args.dicom_seg
    dataset_json = None  # the model's, read only when needed, so a missing model keeps its usual error
    if clinical or looks_like_dicom_input(args.input):
        dataset_json = read_json_file(choice.model_dirs[0] / "dataset.json",
                                      "train the model first or check -d, -c, -tr, -p and -m")
    ending = dataset_json["file_ending"] if dataset_json else ".nii.gz"
    with prediction_input(args.input, args.output, ending) as (input_folder, dicom_cases):
        pipeline.predict_folder(input_folder, args.output, choice, settings)
        if clinical:
            write_clinical_outputs(input_folder, args.output, dataset_json, stats=args.stats, report=args.report,
                                   dicom_cases=dicom_cases, dicom_seg=args.dicom_seg,
                                   model_info={"model": choice.describe(), "folds": " ".join(
                                       map(str, settings.folds or choice.folds or ["all trained"])),
                                       "checkpoint": settings.checkpoint})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


def main_from_modelfolder(argv: Sequence[str] | None = None) -> int:
    """``pnnunet_predict_from_modelfolder``: upstream's command name for ``pnnunet_predict -m``."""
    return run_cli(_run, _parser(from_modelfolder=True), argv)


if __name__ == "__main__":
    raise SystemExit(main())
