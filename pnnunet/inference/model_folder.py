"""A trained model folder: plans, dataset.json and the weights of its trained folds (reference §7.1).

Layout (DESIGN "Data on disk")::

    $pnnunet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/
        plans.json, dataset.json, fold_K/checkpoint_{final,best,latest}.pdparams

Folds default to every ``fold_*`` that has the checkpoint (``fold_all`` included). The
configuration, trainer name and mirror axes come from the checkpoints; each fold's network weights
are kept in memory as numpy arrays (the optimizer state is dropped).

A folder trained by upstream nnU-Net v2 (``fold_K/checkpoint_final.pth``, plans with torch class
strings) loads the same way: each ``.pth`` is converted once (:mod:`pnnunet.inference.upstream_fold`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pnnunet.dataset.labels import LabelInfo
from pnnunet.defaults import (CHECKPOINT_SUFFIX, DEFAULT_CHECKPOINT, UPSTREAM_CHECKPOINT_SUFFIX, Fold,
                              checkpoint_stem, fold_sort_key, parse_fold, parse_model_dir_name)
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json
from pnnunet.inference.upstream_fold import load_upstream_fold, upstream_checkpoint
from pnnunet.plans import ConfigurationPlan, load_plans, resolve_configuration
from pnnunet.preprocessing.previous_stage import num_network_inputs
from pnnunet.runtime.checkpoints import load_checkpoint, plan_mismatch, weights_as_float32

log = logging.getLogger(__name__)

_FOLD_DIR = re.compile(r"fold_(?P<fold>\d+|all)")


@dataclass(frozen=True)
class FoldModel:
    """One trained fold.

    Attributes
    ----------
    fold : 0, 1, ... or ``"all"``
    checkpoint_path : ``fold_K/<checkpoint>.pdparams`` (an upstream fold: its conversion, see
        :func:`~pnnunet.inference.upstream_fold.load_upstream_fold`)
    weights : structured parameter name → float32 numpy array (``network.state_dict()`` keys; a model
        stored in float16, such as the bundled pretrained one, is converted at load)
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
        return num_network_inputs(self.dataset_json, self.plan.previous_stage)

    @property
    def fold_names(self) -> list[Fold]:
        return [f.fold for f in self.folds]

    @property
    def identity(self) -> str:
        """``DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``: names the model independently of the root."""
        return f"{self.model_dir.parent.name}/{self.model_dir.name}"




def _has_checkpoint(fold_dir: Path, stem: str) -> bool:
    return (fold_dir / (stem + CHECKPOINT_SUFFIX)).is_file() or upstream_checkpoint(fold_dir, stem).is_file()


def find_trained_folds(model_dir: Path | str, checkpoint: str = DEFAULT_CHECKPOINT) -> list[Fold]:
    """Folds of ``model_dir`` whose ``fold_K/<checkpoint>.pdparams`` (or upstream's ``.pth``) exists
    (numbers sorted, ``all`` last)."""
    model_dir = Path(model_dir)
    stem = checkpoint_stem(checkpoint)
    if not model_dir.is_dir():
        return []
    folds = [parse_fold(m["fold"]) for p in model_dir.iterdir()
             if p.is_dir() and (m := _FOLD_DIR.fullmatch(p.name)) and _has_checkpoint(p, stem)]
    return sorted(folds, key=fold_sort_key)


def trained_model_dirs(dataset_results_dir: Path | str, checkpoint: str = DEFAULT_CHECKPOINT) -> list[Path]:
    """Model folders (``<Trainer>__<Plans>__<configuration>``) with at least one trained fold, sorted."""
    root = Path(dataset_results_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.count("__") == 2 and find_trained_folds(p, checkpoint))


def _no_fold_error(model_dir: Path, stem: str) -> PnnunetError:
    others = sorted(f"{p.parent.name}/{p.name}" for suffix in (CHECKPOINT_SUFFIX, UPSTREAM_CHECKPOINT_SUFFIX)
                    for p in model_dir.glob(f"fold_*/*{suffix}"))
    found = f" (found: {', '.join(others)})" if others else ""
    return PnnunetError(f"{model_dir}: no fold has {stem}{CHECKPOINT_SUFFIX}{found}\n"
                        f"  fix: train a fold first (pnnunet_train CONFIG FOLD), let training finish, or choose "
                        f"another checkpoint with -chk (e.g. checkpoint_best)")


