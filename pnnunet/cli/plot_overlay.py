"""``pnnunet_plot_overlay``: one PNG slice, image | segmentation [| reference], with a legend."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import run_cli
from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError
from pnnunet.evaluation.overlay import save_overlay_png
from pnnunet.fileio import load_json
from pnnunet.imageio import reader_writer_for


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_plot_overlay", description="Save a PNG of one slice (by default the "
                                "one with the most foreground): the image, the labels drawn over it and, with -ref, "
                                "the reference labels over it, side by side and enlarged, with a legend.")
    p.add_argument("-i", nargs="+", required=True, type=Path, help="image file(s) of the case (channels)")
    p.add_argument("-s", required=True, type=Path, help="segmentation file")
    p.add_argument("-ref", type=Path, default=None, help="reference (ground-truth) segmentation: a third panel")
    p.add_argument("-djfile", type=Path, default=None,
                   help="dataset.json naming the labels in the legend (default: the one beside -s, if any)")
    p.add_argument("-o", required=True, type=Path, help="output .png")
    p.add_argument("--slice", type=int, default=None, help="index along the first array axis")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    name = args.s.name
    ending = ".nii.gz" if name.endswith(".nii.gz") else args.s.suffix
    rw = reader_writer_for(ending, args.s)
    idx = save_overlay_png(args.i, args.s, args.o, rw, args.slice, reference_file=args.ref,
                           label_names=_label_names(args.djfile, args.s))
    print(f"wrote {args.o} (slice {idx})")
    return 0


def _label_names(djfile: Path | None, seg: Path) -> dict[int, str] | None:
    path = djfile if djfile is not None else seg.parent / "dataset.json"
    if not path.is_file():
        if djfile is not None:
            raise DatasetError(djfile, "not found", "pass the dataset.json of the dataset (or leave -djfile out)")
        return None
    return {v: n for v, n in LabelInfo.from_dataset_json(load_json(path), path).names.items() if v > 0}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
