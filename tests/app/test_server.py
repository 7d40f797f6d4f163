"""The server's answers to bad and awkward clients (issue 13, "server robustness"): an upload that is
not an image, a zip with ``../`` paths, an oversized upload, a cancelled job, a restart mid-job, two
uploads at once. Each gets a clear answer, nothing is written outside the job folders, and the
server keeps answering. The worker is a stand-in (tests/app/fake_worker.py); the real one is
exercised by test_worker.py and test_browser.py."""

from __future__ import annotations

import io
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from pnnunet.app.jobs import JOB_ID
from pnnunet.app.server import AppConfig, create_app

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
MODEL = "Dataset001_Test/pnnunetTrainer__pnnunetPlans__3d_fullres"


def fake_command(folder: Path) -> list[str]:
    return [sys.executable, str(FAKE_WORKER), str(folder)]


@pytest.fixture
def roots(tmp_path) -> dict:
    model = tmp_path / "results" / MODEL
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pdparams").write_bytes(b"")
    (model / "dataset.json").write_text('{"labels": {"background": 0, "a": 1}, "channel_names": {"0": "CT"}, '
                                        '"file_ending": ".nii.gz"}')
    return {"tmp": tmp_path, "models": tmp_path / "results", "jobs": tmp_path / "jobs"}


def make_app(roots, **kw):
    return create_app(AppConfig(roots["models"], roots["jobs"], worker=fake_command, **kw))


def nifti_bytes(tmp: Path) -> bytes:
    path = tmp / "img.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(512, dtype=np.int16).reshape(8, 8, 8)), str(path))
    return path.read_bytes()


def snapshot(root: Path, jobs: Path) -> set[Path]:
    """Every file under ``root`` outside the jobs folder."""
    return {p for p in root.rglob("*") if jobs not in p.parents and p != jobs}


def new_job(client) -> str:
    r = client.post("/api/jobs", json={"model": MODEL, "folds": [0]})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def submit(client, name: str, data: bytes) -> tuple[str, object]:
    job = new_job(client)
    r = client.put(f"/api/jobs/{job}/upload/{name}", content=data)
    assert r.status_code == 200, r.text
    return job, client.post(f"/api/jobs/{job}/start")


def wait_for(client, job: str, states, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"/api/jobs/{job}").json()
        if s["state"] in states:
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job} never reached {states}: {s}")


def still_serving(client) -> None:
    assert client.get("/api/models").json()[0]["key"] == MODEL
    assert client.get("/").status_code == 200


def test_models_and_page(roots):
    with TestClient(make_app(roots)) as client:
        models = client.get("/api/models").json()
        assert [(m["key"], m["configuration"], m["folds"], m["labels"]) for m in models] == \
               [(MODEL, "3d_fullres", [0], {"background": 0, "a": 1})]
        page = client.get("/")
        assert page.status_code == 200 and "<canvas id=\"gl\">" in page.text
        niivue = client.get("/static/niivue/niivue.js")
        assert niivue.status_code == 200 and "var Niivue = class" in niivue.text  # vendored, not a CDN
        assert "https://" not in page.text


def test_job_ids_are_unguessable_and_unknown_ids_are_404(roots):
    with TestClient(make_app(roots)) as client:
        ids = {new_job(client) for _ in range(5)}
        assert len(ids) == 5 and all(JOB_ID.fullmatch(i) and len(i) >= 24 for i in ids)
        for bad in ("1", "..%2Fjobs", "A" * 30):
            r = client.get(f"/api/jobs/{bad}")
            assert r.status_code == 404 and ("no job" in r.json()["error"] or "no such page" in r.json()["error"])


