"""Mixed precision as upstream nnU-Net means it: float16 autocast on GPUs that reaches 3D convolutions.

Paddle's O1 float16 white list holds ``conv2d`` but not ``conv3d``, ``conv2d_transpose`` or
``conv3d_transpose`` (``paddle/amp/amp_lists.py``, 2.6 and 3.x), so a plain ``paddle.amp.auto_cast()``
leaves every 3D convolution in float32. :func:`autocast_kwargs` adds them to a custom white list and
keeps normalization, softmax and cross-entropy in float32. On CPU autocast is off (Paddle's is a
no-op there; bfloat16 on CPU goes through :mod:`pnnunet.runtime.onednn`).
"""

from __future__ import annotations

# Paddle operator names (the dygraph AMP lookup's); nn.Conv2D with groups == channels is depthwise_conv2d
FP16_OPS = frozenset({"conv2d", "conv3d", "conv2d_transpose", "conv3d_transpose", "depthwise_conv2d"})
# instance_norm is on no default list (a non-affine one would run in float16): keep it float32 explicitly
FP32_OPS = frozenset({"instance_norm", "softmax", "log_softmax", "softmax_with_cross_entropy", "cross_entropy",
                      "cross_entropy2"})


def amp_enabled_for(device: str) -> bool:
    """float16 autocast does something only on CUDA devices (``gpu``, ``gpu:1``, ``cuda``...)."""
    return str(device).lower().startswith(("gpu", "cuda"))


def autocast_kwargs(device: str, enabled: bool = True) -> dict:
    """Keyword arguments of ``paddle.amp.auto_cast`` for ``device`` (pure; does not import Paddle)."""
    return {"enable": bool(enabled) and amp_enabled_for(device), "custom_white_list": set(FP16_OPS),
            "custom_black_list": set(FP32_OPS), "level": "O1", "dtype": "float16"}
