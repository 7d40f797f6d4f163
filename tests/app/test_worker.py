"""The real worker behind the server: a bundled case segmented through ``pnnunet.inference.pipeline``
gives the same label map as ``pnnunet_predict``, with progress (stage, tile i/N) and statistics; a
DICOM zip is imported (pnnunet.dataset.dicom) and gets a DICOM-SEG."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from pnnunet.app.server import AppConfig, create_app
from pnnunet.dataset.label_colors import default_color
from tests.app.conftest import CASE, TINY_MODEL

pytestmark = pytest.mark.e2e


def run_job(client, name: str, data: bytes, tta: bool = False, timeout: float = 120) -> tuple[dict, list[dict]]:
    job = client.post("/api/jobs", json={"model": TINY_MODEL, "folds": [0], "tta": tta}).json()["id"]
    assert client.put(f"/api/jobs/{job}/upload/{name}", content=data).status_code == 200
    r = client.post(f"/api/jobs/{job}/start")
    assert r.status_code == 200, r.text
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"/api/jobs/{job}").json()
        if s["progress"] and (not seen or s["progress"] != seen[-1]):
            seen.append(s["progress"])
        if s["state"] in ("done", "failed", "cancelled"):
            return s, seen
        time.sleep(0.02)
    raise AssertionError(f"job did not finish: {s}")


def test_app_segments_like_pnnunet_predict(tiny_models, tmp_path):
    from pnnunet.cli.predict import main as predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / CASE.name).write_bytes(CASE.read_bytes())
    assert predict(["-i", str(inputs), "-o", str(tmp_path / "cli"), "-m", str(tiny_models / TINY_MODEL), "-f", "0",
                    "--disable_tta", "-npp", "0", "-nps", "0", "--no_pbar"]) == 0
    with TestClient(create_app(AppConfig(tiny_models, tmp_path / "jobs"))) as client:
        s, seen = run_job(client, CASE.name, CASE.read_bytes())
        assert s["state"] == "done", s["message"]
        job = tmp_path / "jobs" / s["id"]
        app_seg = sitk.ReadImage(str(job / s["result"]["files"]["segmentation"]))
        cli_seg = sitk.ReadImage(str(tmp_path / "cli" / CASE.name))
        assert np.array_equal(sitk.GetArrayFromImage(app_seg), sitk.GetArrayFromImage(cli_seg))
        assert app_seg.GetSpacing() == cli_seg.GetSpacing() and app_seg.GetOrigin() == cli_seg.GetOrigin()
        stages = [p["stage"] for p in seen]
        assert {"importing", "predicting", "statistics and report", "done"} <= set(stages)
        tiles = [(p["tile"], p["tiles"]) for p in seen if p["stage"] == "predicting" and p.get("tiles")]
        # polled, and throttled by the worker: on a quiet machine a tiny model's few tiles may pass between two
        # polls, so only the order and bounds of what was seen are checked here (the writes: test_progress_file)
        assert tiles == sorted(tiles) and all(0 < t <= n for t, n in tiles)
        assert s["result"]["labels"] == {"1": "Anterior", "2": "Posterior"}
        assert s["result"]["colors"] == {"1": list(default_color(1)), "2": list(default_color(2))}  # as the report
        stats = client.get(f"/api/jobs/{s['id']}/download/statistics_json").json()
        labels = stats["labels"]
        assert list(labels) == ["Anterior", "Posterior"]
        seg = sitk.GetArrayFromImage(cli_seg)
        assert [labels[n]["voxels"] for n in labels] == [int((seg == 1).sum()), int((seg == 2).sum())]
        csv = client.get(f"/api/jobs/{s['id']}/download/statistics_csv").text
        assert csv.splitlines()[0].startswith("case,name") and "Anterior" in csv
        report = client.get(f"/api/jobs/{s['id']}/download/report_html").text
        assert "Not a medical device" in report and "Anterior" in report and "data:image/png;base64," in report
        assert client.get(f"/api/jobs/{s['id']}/download/report_png").content[:4] == b"\x89PNG"
        for name in ("image.nii.gz", "seg.nii.gz"):
            assert client.get(f"/api/jobs/{s['id']}/view/{name}").status_code == 200


def test_dicom_zip_is_imported_and_gets_a_dicom_seg(tiny_models, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    series = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"CT5N/{f.name}")
    with TestClient(create_app(AppConfig(tiny_models, tmp_path / "jobs"))) as client:
        s, seen = run_job(client, "ct5n.zip", buf.getvalue())
        assert s["state"] == "done", s["message"]
        assert "importing DICOM" in [p["stage"] for p in seen]
        files = s["result"]["files"]
        assert "dicom_seg" in files and s["result"]["notes"] == []
        seg = pydicom.dcmread(io.BytesIO(client.get(f"/api/jobs/{s['id']}/download/dicom_seg").content))
        assert seg.Modality == "SEG"
        assert {x.SegmentLabel for x in seg.SegmentSequence} <= {"Anterior", "Posterior"}
        source_uid = pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
        assert "report_html" in files  # with the series' ids in its header
        report = client.get(f"/api/jobs/{s['id']}/download/report_html").text
        assert source_uid in report
        image = sitk.ReadImage(str(tmp_path / "jobs" / s["id"] / "view" / "image.nii.gz"))
        assert image.GetSize() == (16, 16, 5)



def test_progress_file_writes_stage_changes_and_the_last_tile_and_throttles_the_rest(tmp_path, monkeypatch):
    from pnnunet.app import worker

    clock = iter([0.0, 0.01, 0.02, 0.03, 0.30, 0.31, 0.32])
    monkeypatch.setattr(worker, "time", type("Clock", (), {"monotonic": staticmethod(lambda: next(clock)),
                                                           "time": staticmethod(time.time)}))
    path = tmp_path / "progress.json"
    written = []
    monkeypatch.setattr(worker, "write_json_atomic", lambda p, event: written.append((event["stage"], event.get("tile"))))
    progress = worker.ProgressFile(path)
    progress({"stage": "predicting", "tile": 1, "tiles": 5})    # new stage: written
    progress({"stage": "predicting", "tile": 2, "tiles": 5})    # 0.01 s later: throttled
    progress({"stage": "predicting", "tile": 3, "tiles": 5})    # throttled
    progress({"stage": "predicting", "tile": 5, "tiles": 5})    # the last tile: written
    progress({"stage": "predicting", "tile": 1, "tiles": 4})    # 0.27 s after the last write: written
    progress({"stage": "predicting", "tile": 2, "tiles": 4})    # throttled
    progress({"stage": "exporting"})                            # new stage: written
    assert written == [("predicting", 1), ("predicting", 5), ("predicting", 1), ("exporting", None)]
