"""``pnnunet_ensemble -i F1 F2 ... -o OUT``: average the probabilities of prediction folders (reference §8.3)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, run_cli
from pnnunet.inference.ensemble import ensemble_folders


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_ensemble",
                                description="Ensemble prediction folders made with --save_probabilities: average "
                                            "the .npz probabilities of every case and write the segmentations.")
    p.add_argument("-i", nargs="+", required=True, type=Path, help="prediction folders (two or more)")
    p.add_argument("-o", required=True, type=Path, help="output folder")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("--save_npz", "--save-npz", action="store_true", help="also save the averaged probabilities")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    written = ensemble_folders(args.i, args.o, save_npz=args.save_npz, num_processes=args.np)
    print(f"ensembled {len(written)} cases from {len(args.i)} folders into {args.o}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
