"""A trained model folder: plans, dataset.json and the weights of its trained folds (reference §7.1).

Layout (DESIGN "Data on disk")::

    $pnnunet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/
        plans.json, dataset.json, fold_K/checkpoint_{final,best,latest}.pdparams

Folds default to every ``fold_*`` that has the checkpoint (``fold_all`` included). The
configuration, trainer name and mirror axes come from the checkpoints; each fold's network weights
are kept in memory as numpy arrays (the optimizer state is dropped).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json
from pnnunet.planning.plans import ConfigurationPlan, load_plans, resolve_configuration

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".pdparams"
DEFAULT_CHECKPOINT = "checkpoint_final"
_FOLD_DIR = re.compile(r"fold_(?P<fold>\d+|all)")
# plan keys that must agree between plans.json and the plans stored in a checkpoint
_PLAN_KEYS_CHECKED = ("patch_size", "spacing", "architecture", "normalization_schemes")

Fold = int | str  # 0, 1, ... or "all"


@dataclass(frozen=True)
class FoldModel:
    """One trained fold.

    Attributes
    ----------
    fold : 0, 1, ... or ``"all"``
    checkpoint_path : ``fold_K/<checkpoint>.pdparams``
    weights : structured parameter name → float32 numpy array (``network.state_dict()`` keys)
    mirror_axes : spatial axes the network may be mirrored along at test time (from the checkpoint)
    """

    fold: Fold
    checkpoint_path: Path
    weights: dict
    mirror_axes: tuple[int, ...]


@dataclass(frozen=True)
class ModelFolder:
    """A loaded model folder (see :func:`load_model_folder`)."""

    model_dir: Path
    plans: dict
    dataset_json: dict
    configuration: str
    trainer_name: str
    plans_name: str
    checkpoint: str
    folds: tuple[FoldModel, ...]

    @property
    def plan(self) -> ConfigurationPlan:
        return ConfigurationPlan.from_plans(self.plans, self.configuration, self.model_dir / "plans.json")

    @property
    def labels(self) -> LabelInfo:
        return LabelInfo.from_dataset_json(self.dataset_json, self.model_dir / "dataset.json")

    @property
    def num_image_channels(self) -> int:
        """Image files per case (``channel_names``)."""
        return len(self.dataset_json.get("channel_names") or self.dataset_json["modality"])

    @property
    def num_input_channels(self) -> int:
        """Network inputs: the image channels, plus one per foreground label for a cascade stage."""
        from pnnunet.preprocessing.previous_stage import num_network_inputs

        return num_network_inputs(self.dataset_json, self.plan.previous_stage)

    @property
    def fold_names(self) -> list[Fold]:
        return [f.fold for f in self.folds]

    @property
    def identity(self) -> str:
        """``DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``: names the model independently of the root."""
        return f"{self.model_dir.parent.name}/{self.model_dir.name}"


def model_dir_name(trainer: str, plans_name: str, configuration: str) -> str:
    """``<Trainer>__<Plans>__<configuration>`` (reference §5.11)."""
    return f"{trainer}__{plans_name}__{configuration}"


def parse_model_dir_name(name: str) -> tuple[str, str, str]:
    """(trainer, plans name, configuration) of a ``<Trainer>__<Plans>__<configuration>`` folder name."""
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        raise PnnunetError(f"'{name}' is not a model folder name of the form <Trainer>__<Plans>__<configuration>\n"
                           "  fix: pass the folder pnnunet_train wrote under $pnnunet_results/DatasetXXX_Name/")
    return parts[0], parts[1], parts[2]


def sibling_model_dir(model_dir: Path | str, configuration: str) -> Path:
    """The model folder of another configuration with the same trainer and plans (e.g. a cascade's
    previous stage), beside ``model_dir``."""
    model_dir = Path(model_dir)
    trainer, plans_name, _ = parse_model_dir_name(model_dir.name)
    return model_dir.parent / model_dir_name(trainer, plans_name, configuration)


def checkpoint_stem(name: str) -> str:
    """``checkpoint_final`` from ``checkpoint_final``, ``checkpoint_final.pdparams`` or upstream's ``.pth``."""
    name = Path(str(name)).name
    for suffix in (CHECKPOINT_SUFFIX, ".pth"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_fold(value: Fold) -> Fold:
    """0, 1, ... or ``"all"`` from a CLI string or int."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    if str(value) == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise PnnunetError(f"fold '{value}' is not a number or 'all'\n  fix: use e.g. -f 0 1 2 3 4, or -f all") from None


def _fold_sort_key(fold: Fold) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def find_trained_folds(model_dir: Path | str, checkpoint: str = DEFAULT_CHECKPOINT) -> list[Fold]:
    """Folds of ``model_dir`` whose ``fold_K/<checkpoint>.pdparams`` exists (numbers sorted, ``all`` last)."""
    model_dir = Path(model_dir)
    stem = checkpoint_stem(checkpoint)
    if not model_dir.is_dir():
        return []
    folds = [parse_fold(m["fold"]) for p in model_dir.iterdir()
             if p.is_dir() and (m := _FOLD_DIR.fullmatch(p.name)) and (p / (stem + CHECKPOINT_SUFFIX)).is_file()]
    return sorted(folds, key=_fold_sort_key)


def trained_model_dirs(dataset_results_dir: Path | str, checkpoint: str = DEFAULT_CHECKPOINT) -> list[Path]:
    """Model folders (``<Trainer>__<Plans>__<configuration>``) with at least one trained fold, sorted."""
    root = Path(dataset_results_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.count("__") == 2 and find_trained_folds(p, checkpoint))


def _no_fold_error(model_dir: Path, stem: str) -> PnnunetError:
    others = sorted(f"{p.parent.name}/{p.name}" for p in model_dir.glob(f"fold_*/*{CHECKPOINT_SUFFIX}"))
    found = f" (found: {', '.join(others)})" if others else ""
    return PnnunetError(f"{model_dir}: no fold has {stem}{CHECKPOINT_SUFFIX}{found}\n"
                        f"  fix: train a fold first (pnnunet_train CONFIG FOLD), let training finish, or choose "
                        f"another checkpoint with -chk (e.g. checkpoint_best)")


def _check_checkpoint(ckpt: dict, path: Path, configuration: str, plans: dict) -> None:
    """The checkpoint was made for ``configuration`` with a plan equal to ``plans`` where it matters."""
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise PnnunetError(f"{path}: not a pnnunet checkpoint (no network_weights)\n"
                           "  fix: use a checkpoint written by pnnunet_train")
    init_args = ckpt.get("init_args") or {}
    stored = init_args.get("configuration")
    if stored is not None and stored != configuration:
        raise PnnunetError(f"{path}: was trained for configuration '{stored}', but this model folder is "
                           f"'{configuration}'\n  fix: move the fold into the matching model folder "
                           f"(<Trainer>__<Plans>__{stored}) or predict with -c {stored}")
    stored_plans = init_args.get("plans")
    if stored_plans is None or stored is None:
        return
    ours = resolve_configuration(plans, configuration)
    theirs = resolve_configuration(stored_plans, stored)
    differing = [k for k in _PLAN_KEYS_CHECKED if ours.get(k) != theirs.get(k)]
    if differing:
        raise PnnunetError(f"{path}: was trained with a different plan than the model folder's plans.json "
                           f"({', '.join(differing)} differ)\n  fix: restore the plans.json the fold was trained "
                           "with, or retrain the fold")


def _to_numpy(weights: dict) -> dict:
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in weights.items()}


def default_mirror_axes(patch_size: Sequence[int]) -> tuple[int, ...]:
    """All spatial axes of the patch: (0, 1, 2) in 3D, (0, 1) in 2D (reference §5.3)."""
    return tuple(range(len(patch_size)))


def load_model_folder(model_dir: Path | str, folds: Sequence[Fold] | None = None,
                      checkpoint: str = DEFAULT_CHECKPOINT, configuration: str | None = None) -> ModelFolder:
    """Load a trained model folder (reference §7.1).

    Parameters
    ----------
    model_dir : ``$pnnunet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``
    folds : folds to use (ints or ``"all"``); None: every ``fold_*`` that has the checkpoint
    checkpoint : ``checkpoint_final`` (default), ``checkpoint_best``, ``checkpoint_latest``
        (``.pdparams`` / upstream ``.pth`` suffixes are accepted and dropped)
    configuration : expected configuration; None: the one in the folder name

    Returns
    -------
    ModelFolder with the plans, dataset.json and one :class:`FoldModel` per fold (in ``folds`` order)

    Raises
    ------
    PnnunetError : missing folder, plans.json or dataset.json; no trained fold; a requested fold
        without the checkpoint; a checkpoint made for another configuration or plan.
    """
    from pnnunet.training.checkpoints import load_checkpoint

    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise PnnunetError(f"{model_dir}: model folder not found\n  fix: train the configuration first "
                           "(pnnunet_train CONFIG FOLD) or check -d, -c, -tr and -p")
    trainer, plans_name, folder_config = parse_model_dir_name(model_dir.name)
    configuration = configuration or folder_config
    if configuration != folder_config:
        raise PnnunetError(f"{model_dir}: this folder holds configuration '{folder_config}', not '{configuration}'\n"
                           f"  fix: use the model folder <Trainer>__<Plans>__{configuration}")
    plans = load_plans(model_dir / "plans.json")
    dataset_file = model_dir / "dataset.json"
    if not dataset_file.is_file():
        raise PnnunetError(f"{dataset_file}: not found\n  fix: copy the dataset.json the model was trained with "
                           "into the model folder (pnnunet_train writes it)")
    dataset_json = load_json(dataset_file)
    resolve_configuration(plans, configuration, model_dir / "plans.json")  # clear error for a missing config

    stem = checkpoint_stem(checkpoint)
    if folds is None:
        folds = find_trained_folds(model_dir, stem)
        if not folds:
            raise _no_fold_error(model_dir, stem)
    folds = [parse_fold(f) for f in folds]
    if len(set(folds)) != len(folds):
        raise PnnunetError(f"folds {folds} name a fold twice\n  fix: list each fold once")
    patch = resolve_configuration(plans, configuration)["patch_size"]
    loaded = []
    for fold in folds:
        path = model_dir / f"fold_{fold}" / (stem + CHECKPOINT_SUFFIX)
        if not path.is_file():
            trained = find_trained_folds(model_dir, stem)
            raise PnnunetError(f"{path}: not found (fold {fold} has no {stem})\n  fix: train fold {fold}, or "
                               f"choose among the trained folds {trained or 'none'} with -f")
        ckpt = load_checkpoint(path)
        _check_checkpoint(ckpt, path, configuration, plans)
        axes = ckpt.get("inference_allowed_mirroring_axes")
        axes = default_mirror_axes(patch) if axes is None else tuple(int(a) for a in axes)
        loaded.append(FoldModel(fold, path, _to_numpy(ckpt["network_weights"]), axes))
        trainer = ckpt.get("trainer_name") or trainer
        del ckpt
    log.info("model %s: folds %s, %s", model_dir.name, folds, stem)
    return ModelFolder(model_dir, plans, dataset_json, configuration, trainer, plans_name, stem, tuple(loaded))
