"""Per-label statistics of one segmented case, for clinicians (``pnnunet_stats``, ``pnnunet_predict --stats``).

For every label: voxel count, volume in mL (count x voxel volume / 1000), the image intensity inside
the label (mean, std, median, min, max, 5th and 95th percentile; HU for CT), the bounding box (voxel
indices and millimetres), the centroid, the connected components (count, share of the largest) and
whether the label touches the image border (an organ that may be cut off is flagged, its values are
still reported, never zeroed). With a reference label map: Dice, IoU, volume difference % and HD95 per
label and their mean over the foreground labels.

Conventions: voxel indices and sizes are in SimpleITK / DICOM order (i, j, k = x, y, z, the order
ITK-SNAP and 3D Slicer show); millimetre positions are physical (patient) coordinates of the file
(LPS for DICOM-derived images), i.e. spacing, origin and direction are applied. Components use full
connectivity (26 in 3D, 8 in 2D), as nnU-Net's postprocessing. HD95 is the larger of the two directed
95th-percentile surface distances (the convention of MONAI and DeepMind's surface-distance), in mm;
with ``percentile=100`` it is the Hausdorff distance SimpleITK's ``HausdorffDistanceImageFilter`` gives.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.fileio import atomic_path, write_json_atomic
from pnnunet.metrics import compute_tp_fp_fn_tn, label_or_region_mask

STAT_FORMATS = (".json", ".csv")
INTENSITY_KEYS = ("mean", "std", "median", "min", "max", "p5", "p95")
COMPARISON_KEYS = ("dice", "iou", "volume_difference_percent", "hd95")


def _read(path: Path | str, what: str) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, f"the {what} file does not exist", f"pass an existing {what} file")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise DatasetError(path, f"cannot be read as an image ({last})",
                           "pass a NIfTI (.nii.gz), NRRD or MHA file") from None
    if img.GetDimension() not in (2, 3) or img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(path, f"is a {img.GetDimension()}D image with {img.GetNumberOfComponentsPerPixel()} "
                                 "component(s); statistics need one 2D or 3D scalar image",
                           "pass a single-channel image (one _0000 file of the case)")
    return img


def _same_grid(a: sitk.Image, b: sitk.Image, a_file: Path | str, b_file: Path | str) -> None:
    if a.GetSize() != b.GetSize():
        raise DatasetError(b_file, f"size {b.GetSize()} differs from {Path(a_file).name}'s {a.GetSize()}",
                           "use the segmentation predicted for (or drawn on) this image")
    for what, x, y, tol in (("spacing", a.GetSpacing(), b.GetSpacing(), 1e-4),
                            ("origin", a.GetOrigin(), b.GetOrigin(), 1e-3),
                            ("direction", a.GetDirection(), b.GetDirection(), 1e-4)):
        if not np.allclose(x, y, rtol=tol, atol=tol):
            raise DatasetError(b_file, f"{what} {tuple(round(v, 4) for v in y)} differs from {Path(a_file).name}'s "
                                       f"{tuple(round(v, 4) for v in x)}",
                               "both files must lie on the same voxel grid; resample the segmentation onto the image")


def _label_table(labels: Mapping[str, Any] | None, seg: np.ndarray) -> dict[str, int | tuple[int, ...]]:
    """name -> label (int) or region (tuple); background and ignore dropped; None: the labels present."""
    if labels is None:
        return {f"label_{v}": int(v) for v in np.unique(seg) if v != 0}
    out: dict[str, int | tuple[int, ...]] = {}
    for name, v in labels.items():
        if name in ("background", "ignore"):
            continue
        if isinstance(v, (list, tuple)):
            vals = tuple(int(x) for x in v)
            if vals == (0,):
                continue
            out[name] = vals[0] if len(vals) == 1 else vals
        elif int(v) != 0:
            out[name] = int(v)
    return out


def _label_array(img: sitk.Image, path: Path | str) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img)
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
        problem = "has non-integer values"
    elif arr.size and arr.min() < 0:
        problem = f"has negative values (min {arr.min():g})"
    else:
        return arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.int64)
    raise DatasetError(path, f"is not a label map ({problem})",
                       "pass the segmentation (labels 0, 1, 2, ...), not the image or a probability map")


def _to_physical(img: sitk.Image, index_xyz: Sequence[float]) -> list[float]:
    return [float(c) for c in img.TransformContinuousIndexToPhysicalPoint([float(i) for i in index_xyz])]


def _intensity(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {k: None for k in INTENSITY_KEYS}
    v = values.astype(np.float64, copy=False)
    p5, med, p95 = np.percentile(v, [5, 50, 95])
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(med), "min": float(v.min()),
            "max": float(v.max()), "p5": float(p5), "p95": float(p95)}


def components(mask: np.ndarray) -> tuple[int, float | None]:
    """(number of connected components, largest component's share of the mask's voxels).

    mask : bool array (2D or 3D, any axis order); full connectivity (8 / 26). Empty mask: (0, None).
    """
    if not mask.any():
        return 0, None
    connectivity = 8 if mask.ndim == 2 else 26
    labeled, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True, binary_image=True)
    sizes = np.bincount(labeled.ravel(), minlength=n + 1)[1:]
    return int(n), float(sizes.max() / sizes.sum())


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def surface_distance_percentile(a: np.ndarray, b: np.ndarray, spacing: Sequence[float],
                                percentile: float = 95.0) -> float | None:
    """Symmetric percentile Hausdorff distance between two masks, in the unit of ``spacing``.

    Parameters
    ----------
    a, b : bool arrays of the same shape (array axis order)
    spacing : voxel size per array axis (same order as the arrays)
    percentile : 95 for HD95; 100 gives the Hausdorff distance

    Returns
    -------
    max(directed percentile a->b, directed percentile b->a) over surface voxels (mask minus its
    face-connected erosion); 0.0 when both are empty, None when exactly one is empty (undefined).
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return None
    sa, sb = _surface(a), _surface(b)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return float(max(np.percentile(dist_to_b[sa], percentile), np.percentile(dist_to_a[sb], percentile)))


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def compare_masks(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float], voxel_ml: float) -> dict:
    """Dice, IoU, volume difference % ((pred - ref) / ref x 100) and HD95 (mm) of two bool masks.

    Undefined values are None: Dice/IoU when both are empty, volume difference when the reference
    is empty, HD95 when exactly one is empty.
    """
    tp, fp, fn, _ = compute_tp_fp_fn_tn(ref.view(np.uint8), pred.view(np.uint8), 1)
    n_pred, n_ref = tp + fp, tp + fn
    dice = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan")
    iou = tp / (tp + fp + fn) if (tp + fp + fn) else float("nan")
    vd = (n_pred - n_ref) / n_ref * 100.0 if n_ref else float("nan")
    return {"dice": _nan_to_none(dice), "iou": _nan_to_none(iou), "volume_difference_percent": _nan_to_none(vd),
            "hd95": surface_distance_percentile(pred, ref, spacing_zyx, 95.0),
            "reference_voxels": int(n_ref), "reference_volume_ml": n_ref * voxel_ml}


