"""reuse_freed_memory: inside the block large arrays come from the reusable heap, not fresh mmaps.

Page-fault counts are no stable witness (transparent huge pages change them), so the tests read
glibc's own accounting: ``mallinfo2().hblkhd``, the bytes currently held in mmapped blocks.
"""

import ctypes

import numpy as np
import pytest

from pnnunet import heap

MIB64 = 64 * 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2():
    libc = heap._glibc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is None:
        return None
    fn.restype = _MallInfo2
    return fn


MALLINFO2 = _mallinfo2()
pytestmark = pytest.mark.skipif(MALLINFO2 is None, reason="glibc >= 2.33 only (mallinfo2)")


def _mmapped_growth_of_a_large_array() -> int:
    before = MALLINFO2().hblkhd
    a = np.ones(MIB64, dtype=np.uint8)
    grown = MALLINFO2().hblkhd - before
    del a
    return grown


def test_large_arrays_come_from_the_heap_inside_the_block_only():
    assert _mmapped_growth_of_a_large_array() >= MIB64  # glibc's default: a fresh mapping
    with heap.reuse_freed_memory() as active:
        assert active
        assert _mmapped_growth_of_a_large_array() == 0
        kept = MALLINFO2().fordblks
        assert kept >= MIB64  # the freed array stays in the heap for the next one
    assert _mmapped_growth_of_a_large_array() >= MIB64  # defaults restored on leaving


def test_blocks_nest():
    with heap.reuse_freed_memory():
        with heap.reuse_freed_memory():
            pass
        assert heap._HEAP_DEPTH == 1
        assert _mmapped_growth_of_a_large_array() == 0  # the inner block did not restore the defaults
    assert heap._HEAP_DEPTH == 0
    assert _mmapped_growth_of_a_large_array() >= MIB64
