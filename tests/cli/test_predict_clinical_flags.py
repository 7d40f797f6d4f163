"""``pnnunet_predict --dicom_seg`` on a non-DICOM input: refused at once (before Paddle or the model is loaded)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pnnunet.cli.predict import main


def test_dicom_seg_needs_dicom_input(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)), str(tmp_path / "in" / "a_0000.nii.gz"))
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "no_model"),
                 "--dicom_seg"]) == 1
    err = capsys.readouterr().err
    assert "--dicom_seg needs a DICOM input" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
