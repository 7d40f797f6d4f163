"""``pnnunet_apply_postprocessing -i IN -o OUT -pp_json FILE``: apply the selected postprocessing (reference §8.4)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, run_cli
from pnnunet.postprocessing.apply import apply_postprocessing_to_folder, load_postprocessing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_apply_postprocessing",
                                description="Apply postprocessing.json (from pnnunet_find_best_config, or "
                                            "upstream nnU-Net's postprocessing.json) to every segmentation of IN, "
                                            "writing OUT. IN is never modified.")
    p.add_argument("-i", required=True, type=Path, help="input folder with segmentations")
    p.add_argument("-o", required=True, type=Path, help="output folder (must differ from -i)")
    p.add_argument("-pp_json", required=True, type=Path, help="postprocessing.json")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("-plans_json", type=Path, default=None, help="plans file (default IN/plans.json if present)")
    p.add_argument("-dataset_json", type=Path, default=None, help="dataset.json (default IN/dataset.json)")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    steps = load_postprocessing(args.pp_json)
    written = apply_postprocessing_to_folder(args.i, args.o, steps, dataset_json=args.dataset_json,
                                             plans=args.plans_json, num_processes=args.np)
    what = ", ".join(f"{s.fn_name}({s.kwargs})" for s in steps) or "no operation (files copied)"
    print(f"postprocessed {len(written)} files into {args.o}: {what}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
