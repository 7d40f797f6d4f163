"""ctypes binding of oneDNN's C API (v3), the library inside Paddle's CPU wheel (``paddle/libs``).

Only the handful of functions the primitives of :mod:`.primitives` need ((transposed) convolution,
instance norm as a one-sample batch norm, LeakyReLU, reorder), one engine and one stream. The enum
values are those of oneDNN's public header ``dnnl_types.h`` (stable within major version 3). When the
library is missing or is not v3 (e.g. a GPU wheel without it), :func:`onednn_available` is False and
callers keep Paddle's own kernels.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path

import paddle

# ---- oneDNN C API constants (dnnl_common_types.h / dnnl_types.h, oneDNN 3.x) -----------------
F32 = 3                       # dnnl_f32
BF16 = 2                      # dnnl_bf16
CPU_ENGINE = 1                       # dnnl_cpu
STREAM_IN_ORDER = 1           # dnnl_stream_in_order
TAG_ANY = 1                   # dnnl_format_tag_any
FWD_TRAINING = 64             # dnnl_forward_training
FWD_INFERENCE = 96            # dnnl_forward_inference
CONV_DIRECT = 0x1             # dnnl_convolution_direct
DECONV_DIRECT = 0xA           # dnnl_deconvolution_direct
QUERY_EXEC_ARG_MD = 255       # dnnl_query_exec_arg_md
QUERY_IMPL_INFO_STR = 8       # dnnl_query_impl_info_str
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS = 129, 145, 161, 169
ARG_SCRATCHPAD = 80             # DNNL_ARG_SCRATCHPAD
ARG_SCALE, ARG_SHIFT = 51, 52   # DNNL_ARG_SCALE / DNNL_ARG_SHIFT (normalization)
ELTWISE_RELU = 0x20             # dnnl_eltwise_relu (alpha: the slope of the negative part)
USE_SCALE, USE_SHIFT = 0x2, 0x4  # dnnl_use_scale / dnnl_use_shift (normalization flags)
SCRATCHPAD_MODE_USER = 1        # dnnl_scratchpad_mode_user
MAX_NDIMS = 12
MEMORY_ALLOCATE = ctypes.c_void_p(2**64 - 1)   # DNNL_MEMORY_ALLOCATE ((void *)(size_t)-1)

Dims = ctypes.c_int64 * MAX_NDIMS


class _ExecArg(ctypes.Structure):  # dnnl_exec_arg_t
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class _Version(ctypes.Structure):  # dnnl_version_t
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class OneDNNError(RuntimeError):
    """A oneDNN call returned an error status."""


def dims(values: Sequence[int]) -> Dims:
    d = Dims()
    for i, v in enumerate(values):
        d[i] = int(v)
    return d


def plain_strides(shape: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.insert(0, acc)
        acc *= int(s)
    return strides


class Library:
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
            "dnnl_memory_desc_create_with_strides": [pp, ctypes.c_int, Dims, ctypes.c_int, Dims],
            "dnnl_memory_desc_create_with_tag": [pp, ctypes.c_int, Dims, ctypes.c_int, ctypes.c_int],
            "dnnl_memory_desc_destroy": [vp],
            "dnnl_memory_desc_clone": [pp, vp],
            "dnnl_memory_create": [pp, vp, vp, vp],
            "dnnl_memory_destroy": [vp],
            "dnnl_convolution_forward_primitive_desc_create":
                [pp, vp, ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, Dims, Dims, Dims, Dims, vp],
            "dnnl_convolution_backward_data_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, Dims, Dims, Dims, Dims, vp, vp],
            "dnnl_convolution_backward_weights_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, vp, Dims, Dims, Dims, Dims, vp, vp],
            "dnnl_deconvolution_forward_primitive_desc_create":
                [pp, vp, ctypes.c_int, ctypes.c_int, vp, vp, vp, vp, Dims, Dims, Dims, Dims, vp],
            "dnnl_deconvolution_backward_data_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, Dims, Dims, Dims, Dims, vp, vp],
            "dnnl_deconvolution_backward_weights_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, vp, vp, Dims, Dims, Dims, Dims, vp, vp],
            "dnnl_batch_normalization_forward_primitive_desc_create":
                [pp, vp, ctypes.c_int, vp, vp, ctypes.c_float, ctypes.c_uint, vp],
            "dnnl_eltwise_forward_primitive_desc_create":
                [pp, vp, ctypes.c_int, ctypes.c_int, vp, vp, ctypes.c_float, ctypes.c_float, vp],
            "dnnl_reorder_primitive_desc_create": [pp, vp, vp, vp, vp, vp],
            "dnnl_primitive_desc_destroy": [vp],
            "dnnl_primitive_create": [pp, vp],
            "dnnl_primitive_destroy": [vp],
            "dnnl_primitive_execute": [vp, vp, ctypes.c_int, ctypes.POINTER(_ExecArg)],
            "dnnl_primitive_attr_create": [pp],
            "dnnl_primitive_attr_destroy": [vp],
            "dnnl_primitive_attr_set_scratchpad_mode": [vp, ctypes.c_int],
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
        lib.dnnl_memory_desc_get_size.argtypes = [vp]
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        self.engine = self._new("dnnl_engine_create", CPU_ENGINE, 0)
        self.stream = self._new("dnnl_stream_create", self.engine, STREAM_IN_ORDER)

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
        strides = plain_strides(shape) if strides is None else strides
        return self._new("dnnl_memory_desc_create_with_strides", len(shape), dims(shape), F32, dims(strides))

    def md_any(self, shape: Sequence[int], data_type: int = F32) -> ctypes.c_void_p:
        return self._new("dnnl_memory_desc_create_with_tag", len(shape), dims(shape), data_type, TAG_ANY)

    def query_md(self, pd, arg: int) -> ctypes.c_void_p:
        """Clone of the memory descriptor a primitive chose for one of its arguments."""
        md = self.lib.dnnl_primitive_desc_query_md(pd, QUERY_EXEC_ARG_MD, arg)
        if not md:
            raise OneDNNError(f"primitive has no memory descriptor for argument {arg}")
        return self._new("dnnl_memory_desc_clone", ctypes.c_void_p(md))

    def user_scratchpad_attr(self) -> ctypes.c_void_p:
        """Primitive attributes asking for a user-managed scratchpad: the primitive then holds no
        scratch memory between calls (the caller passes one per execution, see ``_Step.run``);
        destroy with ``dnnl_primitive_attr_destroy`` after creating the descriptor."""
        attr = self._new("dnnl_primitive_attr_create")
        self.call("dnnl_primitive_attr_set_scratchpad_mode", attr, SCRATCHPAD_MODE_USER)
        return attr

    def scratchpad_md(self, pd) -> ctypes.c_void_p | None:
        """Clone of the descriptor of the scratchpad a primitive needs per execution, None if none."""
        md = self.lib.dnnl_primitive_desc_query_md(pd, QUERY_EXEC_ARG_MD, ARG_SCRATCHPAD)
        if not md or self.lib.dnnl_memory_desc_get_size(ctypes.c_void_p(md)) == 0:
            return None
        return self._new("dnnl_memory_desc_clone", ctypes.c_void_p(md))

    def md_bytes(self, md) -> int:
        """Bytes of memory a descriptor's tensor takes (its layout's padding included)."""
        return int(self.lib.dnnl_memory_desc_get_size(md))

    def impl_name(self, pd) -> str:
        out = ctypes.c_char_p()
        self.lib.dnnl_primitive_desc_query(pd, QUERY_IMPL_INFO_STR, 0, ctypes.byref(out))
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


_LIB: Library | None = None
_LIB_LOCK = threading.Lock()
_LIB_ERROR: str | None = None


def library_path() -> Path:
    return Path(paddle.__file__).resolve().parent / "libs" / "libdnnl.so.3"


def library() -> Library:
    global _LIB, _LIB_ERROR
    with _LIB_LOCK:
        if _LIB is None and _LIB_ERROR is None:
            path = library_path()
            try:
                _LIB = Library(path)
            except (OSError, AttributeError, OneDNNError) as err:
                _LIB_ERROR = f"{path}: {err}"
        if _LIB is None:
            raise OneDNNError(f"oneDNN is not usable: {_LIB_ERROR}")
        return _LIB


def onednn_available() -> bool:
    """True if the oneDNN v3 library bundled with Paddle can be loaded and used."""
    try:
        library()
    except OneDNNError:
        return False
    return True



def library_error() -> str | None:
    """Why the library could not be loaded (None if it loaded or was not tried yet)."""
    return _LIB_ERROR