def test_unknown_model_and_folds(roots):
    with TestClient(make_app(roots)) as client:
        r = client.post("/api/jobs", json={"model": "../../etc/x"})
        assert r.status_code == 400 and "is not one of the trained models" in r.json()["error"]
        r = client.post("/api/jobs", json={"model": MODEL, "folds": [3]})
        assert r.status_code == 400 and "not all trained" in r.json()["error"]
        r = client.post("/api/jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["error"]


@pytest.mark.parametrize("name, data, message", [
    ("notes.txt", b"hello, this is not an image", "'notes.txt' is not an image pnnunet can read"),
    ("broken.nii.gz", b"\x1f\x8b garbage that only looks gzipped", "'broken.nii.gz' is not an image pnnunet can read"),
    ("empty.zip", None, "the zip is empty"),
    ("fake.zip", b"PK not a zip", "not a readable zip file"),
])
def test_not_an_image_is_a_clear_error(roots, name, data, message):
    if data is None:
        buf = io.BytesIO()
        zipfile.ZipFile(buf, "w").close()
        data = buf.getvalue()
    before = snapshot(roots["tmp"], roots["jobs"])
    with TestClient(make_app(roots)) as client:
        job, r = submit(client, name, data)
        assert r.status_code == 400
        assert message in r.json()["error"] and "fix:" in r.json()["error"]
        s = client.get(f"/api/jobs/{job}").json()
        assert s["state"] == "failed" and message in s["message"]
        assert not (roots["jobs"] / job / "upload").exists()  # the bad upload is not kept
        still_serving(client)
    assert snapshot(roots["tmp"], roots["jobs"]) == before


def test_zip_with_parent_paths_writes_nothing(roots):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("series/IM0001.dcm", b"\0" * 128 + b"DICM")
        zf.writestr("../../escaped.txt", b"evil")
    before = snapshot(roots["tmp"], roots["jobs"])
    with TestClient(make_app(roots)) as client:
        job, r = submit(client, "series.zip", buf.getvalue())
        assert r.status_code == 400
        assert "series.zip: entry '../../escaped.txt' points outside the extraction folder (zip-slip); nothing was " \
               "extracted" in r.json()["error"]
        assert not (roots["jobs"] / job / "upload").exists()  # not even the good member was extracted
        still_serving(client)
    assert snapshot(roots["tmp"], roots["jobs"]) == before
    assert not list(roots["tmp"].rglob("escaped.txt"))


@pytest.mark.parametrize("name", ["..%2F..%2Fescaped.nii.gz", "a/..%2F..%2F..%2Fescaped.nii.gz", "%2Fetc%2Fescaped"])
def test_upload_names_cannot_leave_the_job_folder(roots, name):
    before = snapshot(roots["tmp"], roots["jobs"])
    with TestClient(make_app(roots)) as client:
        job = new_job(client)
        r = client.put(f"/api/jobs/{job}/upload/{name}", content=b"x")
        assert r.status_code in (400, 404)
        if r.status_code == 400:
            assert "points outside the upload folder" in r.json()["error"]
        still_serving(client)
    assert snapshot(roots["tmp"], roots["jobs"]) == before
    assert not list(roots["tmp"].rglob("escaped*"))


@pytest.mark.parametrize("declared", [True, False])
def test_oversized_upload(roots, declared):
    def chunks():
        for _ in range(5):
            yield b"\0" * 1000

    with TestClient(make_app(roots, max_upload_bytes=3000)) as client:
        job = new_job(client)
        r = client.put(f"/api/jobs/{job}/upload/big.nii.gz", content=b"\0" * 5000 if declared else chunks())
        assert r.status_code == 413
        assert "larger than this server's limit of 0 MB" in r.json()["error"] and "--max_upload_mb" in r.json()["error"]
        assert not list((roots["jobs"] / job).rglob("big.nii.gz*")) and not list((roots["jobs"] / job).rglob(".big*"))
        assert client.get(f"/api/jobs/{job}").json()["state"] == "failed"
        still_serving(client)


def test_job_runs_with_progress_and_results(roots):
    with TestClient(make_app(roots)) as client:
        job, r = submit(client, "case_a.nii.gz", nifti_bytes(roots["tmp"]))
        # the runner may pick the job up before the answer is built (seen on a loaded machine): queued or running
        assert r.status_code == 200 and r.json()["state"] in ("queued", "running")
        s = wait_for(client, job, ("done",))
        assert s["progress"]["tiles"] == 10 and s["result"]["labels"] == {"1": "a"}
        r = client.get(f"/api/jobs/{job}/download/segmentation")
        assert r.status_code == 200 and r.content == b"not really a label map"
        assert client.get(f"/api/jobs/{job}/download/report_html").status_code == 404
        assert client.get(f"/api/jobs/{job}/download/secrets").status_code == 404
        r = client.put(f"/api/jobs/{job}/upload/more.nii.gz", content=b"x")
        assert r.status_code == 400 and "not waiting for files" in r.json()["error"]


def test_cancel_running_and_queued_jobs(roots):
    with TestClient(make_app(roots)) as client:
        data = nifti_bytes(roots["tmp"])
        running, _ = submit(client, "hang_1.nii.gz", data)
        queued, _ = submit(client, "case_2.nii.gz", data)
        wait_for(client, running, ("running",))
        deadline = time.monotonic() + 10
        while not (roots["jobs"] / running / "worker_pid").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((roots["jobs"] / running / "worker_pid").read_text())
        listed = {j["id"]: j for j in client.get("/api/jobs").json()}
        assert listed[queued]["state"] == "queued" and listed[queued]["queue_position"] == 1
        assert client.post(f"/api/jobs/{queued}/cancel").json() == {"state": "cancelled"}
        assert client.post(f"/api/jobs/{running}/cancel").json() == {"state": "cancelling"}
        s = wait_for(client, running, ("cancelled",))
        assert s["message"] == "cancelled while running"
        assert not Path(f"/proc/{pid}").exists() or b"fake_worker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert client.get(f"/api/jobs/{queued}").json()["state"] == "cancelled"  # never ran
        assert not (roots["jobs"] / queued / "progress.json").exists()
        assert client.post(f"/api/jobs/{running}/cancel").json() == {"state": "cancelled"}  # idempotent
        still_serving(client)


@pytest.mark.parametrize("kill_worker", [True, False])
def test_restart_mid_job_loses_nothing(roots, kill_worker):
    client = TestClient(make_app(roots))
    with client:
        job, _ = submit(client, "slow_case.nii.gz", nifti_bytes(roots["tmp"]))
        done, _ = submit(client, "case_done.nii.gz", nifti_bytes(roots["tmp"]))
        wait_for(client, job, ("running",))
        orphan = None
        if not kill_worker:  # a crash of the server: its worker lives on and is waited for after the restart
            runner = client.app.state.runtime.pop("runner")
            runner.stop(kill_worker=False)
            orphan = runner.proc
    with TestClient(make_app(roots)) as client:  # the restarted server, same folders
        listed = {j["id"]: j for j in client.get("/api/jobs").json()}
        assert set(listed) == {job, done}
        if kill_worker:
            assert listed[job]["state"] in ("queued", "running")
        s = wait_for(client, job, ("done",), timeout=30)
        assert s["result"]["files"]["segmentation"] == "output/slow_case.nii.gz"
        assert wait_for(client, done, ("done",))["state"] == "done"
    if orphan is not None:
        assert orphan.wait(10) == 0  # it finished its job on its own
    with TestClient(make_app(roots)) as client:  # finished jobs reappear
        assert {j["id"]: j["state"] for j in client.get("/api/jobs").json()} == {job: "done", done: "done"}


def test_two_uploads_at_once(roots):
    data = nifti_bytes(roots["tmp"])
    with TestClient(make_app(roots)) as client:
        jobs = [new_job(client) for _ in range(2)]
        answers = {}

        def send(job, name):
            answers[job] = client.put(f"/api/jobs/{job}/upload/{name}", content=data)

        threads = [threading.Thread(target=send, args=(j, n)) for j, n in zip(jobs, ("slow_a.nii.gz", "b.nii.gz"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [answers[j].status_code for j in jobs] == [200, 200]
        for j in jobs:
            assert client.post(f"/api/jobs/{j}/start").status_code == 200
        wait_for(client, jobs[0], ("running",))
        assert client.get(f"/api/jobs/{jobs[1]}").json()["state"] == "queued"  # one job at a time
        for j in jobs:
            assert wait_for(client, j, ("done",), timeout=30)["state"] == "done"
        for j, name in zip(jobs, ("slow_a", "b")):
            assert (roots["jobs"] / j / "upload" / f"{name}.nii.gz").read_bytes() == data


def test_a_4d_image_is_refused_before_a_job_runs(roots):
    four_d = roots["tmp"] / "two.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 8, 8, 8), np.float32), isVector=False), str(four_d))
    with TestClient(make_app(roots)) as client:
        job, r = submit(client, "two.nii.gz", four_d.read_bytes())
        assert r.status_code == 400 and "the platform segments one 2D or 3D grey-value image" in r.json()["error"]
        assert client.get(f"/api/jobs/{job}").json()["state"] == "failed"
