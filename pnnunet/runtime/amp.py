"""Mixed precision for training on GPUs, as upstream nnU-Net does it (float16 autocast + GradScaler).

Upstream runs every step under ``torch.autocast('cuda')``: convolutions (2D, 3D and transposed) in
float16, softmax / cross-entropy / normalisation in float32, with a dynamic loss scale starting at
2**16. Paddle's O1 float16 white list has ``conv2d`` but **not** ``conv3d``, ``conv3d_transpose`` or
``conv2d_transpose`` (Paddle 2.6.2 and 3.3.1, ``paddle/amp/amp_lists.py``), so a plain
``paddle.amp.auto_cast()`` would leave a 3D U-Net in float32; :func:`autocast_kwargs` adds them
through ``custom_white_list``. On a CPU, Paddle's autocast and GradScaler do nothing (they warn
and disable themselves), so training there stays float32 and the kwargs say ``enable=False``
(bfloat16 prediction on CPU goes through :mod:`pnnunet.runtime.onednn`). Prediction on GPUs uses
the same autocast lists.

Everything but :func:`make_grad_scaler` and :func:`scaled_backward_and_step` is pure (no Paddle).
"""

from __future__ import annotations

from pnnunet.runtime.device import import_paddle

# Paddle operator names as the dygraph AMP lookup sees them (checked with GLOG_vmodule=amp_utils=6).
FP16_OPS = frozenset({
    "conv2d",            # already on Paddle's default O1 white list
    "conv3d",            # not on it (2.6.2, 3.3.1)
    "conv2d_transpose",  # not on it
    "conv3d_transpose",  # not on it
    "depthwise_conv2d",  # nn.Conv2D with groups == in_channels
})
# Kept float32. softmax / cross-entropy are on Paddle's O1 black list already; instance_norm is a
# "gray" op that follows its inputs, and an InstanceNorm without affine parameters would run in float16.
FP32_OPS = frozenset({
    "instance_norm",
    "softmax",
    "log_softmax",
    "softmax_with_cross_entropy",
    "cross_entropy",
    "cross_entropy2",
})
INIT_LOSS_SCALE = 2.0 ** 16


def amp_enabled_for(device: str) -> bool:
    """float16 autocast only does something on CUDA devices (``gpu``, ``gpu:1``)."""
    d = str(device).lower()
    return d.startswith("gpu") or d.startswith("cuda")


def precision_of(device: str) -> str:
    """What training on ``device`` computes in: ``"float16 AMP"`` (GPU) or ``"float32"`` (CPU)."""
    return "float16 AMP" if amp_enabled_for(device) else "float32"


CPU_BF16 = "bfloat16 mixed (oneDNN convolutions)"


def training_precision(device: str, cpu_bf16: bool | None, onednn_convolutions: bool,
                       bf16_native: bool) -> tuple[str, str | None]:
    """What training computes in, and why a requested bfloat16 is not used (None if it is, or was not asked).

    ``cpu_bf16``: None (the default) = bfloat16 where it is native and the convolutions run through
    oneDNN, float32 elsewhere without a word; True (``--bf16``) = the same, but a fallback to float32 is
    reported; False (``--fp32``) = float32. GPU: ``"float16 AMP"`` whatever ``cpu_bf16`` says."""
    if amp_enabled_for(device):
        return precision_of(device), ("--bf16 is for CPU training; on a GPU training uses float16 AMP"
                                      if cpu_bf16 else None)
    if cpu_bf16 is False:
        return "float32", None
    if not onednn_convolutions:
        why = "--bf16 needs the oneDNN convolutions (not with --no_fast_cpu); training in float32"
    elif not bf16_native:
        why = "--bf16: this CPU has no native bfloat16 convolutions (AVX512-BF16 or AMX); falling back to float32"
    else:
        return CPU_BF16, None
    return "float32", why if cpu_bf16 else None  # the default (None) falls back without a word


