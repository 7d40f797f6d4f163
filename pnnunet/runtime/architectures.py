"""The network of a plan configuration: the one place that dispatches on ``network_class_name``.

Upstream plans name the class with a torch path
(``dynamic_network_architectures.architectures.unet.PlainConvUNet`` / ``...ResidualEncoderUNet``),
pnnunet's plans with a Paddle one (``pnnunet.runtime.network.PlainConvUNet``,
``pnnunet.runtime.resenc_network.ResidualEncoderUNet``); the last dotted component decides.
"""

from __future__ import annotations

from pnnunet.errors import PnnunetError
from pnnunet.runtime.network import PlainConvUNet, conv_dim_from_op
from pnnunet.runtime.resenc_network import ResidualEncoderUNet

# class name → (class, the arch_kwargs key that counts the encoder's blocks per stage)
NETWORKS = {
    "PlainConvUNet": (PlainConvUNet, "n_conv_per_stage"),
    "ResidualEncoderUNet": (ResidualEncoderUNet, "n_blocks_per_stage"),
}


def network_kind(class_name: str) -> str:
    """``"PlainConvUNet"`` or ``"ResidualEncoderUNet"`` for a plan's ``network_class_name``."""
    kind = str(class_name).rsplit(".", 1)[-1]
    if kind not in NETWORKS:
        raise PnnunetError(f"network_class_name {class_name!r} is not supported: pnnunet builds "
                           f"{' and '.join(NETWORKS)} (upstream's torch class paths or pnnunet's)")
    return kind


def build_network(plan_configuration: dict, input_channels: int, num_classes: int, deep_supervision: bool = True):
    """Build the network of one plan configuration (reference §6.1; models_and_scale §2-3).

    Parameters
    ----------
    plan_configuration : one entry of a plans file's ``configurations`` (pnnunet or upstream v2),
        with ``architecture.arch_kwargs`` present (inheritance already resolved).
    input_channels : number of input channels.
    num_classes : labels incl. background (label mode) or number of regions.
    deep_supervision : initial value of ``network.deep_supervision``.
    """
    arch = plan_configuration.get("architecture")
    if not isinstance(arch, dict) or "arch_kwargs" not in arch:
        raise PnnunetError(
            "plan configuration has no 'architecture.arch_kwargs'; it must be a v2 plan configuration "
            "(resolve 'inherits_from' first, or re-run pnnunet_plan_experiment)"
        )
    cls, per_stage_key = NETWORKS[network_kind(arch.get("network_class_name", "PlainConvUNet"))]
    kw = arch["arch_kwargs"]
    required = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", per_stage_key,
                "n_conv_per_stage_decoder")
    missing = [k for k in required if k not in kw]
    if missing:
        raise PnnunetError(f"plan arch_kwargs lack {missing} for {cls.__name__}; re-run pnnunet_plan_experiment")
    return cls(
        input_channels=int(input_channels),
        n_stages=int(kw["n_stages"]),
        features_per_stage=kw["features_per_stage"],
        conv_dim=conv_dim_from_op(kw["conv_op"]),
        kernel_sizes=kw["kernel_sizes"],
        strides=kw["strides"],
        num_classes=int(num_classes),
        n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
        conv_bias=bool(kw.get("conv_bias", False)),  # upstream's constructor default
        deep_supervision=deep_supervision,
        **{per_stage_key: kw[per_stage_key]},
    )
