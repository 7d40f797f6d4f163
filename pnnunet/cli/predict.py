"""``pnnunet_predict -i INPUT -o OUTPUT``: segment a folder of images (reference §7, §9.2).

Which model: ``-m MODEL_DIR``; else ``-c`` (with ``-tr``/``-p``) in the dataset's results folder;
else the choice of ``pnnunet_find_best_config`` (``inference_instructions.json``: one model,
or an ensemble predicted member by member with probabilities and averaged, then its
postprocessing); else the only trained configuration (said so).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from pnnunet.cli.common import add_dataset_arg, default_num_processes, get_roots, run_cli
from pnnunet.errors import PnnunetError

log = logging.getLogger("pnnunet")

DEFAULT_TRAINER = "pnnunetTrainer"
DEFAULT_PLANS = "pnnunetPlans"
INSTRUCTIONS_FILE = "inference_instructions.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_predict",
                                description="Segment every case of an input folder with a trained model (the "
                                            "folds' logits averaged, mirroring test-time augmentation) and write "
                                            "the segmentations in the input's geometry.")
    p.add_argument("-i", dest="input", required=True, type=Path,
                   help="input folder: CASE_0000.nii.gz, CASE_0001.nii.gz, ... (one file per channel; a "
                        "single-channel model also takes CASE.nii.gz)")
    p.add_argument("-o", dest="output", required=True, type=Path, help="output folder (created)")
    add_dataset_arg(p)
    p.add_argument("-c", dest="configuration", default=None,
                   help="configuration (2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres). Default: the choice of "
                        "pnnunet_find_best_config, else the only trained configuration")
    p.add_argument("-p", dest="plans", default=None, help=f"plans name (default {DEFAULT_PLANS})")
    p.add_argument("-tr", dest="trainer", default=None, help=f"trainer (default {DEFAULT_TRAINER})")
    p.add_argument("-m", dest="model_dir", type=Path, default=None,
                   help="a model folder <Trainer>__<Plans>__<config> (instead of -d/-c/-tr/-p)")
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
    p.add_argument("--disable_progress_bar", "--no_pbar", "--no-pbar", dest="no_pbar", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p


def _dataset_name(args: argparse.Namespace, roots) -> str:
    from pnnunet.dataset.resolve import resolve_dataset

    spec = args.dataset
    if spec is not None and ("/" in spec or "\\" in spec or Path(spec).expanduser().is_dir()):
        return resolve_dataset(spec, roots.raw, roots.preprocessed, dataset_id=args.dataset_id)
    return resolve_dataset(spec, roots.results, None)


def _model_dir(results_dataset: Path, trainer: str | None, plans: str | None, configuration: str) -> Path:
    from pnnunet.inference.model_folder import model_dir_name

    return results_dataset / model_dir_name(trainer or DEFAULT_TRAINER, plans or DEFAULT_PLANS, configuration)


def _from_instructions(results_dataset: Path) -> tuple[list[Path], Path | None, list | None] | None:
    """(model folders, postprocessing file, folds) chosen by find_best_configuration, or None."""
    from pnnunet.fileio import load_json
    from pnnunet.inference.model_folder import model_dir_name

    path = results_dataset / INSTRUCTIONS_FILE
    if not path.is_file():
        return None
    try:
        info = load_json(path)
        best = info["best_model_or_ensemble"]
        models = [results_dataset / model_dir_name(m["trainer"], m["plans_identifier"], m["configuration"])
                  for m in best["selected_model_or_models"]]
    except (ValueError, KeyError, TypeError) as e:
        raise PnnunetError(f"{path}: cannot be read ({type(e).__name__}: {e})\n  fix: re-run "
                           "pnnunet_find_best_config, or pass -c") from None
    if not models:
        raise PnnunetError(f"{path}: selects no model\n  fix: re-run pnnunet_find_best_config, or pass -c")
    pp = best.get("postprocessing_file")
    return models, Path(pp) if pp else None, info.get("folds")


def _only_trained(results_dataset: Path, args: argparse.Namespace) -> Path:
    from pnnunet.inference.model_folder import checkpoint_stem, parse_model_dir_name, trained_model_dirs

    found = []
    for d in trained_model_dirs(results_dataset, checkpoint_stem(args.checkpoint)):
        trainer, plans, _ = parse_model_dir_name(d.name)
        if (args.trainer in (None, trainer)) and (args.plans in (None, plans)):
            found.append(d)
    if len(found) == 1:
        print(f"pnnunet: no -c given and no {INSTRUCTIONS_FILE}: using the only trained model, {found[0].name}")
        return found[0]
    if not found:
        raise PnnunetError(f"{results_dataset}: no trained model found (no fold with {args.checkpoint})\n"
                           "  fix: train first (pnnunet_train CONFIG FOLD), or pass -m MODEL_DIR")
    raise PnnunetError(f"{results_dataset}: several trained models ({', '.join(d.name for d in found)}) and no "
                       f"{INSTRUCTIONS_FILE}\n  fix: pass -c (and -tr/-p), or run pnnunet_find_best_config")


def _choose(args: argparse.Namespace) -> tuple[list[Path], Path | None, list | None]:
    """Model folders to predict with, the postprocessing file to apply (or None) and default folds."""
    if args.model_dir is not None:
        return [args.model_dir], None, None
    roots = get_roots()
    results_dataset = roots.results / _dataset_name(args, roots)
    if args.configuration is not None:
        return [_model_dir(results_dataset, args.trainer, args.plans, args.configuration)], None, None
    chosen = _from_instructions(results_dataset)
    if chosen is not None:
        models, pp, folds = chosen
        what = "ensemble of " + " + ".join(m.name for m in models) if len(models) > 1 else models[0].name
        print(f"pnnunet: following {results_dataset / INSTRUCTIONS_FILE}: {what}"
              + (f", postprocessing {pp.name}" if pp else ""))
        return models, pp, folds
    return [_only_trained(results_dataset, args)], None, None


def _predictor(model_dir: Path, folds, args: argparse.Namespace):
    from pnnunet.inference.model_folder import load_model_folder
    from pnnunet.inference.predictor import Predictor

    model = load_model_folder(model_dir, folds, args.checkpoint)
    return Predictor(model, device=args.device, use_tta=not args.disable_tta, step_size=args.step_size,
                     tile_batch_size=args.tile_batch_size, use_static_graph=not args.eager,
                     progress=not args.no_pbar, precision="fp32" if args.fp32 or args.eager else "auto")


def _predict_model(predictor, folds, args: argparse.Namespace, output: Path, save_probabilities: bool, npp: int,
                   nps: int, predicted: dict[Path, Path] | None = None) -> None:
    """Predict ``args.input`` into ``output`` with one model; a cascade stage without
    ``-prev_stage_predictions`` first predicts its previous stage (reference §7.7, v1 behaviour),
    unless ``predicted`` (model folder -> its prediction folder, an ensemble's members) has it."""
    from pnnunet.inference.model_folder import sibling_model_dir

    previous_stage = predictor.plan.previous_stage
    prev_output = args.prev_stage_predictions
    temporary = None
    if previous_stage and prev_output is None:
        prev_dir = sibling_model_dir(predictor.model.model_dir, previous_stage)
        prev_output = (predicted or {}).get(prev_dir.resolve())
    if previous_stage and prev_output is None:
        temporary = prev_output = output / f".{previous_stage}"
        print(f"pnnunet: {predictor.model.configuration} is a cascade stage: predicting {previous_stage} "
              f"({prev_dir.name}) first")
        _predictor(prev_dir, folds, args).predict_folder(
            args.input, prev_output, continue_prediction=args.continue_prediction, num_preprocessing_workers=npp,
            num_export_workers=nps)
    predictor.predict_folder(args.input, output, save_probabilities=save_probabilities,
                             continue_prediction=args.continue_prediction, num_preprocessing_workers=npp,
                             num_export_workers=nps, previous_stage_predictions=prev_output)
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)


