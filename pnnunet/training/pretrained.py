"""Initialise a network from another checkpoint (``--pretrained_weights``, reference §5.8).

All weights are taken except the segmentation heads (``seg_layers``); every other shape must match.
"""

from __future__ import annotations

from pathlib import Path

from pnnunet.errors import PnnunetError
from pnnunet.runtime.checkpoints import load_checkpoint, weights_as_float32


def load_pretrained_weights(path: Path) -> dict:
    """Network weights of a pnnunet checkpoint (float32, also from a float16-stored model), without the
    segmentation heads."""
    path = Path(path)
    if not path.is_file():
        raise PnnunetError(f"{path}: pretrained weights not found\n  fix: give the path of a checkpoint_*.pdparams")
    state = load_checkpoint(path)
    weights = state.get("network_weights", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise PnnunetError(f"{path}: not a pnnunet checkpoint\n  fix: use a checkpoint written by pnnunet_train")
    return {k: v for k, v in weights_as_float32(weights).items() if "seg_layers" not in k}


def apply_pretrained_weights(network, weights: dict, source: str = "pretrained weights") -> None:
    own = network.state_dict()
    missing = [k for k in own if "seg_layers" not in k and k not in weights]
    mismatched = [f"{k} {list(weights[k].shape)} vs {list(own[k].shape)}" for k in weights
                  if k in own and list(weights[k].shape) != list(own[k].shape)]
    unknown = [k for k in weights if k not in own]
    if missing or mismatched or unknown:
        detail = "; ".join(filter(None, [f"missing {missing[:5]}" if missing else "",
                                         f"shape mismatch {mismatched[:5]}" if mismatched else "",
                                         f"unknown {unknown[:5]}" if unknown else ""]))
        raise PnnunetError(f"{source}: do not fit this network ({detail})\n  fix: pretrain with the same "
                           "architecture (same plans topology and input channels)")
    network.set_state_dict({**own, **weights})
