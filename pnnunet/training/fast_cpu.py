"""Fast CPU training: convolutions through oneDNN, the library inside Paddle's CPU wheel.

Paddle's dynamic graph runs ``conv2d/conv3d`` (and their gradients) on CPU with its own
im2col + GEMM kernels on one core (≈20 GFLOP/s here), and its oneDNN kernels are used only by
static graphs and Paddle Inference. Convolutions are ~90 % of a U-Net training step, so this
module runs them, forward and backward, through the ``libdnnl.so.3`` that ships in the Paddle
wheel (``paddle/libs``), called with :mod:`ctypes` from a :class:`paddle.autograd.PyLayer`.
Everything else (norm, nonlinearity, loss, optimizer) stays in Paddle's dynamic graph.

Use :func:`accelerate_convolutions` on a built network: it switches the class of every plain
``Conv2D/Conv3D/Conv2DTranspose/Conv3DTranspose`` sublayer to a subclass whose ``forward`` calls
oneDNN. Parameters, their names and ``state_dict`` keys do not change, so checkpoints and the
optimizer are unaffected; :func:`restore_convolutions` undoes it. Static graphs (``paddle.jit``
export) and non-float32 / non-CPU inputs keep Paddle's own kernels. Results equal Paddle's eager
convolutions up to float32 summation order (tests/training/test_fast_cpu.py); measured on the
Hippocampus 3d_fullres plan, a training step is ~3.7x faster than stock eager Paddle
(benchmarks/train_speed.py).

The oneDNN C API (v3) is called directly; the enum values below are those of its public
header ``dnnl_types.h`` (stable within major version 3). When the library is missing or is not
v3 (e.g. a GPU wheel without it), :func:`onednn_available` is False and nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import paddle
from paddle import nn

log = logging.getLogger(__name__)

# ---- oneDNN C API constants (dnnl_common_types.h / dnnl_types.h, oneDNN 3.x) -----------------
_F32 = 3                       # dnnl_f32
_BF16 = 2                      # dnnl_bf16
_CPU = 1                       # dnnl_cpu
_STREAM_IN_ORDER = 1           # dnnl_stream_in_order
_TAG_ANY = 1                   # dnnl_format_tag_any
_FWD_TRAINING = 64             # dnnl_forward_training
_FWD_INFERENCE = 96            # dnnl_forward_inference
_CONV_DIRECT = 0x1             # dnnl_convolution_direct
_DECONV_DIRECT = 0xA           # dnnl_deconvolution_direct
_QUERY_EXEC_ARG_MD = 255       # dnnl_query_exec_arg_md
_QUERY_IMPL_INFO_STR = 8       # dnnl_query_impl_info_str
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS = 129, 145, 161, 169
_MAX_NDIMS = 12
_MEMORY_ALLOCATE = ctypes.c_void_p(2**64 - 1)   # DNNL_MEMORY_ALLOCATE ((void *)(size_t)-1)

_Dims = ctypes.c_int64 * _MAX_NDIMS


class _ExecArg(ctypes.Structure):  # dnnl_exec_arg_t
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class _Version(ctypes.Structure):  # dnnl_version_t
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class OneDNNError(RuntimeError):
    """A oneDNN call returned an error status."""


def _dims(values: Sequence[int]) -> _Dims:
    d = _Dims()
    for i, v in enumerate(values):
        d[i] = int(v)
    return d


def _plain_strides(shape: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.insert(0, acc)
        acc *= int(s)
    return strides


class _Library:
    """ctypes binding of the handful of oneDNN functions used here, plus one engine and stream."""

    def __init__(self, path: Path):
        self.lib = lib = ctypes.CDLL(str(path))
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        version = lib.dnnl_version().contents
        self.version = (version.major, version.minor, version.patch)
        if version.major != 3:
            raise OneDNNError(f"oneDNN {'.'.join(map(str, self.version))} found, the C API used here is v3")
        vp, pp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        sig = {
            "dnnl_engine_create": [pp, ctypes.c_int, ctypes.c_size_t],
            "dnnl_stream_create": [pp, vp, ctypes.c_uint],
            "dnnl_stream_wait": [vp],
            "dnnl_memory_desc_create_with_strides": [pp, ctypes.c_int, _Dims, ctypes.c_int, _Dims],
            "dnnl_memory_desc_create_with_tag": [pp, ctypes.c_int, _Dims, ctypes.c_int, ctypes.c_int],
            "dnnl_memory_desc_destroy": [vp],
            "dnnl_memory_desc_clone": [pp, vp],
            "dnnl_memory_create": [pp, vp, vp, vp],
            "dnnl_memory_destroy": [vp],
            "dnnl_convolution_forward_primitive_desc_create":
                [pp, vp, ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, _Dims, _Dims, _Dims, _Dims, vp],
            "dnnl_convolution_backward_data_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, _Dims, _Dims, _Dims, _Dims, vp, vp],
            "dnnl_convolution_backward_weights_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, vp, _Dims, _Dims, _Dims, _Dims, vp, vp],
            "dnnl_deconvolution_forward_primitive_desc_create":
                [pp, vp, ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, _Dims, _Dims, _Dims, _Dims, vp],
            "dnnl_deconvolution_backward_data_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, _Dims, _Dims, _Dims, _Dims, vp, vp],
            "dnnl_deconvolution_backward_weights_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, vp, _Dims, _Dims, _Dims, _Dims, vp, vp],
            "dnnl_reorder_primitive_desc_create": [pp, vp, vp, vp, vp, vp],
            "dnnl_primitive_desc_destroy": [vp],
            "dnnl_primitive_create": [pp, vp],
            "dnnl_primitive_destroy": [vp],
            "dnnl_primitive_execute": [vp, vp, ctypes.c_int, ctypes.POINTER(_ExecArg)],
        }
        for name, argtypes in sig.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.dnnl_primitive_desc_query_md.argtypes = [vp, ctypes.c_int, ctypes.c_int]
        lib.dnnl_primitive_desc_query_md.restype = vp
        lib.dnnl_primitive_desc_query.argtypes = [vp, ctypes.c_int, ctypes.c_int, vp]
        lib.dnnl_primitive_desc_query.restype = ctypes.c_int
        lib.dnnl_memory_desc_equal.argtypes = [vp, vp]
        lib.dnnl_memory_desc_equal.restype = ctypes.c_int
        self.engine = self._new("dnnl_engine_create", _CPU, 0)
        self.stream = self._new("dnnl_stream_create", self.engine, _STREAM_IN_ORDER)

    def call(self, name: str, *args) -> None:
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise OneDNNError(f"{name} failed with dnnl_status {status}")

    def _new(self, name: str, *args) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self.call(name, ctypes.byref(handle), *args)
        return handle

    # memory descriptors
    def md_plain(self, shape: Sequence[int], strides: Sequence[int] | None = None) -> ctypes.c_void_p:
        """Descriptor of a float32 tensor in memory with the given (default: C-contiguous) strides."""
        strides = _plain_strides(shape) if strides is None else strides
        return self._new("dnnl_memory_desc_create_with_strides", len(shape), _dims(shape), _F32, _dims(strides))

    def md_any(self, shape: Sequence[int], data_type: int = _F32) -> ctypes.c_void_p:
        return self._new("dnnl_memory_desc_create_with_tag", len(shape), _dims(shape), data_type, _TAG_ANY)

    def query_md(self, pd, arg: int) -> ctypes.c_void_p:
        """Clone of the memory descriptor a primitive chose for one of its arguments."""
        md = self.lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, arg)
        if not md:
            raise OneDNNError(f"primitive has no memory descriptor for argument {arg}")
        return self._new("dnnl_memory_desc_clone", ctypes.c_void_p(md))

    def impl_name(self, pd) -> str:
        out = ctypes.c_char_p()
        self.lib.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO_STR, 0, ctypes.byref(out))
        return (out.value or b"").decode()

    def equal(self, a, b) -> bool:
        return bool(self.lib.dnnl_memory_desc_equal(a, b))

    def primitive(self, pd) -> ctypes.c_void_p:
        return self._new("dnnl_primitive_create", pd)

    def memory(self, md, handle) -> ctypes.c_void_p:
        return self._new("dnnl_memory_create", md, self.engine, handle)

    def reorder(self, src_md, dst_md) -> ctypes.c_void_p:
        pd = self._new("dnnl_reorder_primitive_desc_create", src_md, self.engine, dst_md, self.engine, None)
        try:
            return self.primitive(pd)
        finally:
            self.lib.dnnl_primitive_desc_destroy(pd)

    def execute(self, prim, args: dict[int, ctypes.c_void_p]) -> None:
        arr = (_ExecArg * len(args))(*[_ExecArg(k, v.value if isinstance(v, ctypes.c_void_p) else v)
                                       for k, v in args.items()])
        self.call("dnnl_primitive_execute", prim, self.stream, len(args), arr)


_LIB: _Library | None = None
_LIB_LOCK = threading.Lock()
_LIB_ERROR: str | None = None


def _library_path() -> Path:
    return Path(paddle.__file__).resolve().parent / "libs" / "libdnnl.so.3"


def _library() -> _Library:
    global _LIB, _LIB_ERROR
    with _LIB_LOCK:
        if _LIB is None and _LIB_ERROR is None:
            path = _library_path()
            try:
                _LIB = _Library(path)
            except (OSError, AttributeError, OneDNNError) as err:
                _LIB_ERROR = f"{path}: {err}"
        if _LIB is None:
            raise OneDNNError(f"oneDNN is not usable: {_LIB_ERROR}")
        return _LIB


def onednn_available() -> bool:
    """True if the oneDNN v3 library bundled with Paddle can be loaded and used."""
    try:
        _library()
    except OneDNNError:
        return False
    return True


# ---- one convolution configuration ------------------------------------------------------------


class _Binding:
    """One argument of a primitive: the user's plain layout, the primitive's layout, the reorder."""

    def __init__(self, lib: _Library, pd, arg: int, user_md, is_output: bool):
        self.arg, self.user_md, self.is_output = arg, user_md, is_output
        self.md = lib.query_md(pd, arg)
        self.reorder = None
        if not lib.equal(self.md, user_md):
            self.reorder = lib.reorder(self.md, user_md) if is_output else lib.reorder(user_md, self.md)


class _Step:
    """A created primitive (forward, backward-data or backward-weights) and its bindings."""

    def __init__(self, lib: _Library, pd, bindings: Sequence[tuple[int, object, bool]]):
        self.lib, self.impl = lib, lib.impl_name(pd)
        self.bindings = [_Binding(lib, pd, arg, md, out) for arg, md, out in bindings]
        self.prim = lib.primitive(pd)

    def run(self, pointers: dict[int, int], shared: list | None = None) -> None:
        """Execute on user buffers (``arg -> data pointer`` of contiguous float32 tensors).

        ``shared`` (optional) collects the reordered copies of inputs as ``[user pointer, md,
        memory]`` so that a later step of the same backward pass reuses them instead of reordering
        the same tensor again; whoever passes it destroys its memories (:func:`_release`).
        """
        lib, args, created, after = self.lib, {}, [], []
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
                inner = lib.memory(b.md, _MEMORY_ALLOCATE)
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
            lib.execute(self.prim, args)
            for reorder, inner, user in after:
                lib.execute(reorder, {ARG_SRC: inner, ARG_DST: user})
            lib.call("dnnl_stream_wait", lib.stream)
        finally:
            for mem in created:
                lib.lib.dnnl_memory_destroy(mem)


def _release(lib: _Library, shared: list) -> None:
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
    precision : ``"f32"``, or ``"bf16"`` (forward inference only: input and weights rounded to
        bfloat16, float32 accumulation and output; see :func:`bf16_supported`)
    """

    def __init__(self, transposed: bool, x_shape, w_shape, y_shape, stride, padding, has_bias: bool,
                 precision: str = "f32"):
        self.lib = lib = _library()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.transposed, self.has_bias, self.precision = transposed, has_bias, precision
        nsp = len(x_shape) - 2
        kernel = list(w_shape[2:])
        if transposed:
            c_in, c_out = w_shape[0], w_shape[1]
            ksz = 1
            for k in kernel:
                ksz *= k
            # logical oneDNN weights (out, in, *k) over Paddle's physical (in, out, *k)
            w_logical = [c_out, c_in, *kernel]
            w_strides = [ksz, c_out * ksz, *_plain_strides(kernel)]
        else:
            w_logical, w_strides = list(w_shape), _plain_strides(w_shape)
        c_out = w_logical[0]
        pad_l = [int(p) for p in padding]
        if transposed:
            pad_r = [(x_shape[2 + i] - 1) * stride[i] + kernel[i] - y_shape[2 + i] - pad_l[i] for i in range(nsp)]
        else:
            pad_r = [(y_shape[2 + i] - 1) * stride[i] + kernel[i] - x_shape[2 + i] - pad_l[i] for i in range(nsp)]
        self.geometry = (_dims(stride), _dims([0] * nsp), _dims(pad_l), _dims(pad_r))
        self.x_md, self.y_md = lib.md_plain(x_shape), lib.md_plain(y_shape)
        self.w_md = lib.md_plain(w_logical, w_strides)
        self.b_md = lib.md_plain([c_out]) if has_bias else None
        self.shapes = (list(x_shape), list(w_logical), list(y_shape), [c_out])
        self.alg = _DECONV_DIRECT if transposed else _CONV_DIRECT
        self.kind = "deconvolution" if transposed else "convolution"
        self.fwd_pd = None
        self._fwd = self._bwd_data = self._bwd_weights = None

    def _primitive_desc(self, which: str, *args, with_bias: bool = False):
        """Create a primitive descriptor whose tensors may take any layout (``*args`` follow them)."""
        x, w, y, b = self.shapes
        lib = self.lib
        low = _BF16 if self.precision == "bf16" else _F32  # the output and bias stay float32
        mds = [lib.md_any(x, low), lib.md_any(w, low), lib.md_any(y), lib.md_any(b) if with_bias else None]
        x_md, w_md, y_md, b_md = mds
        try:
            if which == "forward":
                prop = _FWD_INFERENCE if self.precision == "bf16" else _FWD_TRAINING
                return lib._new(f"dnnl_{self.kind}_forward_primitive_desc_create", lib.engine, prop,
                                self.alg, x_md, w_md, b_md, y_md, *self.geometry, None)
            if which == "backward_data":
                return lib._new(f"dnnl_{self.kind}_backward_data_primitive_desc_create", lib.engine, self.alg,
                                x_md, w_md, y_md, *self.geometry, *args)
            return lib._new(f"dnnl_{self.kind}_backward_weights_primitive_desc_create", lib.engine, self.alg,
                            x_md, w_md, b_md, y_md, *self.geometry, *args)
        finally:
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
        if self.precision != "f32":
            raise OneDNNError(f"{self.precision} convolutions are for inference only (no gradients)")

    def backward_data(self) -> _Step:
        """Backward-data primitive: ``DIFF_DST, WEIGHTS -> DIFF_SRC``."""
        self._check_trainable()
        if self._bwd_data is None:
            pd = self._primitive_desc("backward_data", self._forward_pd(), None)
            self._bwd_data = self._step(pd, [(ARG_DIFF_DST, self.y_md, False), (ARG_WEIGHTS, self.w_md, False),
                                             (ARG_DIFF_SRC, self.x_md, True)])
        return self._bwd_data

    def backward_weights(self) -> _Step:
        """Backward-weights primitive: ``SRC, DIFF_DST -> DIFF_WEIGHTS[, DIFF_BIAS]``."""
        self._check_trainable()
        if self._bwd_weights is None:
            pd = self._primitive_desc("backward_weights", self._forward_pd(), None, with_bias=self.has_bias)
            binds = [(ARG_SRC, self.x_md, False), (ARG_DIFF_DST, self.y_md, False),
                     (ARG_DIFF_WEIGHTS, self.w_md, True)]
            if self.has_bias:
                binds.append((ARG_DIFF_BIAS, self.b_md, True))
            self._bwd_weights = self._step(pd, binds)
        return self._bwd_weights


