"""Pretrained models shipped inside the package, for ``pnnunet_predict -m pretrained:NAME``.

Each is an ordinary model folder (``DatasetXXX_Name/<Trainer>__<Plans>__<config>/`` with plans.json,
dataset.json, README.md and ``fold_K/checkpoint_final.pdparams``), stored inference-only with float16
weights (:func:`pnnunet.runtime.checkpoints.inference_checkpoint`; float32 again at load). The
folder layout makes this directory a results root too (``pnnunet_app --models``).
"""

from __future__ import annotations

from pathlib import Path

from pnnunet.errors import PnnunetError

ROOT = Path(__file__).resolve().parent
PREFIX = "pretrained:"
# short name -> model folder under ROOT
MODELS = {
    "hippocampus": "Dataset004_Hippocampus/pnnunetTrainer_20epochs__pnnunetPlans__3d_fullres",
}
BUNDLE_COMMAND = "python benchmarks/bundle_pretrained_model.py --fold_dir FOLD_DIR"


def model_dir(name: str) -> Path:
    """The folder of the bundled model ``name`` (a key of :data:`MODELS`)."""
    if name not in MODELS:
        raise PnnunetError(f"-m {PREFIX}{name}: no such pretrained model\n"
                           f"  fix: use one of {', '.join(PREFIX + n for n in MODELS)}")
    return ROOT / MODELS[name]


def is_bundled(name: str) -> bool:
    """Whether this installation holds the weights of the bundled model ``name``."""
    return any(model_dir(name).glob("fold_*/checkpoint_final.pdparams"))


def resolve_model_arg(value: str | Path) -> Path:
    """``-m``: ``pretrained:NAME`` → the bundled model folder; anything else is a model folder path as given."""
    text = str(value)
    if not text.startswith(PREFIX):
        return Path(value)
    path = model_dir(text[len(PREFIX):])
    if not is_bundled(text[len(PREFIX):]):
        raise PnnunetError(f"-m {text}: the weights are not in this installation ({path}/fold_0 is empty)\n"
                           f"  fix: from a clone of the repository, put them in with {BUNDLE_COMMAND}")
    return path
