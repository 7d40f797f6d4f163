"""Pick the best configuration or pair ensemble by cross-validation (reference §8.2, §8.4).

For each trained model (``<Trainer>__<Plans>__<config>``) the folds' validation predictions are
merged and scored (foreground-mean Dice); every pair of models is ensembled from their
validation probabilities (``.npz``, written with ``pnnunet_train ... --npz``) and scored; the best
candidate wins (ties: the first, single models before ensembles); postprocessing is determined on
the winner's cross-validation predictions. Written at ``$pnnunet_results/DatasetXXX_Name/``:
``inference_instructions.json`` (upstream's ``inference_information.json`` fields),
``inference_instructions.txt`` (the commands to run) and ``postprocessing.json``.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pnnunet.dataset.labels import LabelInfo
from pnnunet.defaults import (DEFAULT_PLANS, DEFAULT_TRAINER, INFORMATION_FILE, INSTRUCTIONS_TEXT_FILE,
                              POSTPROCESSING_FILE)
from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.evaluation.accumulate import (accumulate_cv_results, crossval_folder_name, folds_to_string,
                                          validation_deviations)
from pnnunet.metrics import compute_metrics_on_folder
from pnnunet.evaluation.report import class_names
from pnnunet.fileio import atomic_path, load_json, write_json_atomic
from pnnunet.inference.ensemble import MissingProbabilitiesError, cv_probability_files, ensemble_crossvalidations
from pnnunet.plans import resolve_configuration
from pnnunet.dataset.folders import resolve_io
from pnnunet.postprocessing.determine import determine_postprocessing

log = logging.getLogger(__name__)

DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


@dataclass(frozen=True)
class TrainedModel:
    """One trained model, i.e. one results folder ``<trainer>__<plans>__<configuration>``."""

    trainer: str
    plans: str
    configuration: str

    @property
    def identifier(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    def considered(self) -> dict:
        """Upstream's ``considered_models`` entry."""
        return {"plans": self.plans, "configuration": self.configuration, "trainer": self.trainer}

    def selected(self) -> dict:
        """Upstream's ``selected_model_or_models`` entry."""
        return {"configuration": self.configuration, "trainer": self.trainer, "plans_identifier": self.plans}


@dataclass
class Candidate:
    """A single model or an ensemble, with its cross-validation summary."""

    name: str
    source: Path
    models: tuple[TrainedModel, ...]
    summary: dict

    @property
    def dice(self) -> float:
        return float(self.summary["foreground_mean"]["Dice"])

    @property
    def is_ensemble(self) -> bool:
        return len(self.models) > 1


def ensemble_name(models: Sequence[TrainedModel], folds: Sequence[int | str]) -> str:
    """``ensemble___<M1>___<M2>___0_1_2_3_4`` (upstream's ensemble folder name)."""
    return "___".join(["ensemble", *(m.identifier for m in models), folds_to_string(folds)])


def best_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """Highest foreground-mean Dice; ties (and NaN, which never wins) → the first in order."""
    if not candidates:
        raise ValueError("no candidates")
    best = candidates[0]
    for c in candidates[1:]:
        if not math.isnan(c.dice) and (math.isnan(best.dice) or c.dice > best.dice):
            best = c
    return best