def _check_checkpoint(ckpt: dict, path: Path, configuration: str, plans: dict, dataset_json: dict) -> None:
    """The checkpoint was made for ``configuration`` with a plan equal to ``plans`` where it matters."""
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise PnnunetError(f"{path}: not a pnnunet checkpoint (no network_weights)\n"
                           "  fix: use a checkpoint written by pnnunet_train")
    problem = plan_mismatch(ckpt, configuration, plans, dataset_json)
    if problem is not None:
        stored = (ckpt.get("init_args") or {}).get("configuration")
        fix = (f"move the fold into the matching model folder (<Trainer>__<Plans>__{stored}) or predict with "
               f"-c {stored}") if stored != configuration else \
            "restore the plans.json and dataset.json the fold was trained with, or retrain the fold"
        raise PnnunetError(f"{path}: {problem} (this model folder's plans.json / dataset.json)\n  fix: {fix}")


def default_mirror_axes(patch_size: Sequence[int]) -> tuple[int, ...]:
    """All spatial axes of the patch: (0, 1, 2) in 3D, (0, 1) in 2D (reference §5.3)."""
    return tuple(range(len(patch_size)))


def load_model_folder(model_dir: Path | str, folds: Sequence[Fold] | None = None,
                      checkpoint: str = DEFAULT_CHECKPOINT, configuration: str | None = None,
                      cache_dir: Path | str | None = None) -> ModelFolder:
    """Load a trained model folder (reference §7.1).

    Parameters
    ----------
    model_dir : ``$pnnunet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``
    folds : folds to use (ints or ``"all"``); None: every ``fold_*`` that has the checkpoint
    checkpoint : ``checkpoint_final`` (default), ``checkpoint_best``, ``checkpoint_latest``
        (``.pdparams`` / upstream ``.pth`` suffixes are accepted and dropped)
    configuration : expected configuration; None: the one in the folder name
    cache_dir : where upstream folds are converted when the model folder is read-only (default: env
        ``pnnunet_cache_dir``; see :mod:`pnnunet.inference.upstream_fold`)

    Returns
    -------
    ModelFolder with the plans, dataset.json and one :class:`FoldModel` per fold (in ``folds`` order)

    Raises
    ------
    PnnunetError : missing folder, plans.json or dataset.json; no trained fold; a requested fold
        without the checkpoint; a checkpoint made for another configuration or plan; an upstream
        ``.pth`` that is refused, unreadable, or whose weights do not fit the plans' network.
    """
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
    plan_configuration = resolve_configuration(plans, configuration)
    patch = plan_configuration["patch_size"]
    loaded = []
    for fold in folds:
        path = model_dir / f"fold_{fold}" / (stem + CHECKPOINT_SUFFIX)
        pth = upstream_checkpoint(path.parent, stem)
        if not path.is_file() and not pth.is_file():
            trained = find_trained_folds(model_dir, stem)
            raise PnnunetError(f"{path}: not found (fold {fold} has no {stem})\n  fix: train fold {fold}, or "
                               f"choose among the trained folds {trained or 'none'} with -f")
        if path.is_file():
            ckpt = load_checkpoint(path)
        else:
            labels = LabelInfo.from_dataset_json(dataset_json, dataset_file)
            n_in = num_network_inputs(dataset_json, ConfigurationPlan.from_plans(plans, configuration).previous_stage)
            ckpt, path = load_upstream_fold(pth, plan_configuration, n_in, labels.num_segmentation_heads, cache_dir)
        _check_checkpoint(ckpt, path, configuration, plans, dataset_json)
        axes = ckpt.get("inference_allowed_mirroring_axes")
        axes = default_mirror_axes(patch) if axes is None else tuple(int(a) for a in axes)
        loaded.append(FoldModel(fold, path, weights_as_float32(ckpt["network_weights"]), axes))
        trainer = ckpt.get("trainer_name") or trainer
        del ckpt
    log.info("model %s: folds %s, %s", model_dir.name, folds, stem)
    return ModelFolder(model_dir, plans, dataset_json, configuration, trainer, plans_name, stem, tuple(loaded))
