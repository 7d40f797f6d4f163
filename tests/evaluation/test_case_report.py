"""The per-case report: PNG and self-contained HTML naming the labels, with the notice and the model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
from skimage import io as skio

from pnnunet.evaluation.case_report import NOTICE, write_case_report
from pnnunet.evaluation.statistics import case_statistics

LABELS = {"background": 0, "liver": 1, "spleen & co": 2}


@pytest.fixture
def case(tmp_path):
    image = np.full((10, 24, 20), -1000.0, np.float32)
    seg = np.zeros(image.shape, np.uint8)
    seg[2:7, 4:14, 3:12] = 1
    seg[5:9, 16:22, 14:20] = 2                  # touches the x border
    image[seg == 1], image[seg == 2] = 60.0, 45.0
    files = []
    for name, arr in (("CASE_0000.nii.gz", image), ("CASE.nii.gz", seg)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.9, 0.9, 3.0))
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-style file: reoriented to LPS for display
        sitk.WriteImage(img, str(tmp_path / name))
        files.append(tmp_path / name)
    return files


def test_report_files_self_contained_and_named(case, tmp_path):
    image_file, seg_file = case
    stats = case_statistics(image_file, seg_file, LABELS, reference_file=seg_file)
    html_path, png_path = write_case_report(image_file, seg_file, tmp_path / "report", LABELS, stats,
                                            {"model": "Dataset099_Test 3d_fullres", "folds": "0 1"})
    assert html_path.name == "CASE_report.html" and png_path.name == "CASE_report.png"
    png = skio.imread(png_path)
    assert png.ndim == 3 and png.shape[1] == 1200 and png[..., :3].std() > 10   # a real picture, not blank
    text = html_path.read_text()
    assert re.findall(r'src="([^"]{22})', text) == ["data:image/png;base64,"]  # the one image is embedded
    outside = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", text)
    assert not re.search(r"(https?:|ftp:)?//[a-z0-9]", outside, re.IGNORECASE)           # no URL anywhere else
    assert not re.search(r"<(link|script|iframe)\b|url\(|@import|href=", outside, re.IGNORECASE)
    assert "liver" in text and "spleen &amp; co" in text                        # names, escaped
    assert "Dataset099_Test 3d_fullres" in text and "pnnunet version" in text
    assert NOTICE in text and "Not a medical device" in text
    assert "touches border" in text and "Intensities in HU" in text
    assert f"{stats['labels']['liver']['volume_ml']:.2f}" in text and "foreground mean" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", text)


def test_report_default_labels_and_dicom_header(case, tmp_path):
    image_file, seg_file = case
    (image_file.parent / "CASE.json").write_text('{"series_instance_uid": "1.2.3", "patient_id": "P77", '
                                                 '"modality": "CT", "series_description": "abdomen"}')
    html_path, _ = write_case_report(image_file, seg_file, tmp_path / "r2")
    text = html_path.read_text()
    assert "label_1" in text and "label_2" in text and "P77" in text and "1.2.3" in text
