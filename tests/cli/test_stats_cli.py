"""``pnnunet_stats``: label names from a dataset.json, JSON/CSV output, clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from pnnunet.cli.stats import main


def _case(tmp_path):
    image = np.zeros((6, 8, 8), np.float32)
    seg = np.zeros((6, 8, 8), np.uint8)
    seg[1:4, 2:5, 2:6] = 1
    image[seg == 1] = 35.0
    for name, arr in (("img.nii.gz", image), ("seg.nii.gz", seg)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                              "numTraining": 1, "file_ending": ".nii.gz"}))
    return tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz", dj


def test_stats_cli_writes_json_with_dataset_names(tmp_path, capsys):
    img, seg, dj = _case(tmp_path)
    out = tmp_path / "out.json"
    assert main(["-i", str(img), "-s", str(seg), "-d", str(dj), "-ref", str(seg), "-o", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["labels"]["liver"]["voxels"] == 36 and stats["labels"]["liver"]["dice"] == 1.0
    assert stats["labels"]["liver"]["intensity"]["mean"] == 35.0
    printed = capsys.readouterr().out
    assert "liver" in printed and "foreground mean" in printed


def test_stats_cli_bad_inputs_exit_1_without_traceback(tmp_path, capsys):
    img, seg, _dj = _case(tmp_path)
    assert main(["-i", str(img), "-s", str(seg), "-o", str(tmp_path / "out.xlsx")]) == 1
    assert ".json or .csv" in capsys.readouterr().err
    assert main(["-i", str(tmp_path / "nope.nii.gz"), "-s", str(seg), "-o", str(tmp_path / "o.csv")]) == 1
    err = capsys.readouterr().err
    assert "nope.nii.gz" in err and "does not exist" in err and "Traceback" not in err
    assert main(["-i", str(img), "-s", str(seg), "-d", str(tmp_path / "missing_dir"), "-o", str(tmp_path / "o.csv")]) == 1
    assert "missing_dir" in capsys.readouterr().err
    assert not (tmp_path / "out.xlsx").exists()
