"""``pnnunet_determine_postprocessing -i FOLDER -ref GT``: select the largest-component postprocessing on a folder
of predictions (upstream ``nnUNetv2_determine_postprocessing``; reference §8.4)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, run_cli
from pnnunet.postprocessing.determine import describe_postprocessing, determine_postprocessing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_determine_postprocessing",
                                description="Decide which 'keep the largest connected component' steps improve the "
                                            "Dice of the predictions in -i against -ref; writes "
                                            "postprocessing.json and the postprocessed files (postprocessed/) into "
                                            "the input folder. The predictions are never modified.")
    p.add_argument("-i", required=True, type=Path, help="input folder with predicted segmentations")
    p.add_argument("-ref", required=True, type=Path, help="folder with the reference segmentations (same names)")
    p.add_argument("-plans_json", type=Path, default=None, help="plans file (default: INPUT/plans.json)")
    p.add_argument("-dataset_json", type=Path, default=None, help="dataset.json (default: INPUT/dataset.json)")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--remove_postprocessed", action="store_true",
                   help="do not keep the postprocessed files (INPUT/postprocessed)")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    pp = determine_postprocessing(args.i, args.ref, dataset_json=args.dataset_json, plans=args.plans_json,
                                  num_processes=args.np)
    print(describe_postprocessing(pp))
    if args.remove_postprocessed:
        shutil.rmtree(args.i / "postprocessed", ignore_errors=True)
    print(f"postprocessing: {args.i / 'postprocessing.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
