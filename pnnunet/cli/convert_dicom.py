"""``pnnunet_convert_dicom -i DIR_OR_ZIP -o FOLDER [--series UID]``: DICOM series to CASE_0000.nii.gz cases."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pnnunet.cli.common import run_cli
from pnnunet.dataset.dicom import convert_dicom, describe_series, dicom_folder, scan_dicom_folder, select_series
from pnnunet.errors import DatasetError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_convert_dicom",
                                description="Convert every image series of a DICOM folder or zip into "
                                            "CASE_0000.nii.gz + CASE.json (ids, modality, geometry). Localizers, "
                                            "series with missing slices or mixed orientations are skipped and "
                                            "named; files that are not DICOM are ignored with a warning.")
    p.add_argument("-i", required=True, type=Path, help="folder (searched recursively) or .zip of DICOM files")
    p.add_argument("-o", type=Path, default=None, help="output folder (created); required unless --list")
    p.add_argument("--series", default=None, metavar="UID", help="convert only this SeriesInstanceUID")
    p.add_argument("--list", action="store_true", help="only list the series found (UID, modality, files)")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.list:
        with dicom_folder(args.i) as folder:
            series, _ = scan_dicom_folder(folder)
            try:
                usable = len(select_series(series, None, args.i))
            except DatasetError:  # nothing convertible: the listing says why for each series
                if not series:
                    raise
                usable = 0
            print(describe_series(series))
            print(f"{len(series)} series, {usable} convertible")
        return 0
    if args.o is None:
        p = _parser()
        p.error("-o is required (or use --list)")
    cases = convert_dicom(args.i, args.o, args.series)
    for c in cases:
        print(f"{c.image_file}  <- {c.series.label}")
    print(f"{len(cases)} case(s) written to {args.o}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