def label_statistics(image: sitk.Image, intensities: np.ndarray, mask: np.ndarray,
                     offset: Sequence[int] | None = None) -> dict:
    """Statistics of one bool mask on ``image``'s grid.

    mask : array order (z, y, x) as ``sitk.GetArrayFromImage``: the whole image, or a crop of it whose
        first voxel is ``offset`` (z, y, x) and that contains every voxel of the mask; ``intensities``
        is cropped the same way. Cropping to the label's box makes large CTs fast; the border flag and
        all positions refer to the whole image.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n = int(np.count_nonzero(mask))
    out: dict[str, Any] = {"voxels": n, "volume_ml": n * voxel_ml, "intensity": _intensity(intensities[mask])}
    if n == 0:
        out.update(bbox_voxels=None, bbox_mm=None, centroid_voxels=None, centroid_mm=None,
                   components=0, largest_component_share=None, touches_border=False)
        return out
    off = np.zeros(mask.ndim, int) if offset is None else np.asarray(offset, int)
    idx = [a + o for a, o in zip(np.nonzero(mask), off)]  # array order (z, y, x) -> reversed for (x, y, z)
    lo = [int(a.min()) for a in idx][::-1]
    hi = [int(a.max()) for a in idx][::-1]
    centroid = [float(a.mean()) for a in idx][::-1]
    corners = np.array([_to_physical(image, corner)
                        for corner in _corner_choices([np.array(lo) - 0.5, np.array(hi) + 0.5])])
    n_comp, share = components(mask)
    size_xyz = image.GetSize()
    border = any(n_ax > 1 and (lo[a] == 0 or hi[a] == n_ax - 1) for a, n_ax in enumerate(size_xyz))
    out.update(
        bbox_voxels={"min": lo, "max": hi, "size": [h - l + 1 for l, h in zip(lo, hi)]},
        bbox_mm={"min": corners.min(0).tolist(), "max": corners.max(0).tolist(),
                 "size": [float((h - l + 1) * s) for l, h, s in zip(lo, hi, spacing)]},
        centroid_voxels=centroid, centroid_mm=_to_physical(image, centroid),
        components=n_comp, largest_component_share=share, touches_border=bool(border))
    return out


def _boxes(seg: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box (slices) of every value > 0 present in a non-negative integer label map (one pass)."""
    return {v: box for v, box in enumerate(ndimage.find_objects(seg), start=1) if box is not None}


