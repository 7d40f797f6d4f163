"""Predicting a folder the way ``pnnunet_predict`` does, as a library call (reference §7, §8.2).

Which model: :func:`choose_models` takes an explicit configuration, else the choice of
``pnnunet_find_best_config`` (``inference_instructions.json``: one model or an ensemble, plus its
postprocessing; or upstream's ``inference_information.json``), else the only trained model. Model
folders trained by upstream nnU-Net v2 are found the same way (with upstream's default trainer and
plans names when ``-tr``/``-p`` are not given and no pnnunet folder has the configuration). :func:`predict_folder` then predicts with it: a
cascade stage predicts its previous stage first (unless given its predictions), an ensemble is
predicted member by member with probabilities and averaged, and the postprocessing is applied.
Messages go to the ``pnnunet`` logger; the result says what was done.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pnnunet.defaults import (DEFAULT_CHECKPOINT, DEFAULT_PLANS, DEFAULT_TRAINER, INFORMATION_FILE,
                              UPSTREAM_INFORMATION_FILE, UPSTREAM_PLANS, UPSTREAM_TRAINER, Fold, checkpoint_stem,
                              model_dir_name, parse_fold, parse_model_dir_name, sibling_model_dir)
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json
from pnnunet.inference.ensemble import ensemble_folders
from pnnunet.inference.model_folder import find_trained_folds, load_model_folder, trained_model_dirs
from pnnunet.inference.predictor import Predictor, check_part, claim_output_folder
from pnnunet.postprocessing.apply import apply_postprocessing_to_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """The model folders to predict with, the postprocessing to apply and the default folds."""

    model_dirs: tuple[Path, ...]
    postprocessing_file: Path | None = None
    folds: tuple[Fold, ...] | None = None  # None: every trained fold
    source: str | None = None  # the instructions file the choice follows

    def describe(self) -> str:
        names = " + ".join(m.name for m in self.model_dirs)
        what = f"ensemble of {names}" if len(self.model_dirs) > 1 else names
        return what + (f", postprocessing {self.postprocessing_file.name}" if self.postprocessing_file else "")


@dataclass
class PredictionSettings:
    """How to predict (the flags of ``pnnunet_predict`` other than the input, output and model)."""

    checkpoint: str = DEFAULT_CHECKPOINT
    folds: Sequence[Fold] | None = None  # None: the choice's folds, else every trained fold
    device: str = "auto"
    use_tta: bool = True
    step_size: float = 0.5
    tile_batch_size: int | None = None
    use_static_graph: bool = True
    precision: str = "auto"
    save_probabilities: bool = False
    continue_prediction: bool = False
    num_preprocessing_workers: int = 3
    num_export_workers: int = 3
    previous_stage_predictions: Path | None = None  # cascade: the previous stage's predictions of the same cases
    progress: bool = True
    part: tuple[int, int] = (0, 1)  # (part_id, num_parts): predict sorted cases [part_id::num_parts]
    on_progress: Callable[[dict], None] | None = None  # a front end's progress (Predictor's ``on_progress``)
    cache_dir: Path | None = None  # where upstream folds are converted when their model folder is read-only

    def __post_init__(self):
        if self.num_preprocessing_workers < 0 or self.num_export_workers < 0:
            raise PnnunetError("-npp and -nps must be >= 0")
        check_part(*self.part)
        if self.folds is not None:
            self.folds = [parse_fold(f) for f in self.folds]


@dataclass
class PredictionResult:
    output_folder: Path
    models: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # "ensembled ...", "postprocessed"


def _relocated(recorded: str, results_dataset: Path) -> Path:
    """A file named in an instructions file, found in this results folder first (the recorded paths are absolute
    paths of the machine and results root it was written on; a model zip installs elsewhere): the part after
    the dataset folder's name, or ``<model or ensemble>/<crossval>/<file>``; else the path as recorded."""
    path = Path(recorded)
    inside = [results_dataset.joinpath(*path.parts[i + 1:]) for i in range(len(path.parts) - 2, -1, -1)
              if path.parts[i] == results_dataset.name][:1]
    candidates = inside + [results_dataset.joinpath(*path.parts[-3:])] + ([path] if path.is_absolute() else
                                                                          [results_dataset / path, path])
    return next((c for c in candidates if c.is_file()), path)


