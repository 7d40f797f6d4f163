"""Checkpoints: one ``paddle.save`` file per checkpoint, written atomically (reference §5.8).

Paddle names optimizer accumulators after auto-generated parameter names (``conv3d_12.w_0_velocity_0``),
which differ between processes (paddle_notes §2.4). We store them under the structured parameter
names of ``model.named_parameters()`` and map them back on load, so a checkpoint restores in any
process. The training session itself runs inside ``paddle.utils.unique_name.guard()``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from pnnunet.defaults import CHECKPOINT_NAMES, checkpoint_path
from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path
from pnnunet.plans import resolve_configuration
from pnnunet.runtime.device import import_paddle, raise_if_out_of_memory
from pnnunet.safe_pickle import PADDLE_SAVE_GLOBALS, Refused, check_pickle

# plan keys that must agree between the plans a checkpoint was made with and the plans it is used with
PLAN_KEYS_CHECKED = ("patch_size", "spacing", "architecture", "normalization_schemes")


def plan_mismatch(ckpt: dict, configuration: str, plans: dict, dataset_json: dict | None = None) -> str | None:
    """Why ``ckpt`` was not made for ``configuration`` of ``plans`` (and, when given, the labels and channels
    of ``dataset_json``); None when it was, or when the checkpoint does not say: the one compatibility check
    of training (``--c``) and prediction."""
    init_args = ckpt.get("init_args") or {}
    stored_dj = init_args.get("dataset_json")
    if dataset_json is not None and isinstance(stored_dj, dict):
        for key in ("labels", "channel_names"):
            if key in stored_dj and key in dataset_json and stored_dj[key] != dataset_json[key]:
                return (f"was trained with other dataset.json {key} ({stored_dj[key]}, here {dataset_json[key]}): "
                        "it belongs to another dataset or label set")
    stored = init_args.get("configuration")
    if stored is not None and stored != configuration:
        return f"was trained for configuration '{stored}', not '{configuration}'"
    stored_plans = init_args.get("plans")
    if stored_plans is None or stored is None:
        return None
    ours = resolve_configuration(plans, configuration)
    theirs = resolve_configuration(stored_plans, stored)
    differing = [k for k in PLAN_KEYS_CHECKED if ours.get(k) != theirs.get(k)]
    if differing:
        return f"was trained with a different plan ({', '.join(differing)} differ)"
    return None


def optimizer_state_by_structured_names(model, optimizer) -> dict:
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


def load_optimizer_state(model, optimizer, state: dict) -> None:
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
    paddle = import_paddle()
    with atomic_path(path) as tmp:
        paddle.save(payload, str(tmp))


# what paddle.load raises for a file that is not (or no longer) a complete checkpoint: it wraps its own
# parse failures as ValueError ("can not parse the file"); an empty file gives EOFError
CORRUPT_FILE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError)


def _refused(path: Path, reason: str) -> PnnunetError:
    return PnnunetError(f"{path}: refused: {reason} (a pickle can run any code it names while loading); nothing of it "
                        "was run\n  fix: use checkpoints written by pnnunet_train or installed from a model zip you "
                        "trust; for an nnU-Net v2 model use its checkpoint_final.pth (read without running it)")


def load_checkpoint(path: Path) -> dict:
    """Load a pnnunet checkpoint (``paddle.save``'s pickle), after reading it once with the allow-list
    unpickler (:data:`~pnnunet.safe_pickle.PADDLE_SAVE_GLOBALS`): a file from a zip or a download that names
    any other Python object is refused before Paddle unpickles it.

    Only a file that cannot be parsed gets the advice to delete it; running out of memory or a file that
    cannot be read (permissions, I/O error) are reported as what they are, since the checkpoint may be
    fine. Anything else propagates unchanged.
    """
    paddle = import_paddle()
    keep = "the checkpoint itself may be fine: do not delete it"
    try:
        with open(path, "rb") as f:
            check_pickle(f, PADDLE_SAVE_GLOBALS, lambda what: _refused(path, f"it names {what}, which no pnnunet "
                                                                              "checkpoint holds"))
        return paddle.load(str(path))
    except (MemoryError, RuntimeError) as e:
        raise_if_out_of_memory(e, f"loading {path}", f"free memory (close other programs), then retry; {keep}")
        raise
    except FileNotFoundError:
        raise PnnunetError(f"{path}: checkpoint not found\n  fix: check the path, or train the fold") from None
    except Refused as e:  # an allowed global refusing its arguments (an object dtype, a foreign array class)
        raise _refused(path, f"it holds {e}") from None
    except CORRUPT_FILE_ERRORS as e:
        raise PnnunetError(f"{path}: cannot be loaded as a pnnunet checkpoint ({type(e).__name__}: {e})\n"
                           "  fix: the file is damaged or not a checkpoint; delete it and resume from another "
                           "checkpoint (--c), or retrain") from None
    except OSError as e:  # permissions, I/O errors: the file could not be read, not found to be broken
        raise PnnunetError(f"{path}: cannot be read ({e.strerror or e})\n"
                           f"  fix: check the file's permissions and the disk, then retry; {keep}") from None


# what an inference-only checkpoint keeps of a training checkpoint (see inference_checkpoint)
INFERENCE_KEYS = ("init_args", "trainer_name", "inference_allowed_mirroring_axes", "pnnunet_version", "precision",
                  "current_epoch")
FLOAT16_MAX = float(np.finfo(np.float16).max)


def inference_checkpoint(ckpt: dict, source: str, weights_dtype: str = "float16") -> dict:
    """The part of a training checkpoint that prediction needs, its float32 weights stored as ``weights_dtype``.

    The optimizer state, grad scaler and training log are dropped (a pretrained model for
    ``pnnunet_predict -m`` and ``--pretrained_weights``); :func:`weights_as_float32` restores float32 at load.
    ``source`` names the checkpoint in error messages.
    """
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise PnnunetError(f"{source}: not a pnnunet checkpoint (no network_weights)\n"
                           "  fix: use a checkpoint written by pnnunet_train")
    dtype = np.dtype(weights_dtype)
    weights = {}
    for name, value in ckpt["network_weights"].items():
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if array.dtype == np.float32 and dtype == np.float16:
            peak = float(np.abs(array).max()) if array.size else 0.0
            if not np.isfinite(peak) or peak > FLOAT16_MAX:
                raise PnnunetError(f"{source}: weight {name} holds {peak:g}, beyond float16's range (±{FLOAT16_MAX:g})"
                                   "\n  fix: store this model in float32 (weights_dtype='float32')")
        weights[name] = array.astype(dtype) if array.dtype == np.float32 else array
    out = {k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt}
    out.update(network_weights=weights, weights_dtype=str(dtype), inference_only=True)
    return out


def weights_as_float32(weights: dict) -> dict:
    """Network weights (name → tensor or array) as numpy, float16 ones (a compact pretrained model) in float32."""
    out = {}
    for name, value in weights.items():
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        out[name] = array.astype(np.float32) if array.dtype == np.float16 else array
    return out


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
