"""``pnnunet_convert_dicom``: converts, lists, and answers bad input with exit 1 and a clear message."""

from __future__ import annotations

import pytest

from pnnunet.cli.convert_dicom import main
from tests.dicom_series import PYDICOM_SERIES

PATIENT = PYDICOM_SERIES / "98892001"  # CT5N (a CT) and CT2N (two scouts)


@pytest.fixture(autouse=True)
def _need_pydicom_series():
    if not PATIENT.is_dir():
        pytest.skip(f"pydicom's test series are not in this pydicom install ({PYDICOM_SERIES})")


def test_convert_and_list(tmp_path, capsys):
    assert main(["-i", str(PATIENT), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 case(s) written" in out and "skipped 1" in out and "Scout" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CT_S5_SmartScore-Gated-0-5-sec.json",
                                                           "CT_S5_SmartScore-Gated-0-5-sec_0000.nii.gz"]
    assert main(["-i", str(PATIENT), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "SmartScore" in listing and "[skipped: a localizer" in listing and "2 series, 1 convertible" in listing
    assert main(["-i", str(PYDICOM_SERIES / "98892003" / "MR2"), "--list"]) == 0   # none convertible: still listed
    assert "3 series, 0 convertible" in capsys.readouterr().out


def test_bad_input_exit_1(tmp_path, capsys):
    assert main(["-i", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "nothing: does not exist" in err and "Traceback" not in err
    assert main(["-i", str(PYDICOM_SERIES / "77654033" / "CT2"), "-o", str(tmp_path / "o")]) == 1
    assert "missing slices" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
