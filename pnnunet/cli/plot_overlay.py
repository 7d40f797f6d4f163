"""``pnnunet_plot_overlay``: one PNG slice with a segmentation over its image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import run_cli
from pnnunet.evaluation.overlay import save_overlay_png
from pnnunet.imageio import reader_writer_for


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_plot_overlay", description="Save a PNG of one slice (by default the "
                                "one with the most foreground) with the labels drawn over the image.")
    p.add_argument("-i", nargs="+", required=True, type=Path, help="image file(s) of the case (channels)")
    p.add_argument("-s", required=True, type=Path, help="segmentation file")
    p.add_argument("-o", required=True, type=Path, help="output .png")
    p.add_argument("--slice", type=int, default=None, help="index along the first array axis")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    name = args.s.name
    ending = ".nii.gz" if name.endswith(".nii.gz") else args.s.suffix
    rw = reader_writer_for(ending, args.s)
    idx = save_overlay_png(args.i, args.s, args.o, rw, args.slice)
    print(f"wrote {args.o} (slice {idx})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
