"""``pnnunet_convert_old_nnUNet_dataset TASK_FOLDER DatasetXXX_Name``: an nnU-Net v1 raw dataset → the v2 raw layout
(upstream ``nnUNetv2_convert_old_nnUNet_dataset``; reference §1.3). The same conversion as ``pnnunet_convert_msd``,
with upstream's arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, get_roots, run_cli
from pnnunet.dataset.msd import convert_old_nnunet_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_convert_old_nnUNet_dataset",
                                description="Convert an nnU-Net v1 raw dataset (TaskXXX_Name folder with imagesTr, "
                                            "labelsTr, v1 dataset.json) into $pnnunet_raw/DatasetXXX_Name. The "
                                            "source is never modified.")
    p.add_argument("input_folder", type=Path, help="the v1 task folder (a path, with imagesTr/labelsTr inside)")
    p.add_argument("output_dataset_name", help="the new dataset's NAME (not a path), DatasetXXX_Name")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    out = convert_old_nnunet_dataset(args.input_folder, get_roots().raw, args.output_dataset_name,
                                     num_processes=args.np)
    print(f"dataset ready: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