def _union_box(boxes: Sequence[tuple[slice, ...] | None]) -> tuple[slice, ...] | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0])))


def _box_of(boxes: dict[int, tuple[slice, ...]], value: int | tuple[int, ...]) -> tuple[slice, ...] | None:
    return _union_box([boxes.get(v) for v in (value if isinstance(value, tuple) else (value,))])


def _corner_choices(bounds: list[np.ndarray]) -> list[list[float]]:
    """The 2^d corners of a box given [low, high] per axis (used for the physical bounding box)."""
    d = len(bounds[0])
    return [[bounds[(k >> i) & 1][i] for i in range(d)] for k in range(2 ** d)]


def case_statistics(image_file: Path | str, seg_file: Path | str, labels: Mapping[str, Any] | None = None,
                    reference_file: Path | str | None = None) -> dict:
    """Statistics of every label of one case (JSON-serialisable; see the module docstring).

    Parameters
    ----------
    image_file : the image (one channel: NIfTI, NRRD, MHA, ...); intensities come from it.
    seg_file : the label map on the same voxel grid.
    labels : dataset.json ``labels`` (name -> int, or list for a region); background and ignore are
        skipped; None: every value present in ``seg_file`` as ``label_<v>``.
    reference_file : optional reference label map (same grid): adds ``dice``, ``iou``,
        ``volume_difference_percent``, ``hd95`` per label and ``foreground_mean``.

    Returns
    -------
    {"image", "segmentation", "reference", "size_voxels" (x, y, z), "spacing_mm", "origin_mm",
    "direction", "voxel_volume_ml", "labels": {name: {"label", "voxels", "volume_ml", "intensity",
    "bbox_voxels", "bbox_mm", "centroid_voxels", "centroid_mm", "components",
    "largest_component_share", "touches_border", [comparison keys]}}, ["foreground_mean"]}.
    Values that are undefined (intensity of an empty label, Dice of two empty masks) are None.
    """
    img = _read(image_file, "image")
    seg_img = _read(seg_file, "segmentation")
    _same_grid(img, seg_img, image_file, seg_file)
    seg = _label_array(seg_img, seg_file)
    ref = None
    if reference_file is not None:
        ref_img = _read(reference_file, "reference")
        _same_grid(img, ref_img, image_file, reference_file)
        ref = _label_array(ref_img, reference_file)
    intensities = sitk.GetArrayFromImage(img)
    table = _label_table(labels, seg if ref is None else np.concatenate([np.unique(seg), np.unique(ref)]))
    spacing = list(img.GetSpacing())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, Any] = {
        "image": str(image_file), "segmentation": str(seg_file),
        "reference": None if reference_file is None else str(reference_file),
        "size_voxels": list(img.GetSize()), "spacing_mm": spacing, "origin_mm": list(img.GetOrigin()),
        "direction": list(img.GetDirection()), "voxel_volume_ml": voxel_ml, "labels": {}}
    seg_boxes = _boxes(seg)
    ref_boxes = _boxes(ref) if ref is not None else {}
    empty = tuple(slice(0, 0) for _ in seg.shape)
    for name, value in table.items():
        entry = {"label": list(value) if isinstance(value, tuple) else value}
        box = _box_of(seg_boxes, value) or empty
        entry.update(label_statistics(img, intensities[box], label_or_region_mask(seg[box], value),
                                      [b.start for b in box]))
        if ref is not None:  # both masks cropped to the union of their boxes: the distances stay exact
            both = _union_box([_box_of(seg_boxes, value), _box_of(ref_boxes, value)]) or empty
            entry.update(compare_masks(label_or_region_mask(seg[both], value), label_or_region_mask(ref[both], value),
                                       spacing[::-1], voxel_ml))
        out["labels"][name] = entry
    if ref is not None:
        out["foreground_mean"] = {k: _mean([e[k] for e in out["labels"].values()]) for k in COMPARISON_KEYS}
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def statistics_rows(stats: dict) -> list[dict[str, Any]]:
    """One flat row per label (the CSV layout): nested values become ``intensity_mean``, ``bbox_mm_size_x``..."""
    rows = []
    for name, entry in stats["labels"].items():
        row: dict[str, Any] = {"case": Path(stats["segmentation"]).name, "name": name}
        for key, value in entry.items():
            if isinstance(value, dict) or (value is None and key.startswith(("bbox", "centroid"))):
                _flatten(row, key, value)
            elif isinstance(value, list) and key.startswith("centroid"):
                row.update({f"{key}_{a}": v for a, v in zip("xyz", value)})
            elif isinstance(value, list):
                row[key] = "+".join(str(v) for v in value)
            else:
                row[key] = value
        rows.append(row)
    return rows


