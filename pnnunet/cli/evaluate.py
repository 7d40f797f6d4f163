"""``pnnunet_evaluate -ref REF -pred PRED``: Dice/IoU per case and class as JSON, CSV and a table (reference §8.1)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import add_dataset_arg, default_num_processes, get_roots, run_cli
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.errors import DatasetError
from pnnunet.evaluation.report import class_names, evaluate_folder, format_table, zip_predictions
from pnnunet.fileio import load_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_evaluate",
                                description="Evaluate a folder of predictions against reference segmentations: "
                                            "per-case and per-class Dice, IoU, TP/FP/FN as summary.json "
                                            "(nnU-Net's schema) and summary.csv, printed as a table.")
    p.add_argument("-ref", required=True, type=Path, help="folder with the reference segmentations")
    p.add_argument("-pred", required=True, type=Path, help="folder with the predictions (same file names)")
    add_dataset_arg(p)
    p.add_argument("-djfile", type=Path, default=None,
                   help="dataset.json giving labels and file ending (default: -d's, else PRED/dataset.json, "
                        "else the only dataset's)")
    p.add_argument("-pfile", type=Path, default=None, help="plans file (only to pick the image reader)")
    p.add_argument("-o", type=Path, default=None, help="summary.json to write (default PRED/summary.json); "
                                                      "the CSV goes beside it")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--chill", action="store_true", help="do not fail when references have no prediction")
    p.add_argument("--zip", type=Path, default=None, metavar="FILE",
                   help="also pack the predictions into FILE as flat CASE<file_ending> entries (for submissions)")
    p.add_argument("--per_case", "--per-case", action="store_true", help="also print the Dice of every case")
    p.add_argument("--verbose", action="store_true")
    return p


def _dataset_files(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """dataset.json (and plans, if known) from -djfile, -d, the prediction folder or the only dataset."""
    if args.djfile is not None:
        return args.djfile, args.pfile
    if args.dataset is None and (args.pred / "dataset.json").is_file():
        return args.pred / "dataset.json", args.pfile

    roots = get_roots()
    name = resolve_dataset(args.dataset, roots.raw, roots.preprocessed, dataset_id=args.dataset_id)
    for folder in (roots.preprocessed / name, roots.raw / name):
        if (folder / "dataset.json").is_file():
            plans = args.pfile
            if plans is None and (roots.preprocessed / name / "pnnunetPlans.json").is_file():
                plans = roots.preprocessed / name / "pnnunetPlans.json"
            return folder / "dataset.json", plans
    raise DatasetError(roots.raw / name, "has no dataset.json", "pass -djfile")


def _run(args: argparse.Namespace) -> int:
    dj_file, plans = _dataset_files(args)
    if not dj_file.is_file():
        raise DatasetError(dj_file, "dataset.json not found", "check the path given to -djfile")
    dataset_json = load_json(dj_file)
    output = args.o if args.o is not None else args.pred / "summary.json"
    summary = evaluate_folder(args.ref, args.pred, dataset_json, output, plans=plans, num_processes=args.np,
                              chill=args.chill)
    print(format_table(summary, class_names(dataset_json), per_case=args.per_case,
                       file_ending=dataset_json["file_ending"]))
    print(f"summary: {output} and {output.with_suffix('.csv')}")
    if args.zip is not None:
        entries = zip_predictions(args.pred, dataset_json["file_ending"], args.zip)
        print(f"zip: {args.zip} ({len(entries)} files, flat)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