def _from_instructions(results_dataset: Path) -> ModelChoice | None:
    path = next((results_dataset / f for f in (INFORMATION_FILE, UPSTREAM_INFORMATION_FILE)
                 if (results_dataset / f).is_file()), None)
    if path is None:
        return None
    try:
        info = load_json(path)
        best = info["best_model_or_ensemble"]
        models = tuple(results_dataset / model_dir_name(m["trainer"], m["plans_identifier"], m["configuration"])
                       for m in best["selected_model_or_models"])
    except (ValueError, KeyError, TypeError) as e:
        raise PnnunetError(f"{path}: cannot be read ({type(e).__name__}: {e})\n  fix: re-run "
                           "pnnunet_find_best_config, or pass -c") from None
    if not models:
        raise PnnunetError(f"{path}: selects no model\n  fix: re-run pnnunet_find_best_config, or pass -c")
    pp = best.get("postprocessing_file")
    folds = info.get("folds")
    return ModelChoice(models, _relocated(pp, results_dataset) if pp else None,
                       tuple(parse_fold(f) for f in folds) if folds else None, path.name)


def _only_trained(results_dataset: Path, trainer: str | None, plans: str | None, checkpoint: str) -> Path:
    found = []
    for d in trained_model_dirs(results_dataset, checkpoint_stem(checkpoint)):
        tr, pl, _ = parse_model_dir_name(d.name)
        if trainer in (None, tr) and plans in (None, pl):
            found.append(d)
    if len(found) == 1:
        log.info("pnnunet: no -c given and no %s: using the only trained model, %s", INFORMATION_FILE, found[0].name)
        return found[0]
    if not found:
        raise PnnunetError(f"{results_dataset}: no trained model found (no fold with {checkpoint})\n"
                           "  fix: train first (pnnunet_train CONFIG FOLD), or pass -m MODEL_DIR")
    raise PnnunetError(f"{results_dataset}: several trained models ({', '.join(d.name for d in found)}) and no "
                       f"{INFORMATION_FILE}\n  fix: pass -c (and -tr/-p), or run pnnunet_find_best_config")


def _configured(results_dataset: Path, configuration: str, trainer: str | None, plans: str | None,
                checkpoint: str) -> Path:
    """The model folder of ``configuration``: pnnunet's default trainer/plans names for those not given,
    else upstream's (``nnUNetTrainer``, ``nnUNetPlans``) if only that folder is trained."""
    ours = results_dataset / model_dir_name(trainer or DEFAULT_TRAINER, plans or DEFAULT_PLANS, configuration)
    if (trainer is None or plans is None) and not find_trained_folds(ours, checkpoint):
        theirs = results_dataset / model_dir_name(trainer or UPSTREAM_TRAINER, plans or UPSTREAM_PLANS, configuration)
        if find_trained_folds(theirs, checkpoint):
            log.info("pnnunet: using %s (nnU-Net's default trainer/plans names; %s has no trained fold)",
                     theirs.name, ours.name)
            return theirs
    return ours


def choose_models(results_dataset: Path, configuration: str | None = None, trainer: str | None = None,
                  plans: str | None = None, checkpoint: str = DEFAULT_CHECKPOINT) -> ModelChoice:
    """The model(s) of a dataset's results folder to predict with (see the module docstring)."""
    if configuration is not None:
        return ModelChoice((_configured(results_dataset, configuration, trainer, plans, checkpoint),))
    chosen = _from_instructions(results_dataset)
    if chosen is not None:
        log.info("pnnunet: following %s: %s", results_dataset / chosen.source, chosen.describe())
        return chosen
    return ModelChoice((_only_trained(results_dataset, trainer, plans, checkpoint),))


def _predictor(model_dir: Path, folds, settings: PredictionSettings) -> Predictor:
    model = load_model_folder(model_dir, folds, settings.checkpoint, cache_dir=settings.cache_dir)
    return Predictor(model, device=settings.device, use_tta=settings.use_tta, step_size=settings.step_size,
                     tile_batch_size=settings.tile_batch_size, use_static_graph=settings.use_static_graph,
                     progress=settings.progress, precision=settings.precision, on_progress=settings.on_progress)


def _predict_model(predictor: Predictor, folds, settings: PredictionSettings, input_folder: Path, output: Path,
                   save_probabilities: bool, predicted: dict[Path, Path] | None = None) -> None:
    """Predict ``input_folder`` into ``output`` with one model; a cascade stage without previous-stage
    predictions first predicts its previous stage (reference §7.7, v1 behaviour), unless
    ``predicted`` (model folder -> its prediction folder, an ensemble's members) has it."""
    previous_stage = predictor.plan.previous_stage
    prev_output = settings.previous_stage_predictions
    temporary = None
    if previous_stage and prev_output is None:
        prev_dir = sibling_model_dir(predictor.model.model_dir, previous_stage)
        prev_output = (predicted or {}).get(prev_dir.resolve())
    if previous_stage and prev_output is None:
        temporary = prev_output = _hidden(output, previous_stage, settings.part)
        log.info("pnnunet: %s is a cascade stage: predicting %s (%s) first", predictor.model.configuration,
                 previous_stage, prev_dir.name)
        _predictor(prev_dir, folds, settings).predict_folder(
            input_folder, prev_output, continue_prediction=settings.continue_prediction,
            num_preprocessing_workers=settings.num_preprocessing_workers,
            num_export_workers=settings.num_export_workers, part=settings.part)
    predictor.predict_folder(input_folder, output, save_probabilities=save_probabilities,
                             continue_prediction=settings.continue_prediction,
                             num_preprocessing_workers=settings.num_preprocessing_workers,
                             num_export_workers=settings.num_export_workers, previous_stage_predictions=prev_output,
                             part=settings.part)
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)


