"""Model sharing in nnU-Net v2's zip layout (issue 11):

- ``pnnunet_export_model_to_zip -d D -o ZIP [-c ...] [-tr] [-p] [-f ...] [-chk ...] [--not_strict] [--exp_cv_preds]``
- ``pnnunet_install_pretrained_model_from_zip ZIP [--overwrite]``
- ``pnnunet_download_pretrained_model_by_url URL [--overwrite]``

Flags as upstream's ``nnUNetv2_*`` commands; zips go both ways (an upstream zip installs and predicts
here, a pnnunet zip carries ``.pdparams`` checkpoints). Library code: :mod:`pnnunet.inference.model_zip`,
:mod:`pnnunet.inference.model_download`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pnnunet.cli.common import get_roots, run_cli
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS, DEFAULT_TRAINER, UPSTREAM_PLANS, UPSTREAM_TRAINER
from pnnunet.inference.model_download import download_and_install
from pnnunet.inference.model_zip import OVERWRITE_FLAG, export_model_zip, install_model_zip

LICENSE_NOTE = ("note: pretrained weights are subject to the licence of the data they were trained on (some forbid "
                "commercial use); check it before you use them")


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_export_model_to_zip",
                                description="Write a trained model (its folds' checkpoints, plans.json, dataset.json, "
                                            "cross-validation summaries and postprocessing, and what "
                                            "pnnunet_find_best_config wrote) into a zip in nnU-Net v2's layout, "
                                            "for pnnunet_install_pretrained_model_from_zip (or nnU-Net v2's, for "
                                            "an upstream model).")
    p.add_argument("-d", dest="dataset", required=True,
                   help="dataset in the results folder: id (4), name (Dataset004_Hippocampus) or unique name")
    p.add_argument("-o", dest="output", required=True, type=Path, help="the zip file to write")
    p.add_argument("-c", nargs="+", default=None,
                   help="configurations (default: every configuration trained with -tr/-p)")
    p.add_argument("-tr", default=None, help=f"trainer (default {DEFAULT_TRAINER}, else nnU-Net's {UPSTREAM_TRAINER})")
    p.add_argument("-p", default=None, help=f"plans name (default {DEFAULT_PLANS}, else nnU-Net's {UPSTREAM_PLANS})")
    p.add_argument("-f", nargs="+", default=None, help="folds, e.g. 0 1 2 3 4 or all (default: every trained fold)")
    p.add_argument("-chk", nargs="+", default=["checkpoint_final"],
                   help="checkpoints to include (default checkpoint_final; each fold's .pdparams, else its .pth)")
    p.add_argument("--not_strict", action="store_true",
                   help="skip missing configurations, folds and checkpoints (with a warning) instead of failing")
    p.add_argument("--exp_cv_preds", action="store_true",
                   help="also the cross-validation predictions (fold_K/validation/, crossval_results_folds_*/)")
    p.add_argument("--verbose", action="store_true")
    return p


def _trainer_and_plans(dataset_dir: Path, trainer: str | None, plans: str | None) -> tuple[str, str]:
    """pnnunet's default names for those not given, else upstream's when only such model folders exist."""
    ours = (trainer or DEFAULT_TRAINER, plans or DEFAULT_PLANS)
    if trainer is not None and plans is not None or any(dataset_dir.glob(f"{ours[0]}__{ours[1]}__*")):
        return ours
    theirs = (trainer or UPSTREAM_TRAINER, plans or UPSTREAM_PLANS)
    return theirs if any(dataset_dir.glob(f"{theirs[0]}__{theirs[1]}__*")) else ours


def _export(args: argparse.Namespace) -> int:
    roots = get_roots()
    name = resolve_dataset(args.dataset, roots.results, None, import_folders=False)
    trainer, plans = _trainer_and_plans(roots.results / name, args.tr, args.p)
    export_model_zip(roots.results, name, args.output, args.c, trainer, plans, folds=args.f, checkpoints=args.chk,
                     strict=not args.not_strict, crossval_predictions=args.exp_cv_preds)
    return 0


def _install_parser(prog: str, what: str, help_: str, download: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=f"Install {what} into $pnnunet_results (nnU-Net v2's zip "
                                                       "layout, pnnunet's or upstream's models); then pnnunet_predict "
                                                       "-d/-c/-tr/-p or -m runs it. Files of an installed model are "
                                                       f"not replaced without {OVERWRITE_FLAG}.")
    p.add_argument("source", metavar=what.split()[-1].upper(), help=help_)
    p.add_argument(OVERWRITE_FLAG, action="store_true",
                   help="replace files of an already installed model that differ from the zip's")
    if download:
        p.add_argument("--disable_progress_bar", "--no_pbar", dest="no_pbar", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p


def _install(args: argparse.Namespace) -> int:
    print(LICENSE_NOTE)
    install_model_zip(args.source, get_roots().results, overwrite=args.overwrite)
    return 0


def _download(args: argparse.Namespace) -> int:
    print(LICENSE_NOTE)
    download_and_install(args.source, get_roots().results, overwrite=args.overwrite, progress=not args.no_pbar)
    return 0


def main_export(argv: Sequence[str] | None = None) -> int:
    return run_cli(_export, _export_parser(), argv)


def main_install(argv: Sequence[str] | None = None) -> int:
    return run_cli(_install, _install_parser("pnnunet_install_pretrained_model_from_zip", "a model zip",
                                             "the zip file"), argv)


def main_download(argv: Sequence[str] | None = None) -> int:
    return run_cli(_download, _install_parser("pnnunet_download_pretrained_model_by_url", "a model zip from a url",
                                              "http(s) URL of the zip", download=True), argv)