def autocast_kwargs(device: str, enabled: bool = True) -> dict:
    """Keyword arguments of ``paddle.amp.auto_cast(**kw)`` for a step (training or prediction) on ``device``.

    O1 (per-op casting), float16, custom white list :data:`FP16_OPS`, custom black list
    :data:`FP32_OPS`; ``enable`` is False on a CPU or with ``enabled=False``.
    """
    return {"enable": bool(enabled) and amp_enabled_for(device), "custom_white_list": set(FP16_OPS),
            "custom_black_list": set(FP32_OPS), "level": "O1", "dtype": "float16"}


def grad_scaler_kwargs(device: str) -> dict:
    """``paddle.amp.GradScaler(**kw)`` with torch's GradScaler defaults (init 2**16, x2 every 2000
    good steps, x0.5 on every inf/nan step), spelled out because Paddle's base class differs."""
    return {"enable": amp_enabled_for(device), "init_loss_scaling": INIT_LOSS_SCALE, "incr_ratio": 2.0,
            "decr_ratio": 0.5, "incr_every_n_steps": 2000, "decr_every_n_nan_or_inf": 1,
            "use_dynamic_loss_scaling": True}


def last_step_skipped(scaler) -> bool:
    """True if the last ``scaler.step(optimizer)`` skipped the update (inf/nan gradients).

    The flag is ``_cache_found_inf`` in Paddle 3.x and ``_cache_founf_inf`` (sic) in 2.6."""
    if scaler is None or not scaler.is_enable():
        return False
    found = getattr(scaler, "_cache_found_inf", None)
    if found is None:
        found = getattr(scaler, "_cache_founf_inf", None)
    return bool(found)


def loss_scale(scaler) -> float:
    """The current loss scale (1.0 without an enabled scaler)."""
    if scaler is None or not scaler.is_enable():
        return 1.0
    return float(scaler._scale.numpy().reshape(-1)[0])


def make_grad_scaler(device: str, **overrides):
    """A ``paddle.amp.GradScaler`` for ``device`` (None on a CPU, where Paddle's disables itself).

    Its ``_update`` is Paddle's rule without Paddle's message on skipped steps: that message calls
    ``float()`` on the 1-element scale tensor, which raises ``TypeError`` with numpy >= 2.4, i.e. a
    GPU run would crash at its first inf step (Paddle 2.6.2 and 3.3.1)."""
    kw = grad_scaler_kwargs(device)
    kw.update(overrides)
    if not kw["enable"]:
        return None
    return _scaler_class()(**kw)


_SCALER_CLASS = None


def _scaler_class():
    global _SCALER_CLASS
    if _SCALER_CLASS is None:
        paddle = import_paddle()

        class GradScaler(paddle.amp.GradScaler):
            def _update(self):
                if not self._enable:
                    return
                if last_step_skipped(self):
                    self._incr_count = 0
                    self._decr_count = self._decr_count + 1
                    if self._decr_count == self._decr_every_n_nan_or_inf:
                        self._scale = self._scale * self._decr_ratio
                        self._decr_count = 0
                else:
                    self._decr_count = 0
                    self._incr_count = self._incr_count + 1
                    if self._incr_count == self._incr_every_n_steps:
                        self._scale = self._scale * self._incr_ratio
                        self._incr_count = 0

        _SCALER_CLASS = GradScaler
    return _SCALER_CLASS


def scaled_backward_and_step(loss, optimizer, scaler) -> bool:
    """Backward pass and optimizer step; returns True if the step was skipped (inf/nan gradients).

    With a scaler: ``scale(loss).backward()``, ``unscale_`` (true-scale gradients, inf check), then
    ``scaler.step`` runs ``optimizer.step()`` — whose ``grad_clip`` (``ClipGradByGlobalNorm(12)``)
    therefore clips the unscaled gradients, as upstream's ``clip_grad_norm_`` after ``unscale_`` —
    or skips it, and ``update`` adapts the scale. Without: ``backward`` and ``optimizer.step()``."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return False
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    return last_step_skipped(scaler)
