"""Sliding-window prediction of one preprocessed case (reference §7.3, §7.4, Appendix A.3).

Framework free: the network is any callable ``predict_fn(x) -> y`` on numpy arrays, with
``x`` float32 of shape (N, C, *P) and ``y`` of shape (N, K, *P) (logits). Arrays are channel
first, spatial axes in the plans' transposed order: ``(C, X, Y, Z)``; 2D data ``(C, 1, X, Y)``.
A 2D configuration (2 patch axes) on 3D data predicts every slice along axis 0 with 2D tiles.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import nullcontext
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from pnnunet.errors import PnnunetError
from pnnunet.heap import reuse_freed_memory

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
Tile = tuple  # spatial indexer: slices (plus one int slice index for 2D tiles on 3D data)


def compute_gaussian(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10,
                     dtype: type | np.dtype = np.float16) -> np.ndarray:
    """Gaussian importance map of one tile (reference §7.3, Appendix B, Appendix G.7).

    A unit impulse at ``p // 2`` per axis, filtered with ``scipy.ndimage.gaussian_filter``
    (sigma ``p * sigma_scale`` per axis, mode constant 0, truncate 4) in float64, scaled so that
    its maximum is ``value_scaling_factor``, cast to ``dtype`` (half precision via float32, as
    torch casts); entries that are 0 after the cast
    are set to the smallest non-zero entry (so no voxel gets weight 0).

    Parameters
    ----------
    patch_size : P, 2 or 3 ints
    sigma_scale, value_scaling_factor : upstream's predictor uses 1/8 and 10
    dtype : output dtype (upstream: float16)

    Returns
    -------
    ndarray of shape P and ``dtype``; cached and read-only (copy before modifying).
    """
    return _gaussian_cached(tuple(int(p) for p in patch_size), float(sigma_scale), float(value_scaling_factor),
                            np.dtype(dtype).str)


@lru_cache(maxsize=4)
def _gaussian_cached(patch_size: tuple[int, ...], sigma_scale: float, value_scaling_factor: float,
                     dtype: str) -> np.ndarray:
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(p // 2 for p in patch_size)] = 1
    g = gaussian_filter(impulse, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    g /= np.max(g) / value_scaling_factor
    if np.dtype(dtype).itemsize < 4:
        # torch casts float64 -> float16 through float32 (double rounding); do the same so that
        # the map equals upstream's bit for bit (a direct cast differs on a few voxels)
        g = g.astype(np.float32)
    g = g.astype(dtype)
    zero = g == 0
    if np.any(zero):
        g[zero] = np.min(g[~zero])
    g.setflags(write=False)
    return g


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float = 0.5) -> list[list[int]]:
    """Tile start positions per axis (reference §7.3, Appendix B).

    ``n = ceil((S - p) / (p * step_size)) + 1`` tiles per axis, spread evenly: starts
    ``round((S - p) / (n - 1) * i)`` (round half to even); a single tile starts at 0.

    Parameters
    ----------
    image_size : S per axis (each >= the patch size; pad first with :func:`pad_to_patch`)
    patch_size : P per axis
    step_size : fraction of the patch between tiles, in (0, 1]

    Returns
    -------
    list (one per axis) of lists of int start positions

    Examples
    --------
    >>> compute_steps([110], [64])
    [[0, 23, 46]]
    """
    if len(image_size) != len(patch_size):
        raise ValueError(f"image size {tuple(image_size)} and patch size {tuple(patch_size)} differ in length")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if any(s < p for s, p in zip(image_size, patch_size)):
        raise ValueError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}; "
                         "pad it first (pad_to_patch)")
    steps = []
    for s, p in zip(image_size, patch_size):
        n = int(np.ceil((s - p) / (p * step_size))) + 1
        if n > 1:
            actual = (s - p) / (n - 1)
            steps.append([int(np.round(actual * i)) for i in range(n)])
        else:
            steps.append([0])
    return steps


def check_step_size(step_size: float, flag: str = "-step_size") -> float:
    """``step_size`` as a float if it is a valid tile step (in (0, 1]); a PnnunetError naming ``flag`` otherwise."""
    if not 0 < step_size <= 1:
        raise PnnunetError(f"{flag} {step_size}: the tile step must be in (0, 1] (a fraction of the patch)\n"
                           f"  fix: use e.g. {flag} 0.5 (upstream's default) or {flag} 1 (fewer tiles, faster)")
    return float(step_size)


def pad_to_patch(data: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the last ``len(patch_size)`` axes with 0 up to at least the patch size (reference §7.3).

    The padding is centred; an odd remainder goes to the end. Axes already as large as the patch
    are left alone.

    Parameters
    ----------
    data : ndarray (C, *S)
    patch_size : P, with ``len(P) <= data.ndim - 1`` (a 2D patch pads the last two axes)

    Returns
    -------
    padded : ndarray (C, *S') with S' = max(S, P) on the padded axes (``data`` itself if no padding)
    slicer : tuple of slices, one per axis of ``data``, with ``padded[slicer]`` equal to ``data``
    """
    n_lead = data.ndim - len(patch_size)
    if n_lead < 1:
        raise ValueError(f"data of shape {data.shape} has no channel axis for a patch of {len(patch_size)} axes")
    pad = [(0, 0)] * n_lead
    for s, p in zip(data.shape[n_lead:], patch_size):
        diff = max(int(p) - s, 0)
        pad.append((diff // 2, diff - diff // 2))
    slicer = tuple(slice(lo, lo + s) for (lo, _), s in zip(pad, data.shape))
    if all(lo == 0 and hi == 0 for lo, hi in pad):
        return data, slicer
    return np.pad(data, pad, mode="constant", constant_values=0), slicer


def iter_tiles(image_size: Sequence[int], patch_size: Sequence[int], step_size: float = 0.5) -> Iterator[Tile]:
    """Spatial indexers of all tiles, in upstream's order (reference §7.3, Appendix A.3).

    Parameters
    ----------
    image_size : S, the (padded) spatial shape, 3 axes (or 2 for a pure 2D array)
    patch_size : P; ``len(P) == len(S)`` gives n-D tiles; ``len(P) == len(S) - 1`` (2D
        configuration on 3D data) gives, for every index ``d`` along axis 0, 2D tiles of that slice
    step_size : see :func:`compute_steps`

    Yields
    ------
    tuple indexing the spatial axes: ``(slice, slice, slice)`` or ``(d, slice, slice)``
    """
    if len(patch_size) == len(image_size):
        steps = compute_steps(image_size, patch_size, step_size)
        for starts in itertools.product(*steps):
            yield tuple(slice(s, s + p) for s, p in zip(starts, patch_size))
    elif len(patch_size) == len(image_size) - 1:
        steps = compute_steps(image_size[1:], patch_size, step_size)
        for d in range(image_size[0]):
            for starts in itertools.product(*steps):
                yield (d, *(slice(s, s + p) for s, p in zip(starts, patch_size)))
    else:
        raise ValueError(f"a patch of {len(patch_size)} axes cannot tile an image of {len(image_size)} axes")


def count_tiles(image_size: Sequence[int], patch_size: Sequence[int], step_size: float = 0.5) -> int:
    """Number of tiles :func:`predict_sliding_window` predicts for an unpadded image of ``image_size``
    (spatial axes): the image padded to the patch, then :func:`iter_tiles` counted without building them."""
    n_lead = len(image_size) - len(patch_size)
    if n_lead not in (0, 1):
        raise ValueError(f"a patch of {len(patch_size)} axes cannot tile an image of {len(image_size)} axes")
    padded = [max(int(s), int(p)) for s, p in zip(image_size[n_lead:], patch_size)]
    n = int(np.prod([len(axis) for axis in compute_steps(padded, patch_size, step_size)]))
    return n * (int(image_size[0]) if n_lead else 1)


def mirror_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """The empty combination (original) followed by every non-empty subset of ``mirror_axes``.

    Subsets are ordered by size, then lexicographically (``itertools.combinations``), as upstream
    sums them (reference §7.4): (0,1,2) → (), (0,), (1,), (2,), (0,1), (0,2), (1,2), (0,1,2).
    """
    axes = tuple(int(a) for a in (mirror_axes or ()))
    return [()] + [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]


def _predict_with_mirroring(predict_fn: PredictFn, x: np.ndarray, combos: list[tuple[int, ...]], num_outputs: int,
                            max_batch: int) -> np.ndarray:
    """Mean of the logits over all mirror combinations (reference §7.4).

    x : float32 (G, C, *P). The G tiles are predicted once per combination (flip the input, predict,
    flip the output back), at most ``max_batch`` patches per ``predict_fn`` call, built chunk by
    chunk; the flipped-back outputs are summed in ``combos`` order in float32 and divided by
    ``len(combos)``. Returns float32 (G, K, *P).
    """
    g = x.shape[0]
    result = np.zeros((g, num_outputs, *x.shape[2:]), dtype=np.float32)
    work = [(c, t) for c in combos for t in range(g)]  # combination-major: per tile, sums in combos order
    for start in range(0, len(work), max_batch):
        chunk = work[start:start + max_batch]
        batch = np.stack([np.flip(x[t], tuple(a + 1 for a in c)) if c else x[t] for c, t in chunk])
        y = np.asarray(predict_fn(batch))
        expected = (batch.shape[0], num_outputs, *batch.shape[2:])
        if y.shape != expected:
            raise PnnunetError(f"the network returned shape {y.shape} for input {batch.shape}; expected {expected} "
                               "(N, num_outputs, *patch): check num_outputs and that deep supervision is off")
        for (c, t), y_i in zip(chunk, y):
            result[t] += np.flip(y_i, tuple(a + 1 for a in c)) if c else y_i
    if len(combos) > 1:
        result /= np.float32(len(combos))
    return result


def accumulation_dtype(dtype) -> np.dtype:
    """``dtype`` as a numpy dtype if it is one the sliding-window accumulators support (float16, upstream's,
    or float32); ValueError otherwise."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32):
        raise ValueError(f"the sliding-window accumulators must be float16 or float32, got {dtype}")
    return dtype


def predict_sliding_window(predict_fn: PredictFn, data: np.ndarray, patch_size: Sequence[int], num_outputs: int,
                           step_size: float = 0.5, mirror_axes: Sequence[int] | None = None,
                           use_gaussian: bool = True, tile_batch_size: int = 1, progress: bool = False,
                           dtype: np.dtype | type = np.float16,
                           on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Logits of one preprocessed case by Gaussian-weighted sliding windows (reference §7.3–7.4, A.3).

    The case is padded (centred, 0) to at least the patch, tiled (:func:`iter_tiles`), every tile
    predicted (with mirroring: mean of the logits of the original and of every non-empty combination
    of flipped ``mirror_axes``), weighted with :func:`compute_gaussian` and accumulated; the sum is
    divided by the summed weights and the padding removed.

    Parameters
    ----------
    predict_fn : callable float32 (N, C, *P) → (N, num_outputs, *P) logits
        (with a true ``keeps_buffers`` attribute when it keeps its own buffers between calls: the heap
        policy of :func:`pnnunet.heap.reuse_freed_memory` is then not applied)
    data : ndarray (C, X, Y, Z) (or (C, X, Y) with a 2D patch); any float dtype, memory maps fine
    patch_size : P, 3 ints, or 2 ints (2D configuration: slice by slice along axis 0)
    num_outputs : K, the network's output channels (segmentation heads)
    step_size : tile overlap, see :func:`compute_steps` (upstream default 0.5)
    mirror_axes : spatial axes of the patch to mirror for test-time augmentation (e.g. (0, 1, 2) in
        3D, (0, 1) in 2D); None or empty: no mirroring
    use_gaussian : Gaussian importance weights (upstream default); False gives a plain mean
    tile_batch_size : at most this many patches per ``predict_fn`` call; the mirrored copies of a
        tile count as patches and are batched with it (results do not depend on this value as long
        as ``predict_fn`` treats the samples of a batch independently)
    progress : show a tqdm bar over tiles
    dtype : of the logits and weight accumulators and of the result: float16 as upstream (§7.3; half
        the memory of float32: 2.2 GiB instead of 4.4 GiB for 15 labels on a 512x512x300 CT), or
        float32 (exact sums, used by tests)
    on_tile : called as ``on_tile(done, total)`` after every group of tiles (a front end's progress)

    Returns
    -------
    ndarray (K, *S) of ``dtype``, S = ``data.shape[1:]``
    """
    if data.ndim - 1 not in (len(patch_size), len(patch_size) + 1):
        raise ValueError(f"data of shape {data.shape} does not fit a patch of {len(patch_size)} axes; expected "
                         f"(C, *spatial) with {len(patch_size)} or {len(patch_size) + 1} spatial axes")
    if tile_batch_size < 1:
        raise ValueError(f"tile_batch_size must be >= 1, got {tile_batch_size}")
    if mirror_axes and max(mirror_axes) >= len(patch_size):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} do not exist in a patch of {len(patch_size)} axes")
    patch_size = tuple(int(p) for p in patch_size)
    padded, unpad = pad_to_patch(data, patch_size)
    spatial = padded.shape[1:]
    dtype = accumulation_dtype(dtype)
    logits = np.zeros((num_outputs, *spatial), dtype=dtype)
    weights = np.zeros(spatial, dtype=dtype)
    gaussian = compute_gaussian(patch_size).astype(np.float32) if use_gaussian else np.float32(1)
    combos = mirror_combinations(mirror_axes)
    tiles_per_call = max(1, tile_batch_size // len(combos))
    tiles = list(iter_tiles(spatial, patch_size, step_size))
    log.debug("sliding window: %d tiles of %s on %s, %d mirror passes", len(tiles), patch_size, spatial, len(combos))

    # freed activations are reused across tiles instead of being page-faulted in again (heap.py); a predict
    # function that keeps its own buffers between calls (keeps_buffers: Paddle Inference) gains nothing from
    # that and the kept heap's fragmentation only raises the peak (benchmarks/RESULTS.md, "upstream CT model")
    heap = nullcontext() if getattr(predict_fn, "keeps_buffers", False) else reuse_freed_memory()
    with heap, tqdm(total=len(tiles), disable=not progress, desc="tiles", unit="tile",
                                         leave=False) as bar:
        for start in range(0, len(tiles), tiles_per_call):
            group = tiles[start:start + tiles_per_call]
            x = np.stack([np.asarray(padded[(slice(None), *t)], dtype=np.float32) for t in group])
            y = _predict_with_mirroring(predict_fn, x, combos, num_outputs, tile_batch_size)
            for t, y_t in zip(group, y):
                if use_gaussian:
                    y_t *= gaussian
                logits[(slice(None), *t)] += y_t
                weights[t] += gaussian
            bar.update(len(group))
            if on_tile is not None:
                on_tile(start + len(group), len(tiles))

    logits /= weights
    if not all(np.all(np.isfinite(channel)) for channel in logits):  # per channel: no (K, *S) bool copy
        raise PnnunetError(f"the prediction contains inf or NaN values: the network produced non-finite logits or "
                           f"their weighted sums exceed {dtype} (check the checkpoint and the input data)")
    return np.ascontiguousarray(logits[(slice(None), *unpad[1:])])
