"""Default names and file names shared by every stage, and the one fold parser.

Everything that names a thing on disk or a default choice lives here, once: the trainer and plans
names, checkpoint names and suffixes, the model folder naming scheme ``<Trainer>__<Plans>__<config>``
(reference §5.11) and the files find_best_config writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from pnnunet.errors import PnnunetError

DATASET_FOLDER = re.compile(r"Dataset(?P<id>\d{3})_(?P<name>.+)")  # DatasetXXX_Name (fullmatch)
DEFAULT_TRAINER = "pnnunetTrainer"
DEFAULT_PLANS = "pnnunetPlans"

CHECKPOINT_NAMES = ("checkpoint_final", "checkpoint_latest", "checkpoint_best")  # the order --c resumes from
DEFAULT_CHECKPOINT = "checkpoint_final"
CHECKPOINT_SUFFIX = ".pdparams"
UPSTREAM_CHECKPOINT_SUFFIX = ".pth"

INFORMATION_FILE = "inference_instructions.json"   # upstream: inference_information.json
UPSTREAM_INFORMATION_FILE = "inference_information.json"
UPSTREAM_TRAINER = "nnUNetTrainer"  # upstream nnU-Net v2's default trainer and plans names
UPSTREAM_PLANS = "nnUNetPlans"
INSTRUCTIONS_TEXT_FILE = "inference_instructions.txt"
POSTPROCESSING_FILE = "postprocessing.json"
SPLITS_FILE = "splits_final.json"
VALIDATION_SETTINGS_FILE = "validation_settings.json"  # fold_K/validation/: how it was predicted (TTA, step)
DEFAULT_STEP_SIZE = 0.5

Fold = Union[int, str]
NUM_FOLDS = 5


def parse_fold(value: Fold) -> Fold:
    """0, 1, ... or ``"all"`` from a CLI string or an int (numpy ints included)."""
    if str(value) == "all":
        return "all"
    try:
        fold = int(value)
    except (TypeError, ValueError):
        fold = -1
    if fold < 0:
        raise PnnunetError(f"fold '{value}' is not a fold number or 'all'\n  fix: use e.g. -f 0 1 2 3 4, or -f all")
    return fold


def fold_sort_key(fold: Fold) -> tuple[int, int]:
    """Numbers ascending, ``all`` last."""
    return (1, 0) if fold == "all" else (0, int(fold))


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
    for suffix in (CHECKPOINT_SUFFIX, UPSTREAM_CHECKPOINT_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def checkpoint_path(fold_dir: Path | str, name: str) -> Path:
    return Path(fold_dir) / f"{checkpoint_stem(name)}{CHECKPOINT_SUFFIX}"
