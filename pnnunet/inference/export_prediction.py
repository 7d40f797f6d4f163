"""Logits of a preprocessed case → segmentation (and probabilities) in the original geometry (reference §7.6, A.4).

Undoes the preprocessing recorded in the case properties: resampling (the logits are resampled
from the configuration's spacing to ``shape_after_cropping_and_before_resampling``), cropping
(inserted into ``shape_before_cropping`` at ``bbox_used_for_cropping``, background outside) and
transposition (``transpose_backward``). Arrays are channel first; logits (K, x, y, z) in the plans'
transposed order; outputs in the reader's array order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path, write_json_atomic
from pnnunet.imageio import ImageIO, reader_writer_by_name
from pnnunet.plans import ConfigurationPlan, resolve_configuration
from pnnunet.preprocessing.cropping import bbox_to_slices
from pnnunet.preprocessing.resampling import resampling_function

log = logging.getLogger(__name__)

DEFAULT_PROBABILITY_RESAMPLING = ("resample_data_or_seg_to_shape",
                                  {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None})
# properties that are not needed to restore the geometry and do not fit JSON (tuple keys, arrays)
_NOT_EXPORTED = ("class_locations",)


def _configuration_dict(plans: dict, configuration: str | ConfigurationPlan | dict) -> dict:
    if isinstance(configuration, ConfigurationPlan):
        return configuration.raw
    if isinstance(configuration, dict):
        return configuration
    return resolve_configuration(plans, configuration)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 in float32 (new array). logits: (K, ...) → probabilities (K, ...)."""
    p = np.asarray(logits, dtype=np.float32) - np.max(logits, axis=0, keepdims=True).astype(np.float32)
    np.exp(p, out=p)
    p /= np.sum(p, axis=0, keepdims=True)
    return p


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in float32 (new array). logits: (K, ...) → probabilities (K, ...)."""
    p = np.negative(np.asarray(logits, dtype=np.float32))
    np.exp(p, out=p)
    p += 1
    np.reciprocal(p, out=p)
    return p


def probabilities_to_segmentation(probabilities: np.ndarray, labels: LabelInfo) -> np.ndarray:
    """Segmentation from probabilities (reference §7.6 step 2, Appendix E).

    Label mode: argmax over channels (int64). Region mode: ``regions_class_order[i]`` painted,
    in order, where channel i > 0.5 (uint16). probabilities: (K, *S) → (S).
    """
    if labels.has_regions:
        seg = np.zeros(probabilities.shape[1:], dtype=np.uint16)
        for channel, value in zip(probabilities, labels.regions_class_order):
            seg[channel > 0.5] = value
        return seg
    return np.argmax(probabilities, axis=0)


def _resample_logits(logits: np.ndarray, plans: dict, config: dict, properties: dict) -> np.ndarray:
    """Resample (K, x, y, z) logits to ``shape_after_cropping_and_before_resampling``; same dtype out
    (float16 or float32; ``logits`` itself when the shape does not change)."""
    transpose = [int(t) for t in plans["transpose_forward"]]
    target_spacing = [float(properties["spacing"][t]) for t in transpose]
    shape = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    config_spacing = [float(s) for s in config["spacing"]]
    current_spacing = config_spacing if len(config_spacing) == len(shape) else [target_spacing[0], *config_spacing]
    name = config.get("resampling_fn_probabilities", DEFAULT_PROBABILITY_RESAMPLING[0])
    kwargs = config.get("resampling_fn_probabilities_kwargs", DEFAULT_PROBABILITY_RESAMPLING[1])
    resample = resampling_function(name)
    # per channel in float64 inside the resampling module, the input's dtype out (upstream resamples its
    # float16 logits the same way): no whole-volume float64 or float32 copy
    return resample(_float_logits(logits), shape, current_spacing, target_spacing, **kwargs)


def _float_logits(logits: np.ndarray) -> np.ndarray:
    """``logits`` as float16 or float32 without a copy when they already are (e.g. a memory map)."""
    logits = np.asarray(logits)
    return logits if logits.dtype in (np.float16, np.float32) else logits.astype(np.float32)


def _uncrop(crop: np.ndarray, full_shape: Sequence[int], bbox: list[list[int]], fill: np.ndarray | None = None
            ) -> np.ndarray:
    """Insert ``crop`` (..., x, y, z) into zeros (``fill`` per leading index) of (..., *full_shape) at ``bbox``."""
    lead = crop.shape[:crop.ndim - len(full_shape)]
    full = np.zeros((*lead, *full_shape), dtype=crop.dtype)
    if fill is not None:
        full[...] = fill.reshape(fill.shape + (1,) * len(full_shape))
    full[(Ellipsis, *bbox_to_slices(bbox))] = crop
    return full


def logits_to_segmentation_in_original_geometry(logits: np.ndarray, plans: dict,
                                                configuration: str | ConfigurationPlan | dict, properties: dict,
                                                dataset_json: dict, return_probabilities: bool = False
                                                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Convert the logits of a preprocessed case to its segmentation in the original geometry (§7.6, A.4).

    Parameters
    ----------
    logits : float16 or float32 (K, x, y, z), K = segmentation heads, in the preprocessed
        (transposed, cropped, resampled) grid; not modified
    plans : plans dict (``transpose_forward``, ``transpose_backward``, configurations)
    configuration : configuration name, :class:`ConfigurationPlan` or resolved configuration dict
        (uses ``spacing`` and ``resampling_fn_probabilities`` / ``_kwargs``)
    properties : the case's preprocessing properties (``spacing`` in reader order,
        ``shape_before_cropping``, ``bbox_used_for_cropping``,
        ``shape_after_cropping_and_before_resampling``)
    dataset_json : needs ``labels`` (and ``regions_class_order`` for regions)
    return_probabilities : also return softmax (labels) / sigmoid (regions) probabilities

    Returns
    -------
    segmentation : (X, Y, Z) in the reader's axis order, uint8 (uint16 with >= 255 foreground
        labels); 0 outside the crop
    probabilities : only with ``return_probabilities``: float32 (K, X, Y, Z), reader order; outside
        the crop background has probability 1 (label mode) and every region 0 (region mode)
    """
    labels = LabelInfo.from_dataset_json(dataset_json)
    if logits.shape[0] != labels.num_segmentation_heads:
        raise PnnunetError(f"the prediction has {logits.shape[0]} channels but dataset.json's labels need "
                           f"{labels.num_segmentation_heads}; the model does not belong to this dataset")
    config = _configuration_dict(plans, configuration)
    resampled = _resample_logits(logits, plans, config, properties)

    if return_probabilities:
        probabilities = sigmoid(resampled) if labels.has_regions else softmax(resampled)
        del resampled
        seg = probabilities_to_segmentation(probabilities, labels)
    else:
        if labels.has_regions:  # sigmoid > 0.5 as upstream (not logit > 0, which differs by rounding near 0)
            seg = np.zeros(resampled.shape[1:], dtype=np.uint16)
            for channel, value in zip(resampled, labels.regions_class_order):
                seg[sigmoid(channel) > 0.5] = value
        else:
            seg = np.argmax(resampled, axis=0)
        del resampled

    seg_dtype = np.uint8 if len(labels.foreground_labels) < 255 else np.uint16
    bbox = properties["bbox_used_for_cropping"]
    full_shape = [int(s) for s in properties["shape_before_cropping"]]
    backward = [int(t) for t in plans["transpose_backward"]]
    seg_full = _uncrop(seg.astype(seg_dtype, copy=False), full_shape, bbox).transpose(backward)
    if not return_probabilities:
        return seg_full
    fill = np.zeros(probabilities.shape[0], dtype=np.float32)
    if not labels.has_regions:
        fill[0] = 1
    probs_full = _uncrop(probabilities, full_shape, bbox, fill).transpose([0] + [t + 1 for t in backward])
    return seg_full, probs_full