def _hidden(output: Path, name: str, part: tuple[int, int]) -> Path:
    """A temporary folder under ``output``, one per part so that concurrent parts never share it."""
    return output / (f".{name}" if part[1] == 1 else f".{name}.part{part[0]}of{part[1]}")


def _member_folder(output: Path, model_dir: Path, models: Sequence[Path], part: tuple[int, int]) -> Path:
    configs = [parse_model_dir_name(m.name)[2] for m in models]
    config = parse_model_dir_name(model_dir.name)[2]
    return _hidden(output, config if configs.count(config) == 1 else model_dir.name, part)


def _move_probabilities(src: Path, dst: Path) -> None:
    """Move CASE.npz + CASE.json from a temporary member folder into the output folder."""
    for npz in src.glob("*.npz"):
        if npz.name.startswith("."):
            continue
        for f in (npz, npz.with_suffix(".json")):
            if f.is_file():
                os.replace(f, dst / f.name)


def _predict_combined(input_folder: Path, output: Path, choice: ModelChoice, folds,
                      settings: PredictionSettings) -> PredictionResult:
    """Ensemble members and/or postprocessing: predict into hidden folders under ``output``, then combine."""
    models, pp_file = list(choice.model_dirs), choice.postprocessing_file
    if pp_file is not None and not pp_file.is_file():
        raise PnnunetError(f"{pp_file}: postprocessing file named in {INFORMATION_FILE} not found\n"
                           "  fix: re-run pnnunet_find_best_config, or pass -c to predict without it")
    ensemble = len(models) > 1
    predictors = [_predictor(m, folds, settings) for m in models]
    combined = {"model": " + ".join(p.model.identity for p in predictors),
                "configuration": " + ".join(p.model.configuration for p in predictors),
                "folds": [p.model.fold_names for p in predictors], "checkpoint": settings.checkpoint,
                "use_tta": settings.use_tta, "step_size": settings.step_size,
                "postprocessing": str(pp_file) if pp_file else None}
    claim_output_folder(output, combined)
    members, predicted = [], {}
    # previous stages first, so that a cascade member reuses the previous stage's member predictions
    order = sorted(range(len(models)), key=lambda i: predictors[i].plan.previous_stage is not None)
    for i in order:
        folder = _member_folder(output, models[i], models, settings.part)
        _predict_model(predictors[i], folds, settings, input_folder, folder, ensemble or settings.save_probabilities,
                       predicted)
        predicted[predictors[i].model.model_dir.resolve()] = folder
        members.append(folder)
    source = members[0]
    workers = max(1, settings.num_export_workers)
    if ensemble:
        source = _hidden(output, "ensemble", settings.part) if pp_file is not None else output
        ensemble_folders(members, source, save_npz=settings.save_probabilities, num_processes=workers,
                         progress=settings.progress)
    if pp_file is not None:
        apply_postprocessing_to_folder(source, output, pp_file, num_processes=workers, progress=settings.progress)
        if settings.save_probabilities:
            _move_probabilities(source, output)
    for folder in set(members + [source]) - {output}:
        shutil.rmtree(folder, ignore_errors=True)
    steps = (["ensembled " + " + ".join(p.model.configuration for p in predictors)] if ensemble else []) + \
            (["postprocessed"] if pp_file is not None else [])
    return PredictionResult(output, [p.model.identity for p in predictors], steps)


def predict_folder(input_folder: Path | str, output_folder: Path | str, choice: ModelChoice,
                   settings: PredictionSettings | None = None) -> PredictionResult:
    """Predict every case of ``input_folder`` into ``output_folder`` with ``choice`` (one model, or an
    ensemble and/or postprocessing)."""
    settings = settings or PredictionSettings()
    input_folder, output = Path(input_folder), Path(output_folder)
    folds = settings.folds if settings.folds is not None else (list(choice.folds) if choice.folds else None)
    if len(choice.model_dirs) == 1 and choice.postprocessing_file is None:
        predictor = _predictor(choice.model_dirs[0], folds, settings)
        _predict_model(predictor, folds, settings, input_folder, output, settings.save_probabilities)
        return PredictionResult(output, [predictor.model.identity])
    result = _predict_combined(input_folder, output, choice, folds, settings)
    log.info("pnnunet: %s -> %s", ", ".join(result.steps), output)
    return result