@dataclass
class BestConfiguration:
    """What :func:`find_best_configuration` found and wrote; :meth:`table` prints the comparison."""

    dataset_name: str
    folds: tuple
    candidates: list[Candidate]
    best: Candidate
    postprocessing: dict
    names: dict[str, str]
    information: dict
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # inputs made unlike upstream's (e.g. without mirroring)

    def display_names(self) -> tuple[list[str], str]:
        """Short candidate names for the table (configurations only when trainer and plans are shared) + legend."""
        models = {m for c in self.candidates for m in c.models}
        short = len({(m.trainer, m.plans) for m in models}) == 1

        def name(m: TrainedModel) -> str:
            return m.configuration if short else m.identifier

        names = [("ensemble " + " + ".join(name(m) for m in c.models)) if c.is_ensemble else name(c.models[0])
                 for c in self.candidates]
        legend = f"models: {next(iter(models)).trainer}__{next(iter(models)).plans}__<configuration>" if short else ""
        return names, legend

    def table(self) -> str:
        """Cross-validation Dice per class and foreground mean of every candidate; post-pp for the winner."""
        keys = list(self.best.summary["mean"])
        heads = [f"{self.names.get(k, k)} ({k})" for k in keys]
        names, legend = self.display_names()
        width = max(len("model / ensemble"), len("(winner after postprocessing)") + 2, *(len(n) + 2 for n in names))
        cols = [max(9, len(h)) for h in heads]
        head = f"{'model / ensemble':<{width}}" + "".join(f"  {h:>{w}}" for h, w in zip(heads, cols))
        head += f"  {'mean':>7}  {'post-pp':>7}"
        lines = [head, "-" * len(head)]
        for c, n in zip(self.candidates, names):
            mark = "* " if c is self.best else "  "
            row = f"{mark + n:<{width}}"
            row += "".join(f"  {c.summary['mean'][k]['Dice']:>{w}.4f}" for k, w in zip(keys, cols))
            post = f"{self.postprocessing['postprocessed']['foreground_mean']['Dice']:.4f}" if c is self.best else "-"
            lines.append(row + f"  {c.dice:>7.4f}  {post:>7}")
        pp_mean = self.postprocessing["postprocessed"]["mean"]
        row = f"{'  (winner after postprocessing)':<{width}}"
        row += "".join(f"  {pp_mean[k]['Dice']:>{w}.4f}" for k, w in zip(keys, cols))
        lines.append(row + f"  {self.postprocessing['postprocessed']['foreground_mean']['Dice']:>7.4f}")
        lines.append(f"cross-validation folds {', '.join(map(str, self.folds))}; * = selected"
                     + (f"; {legend}" if legend else ""))
        return "\n".join(lines)


def _plans_configurations(preprocessed_dataset: Path, model_dir: Path, plans_name: str) -> set[str] | None:
    for f in (preprocessed_dataset / f"{plans_name}.json", model_dir / "plans.json"):
        if f.is_file():
            return set(load_json(f).get("configurations", {}))
    return None


def select_models(results_dataset: Path, preprocessed_dataset: Path, configurations: Sequence[str] | None,
                  trainers: Sequence[str], plans_names: Sequence[str], notes: list[str]) -> list[TrainedModel]:
    """Trained models to compare, in upstream's order (trainer, configuration, plans).

    Explicit ``configurations``: a configuration planned but not trained is an error (reference §8.2
    step 1); one not in the plans is skipped. ``None``: the four standard configurations, those
    that have a results folder.
    """
    # DEVIATION(nnU-Net §8.2): without -c upstream requires all four standard configurations that are planned to
    # be trained; here the untrained ones are left out, so a workspace with one trained configuration just works.
    explicit = configurations is not None
    configs = list(configurations) if explicit else list(DEFAULT_CONFIGURATIONS)
    models = []
    for trainer, config, plans in itertools.product(trainers, configs, plans_names):
        model = TrainedModel(trainer, plans, config)
        model_dir = results_dataset / model.identifier
        available = _plans_configurations(preprocessed_dataset, model_dir, plans)
        if available is not None and config not in available:
            if explicit:
                notes.append(f"configuration {config} is not in plans {plans}: skipped")
            continue
        if not model_dir.is_dir():
            if explicit:
                raise DatasetError(model_dir, f"model {model.identifier} was not trained (no results folder)",
                                   f"train its folds (pnnunet_train {config} FOLD -tr {trainer} -p {plans} --npz) "
                                   "or leave the configuration out of -c")
            continue
        models.append(model)
    if not models:
        raise DatasetError(results_dataset, f"no trained models found (trainers {list(trainers)}, plans "
                                            f"{list(plans_names)}, configurations {configs})",
                           "train the folds first: pnnunet_train CONFIG FOLD --npz (for FOLD in 0 1 2 3 4)")
    return models


def prediction_commands(dataset_name: str, model: TrainedModel, model_dir: Path, folds: Sequence, output: str,
                        save_probabilities: bool) -> list[str]:
    """``pnnunet_predict`` command(s) for one model (a cascade first predicts its previous stage)."""
    fold_str = " ".join(str(f) for f in folds)
    commands = []
    prev_stage = None
    plans_file = model_dir / "plans.json"
    if plans_file.is_file():
        try:
            prev_stage = resolve_configuration(load_json(plans_file), model.configuration).get("previous_stage")
        except PnnunetError:
            prev_stage = None
    # upstream 2.8.1 means to emit the previous stage's command too but never does (its check looks for a
    # configuration named 'previous_stage'); here the cascade gets both commands
    cmd = (f"pnnunet_predict -d {dataset_name} -i INPUT_FOLDER -o {output} -f {fold_str} -tr {model.trainer} "
           f"-c {model.configuration} -p {model.plans}")
    if prev_stage:
        prev_output = f"{output}_PREV_STAGE"
        commands.append(f"pnnunet_predict -d {dataset_name} -i INPUT_FOLDER -o {prev_output} -f {fold_str} "
                        f"-tr {model.trainer} -c {prev_stage} -p {model.plans}")
        cmd += f" -prev_stage_predictions {prev_output}"
    if save_probabilities:
        cmd += " --save_probabilities"
    commands.append(cmd)
    return commands


