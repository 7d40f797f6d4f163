"""Read ``torch.save`` files (zip format, torch >= 1.6) into numpy, without torch (issue 11, reference §4).

A ``.pth`` written by ``torch.save`` is an uncompressed zip whose entries sit under one top folder
(its name varies: take it from the entries): ``data.pkl`` (the pickled object), ``data/<key>`` (raw
storage bytes), ``byteorder`` (``little`` if absent) and ``version``. Tensors are pickled as calls
of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``; their storages come from
``persistent_load(('storage', StorageType, key, location, numel))``.

The pickle is read by a restricted unpickler (:mod:`pnnunet.safe_pickle`): :data:`ALLOWED_GLOBALS`
is the exact list of globals it resolves (each to a function of this module, never to torch or to an arbitrary callable);
anything else, e.g. a pickle that calls ``os.system``, is refused with a :class:`PnnunetError`
naming the file before anything runs. Tensors become references first and are read from the zip
only if they are kept, so the optimizer state of a training checkpoint costs no memory.

Values: tensors → numpy arrays (float32, float16, float64, int64, int32, int16, int8, uint8, bool;
bfloat16 widened to float32, numpy having no bfloat16), ``OrderedDict`` → ``OrderedDict``,
``torch.device`` → its string (``"cpu"``, ``"cuda:0"``), numpy scalars → numpy scalars.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pnnunet.errors import PnnunetError
from pnnunet.safe_pickle import NUMPY_SCALAR_GLOBALS, AllowListUnpickler, Refused

# storage class name → numpy dtype (byte order applied later); bfloat16 is read as uint16
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}
# torch dtype objects (pickled as the globals ``torch.float32`` ...) → numpy dtype
_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
    "float64": "float64", "double": "float64", "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
}

# The legacy (torch < 1.6) format starts with this number, pickled
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

SKIPPED = "<skipped: not loaded>"
"""Value put in place of a skipped top-level entry (see :func:`read_torch_checkpoint`)."""


@dataclass(frozen=True)
class _Dtype:
    name: str  # numpy dtype name, or "bfloat16"


@dataclass(frozen=True)
class _StorageType:
    dtype: str | None  # None: UntypedStorage (bytes; the tensor names its dtype)


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str | None
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor not yet read: ``size``/``stride``/``offset`` in elements of ``dtype``."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


class _ParameterClass:
    """Stands for ``torch.nn.Parameter`` / ``torch.Tensor`` in ``_rebuild_from_type_v2``."""


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None) -> _TensorRef:
    if not isinstance(storage, _Storage) or storage.dtype is None:
        raise Refused("a tensor whose storage is not a typed storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride),
                      storage.dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None) -> _TensorRef:
    if not isinstance(storage, _Storage) or not isinstance(dtype, _Dtype):
        raise Refused("a tensor whose storage or dtype is not a plain one")
    itemsize = _itemsize(dtype.name)
    storage = _Storage(storage.key, dtype.name, storage.numel // itemsize if storage.dtype is None else storage.numel)
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride),
                      dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type is not _ParameterClass:
        raise Refused("a tensor subclass")
    return func(*args)


def _device(*args):
    return ":".join(str(a) for a in args)


def _codecs_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode with encoding {encoding!r}")
    return str(text).encode("latin1")


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): _ParameterClass,
    ("torch", "Tensor"): _ParameterClass,
    ("torch", "device"): _device,
    ("torch", "UntypedStorage"): _StorageType(None),
    ("_codecs", "encode"): _codecs_encode,
    **NUMPY_SCALAR_GLOBALS,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _Dtype(dtype) for name, dtype in _TORCH_DTYPES.items()},
}
"""The exact globals a checkpoint pickle may name, and what each is resolved to."""


def _refuse(what: str) -> Refused:
    return Refused(f"it refers to {what}, which a checkpoint never needs")


class _RestrictedUnpickler(AllowListUnpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file, ALLOWED_GLOBALS, _refuse)
        self._storages = storages

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise Refused(f"an unknown persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return storage


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _top_folder(names: list[str]) -> str | None:
    """The folder holding ``data.pkl`` (torch names it after the file, or ``archive``)."""
    for name in names:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name.split("/", 1)[0]
    return None


def _not_a_checkpoint(path: Path, why: str) -> PnnunetError:
    return PnnunetError(f"{path}: not a PyTorch checkpoint ({why})\n  fix: give the checkpoint_final.pth (or "
                        "checkpoint_best.pth) that nnU-Net v2 training wrote")


def _check_format(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise PnnunetError(f"{path}: cannot be read ({e.strerror or e})\n  fix: check the path and its "
                           "permissions") from None
    if zipfile.is_zipfile(path):
        return
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
        raise PnnunetError(f"{path}: a checkpoint in PyTorch's legacy (pre-1.6) format, which pnnunet does not "
                           "read\n  fix: re-save it in the zip format with a PyTorch >= 1.6: "
                           "torch.save(torch.load(path, weights_only=False), path)")
    raise _not_a_checkpoint(path, "not a zip file")


def _read_array(archive: zipfile.ZipFile, top: str, ref: _TensorRef, byteorder: str, path: Path) -> np.ndarray:
    storage = ref.storage
    try:
        raw = archive.read(f"{top}/data/{storage.key}")
    except KeyError:
        raise _not_a_checkpoint(path, f"storage data/{storage.key} is missing") from None
    stored = "uint16" if storage.dtype == "bfloat16" else storage.dtype
    dt = np.dtype(stored).newbyteorder("<" if byteorder == "little" else ">")
    count = len(raw) // dt.itemsize
    flat = np.frombuffer(raw, dtype=dt, count=count)
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise _not_a_checkpoint(path, f"a tensor with negative size or stride {ref.size}/{ref.stride}")
    if 0 in ref.size:
        out = np.zeros(ref.size, dtype=stored)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= count:
            raise _not_a_checkpoint(path, f"a tensor reaches beyond its storage data/{storage.key}")
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                               strides=[s * dt.itemsize for s in ref.stride], writeable=False)
        out = np.array(view, dtype=stored, order="C")  # a C-ordered copy in native byte order
    if storage.dtype == "bfloat16":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _materialise(obj, read):
    if isinstance(obj, _TensorRef):
        return read(obj)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, read)
        return out
    if isinstance(obj, list):
        return [_materialise(v, read) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, read) for v in obj)
    if isinstance(obj, (_Storage, _StorageType, _Dtype)) or obj is _ParameterClass:
        raise Refused(f"a bare {type(obj).__name__.lstrip('_')} outside a tensor")
    return obj


def read_torch_checkpoint(path: Path | str, skip: Iterable[str] = ("optimizer_state", "grad_scaler_state")) -> Any:
    """The object a ``torch.save`` zip file holds, tensors as numpy arrays (see the module docstring).

    Parameters
    ----------
    path : a ``.pth`` / ``.pt`` file written by ``torch.save`` (torch >= 1.6)
    skip : top-level keys (when the file holds a dict) whose tensors are not read; their values are
        replaced by :data:`SKIPPED`. Default: the optimizer and grad-scaler state of an nnU-Net
        checkpoint, which inference does not need.

    Raises
    ------
    PnnunetError : naming ``path``, when the file is not a zip written by ``torch.save`` (a legacy
        pre-1.6 file gets its own message), its pickle names a global outside :data:`ALLOWED_GLOBALS`
        or is otherwise broken, or a tensor does not fit its storage.
    """
    path = Path(path)
    _check_format(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            top = _top_folder(names)
            if top is None:
                why = "a TorchScript archive, not a torch.save file" if any(n.endswith("/constants.pkl")
                                                                           for n in names) else "no data.pkl"
                raise _not_a_checkpoint(path, why)
            byteorder = "little"
            if f"{top}/byteorder" in names:
                byteorder = archive.read(f"{top}/byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise _not_a_checkpoint(path, f"unknown byte order {byteorder!r}")
            storages: dict[str, _Storage] = {}
            obj = _RestrictedUnpickler(io.BytesIO(archive.read(f"{top}/data.pkl")), storages).load()
            if isinstance(obj, dict):
                skip = set(skip)
                obj = type(obj)((k, SKIPPED if k in skip else v) for k, v in obj.items())
            return _materialise(obj, lambda ref: _read_array(archive, top, ref, byteorder, path))
    except Refused as e:  # also the numpy-scalar functions of NUMPY_SCALAR_GLOBALS
        raise PnnunetError(f"{path}: refused to load: {e}. A checkpoint holds only tensors, numbers, strings "
                           "and containers; this file may be malicious or is not a model checkpoint\n"
                           "  fix: use a checkpoint from a source you trust, written by nnU-Net v2 training") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError) as e:
        raise _not_a_checkpoint(path, f"{type(e).__name__}: {e}") from None
