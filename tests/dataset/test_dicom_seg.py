"""DICOM-SEG: written with highdicom, read back with pydicom: segments, names, colours, references, pixels."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pnnunet.dataset.dicom import convert_dicom
from pnnunet.dataset.label_colors import PALETTE, label_colors
from pnnunet.errors import DatasetError
from tests.dicom_series import volume, write_ct_series

hd = pytest.importorskip("highdicom", reason="highdicom (pnnunet[dicom], in the test extra) is not installed")

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}
DATASET_JSON = {"labels": LABELS, "label_colors": {"liver": [200, 30, 40], "spleen": "#1e90ff"}}


def test_dicom_seg_round_trip(tmp_path):
    write_ct_series(volume(shape_zyx=(5, 7, 9)), tmp_path / "dicom")
    (case,) = convert_dicom(tmp_path / "dicom", tmp_path / "nifti")
    img = sitk.ReadImage(str(case.image_file))
    seg = np.zeros(sitk.GetArrayFromImage(img).shape, np.uint8)
    seg[1:4, 2:5, 1:4] = 1
    seg[3:5, 0:2, 6:9] = 2            # kidney (3) absent: still a segment, empty
    seg_img = sitk.GetImageFromArray(seg)
    seg_img.CopyInformation(img)
    seg_file = tmp_path / "pred.nii.gz"
    sitk.WriteImage(seg_img, str(seg_file))

    from pnnunet.dataset.dicom_seg import write_dicom_seg
    out = write_dicom_seg(seg_file, case.series.files, LABELS, tmp_path / "seg.dcm", DATASET_JSON,
                          algorithm="Dataset001_Test 3d_fullres")
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spleen", "kidney"]
    assert [s.SegmentAlgorithmType for s in ds.SegmentSequence] == ["AUTOMATIC"] * 3
    assert ds.SegmentSequence[0].SegmentAlgorithmName == "Dataset001_Test 3d_fullres"
    rgb = [hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb() for s in ds.SegmentSequence]
    expected = [(200, 30, 40), (30, 144, 255), PALETTE[2]]
    for got, want in zip(rgb, expected):
        assert np.abs(np.array(got, int) - np.array(want)).max() <= 2   # CIELab round trip rounds
    series_uid = pydicom.dcmread(case.series.files[0]).SeriesInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert ds.FrameOfReferenceUID == pydicom.dcmread(case.series.files[0]).FrameOfReferenceUID
    # every frame: which segment, which source slice, and its pixels equal (seg == label) on that slice
    slice_of = {pydicom.dcmread(f).SOPInstanceUID: k for k, f in enumerate(case.series.files)}
    frames = ds.pixel_array.reshape(-1, seg.shape[1], seg.shape[2])
    seen = set()
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        sop = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = slice_of[sop]
        np.testing.assert_array_equal(frames[i].astype(bool), seg[k] == number)
        seen.add((number, k))
    assert seen == {(n, k) for n in (1, 2, 3) for k in range(seg.shape[0])}


def test_dicom_seg_refuses_a_label_map_of_another_grid(tmp_path):
    from pnnunet.dataset.dicom_seg import write_dicom_seg
    files = write_ct_series(volume(shape_zyx=(3, 4, 5)), tmp_path / "dicom")
    wrong = tmp_path / "wrong.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 5), np.uint8)), str(wrong))
    with pytest.raises(DatasetError, match=r"wrong.nii.gz: shape \(4, 4, 5\) .* does not match the DICOM series"):
        write_dicom_seg(wrong, files[::-1], LABELS, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_label_colors():
    assert label_colors(LABELS, DATASET_JSON) == {"liver": (200, 30, 40), "spleen": (30, 144, 255),
                                                  "kidney": PALETTE[2]}
    assert label_colors({"background": 0, "ignore": 4, "organs": [1, 2]}) == {"organs": PALETTE[0]}
    with pytest.raises(DatasetError, match=r"label_colors\['liver'\]"):
        label_colors(LABELS, {"label_colors": {"liver": "red"}})
