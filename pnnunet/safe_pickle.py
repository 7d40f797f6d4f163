"""Reading pickles written by other tools without running their code: the one allow-list unpickler.

A pickle can name any Python callable and have it called while loading. :class:`AllowListUnpickler`
resolves exactly the globals of its allow-list (``(module, name)`` → the object to use, which need
not be the named one) and refuses every other global, and every persistent id unless a subclass
handles them, by raising the caller's error before anything of the file is called. Used for
upstream nnU-Net's ``CASE.pkl`` properties, ``postprocessing.pkl`` and ``torch.save`` checkpoints, and
to check pnnunet's own ``paddle.save`` checkpoints before Paddle unpickles them.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class Refused(pickle.UnpicklingError):
    """Something an allow-list unpickler, or a function of its allow-list, does not accept; its message names
    the thing (a noun phrase such as "a numpy object dtype") for the caller's sentence."""


class AllowListUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``allowed`` globals.

    Parameters
    ----------
    file : binary file object holding the pickle
    allowed : ``(module, name)`` → object returned for that global
    refuse : builds the exception raised for anything else, given a description such as
        ``"the Python object os.system"``
    """

    def __init__(self, file, allowed: Mapping[tuple[str, str], Any], refuse: Callable[[str], Exception]):
        super().__init__(file)
        self._allowed = allowed
        self._refuse = refuse

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise self._refuse(f"the Python object {module}.{name}") from None

    def persistent_load(self, pid):
        raise self._refuse(f"the persistent id {str(pid)[:80]!r}")


def numpy_scalar(dtype, data=None):
    """A numpy scalar as ``pickle`` rebuilds it (``numpy._core.multiarray.scalar``), object dtypes refused."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise Refused("a numpy scalar of an object dtype")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def numpy_dtype(name, align=False, copy=False):
    """``numpy.dtype`` for :func:`numpy_scalar` and arrays: plain numbers, booleans, strings and dates;
    object and structured (void) dtypes refused."""
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise Refused("a numpy object dtype")
    if dtype.kind == "V":
        raise Refused("a numpy structured (void) dtype")
    return dtype


NUMPY_SCALAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
    ("numpy", "dtype"): numpy_dtype,
}
"""The globals a pickle of numpy scalars names (numpy 1.x and 2.x module paths)."""


def numpy_reconstruct(cls, shape, dtype):
    """``numpy._core.multiarray._reconstruct`` (how ``pickle`` rebuilds an ndarray) for ndarrays only."""
    if cls is not np.ndarray:
        raise Refused("an array of a class other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


NUMPY_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): numpy_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    **NUMPY_SCALAR_GLOBALS,
}
"""The globals a pickle of numpy arrays and scalars names; object dtypes refused (see :func:`numpy_dtype`)."""

PADDLE_SAVE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "tuple"): tuple,
    **NUMPY_ARRAY_GLOBALS,
}
"""What ``paddle.save`` of a dict of tensors, numpy values and plain Python data names: tensors are written
as ``(name, ndarray)`` tuples, state dicts as OrderedDicts."""


def check_pickle(file, allowed: Mapping[tuple[str, str], Any], refuse: Callable[[str], Exception]) -> None:
    """Read the whole pickle in ``file`` with :class:`AllowListUnpickler` and drop the result: raises
    ``refuse(...)`` if it names anything outside ``allowed``, before any of it could run."""
    AllowListUnpickler(file, allowed, refuse).load()
