"""Shared CLI plumbing: error handling, logging, roots, common flags.

A CLI module only maps arguments to library calls; user errors (:class:`PnnunetError`) become a
one-paragraph message and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
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


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stdout,
                        force=True)


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


def run_cli(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None) -> int:
    """Parse ``argv`` strictly, run ``body`` and turn user errors into exit code 1."""
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")  # Paddle's import-time notice
    setup_logging(getattr(args, "verbose", False))
    try:
        return body(args)
    except PnnunetError as e:
        print(f"pnnunet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pnnunet: interrupted; finished outputs are kept, rerun the same command to resume", file=sys.stderr)
        return 130
