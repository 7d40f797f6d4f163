"""Per-channel intensity normalization schemes (reference §1.2, §3.4, §4.4).

Every scheme is a pure function ``(x, seg, use_mask, intensity_props) -> float32 array`` on one
channel ``x`` of shape (X, Y, Z). The arithmetic is float32 throughout, step by step, exactly as
nnU-Net v2 does it (reference §4.4): the Python-float constants from the plans act as float32
scalars, and ZScore's mean/std are numpy's float32 reductions of ``x`` *as passed in*. Those
reductions depend on the memory layout of ``x`` (pairwise summation runs along the innermost
memory axis), so callers that want upstream's bits pass the same cropped view upstream uses
(see :func:`pnnunet.preprocessing.preprocessor.preprocess_case`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from pnnunet.errors import PnnunetError

EPS = 1e-8  # upstream uses 1e-4 only for a float16 target, which pnnunet never produces

SchemeFn = Callable[[np.ndarray, "np.ndarray | None", bool, "dict | None"], np.ndarray]


def _as_float32(x: np.ndarray) -> np.ndarray:
    # No copy when x already is float32: the view (and its memory layout) is kept for the reductions.
    return np.asarray(x, dtype=np.float32)


def ct_normalization(x: np.ndarray, seg: np.ndarray | None, use_mask: bool, intensity_props: dict | None
                     ) -> np.ndarray:
    """Clip to the dataset's [0.5, 99.5] foreground percentiles, then ``(x - mean) / max(std, eps)``.

    The mask is never used (reference §4.4). ``intensity_props`` is the channel's entry of
    ``foreground_intensity_properties_per_channel`` (keys ``mean``, ``std``, ``percentile_00_5``,
    ``percentile_99_5``). Returns a new float32 array of the shape of ``x``.
    """
    if not intensity_props:
        raise PnnunetError("CTNormalization needs the channel's foreground intensity properties "
                           "(plans 'foreground_intensity_properties_per_channel'); re-run planning")
    out = np.clip(_as_float32(x), intensity_props["percentile_00_5"], intensity_props["percentile_99_5"])
    out -= intensity_props["mean"]
    out /= max(intensity_props["std"], EPS)
    return out


def zscore_normalization(x: np.ndarray, seg: np.ndarray | None, use_mask: bool, intensity_props: dict | None
                         ) -> np.ndarray:
    """Per-image z-score with float32 mean and population std (reference §4.4).

    With ``use_mask`` only voxels with ``seg >= 0`` (inside the non-zero mask) are normalized with
    their own statistics; the others keep their value. ``seg`` has the shape of ``x``.
    """
    x = _as_float32(x)
    if use_mask:
        if seg is None:
            raise ValueError("zscore with use_mask needs seg (the cropped seg with -1 outside the non-zero mask)")
        mask = seg >= 0
        if not mask.any():  # nothing to normalize; upstream gets the same array (plus a NaN-mean warning)
            return x.copy()
        values = x[mask]
        mean, std = values.mean(), values.std()
        out = x.copy()
        out[mask] = (values - mean) / max(std, EPS)
        return out
    mean, std = x.mean(), x.std()
    out = x - mean
    out /= max(std, EPS)
    return out


def no_normalization(x: np.ndarray, seg: np.ndarray | None, use_mask: bool, intensity_props: dict | None
                     ) -> np.ndarray:
    """Cast to float32 only (a new array)."""
    return np.array(x, dtype=np.float32)


def rescale_to_01_normalization(x: np.ndarray, seg: np.ndarray | None, use_mask: bool,
                                intensity_props: dict | None) -> np.ndarray:
    """``(x - min) / max(max_after_shift, eps)`` of this image (reference §4.4)."""
    out = np.array(x, dtype=np.float32)
    out -= out.min()
    out /= np.clip(out.max(), a_min=EPS, a_max=None)
    return out


def rgb_to_01_normalization(x: np.ndarray, seg: np.ndarray | None, use_mask: bool,
                            intensity_props: dict | None) -> np.ndarray:
    """``x / 255`` for 8-bit colour channels; values outside [0, 255] are an error."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < 0 or hi > 255:
        raise PnnunetError(f"RGBTo01Normalization expects values in [0, 255], found [{lo}, {hi}]; "
                           "name the channel differently in dataset.json 'channel_names' to use another scheme")
    out = np.array(x, dtype=np.float32)
    out /= 255.0
    return out


SCHEMES: dict[str, SchemeFn] = {
    "CTNormalization": ct_normalization,
    "ZScoreNormalization": zscore_normalization,
    "NoNormalization": no_normalization,
    "RescaleTo01Normalization": rescale_to_01_normalization,
    "RGBTo01Normalization": rgb_to_01_normalization,
}

_CHANNEL_NAME_TO_SCHEME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}


def scheme_for_channel_name(name: str) -> str:
    """Scheme name for a dataset.json channel name (``casefold`` match, default ZScore; reference §1.2)."""
    return _CHANNEL_NAME_TO_SCHEME.get(str(name).casefold(), "ZScoreNormalization")


def normalize(data: np.ndarray, seg: np.ndarray | None, schemes: Sequence[str],
              use_mask_for_norm: Sequence[bool], intensity_props_per_channel: dict | None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Normalize every channel with its scheme (reference §4.4).

    Parameters
    ----------
    data : ndarray of shape (C, X, Y, Z), normally the cropped float32 view
    seg : ndarray of shape (1, X, Y, Z) (cropped, -1 outside the non-zero mask) or None
    schemes : one scheme name (key of :data:`SCHEMES`) per channel
    use_mask_for_norm : one bool per channel
    intensity_props_per_channel : plans' ``foreground_intensity_properties_per_channel``
        (keys ``"0"``, ``"1"``, ...), needed by CTNormalization
    out : float32 array of ``data``'s shape to write into (may be ``data`` itself: channels are
        independent, so in-place normalization needs only one channel of extra memory)

    Returns
    -------
    float32 ndarray of shape (C, X, Y, Z): ``out``, or a new array (``data`` is then not modified)
    """
    if len(schemes) != data.shape[0] or len(use_mask_for_norm) != data.shape[0]:
        raise PnnunetError(f"the plans name {len(schemes)} normalization scheme(s) and {len(use_mask_for_norm)} "
                           f"use_mask_for_norm flag(s), but the case has {data.shape[0]} channel(s); "
                           "check dataset.json 'channel_names' and re-run planning")
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise PnnunetError(f"unknown normalization scheme(s) {unknown}; known: {sorted(SCHEMES)}")
    props = intensity_props_per_channel or {}
    if out is None:
        out = np.empty(data.shape, dtype=np.float32)
    elif out.shape != data.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {data.shape}, got {out.dtype} {out.shape}")
    seg0 = None if seg is None else seg[0]
    for c, name in enumerate(schemes):
        out[c] = SCHEMES[name](data[c], seg0, bool(use_mask_for_norm[c]), props.get(str(c)))
    return out
