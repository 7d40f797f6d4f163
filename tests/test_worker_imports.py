"""Background workers start without Paddle (issue 11: a worker that imports Paddle starts ~1 s slower on a
2-core machine and holds ~0.3 GiB more, next to the network it should overlap with).

A spawned or forkserver worker imports the parent's ``__main__`` (for a console script: its ``pnnunet.cli``
module) and the module of its task; both must be Paddle-free. Prediction pools start their workers from a
forkserver (:func:`pnnunet.parallel.worker_context`) where the platform has one.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_MODULES = sorted({e.value.split(":")[0] for e in entry_points(group="console_scripts")
                      if e.value.startswith("pnnunet.")})
TASK_MODULES = ["pnnunet.inference.case_tasks", "pnnunet.parallel", "pnnunet.metrics",
                "pnnunet.preprocessing.run", "pnnunet.planning.fingerprint", "pnnunet.dataset.integrity"]


def _imports_paddle(module: str) -> bool:
    code = f"import sys, {module}; print('paddle' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("module", CLI_MODULES + TASK_MODULES)
def test_what_a_worker_imports_is_paddle_free(module):
    assert not _imports_paddle(module), f"importing {module} imports paddle"


def test_the_checker_sees_a_module_that_imports_paddle():
    pytest.importorskip("paddle")
    assert _imports_paddle("pnnunet.inference.predictor")


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_prediction_workers_come_from_a_paddle_free_forkserver(tmp_path):
    """A prediction pool of a parent that runs Paddle: the workers are forks of the server (not of the parent:
    other pid lineage) and have no Paddle; the server preloaded the task module."""
    pytest.importorskip("paddle")
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os, sys

        def probe():
            return os.getppid(), 'paddle' in sys.modules, 'pnnunet.inference.case_tasks' in sys.modules

        if __name__ == "__main__":
            import pnnunet  # first: Paddle 2.6's zlib crashes libraries loaded after it (test_import_order.py)
            import paddle  # the parent runs Paddle
            from pnnunet.inference.predictor import _pool
            sys.path.insert(0, os.path.dirname(__file__))
            import parent  # probe must be importable by name in the worker
            pool = _pool(1)
            ppid, has_paddle, preloaded = pool.submit(parent.probe).result()
            pool.shutdown()
            print(pool._mp_context.get_start_method(), ppid != os.getpid(), has_paddle, preloaded)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["forkserver", "True", "False", "True"]


def test_the_console_scripts_are_found():
    assert "pnnunet.cli.predict" in CLI_MODULES and len(CLI_MODULES) >= 20
