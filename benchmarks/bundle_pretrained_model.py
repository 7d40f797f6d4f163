"""Put a trained fold into the package as the bundled pretrained model (``pnnunet_predict -m pretrained:NAME``).

    python benchmarks/bundle_pretrained_model.py --fold_dir RESULTS/Dataset004_Hippocampus/\
pnnunetTrainer_20epochs__pnnunetPlans__3d_fullres/fold_0

1. the fold's ``checkpoint_final.pdparams`` → inference only (no optimizer state), float32 weights stored
   as float16 (:func:`pnnunet.runtime.checkpoints.inference_checkpoint`), with the model folder's plans.json
   and dataset.json, into ``pnnunet/pretrained/<DatasetXXX_Name>/<Trainer>__<Plans>__<config>/``; refused
   above ``--max_mb`` (12 MB);
2. the bundled sample's held-out cases (``tests/data/Task04_Hippocampus_sample/imagesTs``) predicted twice
   with ``pnnunet_predict --fp32`` (TTA on): with the original float32 fold and with the bundled float16
   model → voxel label agreement between the two, and each one's Dice against ``labelsTs``;
3. the model's README.md written (command, data, licence, validation Dice from the fold's
   ``validation/summary.json``, the numbers of 2.), and the marked blocks of the project README and
   benchmarks/RESULTS.md (``<!-- pretrained-model -->`` … ``<!-- /pretrained-model -->``) replaced.

Then run ``tests/inference/test_pretrained_model.py`` and commit ``pnnunet/pretrained``, README.md and
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pnnunet import pretrained  # noqa: E402
from pnnunet.errors import PnnunetError  # noqa: E402
from pnnunet.evaluation.report import evaluate_folder  # noqa: E402
from pnnunet.fileio import load_json  # noqa: E402
from pnnunet.runtime.checkpoints import inference_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "Task04_Hippocampus_sample"
CHECKPOINT = "checkpoint_final.pdparams"
MARK = "pretrained-model"
DEFAULT_TRAINING = ("bash benchmarks/accuracy_hippocampus.sh  # 220 MSD Task04 cases, 3d_fullres fold 0 of "
                    "upstream's split (176 training / 44 validation), 20 epochs x 50 iterations, CPU, float32")


def _bundle(fold_dir: Path, dest: Path, max_mb: float) -> tuple[dict, int]:
    src = fold_dir / CHECKPOINT
    ckpt = load_checkpoint(src)
    small = inference_checkpoint(ckpt, str(src))
    if os.path.exists(dest):
        shutil.rmtree(dest)
    (dest / fold_dir.name).mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        if not (fold_dir.parent / name).is_file():
            raise PnnunetError(f"{fold_dir.parent / name}: not found\n  fix: give a fold_K folder of a pnnunet "
                               "model folder (pnnunet_train writes plans.json and dataset.json beside the folds)")
        shutil.copyfile(fold_dir.parent / name, dest / name)
    out = dest / fold_dir.name / CHECKPOINT
    save_checkpoint(out, small)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    if size > max_mb * 1e6:
        shutil.rmtree(dest)
        raise PnnunetError(f"the bundled model would take {size / 1e6:.1f} MB, above --max_mb {max_mb}\n"
                           "  fix: bundle a smaller network (or raise --max_mb on purpose)")
    return ckpt, size


def _predict(model: str, fold: str, inputs: Path, out: Path) -> float:
    cmd = [sys.executable, "-m", "pnnunet.cli.predict", "-i", str(inputs), "-o", str(out), "-m", model,
           "-f", fold.removeprefix("fold_"), "--fp32", "--no_pbar", "-npp", "0", "-nps", "0"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start


def _dice(summary: dict) -> tuple[float, dict[str, dict[str, float]]]:
    per_case = {Path(c["prediction_file"]).name.removesuffix(".nii.gz"): {k: v["Dice"] for k, v in c["metrics"].items()}
                for c in summary["metric_per_case"]}
    return summary["foreground_mean"]["Dice"], per_case


def _agreement(a: Path, b: Path) -> dict[str, tuple[float, int, int]]:
    """Per case: fraction of voxels with the same label, voxels differing, voxels."""
    out = {}
    for f in sorted(a.glob("*.nii.gz")):
        x, y = (sitk.GetArrayFromImage(sitk.ReadImage(str(g))) for g in (f, b / f.name))
        out[f.name.removesuffix(".nii.gz")] = (float(np.mean(x == y)), int(np.sum(x != y)), int(x.size))
    return out


def _validation(fold_dir: Path) -> dict | None:
    f = fold_dir / "validation" / "summary.json"
    if not f.is_file():
        return None
    s = load_json(f)
    return {"n": len(s["metric_per_case"]), "foreground": s["foreground_mean"]["Dice"],
            "per_class": {k: v["Dice"] for k, v in s["mean"].items()},
            "cases": sorted(Path(c["reference_file"]).name.removesuffix(".nii.gz") for c in s["metric_per_case"])}


def _training_minutes(fold_dir: Path) -> float | None:
    log = fold_dir / "training_log.txt"
    if not log.is_file():
        return None
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log.read_text(), re.M)
    if len(stamps) < 2:
        return None
    t0, t1 = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (t1 - t0).total_seconds() / 60


def replace_block(path: Path, text: str) -> None:
    """Replace the lines between ``<!-- MARK -->`` and ``<!-- /MARK -->`` of ``path`` (appended when absent)."""
    content = path.read_text()
    block = f"<!-- {MARK} -->\n{text.rstrip()}\n<!-- /{MARK} -->"
    pattern = re.compile(rf"<!-- {MARK} -->\n.*?<!-- /{MARK} -->", re.S)
    if pattern.search(content):
        content = pattern.sub(lambda _: block, content)
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    path.write_text(content)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fold_dir", type=Path, required=True, help="the trained fold_K folder (with checkpoint_final)")
    p.add_argument("--name", default="hippocampus", choices=sorted(pretrained.MODELS), help="the bundled model's name")
    p.add_argument("--max_mb", type=float, default=12.0)
    p.add_argument("--training_command", default=DEFAULT_TRAINING, help="how the fold was trained (for the README)")
    p.add_argument("--sample", type=Path, default=SAMPLE, help="folder with imagesTs/ and labelsTs/")
    p.add_argument("--no_readme", action="store_true", help="do not touch README.md and benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    fold_dir = args.fold_dir.expanduser().resolve()
    dest = pretrained.model_dir(args.name)
    expected = pretrained.MODELS[args.name]
    got = f"{fold_dir.parent.parent.name}/{fold_dir.parent.name}"
    if got != expected or not (fold_dir / CHECKPOINT).is_file():
        print(f"--fold_dir {fold_dir}: expected .../{expected}/fold_K with {CHECKPOINT}\n  fix: give the fold "
              f"folder of that model (or add the model to pnnunet.pretrained.MODELS)", file=sys.stderr)
        return 1
    try:
        ckpt, size = _bundle(fold_dir, dest, args.max_mb)
    except PnnunetError as e:
        print(e, file=sys.stderr)
        return 1
    n_params = sum(int(np.prod(np.shape(v))) for v in ckpt["network_weights"].values())
    print(f"bundled {dest.relative_to(REPO)}: {size / 1e6:.2f} MB, {n_params:,} weights in float16")

    dataset_json = load_json(dest / "dataset.json")
    with tempfile.TemporaryDirectory(prefix="bundle_") as tmp:
        tmp = Path(tmp)
        t32 = _predict(str(fold_dir.parent), fold_dir.name, args.sample / "imagesTs", tmp / "fp32")
        t16 = _predict(f"{pretrained.PREFIX}{args.name}", fold_dir.name, args.sample / "imagesTs", tmp / "fp16")
        agree = _agreement(tmp / "fp32", tmp / "fp16")
        fg32, _ = _dice(evaluate_folder(args.sample / "labelsTs", tmp / "fp32", dataset_json))
        fg16, cases16 = _dice(evaluate_folder(args.sample / "labelsTs", tmp / "fp16", dataset_json))
    val = _validation(fold_dir)
    minutes = _training_minutes(fold_dir)
    unseen = set(val["cases"]) if val else set()
    names = {k: v for k, v in dataset_json["labels"].items() if v != 0}
    label_of = {str(v): k for k, v in names.items()}

    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    total_voxels = sum(a[2] for a in agree.values())
    differing = sum(a[1] for a in agree.values())
    min_agree = min(a[0] for a in agree.values())
    rows = "\n".join(
        f"| {c} | {'no (fold-0 validation case)' if c in unseen else 'yes' if val else 'unknown'} | "
        + " | ".join(f"{d:.3f}" for d in cases16[c].values()) + f" | {agree[c][0] * 100:.3f} % ({agree[c][1]}) |"
        for c in sorted(cases16))
    header = " | ".join(label_of.get(k, k) for k in next(iter(cases16.values())))
    val_line = (f"**{val['foreground']:.4f}** mean foreground Dice on the {val['n']} validation cases of fold 0 ("
                + ", ".join(f"{label_of.get(k, k)} {d:.4f}" for k, d in val["per_class"].items())
                + "), the training's own final validation (`fold_0/validation/summary.json`, TTA on)") if val else \
        "not available: the fold has no `validation/summary.json`"
    seen = [c for c in sorted(cases16) if val and c not in unseen]
    caveat = (f" Of these, {', '.join(seen)} were among the model's training cases (only the cases marked "
              "\"no\" are unseen)." if seen else "")
    readme = f"""# Pretrained pnnunet model: {dest.parent.name}, {dest.name}