def inference_instructions(information: dict, results_dataset: Path, num_processes: int) -> str:
    """The text of ``inference_instructions.txt``: predict (, ensemble) and postprocess commands."""
    best = information["best_model_or_ensemble"]
    selected = [TrainedModel(m["trainer"], m["plans_identifier"], m["configuration"])
                for m in best["selected_model_or_models"]]
    dataset = information["dataset_name_or_id"]
    folds = information["folds"]
    is_ensemble = len(selected) > 1
    lines = ["Run inference like this:", ""]
    if is_ensemble:
        lines += ["An ensemble won. Predict with each member (keeping the probabilities):", ""]
    outputs = []
    for j, m in enumerate(selected):
        out = f"OUTPUT_FOLDER_MODEL_{j + 1}" if is_ensemble else "OUTPUT_FOLDER"
        outputs.append(out)
        lines += prediction_commands(dataset, m, results_dataset / m.identifier, folds, out, is_ensemble)
    if is_ensemble:
        lines += ["", "then ensemble them:", "",
                  f"pnnunet_ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER -np {num_processes}"]
    plans_file = best["some_plans_file"]
    dataset_json = str(Path(plans_file).with_name("dataset.json"))
    lines += ["", "Once inference is done, postprocess like this:", "",
              (f"pnnunet_apply_postprocessing -i OUTPUT_FOLDER -o OUTPUT_FOLDER_PP -pp_json {best['postprocessing_file']} "
               f"-np {num_processes} -plans_json {plans_file} -dataset_json {dataset_json}")]
    return "\n".join(lines) + "\n"


def _model_has_probabilities(model_dir: Path, folds: Sequence) -> bool:
    try:
        cv_probability_files(model_dir, folds)
    except MissingProbabilitiesError:
        return False
    return True


def _evaluate_folder(folder: Path, gt_folder: Path, num_processes: int) -> dict:
    dataset_json = load_json(folder / "dataset.json")
    rw, ending = resolve_io(folder, dataset_json, folder / "plans.json")
    labels = LabelInfo.from_dataset_json(dataset_json)
    classes = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    return compute_metrics_on_folder(gt_folder, folder, folder / "summary.json", rw, ending, classes,
                                     labels.ignore_label, num_processes, chill=True)


