"""pnnunet_train's validation options: parsed with their aliases, checked before anything runs."""

from __future__ import annotations

import pytest

from pnnunet.cli.train import _parser, main


@pytest.mark.parametrize("argv, disable_tta, step_size", [
    ([], False, 0.5),
    (["--val_disable_tta", "--val_step_size", "0.25"], True, 0.25),
    (["--val-disable-tta", "-step_size", "1"], True, 1.0),
    (["--val-step-size", "0.75"], False, 0.75),
])
def test_validation_flags_are_parsed(argv, disable_tta, step_size):
    args = _parser().parse_args(["3d_fullres", "0", *argv])
    assert (args.val_disable_tta, args.val_step_size) == (disable_tta, step_size)


def test_bad_step_size_stops_before_training(tmp_path, monkeypatch, capsys):
    pytest.importorskip("paddle")
    for k in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"pnnunet_{k}", str(tmp_path / k))
    assert main(["3d_fullres", "0", "-step_size", "1.5"]) == 1
    err = capsys.readouterr().err
    assert "--val_step_size 1.5: the tile step must be in (0, 1]" in err and "fix:" in err
    assert list(tmp_path.iterdir()) == []  # nothing looked up, nothing written
