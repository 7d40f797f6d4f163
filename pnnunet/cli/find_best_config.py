"""``pnnunet_find_best_config``: pick the best configuration/ensemble and its postprocessing (reference §8.2)."""

from __future__ import annotations

import argparse
from typing import Sequence

from pnnunet.cli.common import add_dataset_arg, default_num_processes, get_roots, run_cli
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS, DEFAULT_TRAINER, parse_fold
from pnnunet.evaluation.find_best import find_best_configuration
from pnnunet.fileio import remove_stale_temporaries
from pnnunet.postprocessing.determine import describe_postprocessing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_find_best_config",
                                description="Compare the cross-validation results of trained configurations and "
                                            "of every pair ensemble, determine the postprocessing of the best, and "
                                            "write inference_instructions.json/.txt and postprocessing.json into "
                                            "the dataset's results folder.")
    add_dataset_arg(p)
    p.add_argument("-c", nargs="+", default=None,
                   help="configurations (default: those of 2d 3d_fullres 3d_lowres 3d_cascade_fullres that were "
                        "trained)")
    p.add_argument("-tr", nargs="+", default=[DEFAULT_TRAINER], help=f"trainer(s) (default {DEFAULT_TRAINER})")
    p.add_argument("-p", nargs="+", default=[DEFAULT_PLANS], help=f"plans name(s) (default {DEFAULT_PLANS})")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--disable_ensembling", "--disable-ensembling", action="store_true",
                   help="compare single models only")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    roots = get_roots()
    name = resolve_dataset(args.dataset, roots.raw, roots.preprocessed, dataset_id=args.dataset_id)
    remove_stale_temporaries(roots.results / name, recursive=True)  # left by a killed run
    result = find_best_configuration(name, roots.results, roots.preprocessed, configurations=args.c,
                                     trainer=args.tr, plans_name=args.p, folds=[parse_fold(f) for f in args.f],
                                     allow_ensembling=not args.disable_ensembling, num_processes=args.np)
    print()
    print(result.table())
    for note in result.notes:
        print(f"note: {note}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print()
    print(f"selected: {result.best.name}")
    print(describe_postprocessing(result.postprocessing, {int(k): v for k, v in result.names.items()
                                                         if k.isdigit()}))
    print()
    print(result.files["instructions"].read_text().rstrip())
    print()
    for what, path in result.files.items():
        print(f"{what}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