def logits_to_next_stage_segmentation(logits: np.ndarray, plans: dict,
                                      configuration: str | ConfigurationPlan | dict, target_shape: Sequence[int],
                                      dataset_json: dict) -> np.ndarray:
    """The segmentation a stage hands to its next stage: logits resampled to the next stage's
    preprocessed grid ``target_shape``, then argmax (reference §5.10, "predicted_next_stage").

    As upstream's ``resample_and_save``, the stage's own spacing is passed as both the current and the
    target spacing of ``resampling_fn_probabilities`` (so the separate-z decision follows the
    stage's spacing), and the result is uint8 (uint16 with >= 255 foreground labels).

    logits : float16 or float32 (K, x, y, z) in this stage's preprocessed grid; returns (X, Y, Z)
    """
    labels = LabelInfo.from_dataset_json(dataset_json)
    config = _configuration_dict(plans, configuration)
    spacing = [float(s) for s in config["spacing"]]
    name = config.get("resampling_fn_probabilities", DEFAULT_PROBABILITY_RESAMPLING[0])
    kwargs = config.get("resampling_fn_probabilities_kwargs", DEFAULT_PROBABILITY_RESAMPLING[1])
    resampled = resampling_function(name)(_float_logits(logits), [int(s) for s in target_shape], spacing, spacing,
                                          **kwargs)
    if labels.has_regions:
        seg = probabilities_to_segmentation(sigmoid(resampled), labels)
    else:
        seg = np.argmax(resampled, axis=0)
    return seg.astype(np.uint8 if len(labels.foreground_labels) < 255 else np.uint16)


