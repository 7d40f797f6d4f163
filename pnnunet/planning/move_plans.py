"""Take another dataset's plans for this one (``pnnunet_move_plans_between_datasets``, models_and_scale §5).

Fine-tuning needs the target dataset to be trained with the source model's network, i.e. with the
source's plans (a network planned for the target's own shapes would have other transposed-conv strides or
stage counts, and the weights would not fit). The plans are copied with what names the dataset rewritten,
as upstream nnU-Net v2 does:

- ``dataset_name`` → the target's folder name; ``plans_name`` → the target plans name;
- each configuration's ``data_identifier`` (the preprocessed folder's name) gets the target plans name in
  front: ``<sp>_3d_fullres`` → ``<tp>_3d_fullres``, or ``<tp>_<old>`` when it did not start with the source
  plans name (unchanged when ``-tp`` equals ``-sp``);
- ``image_reader_writer`` → the reader of the *target's* files (chosen from its first training image);
- everything else, the intensity properties of the source included (so CT images are clipped and
  normalised with the source's statistics), is kept.

Deviations from upstream, on purpose: an existing target plans file with other content is not
overwritten unless asked (upstream replaces it silently, which loses a dataset's own ``nnUNetPlans.json``
when ``-tp`` is left out); the same content again is a no-op; the target's preprocessed folder is created
when missing and gets the target's ``dataset.json`` (so ``pnnunet_preprocess`` and ``pnnunet_train`` can run
next without planning the target first).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pnnunet.dataset.cases import get_training_cases
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json, write_json_atomic
from pnnunet.planning.run import dataset_reader_writer

log = logging.getLogger(__name__)


def moved_data_identifier(identifier: str, source_plans_name: str, target_plans_name: str) -> str:
    """The preprocessed folder name of one configuration under the target plans name."""
    if target_plans_name == source_plans_name:
        return identifier
    if identifier.startswith(source_plans_name):
        return target_plans_name + identifier[len(source_plans_name):]
    return f"{target_plans_name}_{identifier}"


def moved_plans(plans: dict, target_dataset_name: str, source_plans_name: str, target_plans_name: str,
                reader_writer: str) -> dict:
    """A copy of ``plans`` (a plans file's JSON, key order kept) renamed for the target dataset."""
    out = dict(plans)
    out["dataset_name"] = target_dataset_name
    configurations = {}
    for name, config in plans.get("configurations", {}).items():
        config = dict(config)
        if "data_identifier" in config:  # a configuration that inherits one has none of its own
            config["data_identifier"] = moved_data_identifier(config["data_identifier"], source_plans_name,
                                                              target_plans_name)
        configurations[name] = config
    out["configurations"] = configurations
    out["image_reader_writer"] = reader_writer
    out["plans_name"] = target_plans_name
    return out


@dataclass
class MovedPlans:
    path: Path           # the target plans file
    written: bool        # False: it existed with exactly this content
    replaced: bool       # True: an existing, different file was overwritten (overwrite=True)
    shared_identifiers: list[str]  # data identifiers another plans file of the target uses too


def _plans_file(folder: Path, plans_name: str, what: str, fix: str) -> Path:
    path = folder / f"{plans_name}.json"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.json") if _is_plans(p)) if folder.is_dir() else []
        raise PnnunetError(f"{path}: {what} plans '{plans_name}' not found (plans there: "
                           f"{', '.join(have) or 'none'})\n  fix: {fix}")
    return path


def _is_plans(path: Path) -> bool:
    try:
        data = load_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "configurations" in data and "plans_name" in data


def _identifiers(plans: dict) -> set[str]:
    return {c["data_identifier"] for c in plans.get("configurations", {}).values()
            if isinstance(c, dict) and "data_identifier" in c}


def move_plans_between_datasets(source_preprocessed_dir: Path, target_raw_dir: Path, target_preprocessed_dir: Path,
                                source_plans_name: str, target_plans_name: str | None = None,
                                overwrite: bool = False) -> MovedPlans:
    """Write the source dataset's plans as ``target_preprocessed_dir/<target_plans_name>.json``.

    Parameters
    ----------
    source_preprocessed_dir : ``$pnnunet_preprocessed/<source dataset>`` (holds ``<source_plans_name>.json``)
    target_raw_dir : ``$pnnunet_raw/<target dataset>`` (its dataset.json and first image pick the reader)
    target_preprocessed_dir : ``$pnnunet_preprocessed/<target dataset>`` (created when missing)
    source_plans_name : ``-sp``, e.g. ``nnUNetPlans`` for ``nnUNetPlans.json``
    target_plans_name : ``-tp``; None keeps the source's name
    overwrite : replace an existing target plans file whose content differs

    Raises
    ------
    PnnunetError : source plans or target dataset missing, target plans file present with other
        content and ``overwrite`` not set. Nothing is written then.
    """
    target_plans_name = target_plans_name or source_plans_name
    source_file = _plans_file(source_preprocessed_dir, source_plans_name, "source",
                              "give the plans name without .json (-sp), or plan the source dataset first "
                              "(pnnunet_plan_experiment -d SOURCE)")
    if not _is_plans(source_file):
        raise PnnunetError(f"{source_file}: not a plans file (no 'configurations' / 'plans_name')\n"
                           "  fix: give the name of a plans file written by planning (-sp)")
    dataset_json = load_dataset_json(target_raw_dir / "dataset.json")
    cases = get_training_cases(target_raw_dir, dataset_json)
    if not cases:
        raise PnnunetError(f"{target_raw_dir}: the target dataset has no training cases\n"
                           "  fix: add imagesTr/ and labelsTr/ to the target dataset first")
    reader = dataset_reader_writer(target_raw_dir, dataset_json, cases).name
    plans = moved_plans(load_json(source_file), target_raw_dir.name, source_plans_name, target_plans_name, reader)

    target_file = target_preprocessed_dir / f"{target_plans_name}.json"
    replaced = False
    if target_file.exists():
        try:
            existing = load_json(target_file)
        except (OSError, ValueError):
            existing = None
        if existing == plans:
            return MovedPlans(target_file, written=False, replaced=False, shared_identifiers=[])
        if not overwrite:
            raise PnnunetError(f"{target_file}: exists with other content; not overwritten\n"
                               "  fix: choose another target plans name (-tp), e.g. "
                               f"-tp {source_plans_name}_from_{source_preprocessed_dir.name.split('_')[0]}, "
                               "or pass --overwrite to replace it")
        replaced = True
    own = _identifiers(plans)
    shared = set()
    for other in sorted(target_preprocessed_dir.glob("*.json")) if target_preprocessed_dir.is_dir() else []:
        if other != target_file and _is_plans(other):
            shared |= own & _identifiers(load_json(other))
    target_preprocessed_dir.mkdir(parents=True, exist_ok=True)
    if not (target_preprocessed_dir / "dataset.json").is_file():
        shutil.copyfile(target_raw_dir / "dataset.json", target_preprocessed_dir / "dataset.json")
    write_json_atomic(target_file, plans)
    return MovedPlans(target_file, written=True, replaced=replaced, shared_identifiers=sorted(shared))