def _member_folder(output: Path, model_dir: Path, models: list[Path]) -> Path:
    from pnnunet.inference.model_folder import parse_model_dir_name

    configs = [parse_model_dir_name(m.name)[2] for m in models]
    config = parse_model_dir_name(model_dir.name)[2]
    return output / f".{config if configs.count(config) == 1 else model_dir.name}"


def _move_probabilities(src: Path, dst: Path) -> None:
    """Move CASE.npz + CASE.json from a temporary member folder into the output folder."""
    import os

    for npz in src.glob("*.npz"):
        if npz.name.startswith("."):
            continue
        for f in (npz, npz.with_suffix(".json")):
            if f.is_file():
                os.replace(f, dst / f.name)


def _run_combined(args: argparse.Namespace, models: list[Path], pp_file: Path | None, folds, npp: int,
                  nps: int) -> int:
    """Ensemble members and/or postprocessing: predict into hidden folders under OUTPUT, then combine."""
    from pnnunet.inference.predictor import claim_output_folder

    try:
        from pnnunet.inference.ensemble import ensemble_folders
        from pnnunet.postprocessing.apply import apply_postprocessing_to_folder
    except ImportError as e:
        raise PnnunetError(f"ensembling/postprocessing is not available in this installation ({e})\n"
                           "  fix: predict one configuration with -c") from None
    if pp_file is not None and not pp_file.is_file():
        raise PnnunetError(f"{pp_file}: postprocessing file named in {INSTRUCTIONS_FILE} not found\n"
                           "  fix: re-run pnnunet_find_best_config, or pass -c to predict without it")
    output: Path = args.output
    ensemble = len(models) > 1
    predictors = [_predictor(m, folds, args) for m in models]
    combined = {"model": " + ".join(p.model.identity for p in predictors),
                "configuration": " + ".join(p.model.configuration for p in predictors),
                "folds": [p.model.fold_names for p in predictors], "checkpoint": args.checkpoint,
                "use_tta": not args.disable_tta, "step_size": args.step_size,
                "postprocessing": str(pp_file) if pp_file else None}
    claim_output_folder(output, combined)
    members, predicted = [], {}
    # previous stages first, so that a cascade member reuses the previous stage's member predictions
    order = sorted(range(len(models)), key=lambda i: predictors[i].plan.previous_stage is not None)
    for i in order:
        m, predictor = models[i], predictors[i]
        folder = _member_folder(output, m, models)
        _predict_model(predictor, folds, args, folder, ensemble or args.save_probabilities, npp, nps, predicted)
        predicted[predictor.model.model_dir.resolve()] = folder
        members.append(folder)
    source = members[0]
    workers = max(1, nps)
    if ensemble:
        source = output / ".ensemble" if pp_file is not None else output
        ensemble_folders(members, source, save_npz=args.save_probabilities, num_processes=workers,
                         progress=not args.no_pbar)
    if pp_file is not None:
        apply_postprocessing_to_folder(source, output, pp_file, num_processes=workers, progress=not args.no_pbar)
        if args.save_probabilities:
            _move_probabilities(source, output)
    for folder in set(members + [source]) - {output}:
        shutil.rmtree(folder, ignore_errors=True)
    steps = (["ensembled " + " + ".join(p.model.configuration for p in predictors)] if ensemble else []) + \
            (["postprocessed"] if pp_file is not None else [])
    print(f"pnnunet: {', '.join(steps)} -> {output}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pnnunet.inference.model_folder import parse_fold
    from pnnunet.paths import env_int

    npp = args.npp if args.npp is not None else env_int("pnnunet_npp", default_num_processes(3))
    nps = args.nps if args.nps is not None else env_int("pnnunet_nps", default_num_processes(3))
    if npp < 0 or nps < 0:
        raise PnnunetError("-npp and -nps must be >= 0")
    models, pp_file, default_folds = _choose(args)
    folds = [parse_fold(f) for f in args.folds] if args.folds else default_folds
    if len(models) == 1 and pp_file is None:
        _predict_model(_predictor(models[0], folds, args), folds, args, args.output, args.save_probabilities, npp,
                       nps)
        return 0
    return _run_combined(args, models, pp_file, folds, npp, nps)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