A real nnU-Net, trained with pnnunet, stored inference-only: plans.json, dataset.json and
`{fold_dir.name}/{CHECKPOINT}` ({n_params:,} network weights, stored as float16 and converted to float32
when loaded; no optimizer state). {size / 1e6:.2f} MB in all.

```bash
pnnunet_predict -i IMAGES -o OUT -m {pretrained.PREFIX}{args.name}      # or -m <this folder>
```
IMAGES: T1-weighted MRI crops around the hippocampus at about 1 mm, as in MSD Task04 (`CASE_0000.nii.gz`
or `CASE.nii.gz`). Labels: 1 Anterior (hippocampus head), 2 Posterior (body and tail).

| item | value |
| --- | --- |
| trained with | `{args.training_command}` |
| network | {ckpt.get("init_args", {}).get("configuration")}, {dest.name.split("__")[0]}, PlainConvUNet, {n_params:,} weights; training precision {ckpt.get("precision", "?")}; pnnunet {ckpt.get("pnnunet_version", "?")}{f"; {minutes:.0f} min of training (2-core CPU, loaded)" if minutes else ""} |
| validation Dice | {val_line} |
| training data | Medical Segmentation Decathlon Task04 Hippocampus (http://medicaldecathlon.com/; data from Vanderbilt University Medical Center), 220 of its 260 labelled cases (provenance: `tests/data/Task04_Hippocampus_sample/README.md`) |
| licence | the training data is **CC-BY-SA 4.0**; these weights are derived from it and distributed under the same licence, with attribution (unlike the Apache-2.0 code). Cite Simpson et al., arXiv:1902.09063 (2019) and Antonelli et al., Nat. Commun. 13, 4128 (2022) |

## On the bundled held-out cases (`tests/data/Task04_Hippocampus_sample/imagesTs`)

Measured {today} ({machine}) by `python benchmarks/bundle_pretrained_model.py --fold_dir ...`, both with
`pnnunet_predict --fp32` (TTA on): float16-stored weights (this folder) against the float32 original.
Mean foreground Dice **{fg16:.4f}** with the float16 weights, {fg32:.4f} with the float32 original;
label agreement between the two: {differing} of {total_voxels} voxels differ (lowest per case
{min_agree * 100:.3f} %). Prediction took {t16:.0f} s for the 4 cases (one process, loaded machine).{caveat}

| case | in the model's training set | {header} | float16 vs float32 labels equal (voxels differing) |
| --- | --- | {" | ".join("---" for _ in names)} | --- |
{rows}
"""
    (dest / "README.md").write_text(readme)
    print(readme)
    if not args.no_readme:
        notes = ([f"{', '.join(seen)} were among its training cases"] if seen else []) + [
            f"{c}, unseen: {np.mean(list(cases16[c].values())):.3f}" for c in sorted(cases16) if c in unseen]
        summary = (f"Bundled pretrained model (`-m {pretrained.PREFIX}{args.name}`, "
                   f"`pnnunet/pretrained/{expected}`, {size / 1e6:.1f} MB in float16): validation Dice "
                   + (f"**{val['foreground']:.3f}** on the {val['n']} fold-0 validation cases" if val else "n/a")
                   + f"; on the 4 bundled held-out cases {fg16:.3f}"
                   + (f" ({'; '.join(notes)})" if notes else "")
                   + f"; float16 vs float32 weights: {differing} of {total_voxels} voxels differ.")
        replace_block(REPO / "README.md", summary)
        replace_block(REPO / "benchmarks" / "RESULTS.md",
                      f"## Bundled pretrained model ({today}, {machine}, loaded)\n\n"
                      f"`python benchmarks/bundle_pretrained_model.py --fold_dir {fold_dir}`\n\n" + summary
                      + f" Prediction of the 4 cases: {t16:.0f} s float16-stored, {t32:.0f} s float32 original "
                      "(`--fp32`, TTA, one process each, loaded machine).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
