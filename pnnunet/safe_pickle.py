"""Reading pickles written by other tools without running their code: the one allow-list unpickler.

A pickle can name any Python callable and have it called while loading. :class:`AllowListUnpickler`
resolves exactly the globals of its allow-list (``(module, name)`` → the object to use, which need
not be the named one) and refuses every other global, and every persistent id unless a subclass
handles them, by raising the caller's error before anything of the file is called. Used for
upstream nnU-Net's ``CASE.pkl`` properties, ``postprocessing.pkl`` and ``torch.save`` checkpoints.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class Refused(pickle.UnpicklingError):
    """Something an allow-list unpickler, or a function of its allow-list, does not accept."""


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
        raise Refused("it holds a numpy scalar of an object dtype; nothing was run")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def numpy_dtype(name, align=False, copy=False):
    """``numpy.dtype`` for :func:`numpy_scalar`, object dtypes refused."""
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise Refused("it holds a numpy object dtype; nothing was run")
    return dtype


NUMPY_SCALAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
    ("numpy", "dtype"): numpy_dtype,
}
"""The globals a pickle of numpy scalars names (numpy 1.x and 2.x module paths)."""