_PLANS: dict[tuple, _ConvPlan] = {}
_MAX_PLANS = 512
PRECISIONS = ("f32", "bf16")


def _plan(transposed: bool, x_shape, w_shape, y_shape, stride, padding, has_bias: bool,
          precision: str = "f32") -> _ConvPlan:
    key = (transposed, tuple(x_shape), tuple(w_shape), tuple(y_shape), tuple(stride), tuple(padding), has_bias,
           precision)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:  # e.g. prediction of many differently sized inputs
            _PLANS.clear()
        plan = _PLANS[key] = _ConvPlan(transposed, x_shape, w_shape, y_shape, stride, padding, has_bias, precision)
    return plan


def _output_shape(transposed: bool, x_shape, w_shape, stride, padding) -> list[int]:
    nsp = len(x_shape) - 2
    kernel = w_shape[2:]
    if transposed:
        spatial = [(x_shape[2 + i] - 1) * stride[i] - 2 * padding[i] + kernel[i] for i in range(nsp)]
        return [x_shape[0], w_shape[1], *spatial]
    spatial = [(x_shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(nsp)]
    return [x_shape[0], w_shape[0], *spatial]


def _contiguous(t: paddle.Tensor) -> paddle.Tensor:
    return t if t.is_contiguous() else t.contiguous()


class _OneDNNConv(paddle.autograd.PyLayer):
    """(Transposed) convolution with oneDNN forward, backward-data and backward-weights."""

    @staticmethod
    def forward(ctx, x, weight, bias, transposed, stride, padding):
        x, weight = _contiguous(x), _contiguous(weight)
        y_shape = _output_shape(transposed, x.shape, weight.shape, stride, padding)
        plan = _plan(transposed, x.shape, weight.shape, y_shape, stride, padding, bias is not None)
        y = paddle.empty(y_shape, dtype="float32")
        ptrs = {ARG_SRC: x.data_ptr(), ARG_WEIGHTS: weight.data_ptr(), ARG_DST: y.data_ptr()}
        if bias is not None:
            bias = _contiguous(bias)  # keep the buffer alive while oneDNN reads it
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
        dy = _contiguous(dy)
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
            _release(plan.lib, shared)
        grads = [dx, dw if need_w else None]
        if plan.has_bias:
            grads.append(db if need_b else None)
        return tuple(grads)


def onednn_conv(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None, stride: Sequence[int],
                padding: Sequence[int], transposed: bool = False) -> paddle.Tensor:
    """Convolution (or transposed convolution) of float32 NC* tensors through oneDNN, with autograd.

    Same arguments and result as ``paddle.nn.functional.conv{2,3}d`` (``conv{2,3}d_transpose`` if
    ``transposed``) with groups 1, dilation 1, symmetric integer ``padding`` per spatial axis and
    no output padding. Shapes: x ``(N, C_in, *S)``; weight ``[C_out, C_in, *k]`` (conv) or
    ``[C_in, C_out, *k]`` (transposed); bias ``[C_out]`` or None.
    """
    stride, padding = [int(s) for s in stride], [int(p) for p in padding]
    return _OneDNNConv.apply(x, weight, bias, transposed, stride, padding)


def onednn_conv_inference(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None,
                          stride: Sequence[int], padding: Sequence[int], transposed: bool = False,
                          precision: str = "bf16") -> paddle.Tensor:
    """As :func:`onednn_conv`, forward only (no autograd), in ``precision`` (``"bf16"``: input and
    weights rounded to bfloat16, float32 accumulation and output)."""
    stride, padding = [int(s) for s in stride], [int(p) for p in padding]
    x, weight = _contiguous(x), _contiguous(weight)
    y_shape = _output_shape(transposed, x.shape, weight.shape, stride, padding)
    plan = _plan(transposed, x.shape, weight.shape, y_shape, stride, padding, bias is not None, precision)
    y = paddle.empty(y_shape, dtype="float32")
    ptrs = {ARG_SRC: x.data_ptr(), ARG_WEIGHTS: weight.data_ptr(), ARG_DST: y.data_ptr()}
    if bias is not None:
        bias = _contiguous(bias)
        ptrs[ARG_BIAS] = bias.data_ptr()
    plan.forward().run(ptrs)
    return y


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


# ---- drop-in layers ---------------------------------------------------------------------------


def _supported(layer: nn.Layer) -> str | None:
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
    """

    _transposed = False
    _inference_precision = "f32"

    def forward(self, x, output_size=None):
        # static graphs (paddle.jit.to_static / export) and other devices or dtypes: Paddle's kernel
        if (not paddle.in_dynamic_mode() or x.dtype != paddle.float32 or not x.place.is_cpu_place()
                or output_size is not None):
            return self._paddle_class.forward(self, x) if output_size is None else \
                self._paddle_class.forward(self, x, output_size)
        if self._inference_precision != "f32" and not paddle.is_grad_enabled():
            return onednn_conv_inference(x, self.weight, self.bias, self._stride, self._updated_padding,
                                         self._transposed, self._inference_precision)
        return onednn_conv(x, self.weight, self.bias, self._stride, self._updated_padding, self._transposed)


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


def accelerate_convolutions(network: nn.Layer, inference_precision: str = "f32") -> int:
    """Run the convolutions of ``network`` through oneDNN on CPU (in place); returns how many.

    Every sublayer whose class is exactly ``paddle.nn.Conv2D``, ``Conv3D``, ``Conv2DTranspose`` or
    ``Conv3DTranspose`` (groups 1, dilation 1, zero padding, float32, channels first) gets the
    matching ``Fast*`` class; parameters and ``state_dict`` keys stay the same. Does nothing and
    returns 0 when oneDNN is not available (see :func:`onednn_available`).
    ``inference_precision="bf16"``: calls without gradients compute in bfloat16 (inference).
    """
    if inference_precision not in PRECISIONS:
        raise ValueError(f"inference_precision must be one of {PRECISIONS}, got {inference_precision!r}")
    if not onednn_available():
        log.info("oneDNN not available, convolutions stay on Paddle's kernels: %s", _LIB_ERROR)
        return 0
    count = 0
    for name, layer in network.named_sublayers(include_self=True):
        fast = _FAST.get(type(layer))
        if fast is None:
            continue
        reason = _supported(layer)
        if reason is not None:
            log.debug("%s stays on Paddle's kernel (%s)", name or type(layer).__name__, reason)
            continue
        layer.__class__ = fast
        layer._inference_precision = inference_precision
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
