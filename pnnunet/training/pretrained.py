"""Initialise a network from another training's checkpoint (``--pretrained_weights``, reference §5.8).

Two kinds of checkpoint are taken:

- pnnunet's ``checkpoint_*.pdparams``;
- upstream nnU-Net v2's ``checkpoint_*.pth`` (PlainConvUNet or ResidualEncoderUNet), read without torch
  (:mod:`pnnunet.runtime.torch_checkpoint`) and renamed to pnnunet's parameter names
  (:mod:`pnnunet.runtime.upstream_weights`), as for predicting with an upstream model folder.

Upstream's rules: the segmentation heads (``seg_layers``) are not taken, so the target may have other
labels; every other tensor of the network must be in the checkpoint with the same shape. The check runs
against the network of the target's plans before anything is written, and a mismatch names the first
differing parameter (in the network's order), both shapes and the fix: train the target with the
source's plans, moved with ``pnnunet_move_plans_between_datasets``. Tensors of the checkpoint that the
network does not have are ignored, as upstream does (their number is logged).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pnnunet.errors import PnnunetError
from pnnunet.runtime.checkpoints import load_checkpoint, weights_as_float32
from pnnunet.runtime.upstream_weights import read_upstream_checkpoint

log = logging.getLogger(__name__)

HEADS = "seg_layers."
TORCH_SUFFIXES = (".pth", ".pt")


def is_head(name: str) -> bool:
    """A segmentation head's tensor (not transferred)."""
    return HEADS in name


@dataclass
class PretrainedWeights:
    """Network weights (pnnunet names, numpy, no segmentation heads) and where they came from."""

    path: Path
    weights: dict
    framework: str                 # "nnU-Net v2" or "pnnunet"
    dataset_name: str | None = None     # the checkpoint's own training (from its init_args), when recorded
    plans_name: str | None = None
    configuration: str | None = None
    ignored: list[str] = field(default_factory=list)   # filled by check_pretrained_weights


def _origin(init_args) -> tuple[str | None, str | None, str | None]:
    if not isinstance(init_args, dict):
        return None, None, None
    plans = init_args.get("plans") if isinstance(init_args.get("plans"), dict) else {}
    as_str = (lambda v: str(v) if v is not None else None)
    return as_str(plans.get("dataset_name")), as_str(plans.get("plans_name")), as_str(init_args.get("configuration"))


def _is_torch_file(path: Path) -> bool:
    """A ``.pth``/``.pt`` name, or a file that starts as a zip does (``torch.save``'s format; a ``.pdparams`` is a
    pickle, ``\x80``). Not ``zipfile.is_zipfile``: it looks for the zip's end record anywhere in the last 64 KiB,
    which the float bytes of a pickled checkpoint can contain by chance."""
    if path.suffix.lower() in TORCH_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False  # reported by the loader that is tried next


def load_pretrained_weights(path: Path | str, network_class: str = "PlainConvUNet") -> PretrainedWeights:
    """Read the network weights of a pnnunet (``.pdparams``) or upstream nnU-Net v2 (``.pth``) checkpoint.

    Parameters
    ----------
    path : the checkpoint
    network_class : the target plans' ``network_class_name``; upstream names are mapped for this class

    Raises
    ------
    PnnunetError : naming ``path``: missing, unreadable or refused file, no network weights in it.
    """
    path = Path(path)
    if not path.is_file():
        raise PnnunetError(f"{path}: pretrained weights not found\n  fix: give the path of a checkpoint: "
                           "fold_K/checkpoint_final.pdparams (pnnunet) or fold_K/checkpoint_final.pth (nnU-Net v2)")
    torch_file = _is_torch_file(path)
    if torch_file:
        state, weights = read_upstream_checkpoint(path, network_class)
    else:
        state = load_checkpoint(path)
        weights = state.get("network_weights") if isinstance(state, dict) else None
        if not isinstance(weights, dict) or not weights:
            raise PnnunetError(f"{path}: not a pnnunet training checkpoint (no network_weights)\n"
                               "  fix: give the checkpoint_final or checkpoint_best that pnnunet_train wrote (or an "
                               "nnU-Net v2 .pth)")
        weights = weights_as_float32(weights)  # numpy, float32 also from a float16-stored model
    dataset_name, plans_name, configuration = _origin(state.get("init_args"))
    return PretrainedWeights(path, {k: v for k, v in weights.items() if not is_head(k)},
                             "nnU-Net v2" if torch_file else "pnnunet", dataset_name, plans_name, configuration)