def _flatten(row: dict, key: str, value: dict | None) -> None:
    if key == "intensity":
        row.update({f"intensity_{k}": value[k] for k in INTENSITY_KEYS})
        return
    for part in ("min", "max", "size") if key.startswith("bbox") else ("",):
        for i, a in enumerate("xyz"):
            col = f"{key}_{part}_{a}" if part else f"{key}_{a}"
            row[col] = None if value is None else (value[part][i] if i < len(value[part]) else None)


def write_statistics(stats: dict, out_file: Path | str) -> Path:
    """Write :func:`case_statistics` output as ``.json`` (the dict) or ``.csv`` (one row per label)."""
    out_file = Path(out_file)
    suffix = out_file.suffix.lower()
    if suffix not in STAT_FORMATS:
        raise PnnunetError(f"{out_file}: statistics can be written as .json or .csv, not '{suffix or 'no suffix'}'\n"
                           "  fix: end the output file name with .json or .csv")
    if suffix == ".json":
        write_json_atomic(out_file, stats)
        return out_file
    write_rows_csv(statistics_rows(stats), out_file)
    return out_file


def write_rows_csv(rows: list[dict[str, Any]], out_file: Path | str) -> Path:
    """Rows of :func:`statistics_rows` (one case or many) as CSV; None becomes an empty cell."""
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["case", "name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    with atomic_path(out_file) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(out_file)


def format_statistics(stats: dict) -> str:
    """A short text table: name, volume, mean intensity, components, border flag (and Dice/HD95)."""
    compare = stats.get("foreground_mean") is not None
    head = f"{'label':<24} {'volume mL':>10} {'mean':>9} {'comp':>5} {'border':>6}"
    head += f" {'Dice':>6} {'HD95 mm':>8}" if compare else ""
    lines = [head]

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"
    for name, e in stats["labels"].items():
        line = (f"{name[:24]:<24} {e['volume_ml']:>10.3f} {num(e['intensity']['mean'], '9.1f'):>9} "
                f"{e['components']:>5} {'yes' if e['touches_border'] else 'no':>6}")
        if compare:
            line += f" {num(e['dice'], '6.3f'):>6} {num(e['hd95'], '8.2f'):>8}"
        lines.append(line)
    if compare:
        fm = stats["foreground_mean"]
        lines.append(f"{'foreground mean':<24} {'':>10} {'':>9} {'':>5} {'':>6} {num(fm['dice'], '6.3f'):>6} "
                     f"{num(fm['hd95'], '8.2f'):>8}")
    return "\n".join(lines)
