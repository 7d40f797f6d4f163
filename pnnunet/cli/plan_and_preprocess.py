"""``pnnunet_plan_and_preprocess`` (and the split-out fingerprint / plan / preprocess commands)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import add_dataset_arg, default_num_processes, get_roots, run_cli
from pnnunet.dataset.cases import get_training_cases
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.dataset.integrity import verify_dataset_integrity
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS
from pnnunet.errors import PnnunetError
from pnnunet.fileio import remove_stale_temporaries
from pnnunet.imageio import reader_writer_by_name
from pnnunet.locks import hold_lock, preprocessing_lock
from pnnunet.paths import Roots
from pnnunet.planning.planner import PLANNER_ALIASES, PLANNER_PRESETS
from pnnunet.planning.run import fingerprint_dataset, plan_dataset
from pnnunet.plans import load_plans
from pnnunet.preprocessing.run import preprocess_dataset
from pnnunet.preprocessing.storage import DEFAULT_STORAGE, STORAGE_FORMATS

DEFAULT_CONFIGS = ("2d", "3d_fullres", "3d_lowres")


def _description(fingerprint: bool, plan: bool, preprocess: bool) -> str:
    if fingerprint and plan and preprocess:
        return "Fingerprint, plan and preprocess a dataset like nnU-Net v2."
    if fingerprint:
        return ("Extract the dataset fingerprint (spacings, shapes, foreground intensities) into "
                "$pnnunet_preprocessed/DatasetXXX_Name/dataset_fingerprint.json, like nnU-Net v2.")
    if plan:
        return ("Plan the configurations (2d, 3d_fullres, 3d_lowres + 3d_cascade_fullres) from the dataset "
                "fingerprint into the plans file (pnnunetPlans.json), like nnU-Net v2; run "
                "pnnunet_extract_fingerprint first.")
    return ("Preprocess the training cases for the configurations of an existing plans file (crop, normalize, "
            "resample) into $pnnunet_preprocessed/DatasetXXX_Name/<plans>_<configuration>/, like nnU-Net v2; "
            "run pnnunet_plan_experiment first.")


def _parser(prog: str, fingerprint: bool, plan: bool, preprocess: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=_description(fingerprint, plan, preprocess))
    add_dataset_arg(p, multiple=True)
    if fingerprint:
        p.add_argument("-npfp", type=int, default=None, help="processes for the fingerprint (default: -np)")
        p.add_argument("--verify_dataset_integrity", "--verify-dataset-integrity", action="store_true",
                       help="check every case (channels, geometry, label values, NaN) before anything else")
    if plan:
        p.add_argument("-pl", default="default", help="planner preset: default (nnU-Net's ExperimentPlanner), tiny "
                                                       "(small nets for demos/CI; plans pnnunetTinyPlans), or upstream's "
                                                       "residual-encoder presets nnUNetPlannerResEncM / L / XL (aliases "
                                                       "ResEncM / ResEncL / ResEncXL; 8 / 24 / 40 GB GPU targets, plans "
                                                       "nnUNetResEncUNet{M,L,XL}Plans)")
        p.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory target in GB (default 8)")
        p.add_argument("-overwrite_target_spacing", type=float, nargs="+", default=None,
                       help="replace the full-resolution target spacing (3 values, reader axis order)")
        p.add_argument("-overwrite_plans_name", default=None, help=f"plans name (default {DEFAULT_PLANS})")
    else:
        p.add_argument("-plans_name", "-p", dest="overwrite_plans_name", default=None,
                       help=f"plans name (default {DEFAULT_PLANS})")
    if preprocess:
        p.add_argument("-c", nargs="+", default=list(DEFAULT_CONFIGS),
                       help="configurations to preprocess (default 2d 3d_fullres 3d_lowres; missing ones are skipped)")
        p.add_argument("--storage", choices=list(STORAGE_FORMATS), default=DEFAULT_STORAGE,
                       help="b2nd (default): compressed Blosc2 arrays as upstream nnU-Net; npy: uncompressed, "
                            "memory-mapped (several times the disk; for machines where decompression is the "
                            "bottleneck of training)")
        p.add_argument("--no_share", "--no-share", action="store_true",
                       help="give every configuration its own copy of the cases (by default a configuration whose "
                            "preprocessing is identical to an earlier one's, e.g. 2d and 3d_fullres at the same "
                            "spacing, points to that one's folder)")
    if fingerprint and plan and preprocess:
        p.add_argument("--no_pp", "--no-pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("-np", type=int, default=default_num_processes(),
                   help=f"worker processes (default {default_num_processes()}); lower it if RAM runs out")
    p.add_argument("--clean", action="store_true", help="recompute fingerprint / redo preprocessing from scratch")
    p.add_argument("--no_pbar", "--no-pbar", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true")
    return p


def _datasets(args: argparse.Namespace, roots: Roots) -> list[str]:
    specs = args.dataset or [None]
    return [resolve_dataset(s, roots.raw, roots.preprocessed, dataset_id=args.dataset_id) for s in specs]


def _summary(plans: dict, preprocessed_dir: Path) -> str:
    lines = [f"plans: {preprocessed_dir / (plans['plans_name'] + '.json')}",
             f"{'configuration':<20}{'spacing':<28}{'patch':<20}{'batch':>6}{'stages':>8}"]
    for name, cfg in plans["configurations"].items():
        if "patch_size" not in cfg:
            lines.append(f"{name:<20}(inherits {cfg.get('inherits_from')}, previous stage {cfg.get('previous_stage')})")
            continue
        sp = "[" + ", ".join(f"{s:.4g}" for s in cfg["spacing"]) + "]"
        lines.append(f"{name:<20}{sp:<28}{str(cfg['patch_size']):<20}{cfg['batch_size']:>6}"
                     f"{cfg['architecture']['arch_kwargs']['n_stages']:>8}")
    return "\n".join(lines)


def _run(args: argparse.Namespace, fingerprint: bool, plan: bool, preprocess: bool) -> int:
    roots = get_roots()
    preset = None
    if plan:

        key = PLANNER_ALIASES.get(args.pl, args.pl)
        if key not in PLANNER_PRESETS:
            raise PnnunetError(f"unknown planner preset '{args.pl}'\n  fix: use one of {sorted(PLANNER_PRESETS)}")
        preset = PLANNER_PRESETS[key]
    plans_name = args.overwrite_plans_name or (preset.plans_name if preset else DEFAULT_PLANS)
    for name in _datasets(args, roots):
        t0 = time.perf_counter()
        raw_dir, pre_dir = roots.raw / name, roots.preprocessed / name
        pre_dir.mkdir(parents=True, exist_ok=True)
        print(f"== {name}")
        with hold_lock(preprocessing_lock(pre_dir), f"the preprocessed folder of {name}"):
            remove_stale_temporaries(pre_dir, recursive=True)  # left by a killed run
            _one_dataset(args, fingerprint, plan, preprocess, preset, plans_name, raw_dir, pre_dir)
        print(f"done in {time.perf_counter() - t0:.1f} s; output: {pre_dir}")
    return 0


def _one_dataset(args: argparse.Namespace, fingerprint: bool, plan: bool, preprocess: bool, preset, plans_name: str,
                 raw_dir: Path, pre_dir: Path) -> None:
    if fingerprint:
        if args.verify_dataset_integrity:
            print("verifying dataset integrity ...")
            verify_dataset_integrity(raw_dir, num_processes=args.np)
            print("dataset integrity: OK")
        fingerprint_dataset(raw_dir, pre_dir, num_processes=args.npfp or args.np, clean=args.clean,
                            progress=not args.no_pbar)
    plans = None
    if plan:
        if args.overwrite_target_spacing is not None and len(args.overwrite_target_spacing) != 3:
            raise PnnunetError("-overwrite_target_spacing needs exactly 3 values (reader axis order)")
        settings = dataclasses.replace(
            preset, plans_name=plans_name,
            gpu_memory_target_gb=args.gpu_memory_target or preset.gpu_memory_target_gb,
            overwrite_target_spacing=tuple(args.overwrite_target_spacing) if args.overwrite_target_spacing else None)
        plans = plan_dataset(raw_dir, pre_dir, settings)
    elif preprocess:
        plans = load_plans(pre_dir / f"{plans_name}.json")
    if preprocess and not getattr(args, "no_pp", False):
        _preprocess(args, raw_dir, pre_dir, plans)
    if plans is not None:
        print(_summary(plans, pre_dir))


def _preprocess(args: argparse.Namespace, raw_dir: Path, pre_dir: Path, plans: dict) -> None:
    dataset_json = load_dataset_json(raw_dir / "dataset.json")
    configs = [c for c in args.c if c in plans["configurations"]]
    skipped = [c for c in args.c if c not in plans["configurations"]]
    if skipped:
        print(f"not in the plans, skipped: {', '.join(skipped)}")
    get_training_cases(raw_dir, dataset_json)  # fail early on a broken folder
    print(f"preprocessing {' '.join(configs)} ...")
    summary = preprocess_dataset(raw_dir, pre_dir, plans, configs, dataset_json,
                                 reader_writer_by_name(plans["image_reader_writer"]), num_processes=args.np,
                                 clean=args.clean, progress=not args.no_pbar, storage=args.storage,
                                 share=not args.no_share)
    for ident, info in summary["data_identifiers"].items():
        if info.get("shared_with"):
            print(f"{ident}: same preprocessing as {info['shared_with']}, shares its cases (no copy)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: _run(a, True, True, True), _parser("pnnunet_plan_and_preprocess", True, True, True), argv)


def main_fingerprint(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: _run(a, True, False, False), _parser("pnnunet_extract_fingerprint", True, False, False),
                   argv)


def main_plan(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: _run(a, False, True, False), _parser("pnnunet_plan_experiment", False, True, False), argv)


def main_preprocess(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda a: _run(a, False, False, True), _parser("pnnunet_preprocess", False, False, True), argv)


if __name__ == "__main__":
    raise SystemExit(main())
