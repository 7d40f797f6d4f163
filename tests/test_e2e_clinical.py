"""End to end: ``pnnunet_predict`` on a DICOM zip with ``--stats --report --dicom_seg`` (tiny model trained
in the fixture on the bundled sample; the DICOM series is the sample's test case written with pydicom)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import BUNDLED_SAMPLE
from tests.dicom_series import write_ct_series
from tests.inference.test_predictor import DATASET, PLANS, make_trained_workspace

pytestmark = pytest.mark.e2e
pytest.importorskip("paddle")
pytest.importorskip("highdicom")

CASE = "hippocampus_045"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e_clinical")
    make_trained_workspace(root, trained=(("3d_fullres", (0,)),))
    img = sitk.ReadImage(str(BUNDLED_SAMPLE / "imagesTs" / f"{CASE}.nii.gz"))
    rounded = sitk.GetImageFromArray(np.round(sitk.GetArrayFromImage(img)).astype(np.float32))
    rounded.CopyInformation(img)
    files = write_ct_series(rounded, root / "dicom", slope=1.0, intercept=0.0, description="hippo test",
                            modality="MR")
    with zipfile.ZipFile(root / "series.zip", "w") as z:
        for f in files:
            z.write(f, f"export/{f.name}")
    (root / "nifti").mkdir()
    sitk.WriteImage(rounded, str(root / "nifti" / f"{CASE}_0000.nii.gz"))
    return root


def _predict(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, pnnunet_raw=str(ws / "raw"), pnnunet_preprocessed=str(ws / "pre"),
               pnnunet_results=str(ws / "res"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pnnunet.cli.predict", *args, "-d", DATASET, "-c", "3d_fullres", "-p", PLANS,
                           "-f", "0", "--disable_tta", "-npp", "0", "-nps", "0", "--no_pbar"], env=env,
                          capture_output=True, text=True, check=False)


def test_predict_dicom_zip_with_stats_report_and_dicom_seg(workspace):
    out_dir = workspace / "out"
    done = _predict(workspace, "-i", str(workspace / "series.zip"), "-o", str(out_dir), "--stats", "--report",
                    "--dicom_seg")
    assert done.returncode == 0, done.stderr[-3000:]
    (seg_file,) = out_dir.glob("*.nii.gz")
    case = seg_file.name[: -len(".nii.gz")]
    assert case == "MR_S3_hippo-test"
    src = sitk.ReadImage(str(BUNDLED_SAMPLE / "imagesTs" / f"{CASE}.nii.gz"))
    seg = sitk.ReadImage(str(seg_file))
    assert seg.GetSize() == src.GetSize()
    assert np.allclose(seg.GetOrigin(), src.GetOrigin()) and np.allclose(seg.GetDirection(), src.GetDirection())
    stats = json.loads((out_dir / f"{case}_statistics.json").read_text())
    assert list(stats["labels"]) == ["Anterior", "Posterior"]
    assert stats["image"] == str(workspace / "series.zip") and stats["series_instance_uid"]
    n1 = int((sitk.GetArrayFromImage(seg) == 1).sum())
    assert stats["labels"]["Anterior"]["voxels"] == n1
    rows = list(csv.DictReader((out_dir / "statistics.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["Anterior", "Posterior"]
    html = (out_dir / f"{case}_report.html").read_text()
    assert "Anterior" in html and "3d_fullres" in html and "PNN0001" in html   # model and DICOM patient id
    assert "Intensities in image units" in html                                  # MR: no HU
    assert (out_dir / f"{case}_report.png").stat().st_size > 1000
    ds = pydicom.dcmread(out_dir / f"{case}_seg.dcm")
    assert ds.Modality == "SEG" and [s.SegmentLabel for s in ds.SegmentSequence] == ["Anterior", "Posterior"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == \
        pydicom.dcmread(next((workspace / "dicom").iterdir())).SeriesInstanceUID
    assert json.loads((out_dir / f"{case}_dicom.json").read_text())["slices"] == src.GetSize()[2]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".dicom_input")]   # scratch removed

