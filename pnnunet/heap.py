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

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD, _GLIBC_MMAP_THRESHOLD = 65536, 128 * 1024, 128 * 1024  # glibc's defaults
TRAINING_MMAP_THRESHOLD = 1 << 20  # see return_freed_memory
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


@contextmanager
def return_freed_memory(mmap_threshold: int = TRAINING_MMAP_THRESHOLD) -> Iterator[bool]:
    """The opposite policy, for CPU training: inside the block every allocation of at least
    ``mmap_threshold`` bytes is a mapping of its own, given back to the kernel when it is freed.

    glibc's default threshold starts at 128 KiB but rises to the size of each mmapped block freed (up
    to 32 MiB), so the lower stages' activations and gradients (1-32 MiB on a CT patch) end up in the
    heap, whose freed chunks stay resident (fragmented, not trimmed) and add to the next step's peak.
    A fixed threshold turns that adjustment off. Costs page faults on blocks the heap would have
    reused (small next to a CT training step). glibc serves a request from free heap chunks before it
    maps, so the heap is trimmed on entering, and should be after each step (:func:`trim_heap`).
    On leaving, glibc's initial threshold comes back and the heap is trimmed. Inside a
    :func:`reuse_freed_memory` block that block's policy wins (no mmap, no trimming). Yields whether it
    took effect (glibc only).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _HEAP_LOCK:
        libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
        if not _HEAP_DEPTH:  # the dynamic rise of the trim threshold is off too: the heap's top is trimmed
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
    trim_heap()  # glibc serves from free heap chunks first: give them back, so that new blocks are mapped
    try:
        yield True
    finally:
        with _HEAP_LOCK:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD)
        trim_heap()


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