def _dataset_id(name: str | None) -> str | None:
    m = re.match(r"Dataset(\d+)", name or "")
    return m[1] if m else None


def _fix(pretrained: PretrainedWeights, target_dataset: str, target_plans: str, configuration: str) -> str:
    source = pretrained.dataset_name or "SOURCE_DATASET"
    sp = pretrained.plans_name or "SOURCE_PLANS"
    tp = f"{sp}_from_{'Dataset' + _dataset_id(source) if _dataset_id(source) else 'SOURCE'}"
    if pretrained.plans_name and target_plans == pretrained.plans_name and pretrained.dataset_name == target_dataset:
        return "use the plans the checkpoint was trained with (its configuration and plans file, unchanged)"
    return (f"move the plans first with pnnunet_move_plans_between_datasets -s {source} -t {target_dataset} "
            f"-sp {sp} -tp {tp}, preprocess with them (pnnunet_preprocess -d {target_dataset} -p {tp} -c "
            f"{pretrained.configuration or configuration}) and train with -p {tp}")


def check_pretrained_weights(network, pretrained: PretrainedWeights, target_dataset: str, target_plans: str,
                             configuration: str) -> None:
    """Raise unless every non-head tensor of ``network`` is in ``pretrained`` with the same shape.

    The message names the first offending parameter in the network's order, both shapes, where the
    checkpoint was trained (when it says) and the fix. Sets ``pretrained.ignored`` (checkpoint tensors the
    network lacks).
    """
    own = network.state_dict()
    for name, tensor in own.items():
        if is_head(name):
            continue
        want = list(tensor.shape)
        if name not in pretrained.weights:
            problem = f"parameter {name} {want} of this network is not in the checkpoint"
        else:
            have = list(np.shape(pretrained.weights[name]))
            if have == want:
                continue
            problem = f"parameter {name} is {have} in the checkpoint but {want} in this network"
            if name == next(iter(own)) and len(have) == len(want) and have[:1] + have[2:] == want[:1] + want[2:]:
                problem += (f" (the checkpoint was trained with {have[1]} input channel(s), this dataset has "
                            f"{want[1]}: fine-tuning needs the same channels)")
        trained = ", ".join(filter(None, [pretrained.dataset_name, pretrained.plans_name and
                                          f"plans {pretrained.plans_name}", pretrained.configuration]))
        raise PnnunetError(f"{pretrained.path}: the {pretrained.framework} weights do not fit the network of plans "
                           f"{target_plans} {configuration} of {target_dataset}"
                           f"{f' (the checkpoint was trained on {trained})' if trained else ''}: {problem}\n"
                           f"  fix: {_fix(pretrained, target_dataset, target_plans, configuration)}")
    pretrained.ignored = sorted(k for k in pretrained.weights if k not in own)


def apply_pretrained_weights(network, pretrained: PretrainedWeights, target_dataset: str, target_plans: str,
                             configuration: str) -> None:
    """Check (:func:`check_pretrained_weights`), then copy every non-head tensor into ``network``."""
    check_pretrained_weights(network, pretrained, target_dataset, target_plans, configuration)
    own = network.state_dict()
    network.set_state_dict({**own, **{k: v for k, v in pretrained.weights.items() if k in own}})
    log.info("initialised from %s (%s): %d tensors, segmentation heads not taken%s", pretrained.path,
             pretrained.framework, sum(1 for k in own if not is_head(k)),
             f", {len(pretrained.ignored)} checkpoint tensor(s) this network lacks ignored" if pretrained.ignored
             else "")
