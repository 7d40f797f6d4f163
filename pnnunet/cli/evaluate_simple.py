"""``pnnunet_evaluate_simple GT PRED -l 1 2 [-il IGNORE]``: Dice/IoU of a prediction folder for the given labels,
without dataset.json or plans (upstream ``nnUNetv2_evaluate_simple``; reference §8.1)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, run_cli
from pnnunet.errors import DatasetError
from pnnunet.evaluation.report import format_table
from pnnunet.imageio import SUPPORTED_ENDINGS, reader_writer_for
from pnnunet.metrics import compute_metrics_on_folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_evaluate_simple",
                                description="Evaluate the predictions in PRED against the same-named references in "
                                            "GT for the given labels; the file type is taken from GT's files. "
                                            "Writes summary.json (nnU-Net's schema).")
    p.add_argument("gt_folder", type=Path, help="folder with the reference segmentations")
    p.add_argument("pred_folder", type=Path, help="folder with the predicted segmentations")
    p.add_argument("-l", type=int, nargs="+", required=True, help="labels to evaluate")
    p.add_argument("-il", type=int, default=None, help="ignore label: reference voxels with it are not counted")
    p.add_argument("-o", type=Path, default=None, help="output file (default PRED/summary.json)")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--chill", action="store_true", help="do not fail when references have no prediction")
    p.add_argument("--verbose", action="store_true")
    return p


def file_ending_of_folder(folder: Path) -> tuple[str, Path]:
    """The (longest) supported file ending of the first file in ``folder`` and that file."""
    if not folder.is_dir():
        raise DatasetError(folder, "folder does not exist", "check the path")
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            endings = [e for e in SUPPORTED_ENDINGS if f.name.lower().endswith(e)]
            if endings:
                return max(endings, key=len), f
    raise DatasetError(folder, f"contains no segmentation file ({', '.join(SUPPORTED_ENDINGS)})",
                       "pass the folder with the reference segmentations")


def _run(args: argparse.Namespace) -> int:
    ending, example = file_ending_of_folder(args.gt_folder)
    output = args.o if args.o is not None else args.pred_folder / "summary.json"
    summary = compute_metrics_on_folder(args.gt_folder, args.pred_folder, output, reader_writer_for(ending, example),
                                        ending, args.l, args.il, num_processes=args.np, chill=args.chill)
    print(format_table(summary, {str(label): "label" for label in args.l}, file_ending=ending))
    print(f"summary: {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
