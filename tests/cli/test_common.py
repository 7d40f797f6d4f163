"""CLI logging: pnnunet's lines reach stdout and the training log whoever configured the root logger
(importing Paddle 2.6 sets the root logger's level to WARNING)."""

import argparse
import io
import logging
import subprocess
import sys

import pytest

from pnnunet.cli.common import run_cli, setup_logging
from pnnunet.cli.train import add_training_log, log as train_log
from pnnunet.training.progress import ProgressLog


@pytest.fixture
def hostile_root():
    """The root logger as Paddle 2.6 leaves it: level WARNING, its own stderr-style handler."""
    root = logging.getLogger()
    saved = root.level, root.propagate, list(root.handlers)
    stream = io.StringIO()
    root.addHandler(logging.StreamHandler(stream))
    root.setLevel(logging.WARNING)
    yield stream
    root.setLevel(saved[0])
    root.propagate = saved[1]
    root.handlers[:] = saved[2]


def _epoch_line() -> str:
    progress = ProgressLog()
    progress.record_epoch(0.01, 0.0, 0.5, 0.6, [0.7, 0.8])
    return progress.epoch_line(0)


def test_pnnunet_lines_reach_stdout_and_training_log_after_root_is_configured(hostile_root, tmp_path, capsys):
    line = _epoch_line()

    def body(_args):
        logging.getLogger().setLevel(logging.WARNING)  # what a lazy `import paddle` (2.6) does inside a command
        handler = add_training_log(tmp_path / "training_log.txt")
        try:
            logging.getLogger("pnnunet.training.trainer").info(line)
            logging.getLogger("pnnunet.training.trainer").debug("not shown without --verbose")
        finally:
            train_log.removeHandler(handler)
            handler.close()
        return 0

    assert run_cli(body, argparse.ArgumentParser(), []) == 0
    out = capsys.readouterr().out
    assert line in out and "not shown" not in out
    log_text = (tmp_path / "training_log.txt").read_text()
    assert line in log_text and "not shown" not in log_text
    assert hostile_root.getvalue() == ""  # not printed twice through the root logger's handler


def test_run_cli_restores_the_pnnunet_logger(hostile_root):
    logger = logging.getLogger("pnnunet")
    before = logger.level, logger.propagate, list(logger.handlers)
    run_cli(lambda _args: 0, argparse.ArgumentParser(), [])
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_setup_logging_twice_prints_once(hostile_root, capsys):
    logger = logging.getLogger("pnnunet")
    saved = logger.level, logger.propagate, list(logger.handlers)
    try:
        setup_logging()
        setup_logging(verbose=True)
        logging.getLogger("pnnunet.x").debug("debug line")
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
    assert capsys.readouterr().out.count("debug line") == 1


def test_info_lines_survive_importing_paddle_after_setup():
    """The real import order of a command: logging set up first, Paddle imported lazily later."""
    code = ("import logging, warnings; warnings.simplefilter('ignore')\n"
            "from pnnunet.cli.common import setup_logging\n"
            "setup_logging()\n"
            "import paddle\n"
            "logging.getLogger('pnnunet.training.trainer').info('epoch line after import paddle')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "epoch line after import paddle" in out.stdout


def test_issue_14_warnings_are_marked_on_stdout_and_in_the_training_log(tmp_path, capsys):
    def body(_args):
        handler = add_training_log(tmp_path / "training_log.txt")
        try:
            logging.getLogger("pnnunet.dataset").warning("case x skipped\nsecond line")
            logging.getLogger("pnnunet.dataset").info("plain line")
        finally:
            train_log.removeHandler(handler)
            handler.close()
        return 0

    assert run_cli(body, argparse.ArgumentParser(), []) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["warning: case x skipped", "         second line", "plain line"]
    log_lines = (tmp_path / "training_log.txt").read_text().splitlines()
    assert log_lines[0].split(" ", 2)[2] == "warning: case x skipped" and "warning" not in log_lines[2]
