"""Time ``pnnunet_stats`` (``case_statistics``) on a synthetic CT-sized case.

A 512x512xZ int16 volume with N box-shaped labels and a reference shifted by 2 voxels is written to a
temporary folder; each case is timed without and with the reference (reading the files included),
and the peak RSS of this process is printed. There is no upstream equivalent (nnU-Net has no
per-label statistics); this records the cost of the statistics a clinician asks for.

    python benchmarks/case_statistics.py [--slices 200] [--labels 10]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pnnunet.evaluation.statistics import case_statistics


def _write(path: Path, arr: np.ndarray) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 1.5))
    sitk.WriteImage(img, str(path), True)
    return path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--labels", type=int, default=10)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.slices, 512, 512)
    seg = np.zeros(shape, np.uint8)
    for label in range(1, args.labels + 1):
        z, y, x = rng.integers(15, args.slices - 15), rng.integers(60, 450), rng.integers(60, 450)
        seg[z - 15:z + 15, y - 40:y + 40, x - 40:x + 40] = label
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        img = _write(t / "img.nii.gz", rng.integers(-1000, 1000, size=shape).astype(np.int16))
        s = _write(t / "seg.nii.gz", seg)
        ref = _write(t / "ref.nii.gz", np.roll(seg, 2, axis=2))
        for what, kwargs in (("without reference", {}), ("with reference", {"reference_file": ref})):
            start = time.perf_counter()
            case_statistics(img, s, **kwargs)
            print(f"{what}: {time.perf_counter() - start:.1f} s")
    print(f"volume {shape[2]}x{shape[1]}x{shape[0]}, {args.labels} labels; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
