"""DICOM import: the real series shipped in pydicom's wheel, a synthetic round trip, bad inputs."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pnnunet.dataset.dicom import convert_dicom, looks_like_dicom_input, safe_extract
from pnnunet.errors import DatasetError
from tests.dicom_series import PYDICOM_SERIES, volume, write_ct_series

CT5N = PYDICOM_SERIES / "98892001" / "CT5N"
CT2 = PYDICOM_SERIES / "77654033" / "CT2"
CT2N = PYDICOM_SERIES / "98892001" / "CT2N"
MR2 = PYDICOM_SERIES / "98892003" / "MR2"


@pytest.fixture(autouse=True)
def _need_pydicom_series():
    if not CT5N.is_dir():
        pytest.skip(f"pydicom's test series are not in this pydicom install ({PYDICOM_SERIES})")


def test_ct5n_is_sorted_along_z_with_hu_and_header_geometry(tmp_path):
    (case,) = convert_dicom(CT5N, tmp_path)
    img = sitk.ReadImage(str(case.image_file))
    arr = sitk.GetArrayFromImage(img)
    headers = sorted((pydicom.dcmread(f) for f in CT5N.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    # the files are numbered with z descending (instance 6 at z=8.76 ... 10 at z=-1.24): slice 0 is the lowest z
    assert [int(d.InstanceNumber) for d in headers] == [10, 9, 8, 7, 6]
    for k, d in enumerate(headers):
        hu = d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_array_equal(arr[k], hu)
    assert float(headers[0].RescaleIntercept) == -1024 and arr.min() < 0  # HU, not stored values
    assert img.GetOrigin() == pytest.approx([float(v) for v in headers[0].ImagePositionPatient])
    assert img.GetSpacing() == pytest.approx([0.488281, 0.488281, 2.5])
    assert img.GetDirection() == pytest.approx(np.eye(3).ravel())
    side = json.loads(case.sidecar.read_text())
    assert side["series_instance_uid"] == headers[0].SeriesInstanceUID and side["slices"] == 5
    assert side["modality"] == "CT" and side["patient_id"] == headers[0].PatientID
    assert side["size"] == [16, 16, 5] and case.image_file.name == f"{case.case}_0000.nii.gz"


def test_ct2_gap_is_refused_naming_the_files(tmp_path):
    uid = pydicom.dcmread(next(CT2.iterdir())).SeriesInstanceUID
    with pytest.raises(DatasetError, match=r"non-uniform slice spacing: 202.500 mm between 17106 .* and 17136") as e:
        convert_dicom(CT2, tmp_path, series_uid=uid)
    assert "Routine Brain" in str(e.value) and uid in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_ct2n_localizers_are_skipped_and_said_so(tmp_path, caplog):
    with pytest.raises(DatasetError, match="localizer"):
        convert_dicom(CT2N, tmp_path)
    # beside a real series (the patient folder holds CT5N and CT2N): the CT converts, the scout is named
    with caplog.at_level(logging.WARNING, logger="pnnunet"):
        cases = convert_dicom(CT2N.parent, tmp_path / "both")
    assert [c.series.description for c in cases] == ["SmartScore - Gated 0.5 sec"]
    assert any("skipped" in r.message and "'Scout'" in r.message and "LOCALIZER" in r.message for r in caplog.records)


def test_mr2_three_series_in_one_folder(tmp_path):
    with pytest.raises(DatasetError) as e:
        convert_dicom(MR2, tmp_path)
    msg = str(e.value)
    uids = {pydicom.dcmread(f).SeriesInstanceUID for f in MR2.iterdir()}
    assert len(uids) == 3 and all(u in msg for u in uids)
    assert "FAST LOCALIZER" in msg and msg.count("mixed orientations") == 2   # the two tri-plane pilots
    pilot = pydicom.dcmread(MR2 / "4950").SeriesInstanceUID
    with pytest.raises(DatasetError, match="3 different orientations"):
        convert_dicom(MR2, tmp_path, series_uid=pilot)
    with pytest.raises(DatasetError, match="no series with UID 1.2.3"):
        convert_dicom(MR2, tmp_path, series_uid="1.2.3")


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (0.5, -1024.25)])
def test_round_trip_nifti_dicom_nifti(tmp_path, slope, intercept, caplog):
    src = volume()
    if slope != 1.0:
        src = sitk.Cast(src, sitk.sitkFloat32) * slope - 0.25
    top = tmp_path / "Müller_肝臓"                     # non-ASCII folder names, as PACS exports have
    write_ct_series(src, top / "series", slope=slope, intercept=intercept, order=[3, 0, 5, 1, 4, 2])
    (top / "notes.txt").write_text("exported by a PACS")  # not DICOM: warned, ignored
    with caplog.at_level(logging.WARNING, logger="pnnunet"):
        (case,) = convert_dicom(top, tmp_path / "out_é")
    assert any("notes.txt: not a DICOM file" in r.message for r in caplog.records)
    back = sitk.ReadImage(str(case.image_file))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src))
    assert back.GetSpacing() == pytest.approx(src.GetSpacing(), abs=1e-6)
    assert back.GetOrigin() == pytest.approx(src.GetOrigin(), abs=1e-6)
    assert back.GetDirection() == pytest.approx(src.GetDirection(), abs=1e-6)
    if slope != 1.0:
        assert back.GetPixelID() == sitk.sitkFloat32


def test_zip_input_and_zip_slip(tmp_path):
    files = write_ct_series(volume(shape_zyx=(3, 5, 4)), tmp_path / "series")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        for f in files:
            z.write(f, f"study/{f.name}")
    assert looks_like_dicom_input(good) and looks_like_dicom_input(tmp_path / "series")
    (case,) = convert_dicom(good, tmp_path / "out")
    assert sitk.ReadImage(str(case.image_file)).GetSize() == (4, 5, 3)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.write(files[0], "ok/IM0")
        z.writestr("../../escaped.dcm", b"x")
    dest = tmp_path / "x" / "y"
    with pytest.raises(DatasetError, match=r"entry '../../escaped.dcm' points outside .*zip-slip"):
        safe_extract(evil, dest)
    with pytest.raises(DatasetError, match="zip-slip"):
        convert_dicom(evil, tmp_path / "out2")
    assert not (tmp_path / "escaped.dcm").exists() and not (dest / "ok").exists()


def test_every_image_series_becomes_a_case(tmp_path):
    a = write_ct_series(volume(shape_zyx=(3, 4, 5), seed=1), tmp_path / "mixed" / "a", description="Abdomen")
    b = write_ct_series(volume(shape_zyx=(4, 4, 5), seed=2), tmp_path / "mixed" / "b", description="Abdomen")
    write_ct_series(volume(shape_zyx=(2, 4, 5), seed=3), tmp_path / "mixed" / "c", series_number=7,
                    description="Arterial phase")
    cases = convert_dicom(tmp_path / "mixed", tmp_path / "out")
    assert len(cases) == 3 and len({c.case for c in cases}) == 3          # same number + description: UID tail
    by_uid = {c.series.uid: c for c in cases}
    for files, slices in ((a, 3), (b, 4)):
        case = by_uid[pydicom.dcmread(files[0]).SeriesInstanceUID]
        assert case.case.startswith("CT_S3_Abdomen") and sitk.ReadImage(str(case.image_file)).GetSize()[2] == slices
    assert any(c.case == "CT_S7_Arterial-phase" for c in cases)
    only = convert_dicom(tmp_path / "mixed", tmp_path / "one", series_uid=pydicom.dcmread(b[0]).SeriesInstanceUID)
    assert [sitk.ReadImage(str(c.image_file)).GetSize()[2] for c in only] == [4]


def test_single_file_input(tmp_path):
    files = write_ct_series(volume(shape_zyx=(1, 5, 6), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / "one")
    (case,) = convert_dicom(files[0], tmp_path / "out")
    img = sitk.ReadImage(str(case.image_file))
    assert img.GetSize() == (6, 5, 1) and img.GetSpacing() == pytest.approx((0.75, 0.8, 2.5))  # z: SliceThickness


def test_bad_inputs(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        convert_dicom(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("hello")
    with pytest.raises(DatasetError, match="contains no DICOM files"):
        convert_dicom(tmp_path / "txt", tmp_path / "o")
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("no")
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        convert_dicom(not_zip, tmp_path / "o")
    # two slices at one position (two acquisitions in one series)
    img = volume(shape_zyx=(3, 4, 4), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_ct_series(img, tmp_path / "dup", positions=[(0, 0, 0), (0, 0, 2.5), (0, 0, 2.5)])
    with pytest.raises(DatasetError, match="same position"):
        convert_dicom(tmp_path / "dup", tmp_path / "o")
    # gantry tilt: positions drift sideways while the normal is z
    write_ct_series(img, tmp_path / "tilt", positions=[(0, 0, 0), (0, 0.5, 2.5), (0, 1.0, 5.0)])
    with pytest.raises(DatasetError, match="gantry tilt"):
        convert_dicom(tmp_path / "tilt", tmp_path / "o")
    # an existing case file is never overwritten
    shutil.copytree(CT5N, tmp_path / "ct")
    (case,) = convert_dicom(tmp_path / "ct", tmp_path / "o")
    before = case.image_file.read_bytes()
    with pytest.raises(DatasetError, match="already exists"):
        convert_dicom(tmp_path / "ct", tmp_path / "o")
    assert case.image_file.read_bytes() == before
