"""Upstream state_dict names → pnnunet's (issue 11, reference §2): aliases dropped and checked, names mapped."""

from __future__ import annotations

import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.runtime.upstream_weights import pnnunet_name, weights_from_upstream

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def _plain_state_dict():
    w, n, s = np.ones((4, 1, 3, 3, 3), np.float32), np.full(4, 2.0, np.float32), np.zeros((3, 4, 1, 1, 1), np.float32)
    block = "encoder.stages.0.0.convs.0"
    return {f"{block}.conv.weight": w, f"{block}.norm.weight": n, f"{block}.all_modules.0.weight": w.copy(),
            f"{block}.all_modules.1.weight": n.copy(), "decoder.encoder.stages.0.0.convs.0.conv.weight": w.copy(),
            "decoder.stages.0.convs.1.norm.bias": n, "decoder.transpconvs.0.weight": w,
            "decoder.seg_layers.1.weight": s}


def test_plain_names_and_aliases():
    out = weights_from_upstream(_plain_state_dict(), PLAIN)
    assert sorted(out) == sorted(["encoder.stages.0.convs.0.conv.weight", "encoder.stages.0.convs.0.norm.scale",
                                  "decoder.stages.0.convs.1.norm.bias", "decoder.transpconvs.0.weight",
                                  "decoder.seg_layers.1.weight"])
    assert all(v.dtype == np.float32 for v in out.values())


def test_resenc_names():
    assert pnnunet_name("encoder.stages.1.blocks.0.skip.1.norm.weight", RESENC) == \
        "encoder.stages.1.blocks.0.skip.1.norm.scale"
    assert pnnunet_name("encoder.stem.convs.0.conv.weight", RESENC) == "encoder.stem.convs.0.conv.weight"
    # only PlainConvUNet's encoder stages carry the Sequential's ".0."
    assert pnnunet_name("encoder.stages.2.0.convs.1.conv.bias", PLAIN) == "encoder.stages.2.convs.1.conv.bias"


@pytest.mark.parametrize("alias", ["encoder.stages.0.0.convs.0.all_modules.1.weight",
                                   "decoder.encoder.stages.0.0.convs.0.conv.weight"])
def test_an_alias_that_differs_is_refused(alias):
    sd = _plain_state_dict()
    sd[alias] = sd[alias] + 1
    with pytest.raises(PnnunetError, match=f"tensor {alias} differs") as err:
        weights_from_upstream(sd, PLAIN, source="x/checkpoint_final.pth")
    assert "x/checkpoint_final.pth" in str(err.value)
