"""``pnnunet_plot_overlay_pngs -d DATASET -o OUT``: one PNG per training case of a dataset, the slice with the most
foreground with its labels over the image (upstream ``nnUNetv2_plot_overlay_pngs``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import default_num_processes, get_roots, run_cli
from pnnunet.dataset.cases import get_training_cases
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS
from pnnunet.errors import DatasetError
from pnnunet.evaluation.overlay import save_overlay_png, save_preprocessed_overlay_png
from pnnunet.imageio import reader_writer_for
from pnnunet.parallel import map_in_pool
from pnnunet.plans import ConfigurationPlan, load_plans
from pnnunet.preprocessing.storage import list_cases


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_plot_overlay_pngs",
                                description="Plot PNG overlays of the slice with the most foreground of every "
                                            "training case (spacing is not taken into account).")
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-o", required=True, type=Path, help="output folder")
    p.add_argument("-np", type=int, default=default_num_processes(), help="worker processes")
    p.add_argument("-channel_idx", type=int, default=0, help="image channel (0 = _0000; default 0)")
    p.add_argument("--use_raw", action="store_true", help="plot the raw data (default: the preprocessed data)")
    p.add_argument("-p", default=DEFAULT_PLANS, help=f"plans name, without --use_raw (default {DEFAULT_PLANS})")
    p.add_argument("-c", default=None, help="configuration, without --use_raw (default 3d_fullres if planned, "
                                            "else 2d)")
    p.add_argument("-overlay_intensity", type=float, default=0.6, help="overlay opacity (default 0.6)")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    roots = get_roots()
    name = resolve_dataset(args.d, roots.raw, roots.preprocessed)
    args.o.mkdir(parents=True, exist_ok=True)
    if args.use_raw:
        raw = roots.raw / name
        dj = load_dataset_json(raw / "dataset.json")
        cases = get_training_cases(raw, dj)
        example = next(iter(cases.values()))["images"][0]
        rw = reader_writer_for(dj["file_ending"], example, dj.get("overwrite_image_reader_writer"))
        jobs = [(c["images"], c["label"], args.o / f"{case}.png", rw, None, args.channel_idx, args.overlay_intensity)
                for case, c in cases.items()]
        map_in_pool(save_overlay_png, jobs, args.np, progress=False)
    else:
        plans_file = roots.preprocessed / name / f"{args.p}.json"
        if not plans_file.is_file():
            raise DatasetError(plans_file, "plans not found", f"run pnnunet_plan_and_preprocess -d {name} first, "
                                                              "or pass --use_raw")
        plans = load_plans(plans_file)
        config = args.c or ("3d_fullres" if "3d_fullres" in plans["configurations"] else "2d")
        folder = roots.preprocessed / name / ConfigurationPlan.from_plans(plans, config, plans_file).data_identifier
        cases = list_cases(folder)
        if not cases:
            raise DatasetError(folder, "no preprocessed cases", f"run pnnunet_preprocess -d {name} -c {config}, "
                                                                "or pass --use_raw")
        jobs = [(folder, case, args.o / f"{case}.png", args.channel_idx, args.overlay_intensity) for case in cases]
        map_in_pool(save_preprocessed_overlay_png, jobs, args.np, progress=False)
    print(f"wrote {len(jobs)} overlays to {args.o}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
