"""Paddle layers whose convolutions run through oneDNN on CPU (fast CPU training and inference).

Paddle's dynamic graph runs ``conv2d/conv3d`` (and their gradients) on CPU with its own
im2col + GEMM kernels on one core (≈20 GFLOP/s here), and its oneDNN kernels are used only by
static graphs and Paddle Inference. Convolutions are ~90 % of a U-Net training step, so these
layers run them, forward and backward, through the oneDNN library in the Paddle wheel
(:mod:`.capi`, :mod:`.primitives`) from a :class:`paddle.autograd.PyLayer`. Everything else
(norm, nonlinearity, loss, optimizer) stays in Paddle's dynamic graph.

Mixed precision (``training_precision="bf16"``, on CPUs with native bfloat16: see
:func:`~pnnunet.runtime.onednn.primitives.bf16_supported`): the three primitives of every
convolution read their operands rounded to bfloat16 and accumulate and return float32, so the
parameters (master weights), their gradients, the optimizer, normalisation and loss stay float32;
only the convolution arithmetic is bfloat16 (the CPU counterpart of float16 autocast on GPUs).

Use :func:`accelerate_convolutions` on a built network: it switches the class of every plain
``Conv2D/Conv3D/Conv2DTranspose/Conv3DTranspose`` sublayer to a subclass whose ``forward`` calls
oneDNN. Parameters, their names and ``state_dict`` keys do not change, so checkpoints and the
optimizer are unaffected; :func:`restore_convolutions` undoes it. Static graphs (``paddle.jit``
export) and non-float32 / non-CPU inputs keep Paddle's own kernels. Results equal Paddle's eager
convolutions up to float32 summation order (tests/runtime/test_onednn.py); measured on the
Hippocampus 3d_fullres plan, a training step is ~3.7x faster than stock eager Paddle
(benchmarks/train_speed.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import paddle
from paddle import nn

from pnnunet.runtime.onednn.capi import ARG_BIAS, ARG_DIFF_BIAS, ARG_DIFF_DST, ARG_DIFF_SRC, ARG_DIFF_WEIGHTS, \
    ARG_DST, ARG_SRC, ARG_WEIGHTS, library_error, onednn_available
from pnnunet.runtime.onednn.primitives import PRECISIONS, contiguous, output_shape, plan_for, release_shared

log = logging.getLogger(__name__)



class _OneDNNConv(paddle.autograd.PyLayer):
    """(Transposed) convolution with oneDNN forward, backward-data and backward-weights."""

    @staticmethod
    def forward(ctx, x, weight, bias, transposed, stride, padding, precision="f32"):
        x, weight = contiguous(x), contiguous(weight)
        y_shape = output_shape(transposed, x.shape, weight.shape, stride, padding)
        plan = plan_for(transposed, x.shape, weight.shape, y_shape, stride, padding, bias is not None, precision,
                        training=True)
        y = paddle.empty(y_shape, dtype="float32")
        ptrs = {ARG_SRC: x.data_ptr(), ARG_WEIGHTS: weight.data_ptr(), ARG_DST: y.data_ptr()}
        if bias is not None:
            bias = contiguous(bias)  # keep the buffer alive while oneDNN reads it
            ptrs[ARG_BIAS] = bias.data_ptr()
        plan.forward().run(ptrs)
        ctx.plan = plan
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient, bias is not None and not bias.stop_gradient)
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        plan, (need_x, need_w, need_b) = ctx.plan, ctx.needs
        dy = contiguous(dy)
        dx = dw = db = None
        shared: list = []  # dy reordered once for both backward primitives
        try:
            if need_x:
                dx = paddle.empty(x.shape, dtype="float32")
                plan.backward_data().run({ARG_DIFF_DST: dy.data_ptr(), ARG_WEIGHTS: weight.data_ptr(),
                                          ARG_DIFF_SRC: dx.data_ptr()}, shared)
            if need_w or need_b:
                dw = paddle.empty(weight.shape, dtype="float32")
                ptrs = {ARG_SRC: x.data_ptr(), ARG_DIFF_DST: dy.data_ptr(), ARG_DIFF_WEIGHTS: dw.data_ptr()}
                if plan.has_bias:
                    db = paddle.empty([plan.shapes[3][0]], dtype="float32")
                    ptrs[ARG_DIFF_BIAS] = db.data_ptr()
                plan.backward_weights().run(ptrs, shared)
        finally:
            release_shared(plan.lib, shared)
        grads = [dx, dw if need_w else None]
        if plan.has_bias:
            grads.append(db if need_b else None)
        return tuple(grads)


def onednn_conv(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None, stride: Sequence[int],
                padding: Sequence[int], transposed: bool = False, precision: str = "f32") -> paddle.Tensor:
    """Convolution (or transposed convolution) of float32 NC* tensors through oneDNN, with autograd.

    Same arguments and result as ``paddle.nn.functional.conv{2,3}d`` (``conv{2,3}d_transpose`` if
    ``transposed``) with groups 1, dilation 1, symmetric integer ``padding`` per spatial axis and
    no output padding. Shapes: x ``(N, C_in, *S)``; weight ``[C_out, C_in, *k]`` (conv) or
    ``[C_in, C_out, *k]`` (transposed); bias ``[C_out]`` or None. ``precision="bf16"``: forward,
    backward-data and backward-weights with bfloat16 operands and float32 accumulation; the result
    and the gradients are float32 tensors like the inputs.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    stride, padding = [int(s) for s in stride], [int(p) for p in padding]
    return _OneDNNConv.apply(x, weight, bias, transposed, stride, padding, precision)


