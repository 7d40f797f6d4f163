"""Upstream nnU-Net v2 compute_metrics_on_folder on small synthetic label maps (run in the upstream venv).

/work/venvs/upstream/bin/python make_metrics_fixtures.py --out /work/main/tests/evaluation/data
"""
import argparse, json, shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO


def write(arr, path):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((1.0, 1.5, 2.0))
    sitk.WriteImage(img, str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    out = Path(ap.parse_args().out)
    ref_dir, pred_dir = out / "ref", out / "pred"
    for d in (ref_dir, pred_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    rs = np.random.RandomState(1234)
    shape = (5, 7, 6)
    cases = {}
    # case_a: labels 1, 2 present in both, noisy prediction, some ignore (3) voxels in the reference
    ref = rs.randint(0, 3, size=shape); pred = ref.copy()
    flip = rs.rand(*shape) < 0.3; pred[flip] = rs.randint(0, 3, size=flip.sum())
    ref[0, :2] = 3
    cases["case_a"] = (ref, pred)
    # case_b: label 2 absent from both (Dice NaN), label 1 partly right
    ref = np.zeros(shape, int); ref[1:4, 2:5, 1:4] = 1
    pred = np.zeros(shape, int); pred[2:5, 2:6, 1:4] = 1
    cases["case_b"] = (ref, pred)
    # case_c: label 2 only predicted (Dice 0), label 1 perfect; ignore covers part of the false positives
    ref = np.zeros(shape, int); ref[0:2, 0:3, 0:3] = 1; ref[4, :, :] = 3
    pred = ref.copy(); pred[pred == 3] = 0; pred[3:5, 5:7, 4:6] = 2
    cases["case_c"] = (ref, pred)
    # case_d: everything background in both
    cases["case_d"] = (np.zeros(shape, int), np.zeros(shape, int))
    for name, (r, p) in cases.items():
        write(r, ref_dir / f"{name}.nii.gz")
        write(p, pred_dir / f"{name}.nii.gz")
    runs = {"labels": ([1, 2], None), "labels_ignore": ([1, 2], 3), "regions_ignore": ([(1, 2), (2,), 1], 3),
            "label_never_present": ([1, 2, 5], None)}
    results = {}
    for run, (classes, ignore) in runs.items():
        summary_file = out / f"upstream_summary_{run}.json"
        compute_metrics_on_folder(str(ref_dir), str(pred_dir), str(summary_file), SimpleITKIO(), ".nii.gz",
                                  classes, ignore, num_processes=1, chill=False)
        s = json.loads(summary_file.read_text())
        for c in s["metric_per_case"]:  # keep only file names (the fixture folder moves)
            c["reference_file"] = Path(c["reference_file"]).name
            c["prediction_file"] = Path(c["prediction_file"]).name
        summary_file.write_text(json.dumps(s, indent=4, sort_keys=True))
        results[run] = {"labels_or_regions": [list(c) if isinstance(c, tuple) else c for c in classes],
                        "ignore_label": ignore, "summary": summary_file.name}
    (out / "upstream_runs.json").write_text(json.dumps({"made_with": "nnunetv2 2.8.1 compute_metrics_on_folder",
                                                        "runs": results}, indent=1))


if __name__ == "__main__":
    main()
