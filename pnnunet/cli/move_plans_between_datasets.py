"""``pnnunet_move_plans_between_datasets -s SOURCE -t TARGET -sp PLANS [-tp NEW_PLANS]``: give a dataset
another dataset's plans, the first step of fine-tuning a model trained on SOURCE (upstream's
``nnUNetv2_move_plans_between_datasets``; models_and_scale §5)."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from pnnunet.cli.common import get_roots, run_cli
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.errors import PnnunetError
from pnnunet.planning.move_plans import move_plans_between_datasets

log = logging.getLogger("pnnunet")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pnnunet_move_plans_between_datasets",
        description="Copy the plans of SOURCE into TARGET's preprocessed folder (dataset name, plans name, data "
                    "identifiers and image reader rewritten for TARGET; intensity properties kept), so that TARGET "
                    "can be preprocessed and trained with SOURCE's network, e.g. to fine-tune a SOURCE model with "
                    "pnnunet_train --pretrained_weights.")
    p.add_argument("-s", required=True, help="source dataset: id, name or DatasetXXX_Name (its plans are read from "
                                             "the preprocessed root)")
    p.add_argument("-t", required=True, help="target dataset: id, name, DatasetXXX_Name or a dataset folder (its raw "
                                             "folder picks the image reader)")
    p.add_argument("-sp", required=True, help="source plans name: nnUNetPlans for nnUNetPlans.json")
    p.add_argument("-tp", default=None, help="target plans name (default: the source's; better a new one such as "
                                             "nnUNetPlans_from_Dataset004, so TARGET's own plans stay)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing target plans file whose content differs (not done by default)")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    roots = get_roots()
    source = resolve_dataset(args.s, roots.raw, roots.preprocessed)
    source_dir = roots.preprocessed / source
    if not source_dir.is_dir():
        raise PnnunetError(f"{source_dir}: the source dataset has no preprocessed folder (no plans)\n"
                           f"  fix: plan it first (pnnunet_plan_experiment -d {source}) or put its plans file there")
    target = resolve_dataset(args.t, roots.raw)
    if not (roots.raw / target / "dataset.json").is_file():
        raise PnnunetError(f"{roots.raw / target}: the target dataset has no dataset.json in the raw root\n"
                           "  fix: put the target dataset (dataset.json, imagesTr/, labelsTr/) under the raw root, or "
                           "pass its folder with -t")
    tp = args.tp or args.sp
    moved = move_plans_between_datasets(source_dir, roots.raw / target, roots.preprocessed / target, args.sp, tp,
                                        overwrite=args.overwrite)
    if not moved.written:
        print(f"{moved.path}: already holds these plans, unchanged")
    else:
        print(f"{'replaced' if moved.replaced else 'wrote'} {moved.path} (plans {args.sp} of {source} for {target})")
    if moved.shared_identifiers:
        log.warning("data identifier(s) %s are used by another plans file of %s too: preprocessing with %s would "
                    "replace those cases; a new -tp avoids it", ", ".join(moved.shared_identifiers), target, tp)
    print(f"next: pnnunet_preprocess -d {target} -p {tp} -c CONFIG, then "
          f"pnnunet_train CONFIG FOLD -d {target} -p {tp} --pretrained_weights SOURCE_CHECKPOINT")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
