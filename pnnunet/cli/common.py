"""Shared CLI plumbing: error handling, logging, roots, common flags.

A CLI module only maps arguments to library calls; user errors (:class:`PnnunetError`) become a
one-paragraph message and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from pnnunet.errors import PnnunetError
from pnnunet.paths import Roots, resolve_roots

log = logging.getLogger("pnnunet")


def default_num_processes(cap: int = 4) -> int:
    return max(1, min(cap, os.cpu_count() or 1))


class _StdoutHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is when a record is emitted."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it; stdout is looked up per record
        pass


class MarkedFormatter(logging.Formatter):
    """The message only, with ``warning: `` / ``error: `` in front of WARNING and ERROR records (and on each
    continuation line indented), so a fallback or a skipped case stands out among the progress lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if record.levelno >= logging.WARNING:
            mark = "warning: " if record.levelno < logging.ERROR else "error: "
            record = copy.copy(record)
            record.message = mark + record.message.replace("\n", "\n" + " " * len(mark))
        return super().formatMessage(record)


def setup_logging(verbose: bool = False) -> logging.Logger:
    """Print the records of the ``pnnunet`` logger (and its children) to stdout, message only (warnings
    and errors marked, :class:`MarkedFormatter`).

    The ``pnnunet`` logger is configured itself (own handler, own level, no propagation), not the
    root logger: importing Paddle 2.6 sets the root logger's level to WARNING
    (``paddle.distributed.utils.log_utils.get_logger(name="root")``), and pnnunet's INFO lines
    (progress, epoch lines, the training log) must not depend on who configured root first.
    Calling it again replaces the handler; :func:`run_cli` restores the previous state afterwards.
    """
    logger = logging.getLogger("pnnunet")
    for h in [h for h in logger.handlers if isinstance(h, _StdoutHandler)]:
        logger.removeHandler(h)
    handler = _StdoutHandler()
    handler.setFormatter(MarkedFormatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger


def get_roots() -> Roots:
    roots = resolve_roots()
    note = roots.describe_defaults()
    if note:
        print(f"pnnunet: {note}", file=sys.stderr)
    return roots


def add_dataset_arg(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    parser.add_argument("-d", dest="dataset", nargs="+" if multiple else None, default=None,
                        help="dataset: id (4, 004), name (Dataset004_Hippocampus, Hippocampus) or a folder "
                             "(MSD/v1 or v2 layout; converted into the raw root). Optional when only one dataset exists.")
    parser.add_argument("--id", dest="dataset_id", type=int, default=None,
                        help="dataset id to use when -d is a folder without a TaskXXX/DatasetXXX prefix")


# count flags shared by several commands: argparse dest -> (the flag as the user writes it, smallest value)
COUNT_FLAGS = {"np": ("-np", 1), "npfp": ("-npfp", 1), "npp": ("-npp", 0), "nps": ("-nps", 0),
               "num_parts": ("-num_parts", 1), "part_id": ("-part_id", 0), "num_gpus": ("-num_gpus", 1),
               "tile_batch_size": ("--tile_batch_size", 1)}


def check_count_flags(args: argparse.Namespace) -> None:
    """A :class:`PnnunetError` naming the flag when a process/part/batch count is below its minimum."""
    for dest, (flag, minimum) in COUNT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None and value < minimum:
            raise PnnunetError(f"{flag} {value}: must be at least {minimum}\n  fix: give {flag} {max(minimum, 1)} "
                               "or more" + (" (0 = work in the main process)" if minimum == 0 else ""))


def run_cli(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None) -> int:
    """Parse ``argv`` strictly, run ``body`` and turn user errors into exit code 1."""
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")  # Paddle's import-time notice
    logger = logging.getLogger("pnnunet")
    saved = logger.level, logger.propagate, list(logger.handlers)
    setup_logging(getattr(args, "verbose", False))
    try:
        check_count_flags(args)
        return body(args)
    except PnnunetError as e:
        print(f"pnnunet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pnnunet: interrupted; finished outputs are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    finally:  # a CLI called in-process (tests, notebooks) leaves the logger as it found it
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