def find_best_configuration(dataset_name: str, results_root: Path | str, preprocessed_root: Path | str,
                            configurations: Sequence[str] | None = None,
                            trainer: str | Sequence[str] = DEFAULT_TRAINER,
                            plans_name: str | Sequence[str] = DEFAULT_PLANS,
                            folds: Sequence[int | str] = (0, 1, 2, 3, 4), allow_ensembling: bool = True,
                            num_processes: int = 2) -> BestConfiguration:
    """Compare trained models and their pair ensembles on cross-validation (reference §8.2).

    Parameters
    ----------
    dataset_name : ``DatasetXXX_Name``
    results_root, preprocessed_root : ``$pnnunet_results`` and ``$pnnunet_preprocessed``; the ground
        truth is ``preprocessed_root/DatasetXXX_Name/gt_segmentations``
    configurations : configurations to compare; None: every standard configuration that was trained
    trainer, plans_name : one name or several (all combinations are compared)
    folds : cross-validation folds to merge
    allow_ensembling : also score every pair of models (needs their ``.npz``; a model without them
        is left out of the ensembles, with a note)
    num_processes : worker processes

    Returns
    -------
    :class:`BestConfiguration` (``table()`` for printing, ``files`` with the written paths)
    """
    results_dataset = Path(results_root) / dataset_name
    preprocessed_dataset = Path(preprocessed_root) / dataset_name
    # DEVIATION(nnU-Net §8.2): single models are scored against gt_segmentations too (upstream: raw labelsTr
    # first); preprocessing copies labelsTr there unchanged, so the numbers are the same.
    gt_folder = preprocessed_dataset / "gt_segmentations"
    if not gt_folder.is_dir():
        raise DatasetError(gt_folder, "ground truth folder not found",
                           "run pnnunet_plan_and_preprocess for this dataset (it copies labelsTr there)")
    folds = tuple(folds)
    trainers = [trainer] if isinstance(trainer, str) else list(trainer)
    plans_names = [plans_name] if isinstance(plans_name, str) else list(plans_name)
    notes: list[str] = []
    models = select_models(results_dataset, preprocessed_dataset, configurations, trainers, plans_names, notes)

    candidates = []
    warnings: list[str] = []
    for m in models:
        for deviation, dev_folds in validation_deviations(results_dataset / m.identifier, folds).items():
            warnings.append(f"{m.identifier}: fold(s) {', '.join(map(str, dev_folds))} validated with {deviation}: "
                            "its cross-validation Dice is not upstream's and not comparable with models validated "
                            "the standard way (fix: pnnunet_train ... FOLD --val without that flag)")
        summary = accumulate_cv_results(results_dataset / m.identifier, folds, None, gt_folder, num_processes)
        source = results_dataset / m.identifier / crossval_folder_name(folds)
        candidates.append(Candidate(m.identifier, source, (m,), summary))
    if allow_ensembling and len(models) > 1:
        with_npz = {m: _model_has_probabilities(results_dataset / m.identifier, folds) for m in models}
        lacking = [m.identifier for m in models if not with_npz[m]]
        if lacking:
            notes.append(f"no .npz probabilities for {', '.join(lacking)}: ensembles with "
                         f"{'it' if len(lacking) == 1 else 'them'} skipped (validate with "
                         "pnnunet_train CONFIG FOLD --val --npz to include them)")
        for m1, m2 in itertools.combinations(models, 2):
            if not (with_npz[m1] and with_npz[m2]):
                continue
            name = ensemble_name((m1, m2), folds)
            folder = results_dataset / "ensembles" / name
            ensemble_crossvalidations([results_dataset / m1.identifier, results_dataset / m2.identifier], folder,
                                      folds, num_processes)
            candidates.append(Candidate(name, folder, (m1, m2), _evaluate_folder(folder, gt_folder, num_processes)))
    elif not allow_ensembling:
        notes.append("ensembling disabled")
    for note in notes:
        log.info("note: %s", note)
    for warning in warnings:
        log.warning("warning: %s", warning)

    best = best_candidate(candidates)
    log.info("best: %s (foreground mean Dice %.4f); determining postprocessing", best.name, best.dice)
    pp = determine_postprocessing(best.source, gt_folder, best.source / "dataset.json", best.source / "plans.json",
                                  num_processes)
    files = {"postprocessing": results_dataset / POSTPROCESSING_FILE,
             "information": results_dataset / INFORMATION_FILE,
             "instructions": results_dataset / INSTRUCTIONS_TEXT_FILE}
    with atomic_path(files["postprocessing"]) as tmp:
        shutil.copyfile(best.source / POSTPROCESSING_FILE, tmp)
    # DEVIATION(nnU-Net §8.2): upstream's inference_information.json is named inference_instructions.json here
    # (same fields, plus "name", "all_results_per_class" and "notes"); the postprocessing is a JSON file.
    information = {
        "folds": list(folds),
        "dataset_name_or_id": dataset_name,
        "considered_models": [m.considered() for m in models],
        "ensembling_allowed": allow_ensembling,
        "all_results": {c.name: c.dice for c in candidates},
        "all_results_per_class": {c.name: {k: v["Dice"] for k, v in c.summary["mean"].items()} for c in candidates},
        "best_model_or_ensemble": {
            "name": best.name,
            "result_on_crossval_pre_pp": best.dice,
            "result_on_crossval_post_pp": pp["postprocessed"]["foreground_mean"]["Dice"],
            "postprocessing_file": str(files["postprocessing"]),
            "some_plans_file": str(best.source / "plans.json"),
            "selected_model_or_models": [m.selected() for m in best.models],
        },
        "notes": notes,
        "warnings": warnings,
    }
    write_json_atomic(files["information"], information)
    with atomic_path(files["instructions"]) as tmp:
        tmp.write_text(inference_instructions(information, results_dataset, num_processes))
    names = class_names(load_json(best.source / "dataset.json"))
    return BestConfiguration(dataset_name, folds, candidates, best, pp, names, information, files, notes, warnings)
