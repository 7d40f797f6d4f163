"""``pnnunet_app``'s command line: a bad flag is a plain error (exit 1) and starts nothing."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from pnnunet.app.main import main


def test_missing_models_folder_is_a_plain_error(tmp_path, capsys):
    assert main(["--models", str(tmp_path / "nope"), "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert "--models" in err and "no such folder" in err and "fix:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no jobs folder made


def test_upload_limit_must_be_positive(tmp_path, capsys):
    assert main(["--models", str(tmp_path), "--jobs", str(tmp_path / "jobs"), "--max_upload_mb", "0"]) == 1
    assert "--max_upload_mb must be > 0" in capsys.readouterr().err
