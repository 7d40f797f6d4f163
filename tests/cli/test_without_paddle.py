"""Without Paddle installed: the commands that need it print the install hint (exit 1, no traceback);
the others do not import it at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def no_paddle_env(tmp_path_factory) -> dict:
    """An environment in which ``import paddle`` fails as it does when the wheel is missing."""
    blocker = tmp_path_factory.mktemp("no_paddle")
    (blocker / "paddle").mkdir()
    (blocker / "paddle" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'paddle'\", name='paddle')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO)])
    return env


def _run(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("argv", [
    ["-m", "pnnunet.cli.train", "3d_fullres", "0"],
    ["-m", "pnnunet.cli.predict", "-i", "imagesTs", "-o", "out", "-m", "model"],
])
def test_paddle_commands_print_the_install_hint(no_paddle_env, tmp_path, argv):
    done = _run(no_paddle_env, *argv, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "PaddlePaddle is not installed" in done.stderr
    assert 'pip install "pnnunet[cpu]"' in done.stderr and "paddlepaddle-gpu" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_planning_evaluation_and_selection_do_not_import_paddle(no_paddle_env, tmp_path):
    modules = ["pnnunet.cli.plan_and_preprocess", "pnnunet.cli.convert_msd", "pnnunet.cli.evaluate",
               "pnnunet.cli.find_best_config", "pnnunet.cli.ensemble", "pnnunet.cli.apply_postprocessing",
               "pnnunet.cli.plot_overlay", "pnnunet.cli.train", "pnnunet.cli.predict",
               "pnnunet.cli.determine_postprocessing", "pnnunet.cli.accumulate_crossval_results",
               "pnnunet.cli.evaluate_simple", "pnnunet.cli.plot_overlay_pngs",
               "pnnunet.cli.convert_old_nnUNet_dataset",
               "pnnunet.cli.stats", "pnnunet.cli.convert_dicom", "pnnunet.cli.report",
               "pnnunet.cli.move_plans_between_datasets", "pnnunet.cli.model_sharing"]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
           "assert 'paddle' not in sys.modules, 'paddle was imported'\nprint('ok')\n"
    done = _run(no_paddle_env, "-c", code, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
