"""Upstream nnU-Net v2 (torch) network weights → pnnunet parameter names (reference §2).

An upstream ``state_dict`` names most tensors twice: every conv block registers ``conv``/``norm``
and ``all_modules`` (a Sequential over the same modules), and the decoder keeps the encoder, which
appears again under ``decoder.encoder.``. One name of each pair is kept; the aliases must hold the
same values (else the file was edited or is not an nnU-Net checkpoint). Then the names are mapped:

- PlainConvUNet encoder stages are ``Sequential(StackedConvBlocks)`` upstream:
  ``encoder.stages.{s}.0.convs.{c}`` → ``encoder.stages.{s}.convs.{c}``;
- InstanceNorm's scale is ``weight`` in torch and ``scale`` in Paddle: ``….norm.weight`` → ``….norm.scale``.

Layouts need no change: conv weights are ``[out, in, *k]`` and transposed-conv weights
``[in, out, *k]`` in both frameworks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pnnunet.errors import PnnunetError
from pnnunet.runtime.torch_checkpoint import read_torch_checkpoint

_PLAIN_ENCODER_STAGE = re.compile(r"^encoder\.stages\.(\d+)\.0\.")
_NORM_WEIGHT = re.compile(r"(^|\.)norm\.weight$")
_ALL_MODULES = re.compile(r"^(?P<block>.*)\.all_modules\.\d+\.(?P<param>[^.]+)$")


def _check_alias(name: str, value: np.ndarray, candidates: list[str], weights: Mapping, source: str) -> None:
    same = [c for c in candidates if c in weights and np.shape(weights[c]) == np.shape(value)
            and np.array_equal(weights[c], value)]
    if not same:
        raise PnnunetError(f"{source}: tensor {name} differs from the tensor it aliases ({' or '.join(candidates)})\n"
                           "  fix: use the checkpoint as nnU-Net v2 training saved it")


def pnnunet_name(upstream_name: str, network_class: str = "PlainConvUNet") -> str:
    """The pnnunet parameter name of one (non-alias) upstream ``state_dict`` key."""
    name = upstream_name
    if network_class.endswith("PlainConvUNet"):
        name = _PLAIN_ENCODER_STAGE.sub(r"encoder.stages.\1.", name)
    return _NORM_WEIGHT.sub(r"\1norm.scale", name)


def weights_from_upstream(state_dict: Mapping[str, np.ndarray], network_class: str = "PlainConvUNet",
                          source: str = "checkpoint") -> dict[str, np.ndarray]:
    """pnnunet network weights (float32 numpy, ``network.state_dict()`` names) from an upstream state_dict.

    Parameters
    ----------
    state_dict : upstream ``network_weights`` (torch names, numpy arrays)
    network_class : the plans' ``network_class_name`` (``...PlainConvUNet`` or ``...ResidualEncoderUNet``)
    source : the checkpoint file, named in errors

    Raises
    ------
    PnnunetError : an alias that does not hold its original's values, or two names mapping to one
    """
    weights = dict(state_dict)
    out: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        if name.startswith("decoder.encoder."):
            _check_alias(name, value, [name[len("decoder."):]], weights, source)
            continue
        m = _ALL_MODULES.match(name)
        if m is not None:
            block, param = m["block"], m["param"]
            _check_alias(name, value, [f"{block}.conv.{param}", f"{block}.norm.{param}"], weights, source)
            continue
        target = pnnunet_name(name, network_class)
        if target in out:
            raise PnnunetError(f"{source}: {name} and another tensor both map to {target}\n"
                               "  fix: use the checkpoint as nnU-Net v2 training saved it")
        array = np.asarray(value)
        out[target] = array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array
    return out


def read_upstream_checkpoint(pth: Path | str, network_class: str = "PlainConvUNet") -> tuple[dict, dict[str, np.ndarray]]:
    """An nnU-Net v2 ``checkpoint_*.pth`` read without torch: (the checkpoint dict, its ``network_weights``
    under pnnunet's names). Shared by prediction from upstream model folders and ``--pretrained_weights``.

    Raises
    ------
    PnnunetError : naming ``pth``: refused or unreadable file (:func:`read_torch_checkpoint`), no
        ``network_weights`` in it, aliases that disagree.
    """
    raw = read_torch_checkpoint(pth)
    if not isinstance(raw, dict) or not isinstance(raw.get("network_weights"), Mapping) or not raw["network_weights"]:
        raise PnnunetError(f"{pth}: not an nnU-Net v2 checkpoint (no network_weights)\n  fix: give the "
                           "checkpoint_final.pth (or checkpoint_best.pth) that nnUNetv2_train wrote")
    return raw, weights_from_upstream(raw["network_weights"], network_class, str(pth))
