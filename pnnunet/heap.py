"""Process heap policy for large array workloads (network inference on CPU).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
returns it to the kernel on free. A 3D U-Net on a CT patch allocates and frees gigabytes of
activations per tile, so without :func:`reuse_freed_memory` every tile page-faults them in again:
~1.9 million minor faults and 4.4 s of kernel time per 64x160x192 tile on the benchmark machine
(a tile took 6.6 s, and 3.7 s with freed memory reused; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
_HEAP_LOCK = threading.Lock()
_HEAP_DEPTH = 0


@lru_cache(maxsize=1)
def _glibc():
    """The process's glibc (with ``mallopt`` / ``malloc_trim``), or None on other C libraries; looked up
    once (``platform.libc_ver`` reads the Python executable)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Inside the block, memory freed by the process is kept and reused instead of being returned to
    the kernel and page-faulted in again; on leaving the outermost block glibc's defaults come back
    and the kept memory is released (``malloc_trim``). Yields whether it took effect (glibc only;
    elsewhere it does nothing). The peak resident memory can grow by the heap's fragmentation.

    The setting is process-wide while a block is open (every thread allocates from the heap), so
    blocks nest and are thread-safe; memory allocated inside and freed after the block stays in the
    heap until the next trim.
    """
    global _HEAP_DEPTH
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _HEAP_LOCK:
        _HEAP_DEPTH += 1
        if _HEAP_DEPTH == 1:
            # no mmap: large blocks come from the heap; a huge trim threshold: the heap never shrinks
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield True
    finally:
        with _HEAP_LOCK:
            _HEAP_DEPTH -= 1
            if _HEAP_DEPTH == 0:
                libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def trim_heap() -> bool:
    """Return the heap's free memory to the kernel now (glibc ``malloc_trim(0)``), e.g. between training
    and the final validation; returns whether memory was released (False on other C libraries). Inside a
    :func:`reuse_freed_memory` block it does nothing: the kept memory is that block's point."""
    libc = _glibc()
    if libc is None:
        return False
    with _HEAP_LOCK:
        if _HEAP_DEPTH:
            return False
        return bool(libc.malloc_trim(0))
