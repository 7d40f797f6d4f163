"""``pnnunet_accumulate_crossval_results DATASET -c CONFIG``: merge the folds' validation predictions of a model
into one folder and evaluate them (upstream ``nnUNetv2_accumulate_crossval_results``; reference §8.2 step 2)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, get_roots, run_cli
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS, DEFAULT_TRAINER, model_dir_name, parse_fold
from pnnunet.errors import DatasetError
from pnnunet.evaluation.accumulate import accumulate_cv_results, crossval_folder_name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_accumulate_crossval_results",
                                description="Copy the validation predictions of the given folds into one folder "
                                            "(default MODEL/crossval_results_folds_X_Y) and evaluate them against "
                                            "the dataset's gt_segmentations.")
    p.add_argument("dataset_name_or_id", help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration")
    p.add_argument("-o", type=Path, default=None, help="output folder (must be empty or not exist); default "
                                                      "MODEL/crossval_results_folds_<folds>")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    p.add_argument("-p", default=DEFAULT_PLANS, help=f"plans name (default {DEFAULT_PLANS})")
    p.add_argument("-tr", default=DEFAULT_TRAINER, help=f"trainer (default {DEFAULT_TRAINER})")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    roots = get_roots()
    name = resolve_dataset(args.dataset_name_or_id, roots.raw, roots.preprocessed)
    if args.o is not None and args.o.is_dir() and any(args.o.iterdir()):
        raise DatasetError(args.o, "output folder exists and is not empty",
                           "pass an empty or new folder to -o (nothing in it is overwritten)")
    model_dir = roots.results / name / model_dir_name(args.tr, args.p, args.c)
    folds = [parse_fold(f) for f in args.f]
    summary = accumulate_cv_results(model_dir, folds, args.o, roots.preprocessed / name / "gt_segmentations",
                                    num_processes=args.np)
    out = args.o if args.o is not None else model_dir / crossval_folder_name(folds)
    print(f"{len(summary['metric_per_case'])} cases, foreground mean Dice {summary['foreground_mean']['Dice']:.4f}")
    print(f"merged predictions and summary.json: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