def onednn_conv_inference(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None,
                          stride: Sequence[int], padding: Sequence[int], transposed: bool = False,
                          precision: str = "bf16") -> paddle.Tensor:
    """As :func:`onednn_conv`, forward only (no autograd), in ``precision`` (``"bf16"``: input and
    weights rounded to bfloat16, float32 accumulation and output)."""
    stride, padding = [int(s) for s in stride], [int(p) for p in padding]
    x, weight = contiguous(x), contiguous(weight)
    y_shape = output_shape(transposed, x.shape, weight.shape, stride, padding)
    plan = plan_for(transposed, x.shape, weight.shape, y_shape, stride, padding, bias is not None, precision)
    y = paddle.empty(y_shape, dtype="float32")
    ptrs = {ARG_SRC: x.data_ptr(), ARG_WEIGHTS: weight.data_ptr(), ARG_DST: y.data_ptr()}
    if bias is not None:
        bias = contiguous(bias)
        ptrs[ARG_BIAS] = bias.data_ptr()
    plan.forward().run(ptrs)
    return y




# ---- drop-in layers ---------------------------------------------------------------------------


def conv_unsupported_reason(layer: nn.Layer) -> str | None:
    """Why ``layer`` cannot use oneDNN, or None if it can."""
    nsp = len(layer._kernel_size)
    padding = layer._updated_padding
    if layer._data_format not in ("NCHW", "NCDHW"):
        return f"data_format {layer._data_format}"
    if layer._groups != 1 or any(d != 1 for d in layer._dilation):
        return "groups or dilation"
    if layer._padding_mode != "zeros" or layer._padding_algorithm != "EXPLICIT":
        return f"padding mode {layer._padding_mode}/{layer._padding_algorithm}"
    if not isinstance(padding, (list, tuple)) or len(padding) != nsp or not all(isinstance(p, int) for p in padding):
        return f"padding {padding}"
    if getattr(layer, "output_padding", 0) not in (0, None) and any(
            p != 0 for p in (layer.output_padding if isinstance(layer.output_padding, (list, tuple))
                             else [layer.output_padding])):
        return "output_padding"
    if layer.weight.dtype != paddle.float32:
        return f"dtype {layer.weight.dtype}"
    return None


