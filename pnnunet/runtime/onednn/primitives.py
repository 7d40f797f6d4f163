"""oneDNN (transposed) convolution primitives: forward, backward-data and backward-weights for one
geometry, created on first use and cached, in float32 or bfloat16 (inference, or mixed-precision
training: bfloat16 operands, float32 accumulation and float32 results); and for inference, instance
norm followed by LeakyReLU (:class:`NormActPlan`), with working memory kept between executions
(:class:`Workspace`).

Built on the C API binding in :mod:`.capi`; used by the Paddle layers in :mod:`.layers`.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence

import numpy as np
import paddle

from pnnunet.heap import populated_empty
from pnnunet.runtime.onednn.capi import (ARG_BIAS, ARG_DIFF_BIAS, ARG_DIFF_DST, ARG_DIFF_SRC, ARG_DIFF_WEIGHTS,
                                         ARG_DST, ARG_SCALE, ARG_SCRATCHPAD, ARG_SHIFT, ARG_SRC, ARG_WEIGHTS, BF16,
                                         CONV_DIRECT, DECONV_DIRECT, ELTWISE_RELU, F32, FWD_INFERENCE, FWD_TRAINING,
                                         MEMORY_ALLOCATE, USE_SCALE, USE_SHIFT, Library, OneDNNError, dims, library,
                                         onednn_available, plain_strides)

log = logging.getLogger(__name__)

# ---- one convolution configuration ------------------------------------------------------------


class _Binding:
    """One argument of a primitive: the user's plain layout, the primitive's layout, the reorder."""

    def __init__(self, lib: Library, pd, arg: int, user_md, is_output: bool):
        self.arg, self.user_md, self.is_output = arg, user_md, is_output
        self.md = lib.query_md(pd, arg)
        self.reorder = None
        if not lib.equal(self.md, user_md):
            self.reorder = lib.reorder(self.md, user_md) if is_output else lib.reorder(user_md, self.md)


class Workspace:
    """Memory kept between executions for what a primitive needs besides the user's buffers: operands
    reordered into the primitive's layout (e.g. a float32 activation as blocked bfloat16) and its
    scratchpad.

    Without one, each execution allocates them and frees them after (:meth:`_Step.run`): on a CT tile a
    bfloat16 copy of the input and a blocked output, 252 MB each for a 64 -> 32-feature 64x160x192
    convolution, which the kernel page-faults in again every time (that convolution: 2.6 s on its first
    eager call; 0.17-0.19 s per tile with a workspace, in :mod:`pnnunet.runtime.unet_inference`). A workspace
    holds one buffer per role (each argument position, and the scratchpad), grown to the largest request
    and shared by every primitive that runs with it: it keeps the largest layer's need, once. Executions
    that use one workspace must not overlap (one thread, sequential calls), and a reordered operand must
    not be needed after its execution (forward inference: nothing is shared between steps).
    """

    ALIGN = 4096

    def __init__(self):
        self._buffers: dict[object, np.ndarray] = {}

    def pointer(self, role: object, nbytes: int) -> int:
        """Address of at least ``nbytes`` bytes for ``role``, page aligned; valid until the next call
        for the same role."""
        buf = self._buffers.get(role)
        if buf is None or buf.nbytes < nbytes + self.ALIGN:
            self._buffers.pop(role, None)  # free the smaller buffer before allocating the larger one
            buf = self._buffers[role] = populated_empty(nbytes + self.ALIGN, np.uint8)
        address = buf.ctypes.data
        return address + (-address) % self.ALIGN

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


class _Step:
    """A created primitive (forward, backward-data or backward-weights) and its bindings."""

    def __init__(self, lib: Library, pd, bindings: Sequence[tuple[int, object, bool]]):
        self.lib, self.impl = lib, lib.impl_name(pd)
        self.bindings = [_Binding(lib, pd, arg, md, out) for arg, md, out in bindings]
        # created with a user-managed scratchpad (``_ConvPlan._primitive_desc``): allocated per run and
        # freed after it, instead of held by the primitive for its lifetime (bf16 backward-weights
        # kernels need up to 0.45 GB each on CT patches, one primitive per layer: benchmarks/RESULTS.md)
        self.scratchpad_md = lib.scratchpad_md(pd)
        self.prim = lib.primitive(pd)

    def destroy(self) -> None:
        """Free the primitive and its reorders (with them oneDNN's scratchpad, when no other primitive
        holds it); the step must not run afterwards."""
        for prim in [self.prim] + [b.reorder for b in self.bindings if b.reorder is not None]:
            if prim is not None:
                self.lib.lib.dnnl_primitive_destroy(prim)
        self.prim, self.bindings = None, []
        if self.scratchpad_md is not None:
            self.lib.lib.dnnl_memory_desc_destroy(self.scratchpad_md)
            self.scratchpad_md = None

    def run(self, pointers: dict[int, int], shared: list | None = None, workspace: Workspace | None = None) -> None:
        """Execute on user buffers (``arg -> data pointer`` of contiguous float32 tensors).

        ``shared`` (optional) collects the reordered copies of inputs as ``[user pointer, md,
        memory]`` so that a later step of the same backward pass reuses them instead of reordering
        the same tensor again; whoever passes it destroys its memories (:func:`_release`).
        ``workspace`` (optional, not with ``shared``): the reordered operands and the scratchpad live in
        its buffers instead of memory allocated for this execution (:class:`Workspace`).
        """
        if workspace is not None and shared is not None:
            raise ValueError("a workspace's buffers are reused by the next execution: they cannot be shared")
        lib, args, created, after = self.lib, {}, [], []

        def scratch_memory(role, md):
            if workspace is None:
                return lib.memory(md, MEMORY_ALLOCATE)
            return lib.memory(md, ctypes.c_void_p(workspace.pointer(role, lib.md_bytes(md))))

        try:
            for b in self.bindings:
                ptr = pointers[b.arg]
                if b.reorder is not None and not b.is_output and shared is not None:
                    hit = next((m for p, md, m in shared if p == ptr and lib.equal(md, b.md)), None)
                    if hit is not None:
                        args[b.arg] = hit
                        continue
                user = lib.memory(b.user_md, ctypes.c_void_p(ptr))
                created.append(user)
                if b.reorder is None:
                    args[b.arg] = user
                    continue
                inner = scratch_memory(b.arg, b.md)
                args[b.arg] = inner
                if b.is_output:
                    created.append(inner)
                    after.append((b.reorder, inner, user))
                    continue
                lib.execute(b.reorder, {ARG_SRC: user, ARG_DST: inner})
                if shared is None:
                    created.append(inner)
                else:
                    shared.append((ptr, b.md, inner))
            if self.scratchpad_md is not None:
                scratch = scratch_memory(ARG_SCRATCHPAD, self.scratchpad_md)
                created.append(scratch)
                args[ARG_SCRATCHPAD] = scratch
            lib.execute(self.prim, args)
            for reorder, inner, user in after:
                lib.execute(reorder, {ARG_SRC: inner, ARG_DST: user})
            lib.call("dnnl_stream_wait", lib.stream)
        finally:
            for mem in created:
                lib.lib.dnnl_memory_destroy(mem)


def release_shared(lib: Library, shared: list) -> None:
    for _, _, mem in shared:
        lib.lib.dnnl_memory_destroy(mem)
    shared.clear()


class _ConvPlan:
    """oneDNN primitives for one (transposed) convolution geometry, created on first use.

    Parameters
    ----------
    transposed : deconvolution (Paddle ``Conv*DTranspose``) instead of convolution
    x_shape, y_shape : input / output shapes ``(N, C, *spatial)``
    w_shape : the Paddle weight shape: ``[out, in, *k]`` (conv) or ``[in, out, *k]`` (transposed)
    stride, padding : per spatial axis (symmetric padding as Paddle's)
    has_bias : the layer adds a bias of shape ``[out]``
    precision : ``"f32"``, or ``"bf16"``: the operands of every primitive are rounded to bfloat16
        (forward: input and weights; backward-data: output gradient and weights; backward-weights:
        input and output gradient), accumulation and every result (output, input gradient, weight
        and bias gradients) stay float32; see :func:`bf16_supported`
    training : with ``"bf16"``, a forward-training primitive and the two backward primitives
        (mixed-precision training); otherwise forward inference only. float32 plans always train.
    """

    def __init__(self, transposed: bool, x_shape, w_shape, y_shape, stride, padding, has_bias: bool,
                 precision: str = "f32", training: bool = False):
        self.lib = lib = library()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.transposed, self.has_bias, self.precision = transposed, has_bias, precision
        self.training = training or precision == "f32"
        nsp = len(x_shape) - 2
        kernel = list(w_shape[2:])
        if transposed:
            c_in, c_out = w_shape[0], w_shape[1]
            ksz = 1
            for k in kernel:
                ksz *= k
            # logical oneDNN weights (out, in, *k) over Paddle's physical (in, out, *k)
            w_logical = [c_out, c_in, *kernel]
            w_strides = [ksz, c_out * ksz, *plain_strides(kernel)]
        else:
            w_logical, w_strides = list(w_shape), plain_strides(w_shape)
        c_out = w_logical[0]
        pad_l = [int(p) for p in padding]
        if transposed:
            pad_r = [(x_shape[2 + i] - 1) * stride[i] + kernel[i] - y_shape[2 + i] - pad_l[i] for i in range(nsp)]
        else:
            pad_r = [(y_shape[2 + i] - 1) * stride[i] + kernel[i] - x_shape[2 + i] - pad_l[i] for i in range(nsp)]
        self.geometry = (dims(stride), dims([0] * nsp), dims(pad_l), dims(pad_r))
        self.weights_grad_precision = precision
        if precision == "bf16" and shallow_input_bug(transposed, x_shape, kernel):
            self.weights_grad_precision = "f32"
        self.x_md, self.y_md = lib.md_plain(x_shape), lib.md_plain(y_shape)
        self.w_md = lib.md_plain(w_logical, w_strides)
        self.b_md = lib.md_plain([c_out]) if has_bias else None
        self.shapes = (list(x_shape), list(w_logical), list(y_shape), [c_out])
        self.alg = DECONV_DIRECT if transposed else CONV_DIRECT
        self.kind = "deconvolution" if transposed else "convolution"
        self.fwd_pd = None
        self._fwd = self._bwd_data = self._bwd_weights = None

    def release(self) -> None:
        """Free the created primitives; they are created again on next use."""
        for step in (self._fwd, self._bwd_data, self._bwd_weights):
            if step is not None:
                step.destroy()
        self._fwd = self._bwd_data = self._bwd_weights = None
        if self.fwd_pd is not None:
            self.lib.lib.dnnl_primitive_desc_destroy(self.fwd_pd)
            self.fwd_pd = None

    def _primitive_desc(self, which: str, *args, with_bias: bool = False, precision: str | None = None):
        """Create a primitive descriptor whose tensors may take any layout (``*args``: the forward
        descriptor hint of a backward primitive), with a user-managed scratchpad; ``precision``
        overrides the plan's."""
        x, w, y, b = self.shapes
        lib = self.lib
        low = BF16 if (precision or self.precision) == "bf16" else F32
        # operands in ``low``; results (output, gradients) and the bias in float32
        x_type, w_type, y_type = {"forward": (low, low, F32), "backward_data": (F32, low, low),
                                  "backward_weights": (low, F32, low)}[which]
        mds = [lib.md_any(x, x_type), lib.md_any(w, w_type), lib.md_any(y, y_type),
               lib.md_any(b) if with_bias else None]
        x_md, w_md, y_md, b_md = mds
        attr = lib.user_scratchpad_attr()  # see _Step: scratch memory per execution, not per primitive
        try:
            if which == "forward":
                prop = FWD_TRAINING if self.training else FWD_INFERENCE
                return lib._new(f"dnnl_{self.kind}_forward_primitive_desc_create", lib.engine, prop,
                                self.alg, x_md, w_md, b_md, y_md, *self.geometry, attr)
            if which == "backward_data":
                return lib._new(f"dnnl_{self.kind}_backward_data_primitive_desc_create", lib.engine, self.alg,
                                x_md, w_md, y_md, *self.geometry, *args, attr)
            return lib._new(f"dnnl_{self.kind}_backward_weights_primitive_desc_create", lib.engine, self.alg,
                            x_md, w_md, b_md, y_md, *self.geometry, *args, attr)
        finally:
            lib.lib.dnnl_primitive_attr_destroy(attr)
            for md in mds:
                if md is not None:
                    lib.lib.dnnl_memory_desc_destroy(md)

    def _forward_pd(self):
        if self.fwd_pd is None:  # kept: the backward primitives need it as their hint
            self.fwd_pd = self._primitive_desc("forward", with_bias=self.has_bias)
        return self.fwd_pd

    def _step(self, pd, bindings, keep_pd: bool = False) -> _Step:
        try:
            return _Step(self.lib, pd, bindings)
        finally:
            if not keep_pd:
                self.lib.lib.dnnl_primitive_desc_destroy(pd)

    def forward(self) -> _Step:
        """Forward (training) primitive: ``SRC, WEIGHTS[, BIAS] -> DST``."""
        if self._fwd is None:
            binds = [(ARG_SRC, self.x_md, False), (ARG_WEIGHTS, self.w_md, False), (ARG_DST, self.y_md, True)]
            if self.has_bias:
                binds.append((ARG_BIAS, self.b_md, False))
            self._fwd = self._step(self._forward_pd(), binds, keep_pd=True)
        return self._fwd

    def _check_trainable(self) -> None:
        if not self.training:
            raise OneDNNError(f"this {self.precision} convolution plan is for inference only (no gradients); "
                              "create it with training=True")

    def backward_data(self) -> _Step:
        """Backward-data primitive: ``DIFF_DST, WEIGHTS -> DIFF_SRC``."""
        self._check_trainable()
        if self._bwd_data is None:
            pd = self._primitive_desc("backward_data", self._forward_pd())
            self._bwd_data = self._step(pd, [(ARG_DIFF_DST, self.y_md, False), (ARG_WEIGHTS, self.w_md, False),
                                             (ARG_DIFF_SRC, self.x_md, True)])
        return self._bwd_data

    def backward_weights(self) -> _Step:
        """Backward-weights primitive: ``SRC, DIFF_DST -> DIFF_WEIGHTS[, DIFF_BIAS]``."""
        self._check_trainable()
        if self._bwd_weights is None:
            if self.weights_grad_precision == self.precision:
                pd = self._primitive_desc("backward_weights", self._forward_pd(), with_bias=self.has_bias)
            else:  # float32 weight gradients of a bfloat16 plan: a float32 forward descriptor is the hint
                hint = self._primitive_desc("forward", with_bias=self.has_bias, precision="f32")
                try:
                    pd = self._primitive_desc("backward_weights", hint, with_bias=self.has_bias, precision="f32")
                finally:
                    self.lib.lib.dnnl_primitive_desc_destroy(hint)
            binds = [(ARG_SRC, self.x_md, False), (ARG_DIFF_DST, self.y_md, False),
                     (ARG_DIFF_WEIGHTS, self.w_md, True)]
            if self.has_bias:
                binds.append((ARG_DIFF_BIAS, self.b_md, True))
            self._bwd_weights = self._step(pd, binds)
        return self._bwd_weights


def shallow_input_bug(transposed: bool, x_shape, kernel) -> bool:
    """True for the geometries whose bfloat16 weight gradients oneDNN gets wrong.

    The oneDNN inside Paddle's CPU wheels (jit_bf16 backward-weights kernel, AVX512-BF16) returns
    garbage, often inf or NaN, for a 3D convolution whose input is shallower than its kernel along
    the first spatial axis with depth 2 (e.g. a 2x5x5 bottleneck under a 3x3x3 kernel); found by
    training the tiny test plans, mapped by ``tests/runtime/test_onednn.py``, which keeps this rule
    honest against the installed oneDNN. Such layers compute their weight gradients in float32
    (they sit at small resolutions, so it costs little); forward and backward-data are not affected.
    """
    return not transposed and len(kernel) == 3 and x_shape[2] < kernel[0]


_PLANS: dict[tuple, _ConvPlan] = {}
_MAX_PLANS = 512
PRECISIONS = ("f32", "bf16")


def plan_for(transposed: bool, x_shape, w_shape, y_shape, stride, padding, has_bias: bool,
             precision: str = "f32", training: bool = False) -> _ConvPlan:
    training = training or precision == "f32"
    key = (transposed, tuple(x_shape), tuple(w_shape), tuple(y_shape), tuple(stride), tuple(padding), has_bias,
           precision, training)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:  # e.g. prediction of many differently sized inputs
            release_plans()
        plan = _PLANS[key] = _ConvPlan(transposed, x_shape, w_shape, y_shape, stride, padding, has_bias, precision,
                                       training)
    return plan


def release_plans() -> int:
    """Drop every cached convolution plan (its primitives and their memory), e.g. between training and
    the final validation, whose tile shapes need other primitives; returns how many were dropped."""
    plans = list(_PLANS.values())
    _PLANS.clear()
    for plan in plans:
        plan.release()  # a plan still referenced (e.g. by an autograd node) recreates them when used
    return len(plans)


class NormActPlan:
    """Instance norm (affine) then LeakyReLU, in place, forward inference, on one float32 sample
    ``(1, C, *spatial)`` in plain layout: oneDNN's batch normalization (statistics computed per channel
    over the batch and the spatial axes, i.e. per sample and channel for one sample) and its ReLU
    eltwise with ``alpha`` as the negative slope. Statistics are the biased variance, as Paddle's and
    torch's instance norm."""

    def __init__(self, shape: Sequence[int], epsilon: float, slope: float):
        if shape[0] != 1:
            raise ValueError(f"instance norm as batch norm takes one sample at a time, got shape {list(shape)}")
        self.lib = lib = library()
        self.shape = list(shape)
        md, c_md = lib.md_plain(shape), lib.md_plain([shape[1]])
        steps = []
        try:
            attr = lib.user_scratchpad_attr()
            try:
                norm_pd = lib._new("dnnl_batch_normalization_forward_primitive_desc_create", lib.engine, FWD_INFERENCE,
                                   md, md, float(epsilon), USE_SCALE | USE_SHIFT, attr)
                steps.append(_Step(lib, norm_pd, [(ARG_SRC, md, False), (ARG_DST, md, True),
                                                  (ARG_SCALE, c_md, False), (ARG_SHIFT, c_md, False)]))
                lib.lib.dnnl_primitive_desc_destroy(norm_pd)
                act_pd = lib._new("dnnl_eltwise_forward_primitive_desc_create", lib.engine, FWD_INFERENCE,
                                  ELTWISE_RELU, md, md, float(slope), 0.0, attr)
                steps.append(_Step(lib, act_pd, [(ARG_SRC, md, False), (ARG_DST, md, True)]))
                lib.lib.dnnl_primitive_desc_destroy(act_pd)
            finally:
                lib.lib.dnnl_primitive_attr_destroy(attr)
        except Exception:
            for step in steps:
                step.destroy()
            for d in (md, c_md):
                lib.lib.dnnl_memory_desc_destroy(d)
            raise
        self.mds = (md, c_md)  # the steps' bindings refer to them: destroyed by release()
        self.norm, self.act = steps

    def run(self, pointer: int, scale: int, shift: int, workspace: Workspace | None = None) -> None:
        """Normalise and activate the buffer at ``pointer`` in place (``scale``, ``shift``: pointers to
        C float32 each)."""
        self.norm.run({ARG_SRC: pointer, ARG_DST: pointer, ARG_SCALE: scale, ARG_SHIFT: shift}, workspace=workspace)
        self.act.run({ARG_SRC: pointer, ARG_DST: pointer}, workspace=workspace)

    def release(self) -> None:
        for step in (self.norm, self.act):
            step.destroy()
        for md in self.mds:
            self.lib.lib.dnnl_memory_desc_destroy(md)
        self.mds = ()


def output_shape(transposed: bool, x_shape, w_shape, stride, padding) -> list[int]:
    nsp = len(x_shape) - 2
    kernel = w_shape[2:]
    if transposed:
        spatial = [(x_shape[2 + i] - 1) * stride[i] - 2 * padding[i] + kernel[i] for i in range(nsp)]
        return [x_shape[0], w_shape[1], *spatial]
    spatial = [(x_shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(nsp)]
    return [x_shape[0], w_shape[0], *spatial]


def contiguous(t: paddle.Tensor) -> paddle.Tensor:
    return t if t.is_contiguous() else t.contiguous()

_BF16_SUPPORT: bool | None = None


def bf16_supported() -> bool:
    """Whether this CPU runs oneDNN bfloat16 convolutions natively (AVX512-BF16 or AMX), i.e. faster
    than float32; emulated implementations do not count."""
    global _BF16_SUPPORT
    if _BF16_SUPPORT is None:
        _BF16_SUPPORT = False
        if onednn_available():
            try:
                plan = _ConvPlan(False, [1, 16, 8, 8, 8], [16, 16, 3, 3, 3], [1, 16, 8, 8, 8], [1, 1, 1], [1, 1, 1],
                                 True, "bf16")
                impl = plan.forward().impl
                _BF16_SUPPORT = "bf16" in impl or "amx" in impl
                log.debug("oneDNN bf16 convolution: %s", impl)
            except OneDNNError as e:
                log.debug("oneDNN bf16 convolution unavailable: %s", e)
    return _BF16_SUPPORT