def export_prediction(logits: np.ndarray, properties: dict, plans: dict,
                      configuration: str | ConfigurationPlan | dict, dataset_json: dict,
                      output_file_base: Path | str, reader_writer: ImageIO | None = None,
                      save_probabilities: bool = False) -> Path:
    """Write the segmentation of one case in its original geometry (reference §7.6, §5.10).

    Writes ``{output_file_base}{file_ending}`` with ``reader_writer`` (default: the plans'
    ``image_reader_writer``) and the geometry in ``properties``; with ``save_probabilities`` also
    ``{output_file_base}.npz`` (key ``probabilities``, float32 (K, *original axes)) and
    ``{output_file_base}.json`` (the properties). All writes are atomic.

    DEVIATION(nnU-Net §7.6): upstream saves the properties as a pickle (``.pkl``); pnnunet writes
    JSON (without ``class_locations``, which export never needs).

    Parameters
    ----------
    logits : float16 or float32 (K, x, y, z) in the preprocessed grid (see
        :func:`logits_to_segmentation_in_original_geometry`)
    properties : the case's preprocessing properties plus the reader's geometry (``sitk_stuff``)
    plans, configuration, dataset_json : as for :func:`logits_to_segmentation_in_original_geometry`
    output_file_base : output path without file ending, e.g. ``validation/hippocampus_001``
    reader_writer : an :class:`pnnunet.imageio.ImageIO`
    save_probabilities : also write the ``.npz`` + ``.json``

    Returns
    -------
    Path of the written segmentation file
    """
    if reader_writer is None:
        reader_writer = reader_writer_by_name(plans.get("image_reader_writer", "SimpleITKIO"))
    base = str(output_file_base)
    seg_file = Path(base + dataset_json["file_ending"])
    result = logits_to_segmentation_in_original_geometry(logits, plans, configuration, properties, dataset_json,
                                                         return_probabilities=save_probabilities)
    if save_probabilities:
        seg, probabilities = result
        with atomic_path(base + ".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=probabilities.astype(np.float32, copy=False))
        del probabilities
        write_json_atomic(base + ".json", {k: v for k, v in properties.items() if k not in _NOT_EXPORTED})
    else:
        seg = result
    reader_writer.write_seg(seg, seg_file, properties)
    log.debug("wrote %s", seg_file)
    return seg_file