class _FastConvMixin:
    """``forward`` through oneDNN for float32 CPU input; Paddle's own kernel otherwise.

    ``_inference_precision`` (set by :func:`accelerate_convolutions`): with ``"bf16"``, calls
    without gradients (``paddle.no_grad()``) run in bfloat16 (forward inference only).
    ``_training_precision``: with ``"bf16"``, calls with gradients run in mixed precision.
    """

    _transposed = False
    _inference_precision = "f32"
    _training_precision = "f32"

    def forward(self, x, output_size=None):
        # static graphs (paddle.jit.to_static / export) and other devices or dtypes: Paddle's kernel
        if (not paddle.in_dynamic_mode() or x.dtype != paddle.float32 or not x.place.is_cpu_place()
                or output_size is not None):
            return self._paddle_class.forward(self, x) if output_size is None else \
                self._paddle_class.forward(self, x, output_size)
        if self._inference_precision != "f32" and not paddle.is_grad_enabled():
            return onednn_conv_inference(x, self.weight, self.bias, self._stride, self._updated_padding,
                                         self._transposed, self._inference_precision)
        return onednn_conv(x, self.weight, self.bias, self._stride, self._updated_padding, self._transposed,
                           self._training_precision)

    def forward_concatenated(self, parts: Sequence[paddle.Tensor]) -> paddle.Tensor:
        """``forward(paddle.concat(parts, axis=1))``; in CPU training without building the concatenation:
        the sum of one convolution per part with its slice of the input channels of the weights (the
        bias added once). Training memory (issue 16): autograd keeps the parts, which exist anyway,
        instead of a concatenated copy, and the backward pass writes each part's gradient directly
        instead of one concatenated gradient that is then split (a U-Net decoder's highest-resolution
        stage: 3 activations of twice the feature count less). Equal to the concatenated convolution up
        to float32 summation order."""
        x = parts[0]
        if (self._transposed or len(parts) < 2 or not paddle.in_dynamic_mode() or not paddle.is_grad_enabled()
                or not x.place.is_cpu_place() or any(p.dtype != paddle.float32 for p in parts)):
            return self.forward(paddle.concat(list(parts), axis=1))
        y, start = None, 0
        for i, part in enumerate(parts):
            stop = start + part.shape[1]
            weight = self.weight[:, start:stop]
            term = onednn_conv(part, weight, self.bias if i == 0 else None, self._stride, self._updated_padding,
                               False, self._training_precision)
            y = term if y is None else y.add_(term)
            start = stop
        if start != self.weight.shape[1]:
            raise ValueError(f"parts have {start} channels, the convolution takes {self.weight.shape[1]}")
        return y


class FastConv2D(_FastConvMixin, nn.Conv2D):
    _paddle_class = nn.Conv2D


class FastConv3D(_FastConvMixin, nn.Conv3D):
    _paddle_class = nn.Conv3D


class FastConv2DTranspose(_FastConvMixin, nn.Conv2DTranspose):
    _paddle_class, _transposed = nn.Conv2DTranspose, True


class FastConv3DTranspose(_FastConvMixin, nn.Conv3DTranspose):
    _paddle_class, _transposed = nn.Conv3DTranspose, True


_FAST = {nn.Conv2D: FastConv2D, nn.Conv3D: FastConv3D, nn.Conv2DTranspose: FastConv2DTranspose,
         nn.Conv3DTranspose: FastConv3DTranspose}
_PLAIN = {fast: plain for plain, fast in _FAST.items()}


def accelerate_convolutions(network: nn.Layer, inference_precision: str = "f32",
                            training_precision: str = "f32") -> int:
    """Run the convolutions of ``network`` through oneDNN on CPU (in place); returns how many.

    Every sublayer whose class is exactly ``paddle.nn.Conv2D``, ``Conv3D``, ``Conv2DTranspose`` or
    ``Conv3DTranspose`` (groups 1, dilation 1, zero padding, float32, channels first) gets the
    matching ``Fast*`` class; parameters and ``state_dict`` keys stay the same. Does nothing and
    returns 0 when oneDNN is not available (see :func:`onednn_available`).
    ``inference_precision="bf16"``: calls without gradients compute in bfloat16 (inference);
    ``training_precision="bf16"``: calls with gradients in bfloat16 mixed precision (the caller
    checks :func:`~pnnunet.runtime.onednn.primitives.bf16_supported` first).
    """
    for what, value in (("inference_precision", inference_precision), ("training_precision", training_precision)):
        if value not in PRECISIONS:
            raise ValueError(f"{what} must be one of {PRECISIONS}, got {value!r}")
    if not onednn_available():
        log.info("oneDNN not available, convolutions stay on Paddle's kernels: %s", library_error())
        return 0
    count = 0
    for name, layer in network.named_sublayers(include_self=True):
        fast = _FAST.get(type(layer))
        if fast is None:
            continue
        reason = conv_unsupported_reason(layer)
        if reason is not None:
            log.debug("%s stays on Paddle's kernel (%s)", name or type(layer).__name__, reason)
            continue
        layer.__class__ = fast
        layer._inference_precision = inference_precision
        layer._training_precision = training_precision
        count += 1
    return count


def restore_convolutions(network: nn.Layer) -> int:
    """Undo :func:`accelerate_convolutions`; returns how many layers were switched back."""
    count = 0
    for _, layer in network.named_sublayers(include_self=True):
        plain = _PLAIN.get(type(layer))
        if plain is not None:
            layer.__class__ = plain
            count += 1
    return count
