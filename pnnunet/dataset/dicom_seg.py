"""A label map as a DICOM Segmentation object (``pnnunet_predict --dicom_seg``), through highdicom.

The label map must lie on the grid of a series converted by :mod:`pnnunet.dataset.dicom` (slice k of
the array = the k-th source file along the slice normal). Each foreground label becomes one segment:
named after dataset.json's label, coloured from :mod:`pnnunet.dataset.label_colors`, algorithm type
AUTOMATIC with pnnunet and the model as the algorithm, BINARY segmentation type (read by more viewers
than LABELMAP), referencing the source series (its SOP instances and frame of reference).
highdicom is the optional extra ``pnnunet[dicom]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

import pnnunet
from pnnunet.dataset.label_colors import label_colors
from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.fileio import atomic_path

INSTALL_HINT = 'pip install "pnnunet[dicom]"  (installs highdicom)'


def require_highdicom():
    """The highdicom module, or a PnnunetError with the install hint (call it before long work)."""
    try:
        import highdicom
    except ImportError:
        raise PnnunetError(f"DICOM-SEG output needs highdicom, which is not installed\n  fix: {INSTALL_HINT}") from None
    return highdicom


def write_dicom_seg(seg_file: Path | str, source_files: Sequence[Path | str], labels: Mapping[str, Any],
                    out_file: Path | str, dataset_json: dict | None = None, algorithm: str = "pnnunet",
                    algorithm_version: str | None = None, series_description: str = "pnnunet segmentation") -> Path:
    """Write ``seg_file`` (NIfTI label map) as a DICOM-SEG referencing ``source_files``.

    Parameters
    ----------
    seg_file : label map on the converted series' grid (array (z, y, x), z = the sorted file order)
    source_files : the series' files sorted along the slice normal (``DicomCase.series.files``)
    labels : dataset.json ``labels`` (integer labels become segments; regions are not supported)
    out_file : the ``.dcm`` to write
    dataset_json : for ``label_colors`` (optional)

    Raises
    ------
    PnnunetError : highdicom missing; DatasetError : the label map does not match the series.
    """
    hd = require_highdicom()
    seg_file, out_file = Path(seg_file), Path(out_file)
    sources = [pydicom.dcmread(str(f)) for f in source_files]
    img = sitk.ReadImage(str(seg_file))
    seg = sitk.GetArrayFromImage(img)
    want = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if seg.shape != want:
        raise DatasetError(seg_file, f"shape {seg.shape} (z, y, x) does not match the DICOM series "
                                     f"({want[0]} slices of {want[1]}x{want[2]})",
                           "write the DICOM-SEG of the label map predicted for this series")
    ipp = [float(v) for v in sources[0].ImagePositionPatient]
    if not np.allclose(img.GetOrigin(), ipp, atol=1e-2):
        raise DatasetError(seg_file, f"origin {img.GetOrigin()} is not the series' first slice position {ipp}",
                           "the label map must be on the converted series' grid (pnnunet_convert_dicom)")
    colors = label_colors(dict(labels), dataset_json)
    int_labels = [(n, int(v)) for n, v in labels.items() if n in colors and not isinstance(v, (list, tuple))]
    if not int_labels:
        raise DatasetError(seg_file, "no integer foreground labels to write as segments",
                           "pass dataset.json labels such as {'background': 0, 'liver': 1}")
    lut = np.zeros(max(int(seg.max()), max(v for _, v in int_labels)) + 1, dtype=np.uint8)
    algo = hd.AlgorithmIdentificationSequence(name=algorithm, family=codes.DCM.ArtificialIntelligence,
                                              version=algorithm_version or pnnunet.__version__)
    descriptions = []
    for number, (name, value) in enumerate(int_labels, start=1):
        lut[value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            tracking_uid=hd.UID(), tracking_id=name[:64],
            display_color=hd.color.CIELabColor.from_rgb(*colors[name])))
    mask = lut[np.clip(seg, 0, len(lut) - 1).astype(np.int64)]
    dcm = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="pnnunet", manufacturer_model_name=algorithm,
        software_versions=f"pnnunet {pnnunet.__version__}", device_serial_number="0",
        series_description=series_description[:64], content_label="PNNUNET", omit_empty_frames=False)
    with atomic_path(out_file) as tmp:
        dcm.save_as(str(tmp))
    return out_file
