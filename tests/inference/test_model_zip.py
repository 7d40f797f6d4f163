"""Model sharing in nnU-Net v2's zip layout (issue 11 item 4): export, install, download.

``tests/data/upstream_models/zip/`` holds a zip written by upstream's own ``nnUNetv2_export_model_to_zip``
(see the README there). Installing it must give a model that predicts exactly as the model folder it
came from; a pnnunet model must round-trip (export, install into another results root, same
predictions); unsafe zips are refused with nothing written.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.cli import model_sharing
from pnnunet.errors import PnnunetError
from pnnunet.inference.model_download import download_and_install
from pnnunet.inference.model_zip import export_model_zip, install_model_zip
from pnnunet.postprocessing.components import remove_all_but_largest_component
from tests.conftest import BUNDLED_SAMPLE

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "upstream_models"
UPSTREAM_ZIP = FIXTURES / "zip" / "Dataset004_Hippocampus_3d_fullres_fold0.zip"
DATASET = "Dataset004_Hippocampus"
UPSTREAM_MODEL = "nnUNetTrainer__nnUNetPlansTiny__3d_fullres"
CASE = "hippocampus_045"


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    shutil.copyfile(BUNDLED_SAMPLE / "imagesTs" / f"{CASE}.nii.gz", folder / f"{CASE}_0000.nii.gz")
    return folder


def _predict(argv: list[str], images: Path, out: Path, results: Path, monkeypatch) -> np.ndarray:
    from pnnunet.cli import predict

    monkeypatch.setenv("pnnunet_results", str(results))
    code = predict.main(["-i", str(images), "-o", str(out), *argv, "-npp", "0", "-nps", "0", "--fp32",
                         "--disable_progress_bar"])
    assert code == 0
    return _seg(out / f"{CASE}.nii.gz")


# ---------------------------------------------------------------------------------------------- upstream zip


def test_the_upstream_zip_has_upstreams_layout():
    with zipfile.ZipFile(UPSTREAM_ZIP) as zf:
        names = set(zf.namelist())
    model = f"{DATASET}/{UPSTREAM_MODEL}"
    assert {f"{model}/plans.json", f"{model}/dataset.json", f"{model}/fold_0/checkpoint_final.pth",
            f"{model}/crossval_results_folds_0/postprocessing.pkl"} <= names


def test_an_upstream_zip_installs_and_predicts_as_its_model_folder(tmp_path, images, monkeypatch):
    pytest.importorskip("paddle")
    installed_root = tmp_path / "installed"
    monkeypatch.setenv("pnnunet_results", str(installed_root))
    assert model_sharing.main_install([str(UPSTREAM_ZIP)]) == 0
    model_dir = installed_root / DATASET / UPSTREAM_MODEL
    assert (model_dir / "fold_0" / "checkpoint_final.pth").is_file()

    via_zip = _predict(["-d", "4", "-c", "3d_fullres", "-tr", "nnUNetTrainer", "-p", "nnUNetPlansTiny", "-f", "0"],
                       images, tmp_path / "out_zip", installed_root, monkeypatch)
    direct_root = tmp_path / "direct"
    shutil.copytree(FIXTURES / DATASET / UPSTREAM_MODEL, direct_root / DATASET / UPSTREAM_MODEL)
    direct = _predict(["-m", str(direct_root / DATASET / UPSTREAM_MODEL), "-f", "0"], images, tmp_path / "out_dir",
                      direct_root, monkeypatch)
    assert np.array_equal(via_zip, direct)
    upstream = _seg(FIXTURES / "predictions" / "3d_fullres" / f"{CASE}.nii.gz")  # upstream's own prediction
    assert np.mean(via_zip == upstream) >= 0.9999

    # pnnunet exports the installed upstream model with upstream's file set: its .pth, not the conversion
    assert (model_dir / "fold_0" / "pnnunet").is_dir()  # the conversion the prediction made
    monkeypatch.setenv("pnnunet_results", str(installed_root))
    again = tmp_path / "again.zip"
    assert model_sharing.main_export(["-d", "4", "-o", str(again), "-c", "3d_fullres", "-p", "nnUNetPlansTiny",
                                      "-f", "0"]) == 0
    with zipfile.ZipFile(UPSTREAM_ZIP) as a, zipfile.ZipFile(again) as b:
        assert sorted(b.namelist()) == sorted(a.namelist())
        assert all(a.read(n) == b.read(n) for n in a.namelist())


def test_installing_twice_is_fine_but_changed_files_need_the_overwrite_flag(tmp_path, capsys):
    root = tmp_path / "res"
    install_model_zip(UPSTREAM_ZIP, root)
    install_model_zip(UPSTREAM_ZIP, root)  # identical files: nothing to overwrite
    plans = root / DATASET / UPSTREAM_MODEL / "plans.json"
    plans.write_text("{}")
    before = _listing(root)
    with pytest.raises(PnnunetError, match="--overwrite") as e:
        install_model_zip(UPSTREAM_ZIP, root)
    assert str(plans) in str(e.value) and plans.read_text() == "{}" and _listing(root) == before
    install_model_zip(UPSTREAM_ZIP, root, overwrite=True)
    with zipfile.ZipFile(UPSTREAM_ZIP) as zf:
        assert plans.read_bytes() == zf.read(f"{DATASET}/{UPSTREAM_MODEL}/plans.json")


# ------------------------------------------------------------------------------------------- unsafe zips


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


GOOD = {f"{DATASET}/{UPSTREAM_MODEL}/plans.json": b"{}", f"{DATASET}/{UPSTREAM_MODEL}/dataset.json": b"{}"}


@pytest.mark.parametrize("bad, problem", [
    ("../evil.txt", "'..'"),
    (f"{DATASET}/../../evil.txt", "'..'"),
    ("/tmp/evil.txt", "absolute path"),
    ("C:/evil.txt", "absolute path"),
    (f"{DATASET}\\..\\..\\evil.txt", "backslash"),
    ("evil.txt", "not under a DatasetXXX_Name/ folder"),
])
def test_unsafe_member_paths_are_refused_and_nothing_is_written(tmp_path, bad, problem):
    zip_path = _zip(tmp_path / "bad.zip", {**GOOD, bad: b"x"})
    root = tmp_path / "a" / "b" / "res"
    with pytest.raises(PnnunetError, match=problem) as e:
        install_model_zip(zip_path, root)
    assert bad in str(e.value) and "nothing was installed" in str(e.value)
    assert _listing(tmp_path) == ["bad.zip"]


def test_a_symbolic_link_member_is_refused(tmp_path):
    zip_path = _zip(tmp_path / "bad.zip", GOOD, link=f"{DATASET}/{UPSTREAM_MODEL}/fold_0/checkpoint_final.pth")
    with pytest.raises(PnnunetError, match="symbolic link"):
        install_model_zip(zip_path, tmp_path / "res")
    assert not (tmp_path / "res").exists()


def test_the_cli_refuses_a_bad_zip_with_exit_code_1_and_no_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("pnnunet_results", str(tmp_path / "res"))
    not_zip = tmp_path / "model.zip"
    not_zip.write_text("hello")
    no_model = _zip(tmp_path / "empty.zip", {f"{DATASET}/readme.txt": b"x"})
    for path, message in ((not_zip, "not a zip file"), (no_model, "no model folder"),
                          (tmp_path / "missing.zip", "file not found")):
        assert model_sharing.main_install([str(path)]) == 1
        err = capsys.readouterr().err
        assert str(path) in err and message in err and "Traceback" not in err
    assert not (tmp_path / "res").exists()


def test_a_damaged_zip_installs_nothing(tmp_path):
    data = bytearray(UPSTREAM_ZIP.read_bytes())
    with zipfile.ZipFile(UPSTREAM_ZIP) as zf:
        info = zf.getinfo(f"{DATASET}/{UPSTREAM_MODEL}/fold_0/checkpoint_final.pth")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle] ^= 0xFF
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(PnnunetError, match="damaged"):
        install_model_zip(damaged, tmp_path / "res")
    assert _listing(tmp_path / "res") == []


def test_a_zip_larger_than_the_free_space_installs_nothing(tmp_path, monkeypatch):
    import collections

    from pnnunet.inference import model_zip

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(model_zip.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(PnnunetError, match="GB free; nothing was installed"):
        install_model_zip(UPSTREAM_ZIP, tmp_path / "res")
    assert _listing(tmp_path / "res") == []


# -------------------------------------------------------------------------------------- pnnunet round trip


def test_a_pnnunet_model_round_trips(trained, tmp_path, images, monkeypatch):
    pytest.importorskip("paddle")
    from tests.inference.test_predictor import DATASET as OURS
    from tests.inference.test_predictor import PLANS

    source = tmp_path / "source"
    shutil.copytree(trained / "res", source)
    dataset_dir = source / OURS
    model = f"pnnunetTrainer__{PLANS}__3d_fullres"
    # what find_best_config writes, with the absolute paths of this root, selecting the model
    pp = dataset_dir / "postprocessing.json"
    pp.write_text(json.dumps({"postprocessing_fns": ["remove_all_but_largest_component"],
                              "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}]}))
    info = {"folds": [0], "dataset_name_or_id": OURS,
            "best_model_or_ensemble": {"postprocessing_file": str(pp), "selected_model_or_models": [
                {"configuration": "3d_fullres", "trainer": "pnnunetTrainer", "plans_identifier": PLANS}]}}
    (dataset_dir / "inference_instructions.json").write_text(json.dumps(info))
    (dataset_dir / "inference_instructions.txt").write_text("pnnunet_predict ...\n")

    zip_path = tmp_path / "ours.zip"
    models = export_model_zip(source, OURS, zip_path, ["3d_fullres"], "pnnunetTrainer", PLANS, folds=[0])
    assert [m.checkpoints for m in models] == [("checkpoint_final.pdparams",)]
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    prefix = f"{OURS}/{model}"
    assert {f"{prefix}/plans.json", f"{prefix}/dataset.json", f"{prefix}/fold_0/checkpoint_final.pdparams",
            f"{prefix}/fold_0/train_config.json", f"{OURS}/inference_instructions.json",
            f"{OURS}/inference_instructions.txt", f"{OURS}/postprocessing.json"} <= names
    assert not any("/inference/" in n or "/.tmp" in n or n.endswith(".npz") for n in names), names

    target = tmp_path / "elsewhere"
    monkeypatch.setenv("pnnunet_results", str(target))
    assert model_sharing.main_install([str(zip_path)]) == 0
    before = _predict(["-d", OURS], images, tmp_path / "out_a", source, monkeypatch)  # follows the instructions
    shutil.rmtree(source)  # the recorded paths now point nowhere: the installed postprocessing.json must be used
    after = _predict(["-d", OURS], images, tmp_path / "out_b", target, monkeypatch)
    assert np.array_equal(before, after)
    raw = _predict(["-d", OURS, "-c", "3d_fullres", "-p", PLANS], images, tmp_path / "out_c", target, monkeypatch)
    assert np.array_equal(after, remove_all_but_largest_component(raw, [1, 2]))  # the installed postprocessing ran


def test_export_is_strict_about_what_was_asked_for(trained, tmp_path, capsys, monkeypatch):
    from tests.inference.test_predictor import DATASET as OURS
    from tests.inference.test_predictor import PLANS

    monkeypatch.setenv("pnnunet_results", str(trained / "res"))
    out = tmp_path / "x.zip"
    assert model_sharing.main_export(["-d", OURS, "-o", str(out), "-c", "3d_fullres", "2d", "-p", PLANS]) == 1
    err = capsys.readouterr().err
    assert "2d" in err and "--not_strict" in err and "Traceback" not in err and not out.exists()
    assert model_sharing.main_export(["-d", OURS, "-o", str(out), "-c", "3d_fullres", "-p", PLANS, "-f", "0", "3"]) == 1
    assert "fold_3" in capsys.readouterr().err and not out.exists()
    assert model_sharing.main_export(["-d", OURS, "-o", str(out), "-c", "3d_fullres", "2d", "-p", PLANS, "-f", "0",
                                      "3", "--not_strict"]) == 0
    with zipfile.ZipFile(out) as zf:
        assert any(n.endswith("fold_0/checkpoint_final.pdparams") for n in zf.namelist())
        assert not any("fold_3" in n or "__2d/" in n for n in zf.namelist())
    # -d as a folder: the model folder's dataset in the results root is fine, a folder elsewhere is refused
    # (never copied into the results root as a raw dataset would be into raw)
    by_path = tmp_path / "by_path.zip"
    assert model_sharing.main_export(["-d", str(trained / "res" / OURS), "-o", str(by_path), "-c", "3d_fullres",
                                      "-p", PLANS, "-f", "0"]) == 0 and by_path.is_file()
    elsewhere = tmp_path / "Dataset123_Elsewhere"
    shutil.copytree(trained / "res" / OURS, elsewhere)
    before = sorted(p.name for p in (trained / "res").iterdir())
    assert model_sharing.main_export(["-d", str(elsewhere), "-o", str(tmp_path / "no.zip"), "-p", PLANS]) == 1
    err = capsys.readouterr().err
    assert "not a dataset folder of" in err and str(elsewhere) in err and "Traceback" not in err
    assert sorted(p.name for p in (trained / "res").iterdir()) == before and not (tmp_path / "no.zip").exists()


# ---------------------------------------------------------------------------------------------- download


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "www"``."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_installs_from_a_url(server, tmp_path, capsys, monkeypatch):
    www, url = server
    shutil.copyfile(UPSTREAM_ZIP, www / "model.zip")
    (www / "page.html").write_text("<html>a page, not the file</html>")
    root = tmp_path / "res"
    models = download_and_install(f"{url}/model.zip", root, progress=False)
    assert [m.model_dir.name for m in models] == [UPSTREAM_MODEL]
    assert (root / DATASET / UPSTREAM_MODEL / "fold_0" / "checkpoint_final.pth").is_file()
    assert not list(root.glob(".tmp-*"))  # the temporary file is gone

    monkeypatch.setenv("pnnunet_results", str(tmp_path / "res2"))
    for target, message in ((f"{url}/missing.zip", "HTTP 404"), (f"{url}/page.html", "not a zip"),
                            ("ftp://example.org/model.zip", "not an http(s) URL"),
                            ("http://127.0.0.1:1/model.zip", "cannot be downloaded")):
        assert model_sharing.main_download([target, "--disable_progress_bar"]) == 1, target
        err = capsys.readouterr().err
        assert target in err and message in err and "Traceback" not in err
    assert _listing(tmp_path / "res2") == []


def test_a_cut_download_and_a_bad_zip_at_a_url_are_named_by_the_url(server, tmp_path):
    """A chunked response that stops early (http.client.IncompleteRead, not an OSError) and a zip whose member
    climbs out: clear errors naming the URL (not the temporary file), nothing left in the results root."""
    www, url = server
    _zip(www / "evil.zip", {**GOOD, "../evil.txt": b"x"})

    class Cut(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"1000\r\n" + b"P" * 100)  # announces 4096 bytes, sends 100, closes
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cut)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    root = tmp_path / "res"
    try:
        cut = f"http://127.0.0.1:{httpd.server_address[1]}/model.zip"
        with pytest.raises(PnnunetError, match="stopped after") as e:
            download_and_install(cut, root, progress=False)
        assert str(e.value).startswith(cut)
    finally:
        httpd.shutdown()
        httpd.server_close()
    with pytest.raises(PnnunetError, match="climbs out") as e:
        download_and_install(f"{url}/evil.zip", root, progress=False)
    assert str(e.value).startswith(f"{url}/evil.zip: member '../evil.txt'") and ".tmp-" not in str(e.value)
    assert _listing(root) == [] and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("member", ["fold_0/checkpoint_final.pdparams", "fold_0/pnnunet/checkpoint_final.pdparams"])
def test_a_zip_with_a_malicious_paddle_checkpoint_installs_but_predicting_refuses_it(tmp_path, images, monkeypatch,
                                                                                    capsys, member):
    """A ``.pdparams`` is a pickle that ``paddle.load`` would run, planted in a shared zip beside the upstream
    ``.pth``. As the fold's checkpoint (which pnnunet prefers to the ``.pth``) it is refused when the model is
    loaded: exit 1, no prediction. As the cached conversion of the ``.pth`` it is ignored and replaced by a
    fresh conversion. Either way nothing of it runs."""
    pytest.importorskip("paddle")
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with zipfile.ZipFile(UPSTREAM_ZIP) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    members[f"{DATASET}/{UPSTREAM_MODEL}/{member}"] = pickle.dumps({"network_weights": Evil()})
    bad = _zip(tmp_path / "shared.zip", members)
    root = tmp_path / "res"
    monkeypatch.setenv("pnnunet_results", str(root))
    assert model_sharing.main_install([str(bad)]) == 0
    from pnnunet.cli import predict

    out = tmp_path / "out"
    code = predict.main(["-i", str(images), "-o", str(out), "-d", "4", "-c", "3d_fullres", "-tr", "nnUNetTrainer",
                         "-p", "nnUNetPlansTiny", "-f", "0", "-npp", "0", "-nps", "0", "--disable_progress_bar"])
    captured = capsys.readouterr()
    err = captured.err
    assert not marker.exists() and "Traceback" not in err
    planted = root / DATASET / UPSTREAM_MODEL / member
    if "/pnnunet/" in member:
        assert code == 0 and (out / f"{CASE}.nii.gz").is_file()
        assert "ignoring the cached conversion" in captured.out + err and "pathlib.Path.touch" in captured.out + err
        from pnnunet.runtime.checkpoints import load_checkpoint

        assert "converted_from" in load_checkpoint(planted)  # replaced by a real conversion
    else:
        assert code == 1 and "refused" in err and "pathlib.Path.touch" in err and str(planted) in err
        assert not list(out.glob("*.nii.gz"))


def test_a_member_inside_another_member_file_is_refused_before_writing(tmp_path):
    model = f"{DATASET}/{UPSTREAM_MODEL}"
    bad = _zip(tmp_path / "clash.zip", {**GOOD, f"{model}/fold_0": b"a file", f"{model}/fold_0/x.pth": b"inside it"})
    with pytest.raises(PnnunetError, match="which the zip also holds as a file") as e:
        install_model_zip(bad, tmp_path / "res")
    assert f"{model}/fold_0/x.pth" in str(e.value)
    assert _listing(tmp_path / "res") == []


@pytest.mark.parametrize("error, says", [(OSError(28, "No space left on device"), "No space left on device"),
                                         (NotImplementedError("compression type 99"), "cannot be extracted"),
                                         (RuntimeError("File is encrypted, password required"), "encrypted")])
def test_an_error_while_extracting_leaves_nothing_behind(tmp_path, monkeypatch, error, says):
    """A full disk, an unsupported compression method or an encrypted member, met after some files were
    extracted: a clear error naming the zip, and no file, temporary or new folder left in the results root."""
    root = tmp_path / "res"
    (root / DATASET).mkdir(parents=True)
    (root / DATASET / "mine.txt").write_text("the user's")
    before = _listing(root)
    calls = []
    copy = shutil.copyfileobj

    def failing(src, dst, *a):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return copy(src, dst, *a)

    monkeypatch.setattr(shutil, "copyfileobj", failing)
    with pytest.raises(PnnunetError, match=says) as e:
        install_model_zip(UPSTREAM_ZIP, root)
    assert str(UPSTREAM_ZIP) in str(e.value) and "nothing was installed" in str(e.value)
    assert len(calls) == 3 and _listing(root) == before


def test_a_folder_that_only_looks_like_a_model_folder_is_not_installed(tmp_path):
    """``T____c`` has two ``__`` but an empty plans name: not a model folder (it used to install, then fail)."""
    bad = _zip(tmp_path / "odd.zip", {f"{DATASET}/T____c/plans.json": b"{}", f"{DATASET}/T____c/dataset.json": b"{}"})
    with pytest.raises(PnnunetError, match="no model folder"):
        install_model_zip(bad, tmp_path / "res")
    assert _listing(tmp_path / "res") == []
