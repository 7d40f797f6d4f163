"""Process heap policy for large array workloads (network inference and training on CPU).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
returns it to the kernel on free. A 3D U-Net on a CT patch allocates and frees gigabytes of
activations per tile, so without :func:`reuse_freed_memory` every tile page-faults them in again:
~1.9 million minor faults and 4.4 s of kernel time per 64x160x192 tile on the benchmark machine
(a tile took 6.6 s, and 3.7 s with freed memory reused; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

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
    On leaving, the threshold is set back to glibc's initial 128 KiB and the heap is trimmed; the dynamic
    adjustment stays off for the rest of the process (glibc switches it off for good at the first
    ``mallopt`` of a threshold, here and in :func:`reuse_freed_memory`), so large blocks keep their own
    mappings afterwards, e.g. in the final validation that follows training. Inside a
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


KEPT_HEAP_GROWTH = 2.0
"""Peak resident memory of a training process whose freed memory is kept, over the same process's peak with
freed memory returned: 1.75-1.85 measured (Hippocampus 3d_fullres, batch 8: 2.28-2.32 -> 4.04-4.21 GiB,
benchmarks/RESULTS.md "Training step with freed memory reused"), rounded up."""


def reuse_pays(peak_bytes: int, ram_bytes: int, processes: int = 1) -> bool:
    """Whether a training process whose peak so far is ``peak_bytes`` can keep its freed memory: the
    expected kept-heap peak (:data:`KEPT_HEAP_GROWTH` x ``peak_bytes``) of all ``processes`` training on
    the machine together stays within half of ``ram_bytes``, the rest being left to the augmentation
    workers, the final validation and everything else. Keeping pays on small patches (Hippocampus:
    2-2.4x faster steps, RESULTS.md); a CT patch's step alone needs several GiB, and keeping its
    fragmented heap would add as much again."""
    return KEPT_HEAP_GROWTH * peak_bytes * max(1, processes) <= ram_bytes / 2


def machine_ram_bytes() -> int | None:
    """Physical memory, lowered to the control group's limit when one is set (containers, e.g. AI Studio);
    None where neither can be read."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            ram = int(text) if ram is None else min(ram, int(text))
        break
    return ram


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (``getrusage``; 0 where it is not available)."""
    try:
        import resource
    except ImportError:
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class TrainingHeap:
    """CPU training's heap policy (one place for ``Trainer.fit`` and ``benchmarks/train_speed.py``).

    Entered: :func:`return_freed_memory` (freed blocks of 1 MiB and more go back to the kernel), so that
    a large step's fragmented heap does not stay resident on top of the next step's peak. Call
    :meth:`after_step` after each training step, with the step's tensors released: it trims the heap,
    and after the first step decides once from the process's peak so far (:func:`reuse_pays`) whether
    to keep freed memory from then on (:func:`reuse_freed_memory`: no page faults for the activations of
    each step; trimming then does nothing). The policy moves memory, it never changes a result.
    ``decision`` is None before the first step, then ``"reuse"`` or ``"return"``; ``reason`` says why.
    """

    def __init__(self, processes: int = 1, ram_bytes: int | None = None):
        self.processes = processes
        self.ram_bytes = ram_bytes
        self.decision: str | None = None
        self.reason = ""
        self._stack = None

    def __enter__(self) -> TrainingHeap:
        self._stack = ExitStack()
        self._stack.enter_context(return_freed_memory())
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def after_step(self) -> bool:
        """Trim; after the first step decide (returns True then, so that the caller can say ``reason``)."""
        trim_heap()
        if self.decision is not None:
            return False
        peak, ram = peak_rss_bytes(), self.ram_bytes or machine_ram_bytes()
        gib = 2.0**30
        if ram and peak and _glibc() is not None and reuse_pays(peak, ram, self.processes):
            self._stack.enter_context(reuse_freed_memory())
            self.decision = "reuse"
            self.reason = (f"peak {peak / gib:.2f} GiB after the first step, x{KEPT_HEAP_GROWTH:g} x {self.processes} "
                           f"process(es) fits in half of {ram / gib:.1f} GiB")
        else:
            self.decision = "return"
            self.reason = (f"peak {peak / gib:.2f} GiB after the first step, x{KEPT_HEAP_GROWTH:g} x {self.processes} "
                           f"process(es) does not fit in half of {ram / gib:.1f} GiB" if ram and peak
                           else "the machine's memory or this process's peak could not be read")
        return True


def populated_empty(count: int, dtype=np.float32) -> np.ndarray:
    """An uninitialised 1-D array of ``count`` values whose memory is mapped in at once (Linux
    ``MAP_POPULATE``) instead of one page fault per 4 KiB page on first touch; for buffers that are
    allocated once and then used many times (planned inference). Measured on the benchmark VM, where
    first touch is slow: writing a fresh 1 GiB array 3.3-6.2 s, populating the mapping 1.7-2.4 s; on the
    first CT tile of a planned U-Net no clear gain (layout + first tile 7.5-11.6 s populated, 7.4 s not;
    benchmarks/RESULTS.md). Elsewhere (other systems, or a mapping refused) ``np.empty``. The memory is
    returned when the array is garbage-collected."""
    nbytes = int(count) * np.dtype(dtype).itemsize
    flags = getattr(mmap, "MAP_POPULATE", None)
    if flags is None or nbytes == 0:
        return np.empty(count, dtype=dtype)
    try:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    except (OSError, ValueError):
        return np.empty(count, dtype=dtype)
    return np.frombuffer(mapping, dtype=dtype, count=count)
