"""Chunk and block shapes of a stored preprocessed array, chosen for the patch size (reference §4.7).

Blosc2 splits an array into chunks (the unit of a read from disk) and each chunk into blocks (the
unit of decompression). :func:`blosc2_blocks_and_chunks` chooses both the way upstream nnU-Net
v2 (≥ 2.6, ``comp_blosc2_params``) does, so that a training patch decompresses little more than
itself: blocks are powers of two no larger than the patch and at most 128 KiB; chunks grow from
one block, a block at a time along the least covered axis, up to 1.5 patches per axis and 6 MiB.
Pure arithmetic (no Blosc2 import); the rule is written from the description in
``tests/data/upstream_preprocessed_b2nd/README.md``.
"""

from __future__ import annotations

import math
from typing import Sequence

MAX_BLOCK_NBYTES = 128 * 1024
MAX_CHUNK_NBYTES = 6 * 1024 * 1024
MAX_CHUNK_TO_PATCH_RATIO = 1.5
FALLBACK_PATCH = (128, 128, 128)  # when the patch size is unknown (upstream's fallback too)


def _ceil_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _pow2_below(n: int) -> int:
    """Largest power of two strictly below ``n`` (1 for n ≤ 1)."""
    return 1 if n <= 2 else 1 << (int(n) - 1).bit_length() - 1


def blosc2_blocks_and_chunks(shape: Sequence[int], patch_size: Sequence[int] | None, itemsize: int,
                             max_block_nbytes: int = MAX_BLOCK_NBYTES, max_chunk_nbytes: int = MAX_CHUNK_NBYTES,
                             max_ratio: float = MAX_CHUNK_TO_PATCH_RATIO
                             ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Blosc2 ``blocks`` and ``chunks`` of a ``(C, X, Y, Z)`` array read in patches of ``patch_size``.

    Parameters
    ----------
    shape : (C, X, Y, Z); the channel axis gets extent 1 in blocks and chunks
    patch_size : the configuration's patch, 3 axes (X, Y, Z) or 2 axes (Y, Z) for a 2D
        configuration (read as (1, Y, Z): one slice); None: (128, 128, 128)
    itemsize : bytes per element (4 for float32 images, 2 for int16 segmentations)

    Returns
    -------
    blocks, chunks : tuples of 4 ints, ``(1, *b)`` and ``(1, *c)``; ``b`` ≤ ``c`` ≤ image per axis

    The rule: per axis a target ``t = max(1, min(image, floor(1.5 * patch)))``. Blocks start at
    ``min(ceil_pow2(patch), image)`` and, while larger than ``max_block_nbytes``, halve to the next
    lower power of two the axis with the largest ``b / t`` (ties: the later axis). Chunks start at
    the blocks and grow by one block (clipped to image and target) along the axis with the least
    coverage ``c / t`` (ties: the larger image axis, then the lower axis) as long as they stay
    within ``max_chunk_nbytes``; a 2D configuration never grows chunks along X (one slice per
    chunk), nor does any axis whose patch extent is 1.
    """
    image = [int(s) for s in shape[1:]]
    if len(image) != 3:
        raise ValueError(f"expected a (C, X, Y, Z) shape, got {tuple(shape)}")
    patch = [int(p) for p in (FALLBACK_PATCH if patch_size is None else patch_size)]
    is_2d = len(patch) == 2
    if is_2d:
        patch = [1, *patch]
    if len(patch) != 3:
        raise ValueError(f"patch_size needs 2 or 3 axes, got {list(patch_size)}")
    target = [max(1, min(i, math.floor(max_ratio * p))) for i, p in zip(image, patch)]

    def nbytes(s: Sequence[int]) -> int:
        return math.prod(s) * int(itemsize)

    block = [min(_ceil_pow2(p), i) for p, i in zip(patch, image)]
    limit = min(max_block_nbytes, max_chunk_nbytes)
    while nbytes(block) > limit:
        axes = [a for a in range(3) if block[a] > 1]
        if not axes:
            raise ValueError(f"no block of at most {limit} bytes for shape {tuple(shape)}")
        worst = max(axes, key=lambda a: (block[a] / target[a], a))  # ties: the later axis
        block[worst] = _pow2_below(block[worst])

    chunk = list(block)
    while True:
        best_key, best = None, None
        for a in range(3):
            if (is_2d and a == 0) or patch[a] == 1 or chunk[a] >= image[a] or chunk[a] >= target[a]:
                continue
            grown = min(chunk[a] + block[a], image[a], target[a])
            if grown == chunk[a]:
                continue
            candidate = list(chunk)
            candidate[a] = grown
            if nbytes(candidate) > max_chunk_nbytes:
                continue
            key = (chunk[a] / target[a], -image[a], a, -nbytes(candidate))
            if best_key is None or key < best_key:
                best_key, best = key, candidate
        if best is None:
            break
        chunk = best
    return (1, *block), (1, *chunk)
