"""Training patches: initial (enlarged) patch size, foreground oversampling, patch boxes and crops.

Reference §5.2 (data loading), §5.3 (rotation / mirroring / initial patch), Appendix A.2 (patch
box), Appendix B (test vectors). Pure numpy; every random draw goes through an explicit
``numpy.random.Generator``.

Array convention: channel first, ``(C, X, Y, Z)``; boxes are half-open ``[lb, ub)`` per spatial axis
and may reach outside the array (the outside is padded).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# dummy 2D augmentation when the largest patch edge exceeds this multiple of the first (§5.3)
ANISO_THRESHOLD = 3.0
INITIAL_PATCH_SCALE_RANGE = (0.85, 1.25)


def _max_angle(rotation) -> float:
    """Largest rotation magnitude of a range ``(lo, hi)`` or a scalar, capped at 90° (§5.3)."""
    if isinstance(rotation, (tuple, list, np.ndarray)):
        rotation = max(abs(float(r)) for r in rotation)
    return min(math.pi / 2, abs(float(rotation)))


def _rotations_3d(ax: float, ay: float, az: float) -> list[np.ndarray]:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return [rx, ry, rz]


def initial_patch_size(patch_size: Sequence[int], rotation_x, rotation_y, rotation_z,
                       scale_range: Sequence[float] = INITIAL_PATCH_SCALE_RANGE) -> tuple[int, ...]:
    """Enlarged patch the loader crops so that rotation and scaling find data at the corners (§5.3).

    Parameters
    ----------
    patch_size : final patch, 2 or 3 spatial axes
    rotation_x, rotation_y, rotation_z : rotation range ``(lo, hi)`` in radians (or a scalar); only
        the largest magnitude counts, capped at 90°. 2D patches use ``rotation_x`` only.
    scale_range : the smallest entry divides the result (upstream passes (0.85, 1.25))

    Returns
    -------
    ``int(max(P, |R_x·P|, |R_y·P|, |R_z·P|) / min(scale_range))`` per axis, each rotation by the
    largest angle on its own (3D), or the single in-plane rotation (2D). The rotated vector follows
    batchgenerators' row-vector convention (``P @ R``), which Appendix B's vectors pin down, e.g.
    ``[40, 56, 40]`` ±30° → ``(73, 80, 64)``. The dummy-2D correction of axis 0 is applied by
    :func:`rotation_and_mirroring`, not here.
    """
    p = np.asarray(patch_size, dtype=np.float64)
    if p.ndim != 1 or len(p) not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 axes, got {list(patch_size)}")
    angles = [_max_angle(r) for r in (rotation_x, rotation_y, rotation_z)]
    result = p.copy()
    if len(p) == 3:
        for rot in _rotations_3d(*angles):  # one axis at a time, each by its largest angle
            result = np.maximum(np.abs(p @ rot), result)
    else:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        result = np.maximum(np.abs(p @ np.array([[c, -s], [s, c]])), result)
    result = result / min(scale_range)
    return tuple(int(v) for v in result)


def rotation_and_mirroring(patch_size: Sequence[int]) -> dict:
    """Rotation ranges, dummy-2D flag, mirror axes and initial patch of a configuration (§5.3).

    Returns
    -------
    dict with
      ``rotation``: ((lo, hi) x, (lo, hi) y, (lo, hi) z) in radians (y and z are (0, 0) for 2D and dummy 2D);
      ``dummy_2d``: bool (3D patches with ``max(P) / P[0] > 3``);
      ``mirror_axes``: (0, 1) for 2D, (0, 1, 2) for 3D;
      ``initial_patch_size``: tuple, axis 0 kept at ``P[0]`` for dummy 2D.
    """
    patch_size = tuple(int(p) for p in patch_size)
    deg = math.pi / 180.0
    if len(patch_size) == 2:
        dummy_2d = False
        angle = 15.0 * deg if max(patch_size) / min(patch_size) > 1.5 else 180.0 * deg
        rotation = ((-angle, angle), (0.0, 0.0), (0.0, 0.0))
        mirror_axes = (0, 1)
    elif len(patch_size) == 3:
        dummy_2d = max(patch_size) / patch_size[0] > ANISO_THRESHOLD
        if dummy_2d:
            rotation = ((-180.0 * deg, 180.0 * deg), (0.0, 0.0), (0.0, 0.0))
        else:
            rotation = tuple((-30.0 * deg, 30.0 * deg) for _ in range(3))
        mirror_axes = (0, 1, 2)
    else:
        raise ValueError(f"patch_size must have 2 or 3 axes, got {list(patch_size)}")
    initial = list(initial_patch_size(patch_size, *rotation, scale_range=INITIAL_PATCH_SCALE_RANGE))
    if dummy_2d:
        initial[0] = patch_size[0]
    return {"rotation": rotation, "dummy_2d": dummy_2d, "mirror_axes": mirror_axes,
            "initial_patch_size": tuple(initial)}


def forced_foreground_mask(batch_size: int, oversample: float = 0.33) -> list[bool]:
    """Which samples of a batch must contain foreground: the last ``bs - round(bs·(1 - p))`` (§5.2).

    ``bs * (1 - oversample)`` is evaluated literally in float64 and rounded with Python's
    ``round``: bs 2…12 give 1,1,1,2,2,2,3,3,3,4,4 forced samples; bs 250 gives 83 (not 82).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    first_forced = round(batch_size * (1 - oversample))
    return [j >= first_forced for j in range(batch_size)]


