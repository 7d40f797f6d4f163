"""Plans files: load, resolve configuration inheritance, merge and save (reference §3.8).

Plans stay plain JSON dicts with upstream nnU-Net v2's keys (so an upstream ``nnUNetPlans.json``
loads unchanged); :class:`ConfigurationPlan` is a typed, read-only view of one resolved
configuration with the fields the pipeline uses, and keeps the whole dict in ``raw``.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from pnnunet.errors import DatasetError
from pnnunet.fileio import load_json, read_json_file, write_json_atomic

CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
REQUIRED_GLOBAL = ("transpose_forward", "transpose_backward", "configurations",
                   "foreground_intensity_properties_per_channel")
REQUIRED_CONFIG = ("data_identifier", "batch_size", "patch_size", "spacing", "normalization_schemes",
                   "use_mask_for_norm", "architecture")


def resolve_configuration(plans: dict, name: str, source: Path | str = "plans") -> dict:
    """The configuration ``name`` with ``inherits_from`` applied recursively (deep copies; cycles raise)."""
    configs = plans.get("configurations", {})
    chain: list[str] = []
    cur = name
    while True:
        if cur not in configs:
            close = difflib.get_close_matches(cur, list(configs), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise DatasetError(source, f"configuration '{cur}' is not in the plans (has {sorted(configs)})",
                             f"{hint}choose one of the planned configurations or re-run planning")
        if cur in chain:
            raise DatasetError(source, f"configuration inheritance has a cycle: {' -> '.join(chain + [cur])}",
                             "fix the 'inherits_from' entries")
        chain.append(cur)
        parent = configs[cur].get("inherits_from")
        if parent is None:
            break
        cur = parent
    resolved: dict = {}
    for c in reversed(chain):
        child = copy.deepcopy(configs[c])
        child.pop("inherits_from", None)
        resolved.update(child)
    return resolved


def _int_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def inconsistency(d: dict) -> str | None:
    """What makes a resolved configuration ``d`` self-contradictory (None when nothing): the checks a
    hand-edited plans file fails, so that it does not fail later inside the network or the sampler."""
    patch, spacing = d["patch_size"], d["spacing"]
    if not _int_list(patch) or len(patch) not in (2, 3) or min(patch) < 1:
        return f"patch_size {patch} must be 2 or 3 positive integers"
    if not isinstance(spacing, (list, tuple)) or len(spacing) != len(patch):
        return f"spacing {spacing} must have one entry per patch axis ({len(patch)})"
    if not isinstance(d["batch_size"], int) or d["batch_size"] < 1:
        return f"batch_size {d['batch_size']} must be a positive integer"
    if len(d["normalization_schemes"]) != len(d["use_mask_for_norm"]):
        return (f"normalization_schemes has {len(d['normalization_schemes'])} entries but use_mask_for_norm "
                f"{len(d['use_mask_for_norm'])} (one per channel each)")
    arch = d["architecture"].get("arch_kwargs", {}) if isinstance(d["architecture"], dict) else {}
    strides, kernels, n_stages = arch.get("strides"), arch.get("kernel_sizes"), arch.get("n_stages")
    if strides is None or kernels is None or n_stages is None:
        return None  # another architecture's keys: checked by the network when it is built
    for key in ("strides", "kernel_sizes", "features_per_stage", "n_conv_per_stage"):
        if key in arch and len(arch[key]) != n_stages:
            return f"architecture {key} has {len(arch[key])} entries but n_stages is {n_stages}"
    for key, per_stage in (("strides", strides), ("kernel_sizes", kernels)):
        if any(len(s) != len(patch) for s in per_stage):
            return f"architecture {key} {per_stage} must have {len(patch)} entries per stage, like patch_size"
    for axis, size in enumerate(patch):
        if size % _prod(s[axis] for s in strides):
            return (f"patch_size {patch} is not divisible by the network's total downsampling "
                    f"{[int(_prod(s[a] for s in strides)) for a in range(len(patch))]} (axis {axis})")
    return None


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


@dataclass(frozen=True)
class ConfigurationPlan:
    """A resolved configuration (typed view; ``raw`` holds every key, upstream's included)."""

    name: str
    data_identifier: str
    batch_size: int
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    batch_dice: bool
    arch_kwargs: dict
    previous_stage: str | None = None
    next_stage: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2

    @classmethod
    def from_plans(cls, plans: dict, name: str, source: Path | str = "plans") -> "ConfigurationPlan":
        d = resolve_configuration(plans, name, source)
        missing = [k for k in REQUIRED_CONFIG if k not in d]
        if missing:
            raise DatasetError(source, f"configuration '{name}' misses keys {missing}",
                             "re-run pnnunet_plan_and_preprocess (or fix the hand-edited plans file)")
        problem = inconsistency(d)
        if problem:
            raise DatasetError(source, f"configuration '{name}': {problem}",
                               "re-run pnnunet_plan_and_preprocess (or fix the hand-edited plans file)")
        return cls(name=name, data_identifier=d["data_identifier"], batch_size=int(d["batch_size"]),
                   patch_size=tuple(int(p) for p in d["patch_size"]), spacing=tuple(float(s) for s in d["spacing"]),
                   normalization_schemes=tuple(d["normalization_schemes"]),
                   use_mask_for_norm=tuple(bool(u) for u in d["use_mask_for_norm"]),
                   batch_dice=bool(d.get("batch_dice", False)), arch_kwargs=d["architecture"]["arch_kwargs"],
                   previous_stage=d.get("previous_stage"), next_stage=d.get("next_stage"), raw=d)


def load_plans(path: Path | str) -> dict:
    """Load a plans JSON (ours or upstream's) and check the global keys."""
    path = Path(path)
    plans = read_json_file(path, "run pnnunet_plan_and_preprocess for this dataset first", "plans file")
    missing = [k for k in REQUIRED_GLOBAL if k not in plans]
    if missing:
        raise DatasetError(path, f"misses keys {missing}", "re-run pnnunet_plan_and_preprocess")
    check_configurations(plans, path)
    return plans


def check_configurations(plans: dict, source: Path | str) -> None:
    """Raise a :class:`DatasetError` naming ``source`` for the first configuration of ``plans`` that is
    self-contradictory (:func:`inconsistency`); configurations that miss keys are left to their use."""
    if not isinstance(plans["configurations"], dict):
        raise DatasetError(source, "'configurations' must be an object {name: configuration}",
                           "re-run pnnunet_plan_and_preprocess")
    for name in plans["configurations"]:
        d = resolve_configuration(plans, name, source)
        if all(k in d for k in REQUIRED_CONFIG) and (problem := inconsistency(d)):
            raise DatasetError(source, f"configuration '{name}': {problem}",
                               "re-run pnnunet_plan_and_preprocess (or fix the hand-edited plans file)")


def merge_with_existing(new_plans: dict, existing: dict | None) -> dict:
    """Keep user-added configurations of an existing plans file; planned ones are replaced (§3.7)."""
    if not existing:
        return new_plans
    merged = copy.deepcopy(new_plans)
    extra = {k: v for k, v in existing.get("configurations", {}).items() if k not in merged["configurations"]}
    merged["configurations"].update(extra)
    return merged


def save_plans(plans: dict, path: Path | str) -> None:
    """Write plans atomically, keeping configurations a user added to an existing file."""
    path = Path(path)
    existing = load_json(path) if path.is_file() else None
    write_json_atomic(path, merge_with_existing(plans, existing))
