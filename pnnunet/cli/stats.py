"""``pnnunet_stats -i IMAGE -s SEG [-d D] [-ref REF] -o OUT.{json,csv}``: per-label statistics of one case."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pnnunet.cli.common import get_roots, run_cli
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.errors import DatasetError
from pnnunet.evaluation.statistics import case_statistics, format_statistics, write_statistics


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_stats",
                                description="Statistics of every label of one case: volume (mL), intensity "
                                            "(HU for CT) mean/std/median/min/max/p5/p95, bounding box, centroid, "
                                            "connected components, a touches-the-border flag; with -ref also "
                                            "Dice, IoU, volume difference %% and HD95.")
    add_case_args(p)
    p.add_argument("-o", required=True, type=Path, help="output file, .json or .csv")
    return p


def add_case_args(p: argparse.ArgumentParser) -> None:
    """-i IMAGE -s SEG [-d D] [-ref REF] [--verbose], shared by pnnunet_stats and pnnunet_report."""
    p.add_argument("-i", required=True, type=Path, help="image file (one channel, e.g. CASE_0000.nii.gz)")
    p.add_argument("-s", required=True, type=Path, help="segmentation (label map) on the same grid")
    p.add_argument("-d", dest="dataset", default=None,
                   help="label names (and label_colors) from this dataset (id, name, folder or a dataset.json "
                        "file); default: SEG's folder's dataset.json if present, else label_1, label_2, ...")
    p.add_argument("-ref", type=Path, default=None,
                   help="reference label map to compare with (Dice, IoU, volume difference, HD95)")
    p.add_argument("--verbose", action="store_true")


def dataset_json_for(dataset: str | None, seg_file: Path) -> dict | None:
    """dataset.json from -d (id, name, folder or file) or SEG's folder; None when neither is there."""
    if dataset is None:
        dj = seg_file.parent / "dataset.json"
        return load_dataset_json(dj) if dj.is_file() else None
    spec = Path(dataset).expanduser()
    if spec.is_file():
        return load_dataset_json(spec)
    if spec.is_dir():
        if not (spec / "dataset.json").is_file():
            raise DatasetError(spec, "has no dataset.json", "pass a dataset id, name or a dataset.json file to -d")
        return load_dataset_json(spec / "dataset.json")
    roots = get_roots()
    name = resolve_dataset(dataset, roots.raw, roots.preprocessed)
    for folder in (roots.raw / name, roots.preprocessed / name):
        if (folder / "dataset.json").is_file():
            return load_dataset_json(folder / "dataset.json")
    raise DatasetError(roots.raw / name, "has no dataset.json", "pass the dataset.json file to -d")


def _run(args: argparse.Namespace) -> int:
    dj = dataset_json_for(args.dataset, args.s)
    stats = case_statistics(args.i, args.s, dj["labels"] if dj else None, reference_file=args.ref)
    write_statistics(stats, args.o)
    print(format_statistics(stats))
    print(f"statistics: {args.o}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
