"""``pnnunet_report``: writes the two files with dataset names; bad input gives exit 1 and the file's name."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from pnnunet.cli.report import main


def test_report_cli(tmp_path, capsys):
    image = np.zeros((6, 12, 12), np.float32)
    seg = np.zeros(image.shape, np.uint8)
    seg[2:4, 3:8, 3:8] = 1
    for name, arr in (("c_0000.nii.gz", image), ("c.nii.gz", seg)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "numTraining": 1,
                                                       "labels": {"background": 0, "tumour": 1},
                                                       "file_ending": ".nii.gz"}))
    out = tmp_path / "rep"
    assert main(["-i", str(tmp_path / "c_0000.nii.gz"), "-s", str(tmp_path / "c.nii.gz"), "-o", str(out),
                 "--model", "demo model"]) == 0
    text = (out / "c_report.html").read_text()
    assert "tumour" in text and "demo model" in text and (out / "c_report.png").stat().st_size > 1000
    assert "c_report.html" in capsys.readouterr().out
    assert main(["-i", str(tmp_path / "c_0000.nii.gz"), "-s", str(tmp_path / "missing.nii.gz"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "missing.nii.gz" in err and "Traceback" not in err
