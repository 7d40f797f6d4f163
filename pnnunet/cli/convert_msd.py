"""``pnnunet_convert_msd``: an MSD/v1 (or foreign v2) dataset folder → ``$pnnunet_raw/DatasetXXX_Name``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, get_roots, run_cli
from pnnunet.dataset.msd import convert_msd_dataset, import_dataset_folder, is_msd_folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_convert_msd",
                                description="Convert an MSD / nnU-Net v1 dataset folder (TaskXXX_Name with 4D or "
                                            "single-channel NIfTI, MSD dataset.json) into the v2 raw layout.")
    p.add_argument("-i", required=True, type=Path, help="the MSD/v1 dataset folder (never modified)")
    p.add_argument("--id", "-overwrite_id", dest="dataset_id", type=int, default=None,
                   help="dataset id (default: the folder's TaskXXX number)")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    roots = get_roots()
    src = args.i.expanduser().absolute()
    if is_msd_folder(src):
        out = convert_msd_dataset(src, roots.raw, dataset_id=args.dataset_id, num_processes=args.np)
    else:
        out = import_dataset_folder(src, roots.raw, dataset_id=args.dataset_id)
    print(f"dataset ready: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
