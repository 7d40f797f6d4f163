"""``pnnunet_report -i IMAGE -s SEG -o DIR``: a PNG and a self-contained HTML report of one segmented case."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pnnunet.cli.common import run_cli
from pnnunet.cli.stats import add_case_args, dataset_json_for
from pnnunet.evaluation.case_report import write_case_report
from pnnunet.evaluation.statistics import case_statistics


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_report",
                                description="Write CASE_report.png (axial/coronal/sagittal views with the labels "
                                            "and a legend) and CASE_report.html (self-contained: the views, the "
                                            "statistics table, model, date, 'not a medical device' notice).")
    add_case_args(p)
    p.add_argument("-o", required=True, type=Path, help="output folder (created)")
    p.add_argument("--model", default=None, help="model description shown in the header (e.g. 'Dataset004 3d_fullres')")
    return p


def _run(args: argparse.Namespace) -> int:
    dj = dataset_json_for(args.dataset, args.s)
    labels = dj["labels"] if dj else None
    stats = case_statistics(args.i, args.s, labels, reference_file=args.ref)
    model_info = {"model": args.model} if args.model else None
    html_path, png_path = write_case_report(args.i, args.s, args.o, labels, stats, model_info, dataset_json=dj)
    print(f"report: {html_path}\npicture: {png_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
