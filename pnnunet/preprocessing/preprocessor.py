"""Preprocess one case: transpose → crop → normalize → resample → class locations (reference §4).

Arrays are channel first, ``(C, X, Y, Z)`` in the reader's axis order on input and in the plans'
transposed order on output; 2D data are ``(C, 1, X, Y)``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np

from pnnunet import plans as plans_module
from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.imageio.base import is_2d_case
from pnnunet.preprocessing.class_locations import location_classes, sample_foreground_locations
from pnnunet.preprocessing.cropping import crop_to_nonzero
from pnnunet.preprocessing.normalization import normalize
from pnnunet.preprocessing.resampling import compute_new_shape, resampling_function


def resolve_configuration(plans: dict, configuration: str | dict) -> dict:
    """The configuration dict with ``inherits_from`` resolved (reference §3.8).

    The single place preprocessing resolves a configuration: a name goes through
    :func:`pnnunet.plans.resolve_configuration`; an already resolved dict is returned as is.
    """
    if isinstance(configuration, dict):
        return configuration
    return plans_module.resolve_configuration(plans, configuration)


def target_spacing_for(config: dict, original_spacing: Sequence[float]) -> list[float]:
    """Target spacing of a case (reference §4.3): 2D configurations keep axis 0 unchanged."""
    target = [float(s) for s in config["spacing"]]
    if len(target) < len(original_spacing):
        target = [float(original_spacing[0])] + target
    return target


def preprocess_case(data: np.ndarray, seg: np.ndarray | None, properties: dict, plans: dict,
                    configuration: str | dict, dataset_json: dict, class_locations: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Preprocess one case as nnU-Net v2's ``DefaultPreprocessor.run_case_npy`` (reference §4.1–4.6).

    Parameters
    ----------
    data : ndarray (C, X, Y, Z), reader order (not modified)
    seg : ndarray (1, X, Y, Z) or None (inference; not modified)
    properties : reader properties with ``spacing`` (reader order); not modified
    plans : plans dict with upstream v2 keys (``transpose_forward``,
        ``foreground_intensity_properties_per_channel``, ``configurations``)
    configuration : configuration name (inheritance resolved) or an already resolved dict with
        ``spacing``, ``normalization_schemes``, ``use_mask_for_norm``, ``resampling_fn_data``,
        ``resampling_fn_seg`` and their ``*_kwargs``
    dataset_json : needs ``labels`` (and ``regions_class_order`` in region mode) when seg is given
    class_locations : sample the foreground locations of ``seg`` (training); False for a seg that
        is only carried along (a cascade's previous-stage prediction at inference)

    Returns
    -------
    data : float32 (C, x, y, z), transposed, cropped, normalized, resampled
    seg : int8 (int16 if a label exceeds 127) (1, x, y, z), -1 outside the non-zero mask. Without
        an input seg this is the resampled non-zero mask (0 inside, -1 outside), as upstream.
    properties : a copy of ``properties`` plus ``shape_before_cropping``,
        ``bbox_used_for_cropping``, ``shape_after_cropping_and_before_resampling`` (transposed
        order) and, with a seg, ``class_locations``; ``spacing`` stays the reader-order spacing.
    """
    config = resolve_configuration(plans, configuration)
    transpose = [int(t) for t in plans["transpose_forward"]]
    has_seg = seg is not None
    # astype copies with the input's layout, exactly as upstream, so that the float32 reductions of
    # the normalization below see the same memory layout (their rounding depends on it)
    data = data.astype(np.float32)
    if has_seg:
        if tuple(seg.shape[1:]) != tuple(data.shape[1:]):
            raise PnnunetError(f"the segmentation's shape {tuple(seg.shape[1:])} differs from the image shape "
                               f"{tuple(data.shape[1:])}; fix the case (check it with --verify_dataset_integrity)")
        seg = np.copy(seg)
    props = copy.deepcopy(properties)

    axes = [0] + [t + 1 for t in transpose]
    data = data.transpose(axes)
    if has_seg:
        seg = seg.transpose(axes)
    original_spacing = [float(props["spacing"][t]) for t in transpose]

    props["shape_before_cropping"] = [int(s) for s in data.shape[1:]]
    data, seg, bbox = crop_to_nonzero(data, seg)
    props["bbox_used_for_cropping"] = bbox
    props["shape_after_cropping_and_before_resampling"] = [int(s) for s in data.shape[1:]]

    target_spacing = target_spacing_for(config, original_spacing)
    new_shape = compute_new_shape(data.shape[1:], original_spacing, target_spacing)

    # v2 normalizes before resampling (reference §4.4, Appendix G.11)
    # in place: ``data`` is this function's own float32 copy (a cropped view of it)
    data = normalize(data, seg, config["normalization_schemes"], config["use_mask_for_norm"],
                     plans.get("foreground_intensity_properties_per_channel"), out=data)
    resample_data = resampling_function(config["resampling_fn_data"])
    resample_seg = resampling_function(config["resampling_fn_seg"])
    data = resample_data(data, new_shape, original_spacing, target_spacing, **config["resampling_fn_data_kwargs"])
    seg = resample_seg(seg, new_shape, original_spacing, target_spacing, **config["resampling_fn_seg_kwargs"])

    if has_seg and class_locations:
        classes = location_classes(LabelInfo.from_dataset_json(dataset_json))
        props["class_locations"] = sample_foreground_locations(seg, classes)
    seg = seg.astype(np.int16 if seg.size and np.max(seg) > 127 else np.int8)
    return data.astype(np.float32, copy=False), seg, props


def check_dimensionality(image_file: Path | str, shape: Sequence[int], spacing: Sequence[float], plans: dict) -> None:
    """A :class:`DatasetError` naming ``image_file`` when a 2D case meets plans made for 3D data or the reverse
    (the plans' median image shape and spacing tell which; upstream plans have them too)."""
    med_shape = plans.get("original_median_shape_after_transp")
    med_spacing = plans.get("original_median_spacing_after_transp")
    if not med_shape or not med_spacing or len(med_shape) != 3:
        return
    order = np.argsort(plans.get("transpose_forward", [0, 1, 2]))  # back to reader order
    plans_2d = is_2d_case([med_shape[i] for i in order], [med_spacing[i] for i in order])
    case_2d = is_2d_case(shape, spacing)
    if plans_2d != case_2d:
        kind, other = ("2D", "3D") if case_2d else ("3D", "2D")
        raise DatasetError(image_file, f"is a {kind} image (shape {tuple(int(s) for s in shape)}) but the model "
                                       f"or plans were made for {other} images",
                           f"give {other} images of the kind the dataset was trained on")


def preprocess_case_files(image_files: Sequence[Path | str], seg_file: Path | str | None, plans: dict,
                          configuration: str | dict, dataset_json: dict, reader_writer,
                          class_locations: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one case with ``reader_writer`` (an :class:`pnnunet.imageio.ImageIO`) and preprocess it.

    See :func:`preprocess_case` for the outputs; ``seg_file`` None for inference (or the previous
    stage's prediction of a cascade, with ``class_locations=False``).
    """
    data, properties = reader_writer.read_images(list(image_files))
    check_dimensionality(image_files[0], data.shape[1:], properties["spacing"], plans)
    seg = reader_writer.read_seg(seg_file)[0] if seg_file is not None else None
    if seg is not None and seg.shape[1:] != data.shape[1:]:
        raise DatasetError(seg_file, f"has shape {seg.shape[1:]} but the images {data.shape[1:]}",
                           "labels and images of a case must share one grid (check --verify_dataset_integrity)")
    return preprocess_case(data, seg, properties, plans, configuration, dataset_json, class_locations)