def annotated_key(class_locations: Mapping | None):
    """The "all annotated voxels" key ``(-1, *all_labels)`` of an ignore-label dataset, or None (§4.6)."""
    for key in class_locations or {}:
        if isinstance(key, tuple) and len(key) > 0 and key[0] == -1:
            return key
    return None


def _random_voxel(locations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return locations[rng.integers(len(locations))]


def patch_bbox(shape: Sequence[int], crop_size: Sequence[int], final_patch: Sequence[int], forced_fg: bool,
               class_locations: Mapping | None, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Box of one training patch in a case of spatial ``shape`` (§5.2, Appendix A.2).

    Parameters
    ----------
    shape : spatial shape of the case, (X, Y, Z)
    crop_size : size ``P0`` of the box (the enlarged patch for training, the final patch for validation)
    final_patch : final patch ``P``; ``P0 - P`` is the padding that lets final patches reach the border
    forced_fg : centre the box on a voxel of a randomly chosen present class
    class_locations : ``{label or tuple: (k, 4) int array of [0, x, y, z]}``; classes with no
        locations are not eligible; the "all annotated" key ``(-1, …)`` only when it is the only one
    rng : random generator

    Returns
    -------
    lb, ub : lists of ints, ``ub = lb + P0``; ``lb`` may be negative and ``ub`` beyond ``shape``.
        Random boxes start uniformly in ``[lb_min, ub_max]`` (inclusive); centred boxes start at
        ``max(lb_min, voxel - P0 // 2)`` (no upper clamp, Appendix G.6). With no eligible class the
        box is random. Non-forced samples of ignore-label cases (the ``(-1, …)`` key exists) are
        centred on a random annotated voxel.
    """
    shape, crop, final = (np.asarray(v, dtype=np.int64) for v in (shape, crop_size, final_patch))
    if not (len(shape) == len(crop) == len(final)):
        raise ValueError(f"shape {shape.tolist()}, crop_size {crop.tolist()} and final_patch {final.tolist()} "
                         "need the same number of axes")
    pad = crop - final
    pad = np.where(shape + pad < crop, crop - shape, pad)
    lbs = [int(v) for v in (-pad) // 2]
    ubs = [int(v) for v in shape + pad // 2 + pad % 2 - crop]

    locations = _centre_locations(forced_fg, class_locations, rng)
    if locations is None:
        start = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lbs, ubs)]
    else:
        voxel = _random_voxel(locations, rng)
        start = [max(lo, int(voxel[d + 1]) - int(crop[d]) // 2) for d, lo in enumerate(lbs)]
    return start, [s + int(c) for s, c in zip(start, crop)]


def _centre_locations(forced_fg: bool, class_locations: Mapping | None, rng: np.random.Generator):
    """Locations to centre the patch on, or None for a random patch (§5.2)."""
    annotated = annotated_key(class_locations)
    if not forced_fg:
        if annotated is None or len(class_locations[annotated]) == 0:
            return None
        return class_locations[annotated]
    eligible = [k for k, v in (class_locations or {}).items() if len(v) > 0]
    if annotated in eligible and len(eligible) > 1:
        eligible.remove(annotated)
    if not eligible:
        return None
    return class_locations[eligible[int(rng.integers(len(eligible)))]]


def crop_with_padding(array: np.ndarray, bbox: Sequence[Sequence[int]], pad_value, dtype=None) -> np.ndarray:
    """Crop ``array[:, lb:ub, ...]`` where the box may reach outside, padding with ``pad_value`` (§5.2).

    Parameters
    ----------
    array : (C, *spatial), or (*spatial) cropped as one channel; may be lazy (a read-only memory map, a
        ``blosc2.NDArray``): only the part inside the box is read
    bbox : ``[[lb, ub), ...]`` per spatial axis (ints, may be negative / beyond the shape)
    pad_value : value outside the array (image 0, seg -1)
    dtype : output dtype (default: the array's)

    Returns
    -------
    A new in-memory array of shape ``(C, *(ub - lb))``.
    """
    no_channel = len(array.shape) == len(bbox)  # (*spatial): cropped as one channel
    spatial = array.shape if no_channel else array.shape[1:]
    if len(bbox) != len(spatial):
        raise ValueError(f"bbox has {len(bbox)} axes, array has {len(spatial)} spatial axes")
    out = np.full((1 if no_channel else array.shape[0], *[int(hi) - int(lo) for lo, hi in bbox]), pad_value,
                  dtype=dtype or array.dtype)
    src, dst = ([] if no_channel else [slice(None)]), [slice(None)]
    for (lo, hi), size in zip(bbox, spatial):
        a, b = max(int(lo), 0), min(int(hi), size)
        if b <= a:
            return out  # the box misses the array entirely
        src.append(slice(a, b))
        dst.append(slice(a - int(lo), b - int(lo)))
    out[tuple(dst)] = array[tuple(src)]
    return out
