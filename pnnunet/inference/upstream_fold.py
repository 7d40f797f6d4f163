"""A fold trained by upstream nnU-Net v2 (``fold_K/checkpoint_*.pth``), converted once for pnnunet (issue 11).

The ``.pth`` is read without torch (:mod:`pnnunet.runtime.torch_checkpoint`), its weights renamed
(:mod:`pnnunet.runtime.upstream_weights`) and checked against the network the plans describe; then
a pnnunet checkpoint is written, by default beside the original::

    fold_K/checkpoint_final.pth                     (upstream's, never modified)
    fold_K/pnnunet/checkpoint_final.pdparams        (the conversion, stamped with the .pth's size and mtime)
    fold_K/pnnunet/inference/checkpoint_final/      (the static graph, exported at the first prediction)

A model folder that cannot be written keeps its conversion in ``cache_dir`` (``--cache_dir`` /
``pnnunet_cache_dir``) as ``cache_dir/<DatasetXXX>/<model folder>/fold_K/...``; without one the fold is
converted in memory for each run (said so). Nothing is written before every check has passed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pnnunet.defaults import CHECKPOINT_SUFFIX, UPSTREAM_CHECKPOINT_SUFFIX, UPSTREAM_TRAINER
from pnnunet.errors import PnnunetError
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.checkpoints import load_checkpoint, save_checkpoint
from pnnunet.runtime.device import import_paddle
from pnnunet.runtime.network import weights_mismatch
from pnnunet.runtime.upstream_weights import read_upstream_checkpoint

log = logging.getLogger(__name__)

CONVERTED_DIR = "pnnunet"
CACHE_ENV = "pnnunet_cache_dir"
_CONVERTER_VERSION = 1  # bump when the conversion changes: older conversions are redone


def upstream_checkpoint(fold_dir: Path, stem: str) -> Path:
    return fold_dir / (stem + UPSTREAM_CHECKPOINT_SUFFIX)


def converted_path(pth: Path, cache_dir: Path | None = None) -> Path:
    """Where the conversion of ``pth`` is kept (see the module docstring)."""
    fold_dir = pth.parent
    if cache_dir is None:
        return fold_dir / CONVERTED_DIR / (pth.stem + CHECKPOINT_SUFFIX)
    model_dir = fold_dir.parent
    return Path(cache_dir) / model_dir.parent.name / model_dir.name / fold_dir.name / (pth.stem + CHECKPOINT_SUFFIX)


def _stamp(pth: Path) -> dict:
    st = pth.stat()
    return {"file": pth.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "converter": _CONVERTER_VERSION}


def _cached(path: Path, stamp: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except PnnunetError as e:  # damaged, or refused (it names code to run): converted again, replacing it
        log.warning("ignoring the cached conversion %s, converting again: %s", path, str(e).splitlines()[0])
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("converted_from") == stamp else None


def _convert(pth: Path, plan_configuration: dict, num_input_channels: int, num_outputs: int) -> dict:
    arch = plan_configuration.get("architecture") or {}
    raw, weights = read_upstream_checkpoint(pth, str(arch.get("network_class_name", "PlainConvUNet")))
    trainer = str(raw.get("trainer_name") or UPSTREAM_TRAINER)
    paddle = import_paddle()
    with paddle.utils.unique_name.guard():
        network = build_network(plan_configuration, num_input_channels, num_outputs, deep_supervision=False)
    problem = weights_mismatch(network, weights)
    del network
    if problem is not None:
        hint = (f" (trainer {trainer} may build its own network, which pnnunet does not know)"
                if trainer != UPSTREAM_TRAINER else "")
        raise PnnunetError(f"{pth}: the weights do not fit the network of the model folder's plans.json{hint}: "
                           f"{problem}\n  fix: use the plans.json and dataset.json the model was trained with")
    axes = raw.get("inference_allowed_mirroring_axes")
    init_args = raw.get("init_args") if isinstance(raw.get("init_args"), dict) else {}
    return {"network_weights": weights, "trainer_name": trainer,
            # None means the trainer forbids mirroring (no TTA), unlike a pnnunet checkpoint without the key
            "inference_allowed_mirroring_axes": () if axes is None else tuple(int(a) for a in axes),
            "init_args": {k: init_args[k] for k in ("configuration", "plans", "fold") if k in init_args},
            "source": "nnU-Net v2"}


def load_upstream_fold(pth: Path, plan_configuration: dict, num_input_channels: int, num_outputs: int,
                       cache_dir: Path | str | None = None) -> tuple[dict, Path]:
    """The checkpoint dict of an upstream fold (pnnunet names) and the file that identifies it.

    Returns
    -------
    (checkpoint, path): ``path`` is the converted ``.pdparams`` (static-graph exports are cached
    beside it), or ``pth`` itself when nowhere could be written.

    Raises
    ------
    PnnunetError : naming ``pth``: refused or unreadable file, not an nnU-Net checkpoint, weights that
        do not fit the plans' network. Nothing is written then.
    """
    pth = Path(pth)
    cache_dir = cache_dir if cache_dir is not None else (os.environ.get(CACHE_ENV) or None)
    stamp = _stamp(pth)
    targets = [converted_path(pth)] + ([converted_path(pth, Path(cache_dir).expanduser())] if cache_dir else [])
    for target in targets:
        ckpt = _cached(target, stamp)
        if ckpt is not None:
            log.debug("%s: using its conversion %s", pth, target)
            return ckpt, target
    ckpt = _convert(pth, plan_configuration, num_input_channels, num_outputs)
    ckpt["converted_from"] = stamp
    if ckpt["trainer_name"] != UPSTREAM_TRAINER:
        log.info("%s: trainer %s is not nnU-Net's own nnUNetTrainer: predicting with the network its plans.json "
                 "describes", pth, ckpt["trainer_name"])
    for target in reversed(targets):  # the user's cache folder first, when given
        created = not target.parent.exists()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(target, ckpt)
        except OSError:
            if created:  # leave the model folder as it was
                try:
                    target.parent.rmdir()
                except OSError:
                    pass
            continue
        log.info("converted %s (nnU-Net v2) to %s", pth, target)
        return ckpt, target
    log.warning("%s: the model folder is not writable: converted in memory for this run only\n"
                "  fix: pass --cache_dir DIR (or set %s) to keep the conversion", pth, CACHE_ENV)
    return ckpt, pth
