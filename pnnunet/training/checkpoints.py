"""Checkpoints: one ``paddle.save`` file per checkpoint, written atomically (reference §5.8).

Paddle names optimizer accumulators after auto-generated parameter names (``conv3d_12.w_0_velocity_0``),
which differ between processes (paddle_notes §2.4). We store them under the structured parameter
names of ``model.named_parameters()`` and map them back on load, so a checkpoint restores in any
process. The training session itself runs inside ``paddle.utils.unique_name.guard()``.
"""

from __future__ import annotations

import os
from pathlib import Path

import paddle

from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path

CHECKPOINT_NAMES = ("checkpoint_final", "checkpoint_latest", "checkpoint_best")
SUFFIX = ".pdparams"


def checkpoint_path(fold_dir: Path, name: str) -> Path:
    return Path(fold_dir) / f"{name}{SUFFIX}"


def optimizer_state_by_structured_names(model: paddle.nn.Layer, optimizer) -> dict:
    """Optimizer state with keys ``<structured param name>|<accumulator suffix>``."""
    by_name = {p.name: n for n, p in model.named_parameters()}
    out = {}
    for key, value in optimizer.state_dict().items():
        for pname, structured in by_name.items():
            if key.startswith(pname + "_"):
                out[f"{structured}|{key[len(pname):]}"] = value
                break
        else:
            out[key] = value
    return out


def load_optimizer_state(model: paddle.nn.Layer, optimizer, state: dict) -> None:
    params = dict(model.named_parameters())
    mapped = {}
    for key, value in state.items():
        if "|" in key:
            structured, suffix = key.split("|", 1)
            if structured not in params:
                raise PnnunetError(f"optimizer state names parameter '{structured}' that the network does not have\n"
                                   "  fix: the checkpoint belongs to another architecture; start without --c")
            mapped[params[structured].name + suffix] = value
        else:
            mapped[key] = value
    optimizer.set_state_dict(mapped)


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` (tensors, numpy, plain Python) atomically with ``paddle.save``."""
    with atomic_path(path) as tmp:
        paddle.save(payload, str(tmp))


def load_checkpoint(path: Path) -> dict:
    """Load a pnnunet checkpoint (a pickle: load only checkpoints you made)."""
    try:
        return paddle.load(str(path))
    except Exception as e:  # corrupted / foreign file
        raise PnnunetError(f"{path}: cannot be loaded as a pnnunet checkpoint ({type(e).__name__}: {e})\n"
                           "  fix: delete it and resume from another checkpoint, or retrain") from None


def latest_existing(fold_dir: Path) -> Path | None:
    """First existing of final → latest → best (the order ``--c`` resumes from, §5.8)."""
    for name in CHECKPOINT_NAMES:
        p = checkpoint_path(fold_dir, name)
        if p.is_file():
            return p
    return None


def remove_if_exists(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
