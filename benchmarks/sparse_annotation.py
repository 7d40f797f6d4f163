"""Sparse annotations with the ignore label: the bundled Hippocampus sample with most label slices set to
ignore, trained beside the fully labelled sample at the same short budget (issue 12).

Two datasets from ``tests/data/Task04_Hippocampus_sample`` (20 training cases): ``full`` (labels as they
are) and ``sparse`` (only every ``--keep_every``-th slice along the first array axis annotated, every
other voxel set to the ignore label 3). Both: tiny plans, 3d_fullres, fold 0 (16 training, 4 validation
cases), the same seed and schedule. Reported: the fold's validation Dice as written by the training
(``sparse`` evaluated on its annotated voxels only), and the validation predictions of both runs evaluated
against the *full* reference labels, which is the number to compare.

    python benchmarks/sparse_annotation.py --work /tmp/sparse --epochs 5 --iterations 10

Prints a markdown table (for benchmarks/RESULTS.md) and writes ``<work>/sparse_annotation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "Task04_Hippocampus_sample"
IGNORE = 3
PLANS = "pnnunetTinyPlans"


def sparsify(seg: np.ndarray, ignore: int, keep_every: int = 3) -> np.ndarray:
    """Every ``keep_every``-th slice (array axis 0) annotated, the others set to the ignore label."""
    out = np.full_like(seg, ignore)
    out[::keep_every] = seg[::keep_every]
    return out


def make_dataset(raw: Path, name: str, sparse_every: int | None) -> None:
    import SimpleITK as sitk

    d = raw / name
    (d / "imagesTr").mkdir(parents=True)
    (d / "labelsTr").mkdir()
    cases = sorted(p.name[:-7] for p in (SAMPLE / "labelsTr").glob("*.nii.gz"))
    for case in cases:
        shutil.copyfile(SAMPLE / "imagesTr" / f"{case}.nii.gz", d / "imagesTr" / f"{case}_0000.nii.gz")
        src = SAMPLE / "labelsTr" / f"{case}.nii.gz"
        if sparse_every is None:
            shutil.copyfile(src, d / "labelsTr" / f"{case}.nii.gz")
        else:
            img = sitk.ReadImage(str(src))
            out = sitk.GetImageFromArray(sparsify(sitk.GetArrayFromImage(img), IGNORE, sparse_every))
            out.CopyInformation(img)
            sitk.WriteImage(out, str(d / "labelsTr" / f"{case}.nii.gz"))
    labels = {"background": 0, "Anterior": 1, "Posterior": 2}
    if sparse_every is not None:
        labels["ignore"] = IGNORE
    (d / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels,
                                                "numTraining": len(cases), "file_ending": ".nii.gz"}))


def annotated_fraction(raw: Path, name: str) -> float:
    import SimpleITK as sitk

    n = total = 0
    for f in sorted((raw / name / "labelsTr").glob("*.nii.gz")):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        n += int(np.count_nonzero(a != IGNORE))
        total += a.size
    return n / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (created; must not exist)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    ap.add_argument("--keep_every", type=int, default=5, help="annotate every N-th slice in the sparse dataset")
    ap.add_argument("--runs", nargs="+", choices=["full", "sparse"], default=["full", "sparse"],
                    help="which runs (two processes with one run each, in different --work folders, may run "
                         "side by side)")
    args = ap.parse_args()
    ws = args.work
    ws.mkdir(parents=True)
    for key, sub in (("pnnunet_raw", "raw"), ("pnnunet_preprocessed", "pre"), ("pnnunet_results", "res")):
        os.environ[key] = str(ws / sub)
    from pnnunet.cli.plan_and_preprocess import main as plan_and_preprocess
    from pnnunet.cli.train import main as train
    from pnnunet.imageio.simpleitk_io import SimpleITKIO
    from pnnunet.metrics import compute_metrics_on_folder

    runs = {"full": ("Dataset921_HippoFull", None), "sparse": ("Dataset922_HippoSparse", args.keep_every)}
    make_dataset(ws / "raw", runs["full"][0], None)  # the full labels are the reference of both runs
    results = {}
    for kind in args.runs:
        name, every = runs[kind]
        if every is not None:
            make_dataset(ws / "raw", name, every)
        did = name[7:10]
        t0 = time.perf_counter()
        assert plan_and_preprocess(["-d", did, "-pl", "tiny", "-c", "3d_fullres", "-np", "1", "--no_pbar"]) == 0
        assert train(["3d_fullres", "0", "-d", did, "-p", PLANS, "--epochs", str(args.epochs),
                      "--iterations_per_epoch", str(args.iterations), "--val_iterations_per_epoch", "5",
                      "--num_workers", "0", "-device", "cpu", "--no_pbar", "--val_disable_tta"]) == 0
        seconds = time.perf_counter() - t0
        val = ws / "res" / name / f"pnnunetTrainer__{PLANS}__3d_fullres" / "fold_0" / "validation"
        own = json.loads((val / "summary.json").read_text())
        vs_full = compute_metrics_on_folder(ws / "raw" / "Dataset921_HippoFull" / "labelsTr", val, None, SimpleITKIO(),
                                            ".nii.gz", [1, 2], None, num_processes=1, chill=True)
        results[kind] = {"annotated_fraction": annotated_fraction(ws / "raw", name), "seconds": seconds,
                         "own_dice": own["foreground_mean"]["Dice"],
                         "own_dice_per_label": {k: v["Dice"] for k, v in own["mean"].items()},
                         "full_ref_dice": vs_full["foreground_mean"]["Dice"],
                         "full_ref_dice_per_label": {k: v["Dice"] for k, v in vs_full["mean"].items()},
                         "validation_cases": len(own["metric_per_case"])}
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "epochs": args.epochs,
            "iterations": args.iterations, "keep_every": args.keep_every, "runs": results}
    (ws / "sparse_annotation.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    print("\n| run | annotated voxels | val Dice (own labels) | val Dice vs full labels (Anterior, Posterior) | "
          "wall |\n|---|---|---|---|---|")
    for kind, r in results.items():
        per = r["full_ref_dice_per_label"]
        print(f"| {kind} | {100 * r['annotated_fraction']:.1f} % | {r['own_dice']:.4f} | **{r['full_ref_dice']:.4f}** "
              f"({per['1']:.4f}, {per['2']:.4f}) | {r['seconds']:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
