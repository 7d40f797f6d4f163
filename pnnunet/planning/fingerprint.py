"""Dataset fingerprint: spacings, cropped shapes, foreground intensity statistics (reference §2).

The result has exactly the keys and values of nnU-Net v2's ``dataset_fingerprint.json``.
Arrays are channel first (C, X, Y, Z); spacings and shapes are in the reader's array order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.parallel import map_in_pool
from pnnunet.preprocessing.cropping import crop_to_nonzero

TOTAL_INTENSITY_SAMPLES = 10e7  # = 1e8 over the whole dataset (upstream's spelling, Appendix G.1)
SEED = 1234
PERCENTILES = np.array((0.5, 50.0, 99.5))


def foreground_intensity_samples(data: np.ndarray, seg: np.ndarray, num_samples: int, seed: int = SEED
                                 ) -> list[np.ndarray]:
    """Draw ``num_samples`` foreground intensities per channel, with replacement (reference §2 step 4).

    Foreground is ``seg[0] > 0`` (an ignore label counts, Appendix G.2). One
    ``RandomState(seed)`` serves all channels in order. A case without foreground contributes an
    empty *float64* array per channel, as upstream's ``[]`` does (its concatenation with the
    float32 samples then promotes the dataset statistics to float64, exactly as upstream).

    Parameters
    ----------
    data : float32 (C, X, Y, Z), cropped
    seg : (1, X, Y, Z), cropped (-1 outside the non-zero mask)
    """
    rs = np.random.RandomState(seed)
    foreground = seg[0] > 0
    samples = []
    for c in range(data.shape[0]):
        values = data[c][foreground]
        samples.append(rs.choice(values, num_samples, replace=True) if values.size else np.empty(0))
    return samples


def fingerprint_case(image_files: Sequence[Path | str], seg_file: Path | str, reader_writer,
                     num_samples: int) -> dict:
    """Fingerprint of one training case (reference §2 steps 1–5).

    Returns
    -------
    dict with ``spacing`` (reader order), ``shape_after_crop`` (spatial, reader order),
    ``relative_size_after_cropping`` (float) and ``foreground_samples`` (one 1-D array per channel).
    """
    data, properties = reader_writer.read_images([str(p) for p in image_files])
    seg, _ = reader_writer.read_seg(str(seg_file))
    if np.isnan(data).any():
        raise DatasetError(image_files[0], "contains NaN values", "replace the NaNs (e.g. by 0) in the image files")
    if np.isnan(seg).any():
        raise DatasetError(seg_file, "contains NaN values", "a label map must hold integer labels only")
    if seg.shape[1:] != data.shape[1:]:
        raise DatasetError(seg_file, f"has shape {seg.shape[1:]} but the images {data.shape[1:]}",
                           "labels and images of a case must share one grid (check --verify_dataset_integrity)")
    shape_before = data.shape[1:]
    cropped, cropped_seg, _ = crop_to_nonzero(data, seg)
    shape_after = cropped.shape[1:]
    return {
        "spacing": [float(s) for s in properties["spacing"]],
        "shape_after_crop": [int(s) for s in shape_after],
        "relative_size_after_cropping": float(np.prod(shape_after) / np.prod(shape_before)),
        "foreground_samples": foreground_intensity_samples(cropped, cropped_seg, num_samples),
    }


def intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    """Statistics of one channel's pooled samples (reference §2, aggregation).

    ``mean``/``std`` are numpy reductions in the samples' own dtype (float32: pairwise float32
    summation), min/max exact, percentiles numpy's linear ones; converted to Python floats last.
    """
    p00_5, median, p99_5 = np.percentile(samples, PERCENTILES)
    return {
        "max": float(np.max(samples)),
        "mean": float(np.mean(samples)),
        "median": float(median),
        "min": float(np.min(samples)),
        "percentile_00_5": float(p00_5),
        "percentile_99_5": float(p99_5),
        "std": float(np.std(samples)),
    }


def aggregate_fingerprint(case_results: Sequence[dict]) -> dict:
    """Combine per-case results (in sorted case order) into the dataset fingerprint dict."""
    n_channels = len(case_results[0]["foreground_samples"])
    stats = {}
    for c in range(n_channels):
        pooled = np.concatenate([r["foreground_samples"][c] for r in case_results])
        if pooled.size == 0:
            raise PnnunetError("no training case has any foreground voxel (label > 0); "
                               "the intensity statistics cannot be computed - check labelsTr")
        stats[str(c)] = intensity_statistics(pooled)
        del pooled
    return {
        "foreground_intensity_properties_per_channel": stats,
        "median_relative_size_after_cropping": float(np.median([r["relative_size_after_cropping"]
                                                                for r in case_results])),
        "shapes_after_crop": [r["shape_after_crop"] for r in case_results],
        "spacings": [r["spacing"] for r in case_results],
    }


def extract_fingerprint(cases: dict, reader_writer, num_processes: int = 2, progress: bool = True,
                        num_total_samples: float = TOTAL_INTENSITY_SAMPLES) -> dict:
    """Dataset fingerprint of the training cases (reference §2), upstream's JSON structure and values.

    Parameters
    ----------
    cases : ``{case: {"images": [paths], "label": path}}``; processed in sorted case order
    reader_writer : an :class:`pnnunet.imageio.ImageIO`
    num_processes : worker processes (0 or 1: in this process)
    num_total_samples : foreground intensity samples over the whole dataset (upstream: 10e7);
        each case draws ``int(num_total_samples // n_cases)``

    Returns
    -------
    dict with ``spacings``, ``shapes_after_crop`` (per case, reader order),
    ``foreground_intensity_properties_per_channel`` (``{"0": {max, mean, median, min,
    percentile_00_5, percentile_99_5, std}}``) and ``median_relative_size_after_cropping``.
    """

    if not cases:
        raise PnnunetError("the dataset has no training cases; check imagesTr/labelsTr")
    ids = sorted(cases)
    num_samples = int(num_total_samples // len(ids))
    args = [([str(p) for p in cases[c]["images"]], str(cases[c]["label"]), reader_writer, num_samples) for c in ids]
    results = map_in_pool(fingerprint_case, args, num_processes, progress, desc="extracting fingerprint")
    return aggregate_fingerprint(results)
