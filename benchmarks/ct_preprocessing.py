"""Benchmark: fingerprint, planning and preprocessing of a CT-sized dataset, pnnunet and upstream side by side.

    python benchmarks/ct_preprocessing.py --work /work/scratch/ctscale/prep --upstream-venv /work/venvs/upstream \\
        [--np 2] [--cases 3] [--datasets synthct hippocampus] [--tools pnnunet upstream]

Two datasets:

- ``synthct``: ``--cases`` synthetic abdominal-CT-like cases of 512 x 512 x 300 voxels (spacing 0.8 x 0.8 x
  2.5 mm, int16 HU written as ``.nii.gz``; :func:`preprocessed_storage.synthetic_ct_hu` with 25 HU noise
  inside the body, one seed per case), labels liver and kidney;
- ``hippocampus``: the bundled Task04 sample (20 cases), converted by each tool's MSD converter.

Each tool gets its own ``*_raw`` / ``*_preprocessed`` / ``*_results`` roots under ``--work`` (the raw
synthetic CT is written once and linked into both). The steps are the tools' own commands with the same
number of processes, run one after the other and alternating between the tools step by step (so that a
change of load on a shared machine hits both): ``extract_fingerprint -np N``, ``plan_experiment``, then
``preprocess -c CONFIG -np N`` for each configuration the plan has (pnnunet: ``-c 2d 3d_fullres`` in one
command, as ``plan_and_preprocess`` runs them, so that identical configurations share one copy; upstream
one command per configuration). Per step: wall time and peak RSS summed over the process tree
(``measure.run_measured``, sampled every 50 ms); per configuration the folder's bytes on disk. The plans
of the two tools are compared with ``pnnunet.planning.compare.plan_differences``.

Writes ``<work>/ct_preprocessing.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import run_measured  # noqa: E402
from preprocessed_storage import SAMPLE, folder_bytes, synthetic_ct_hu  # noqa: E402

CT_ID, CT_NAME = 917, "Dataset917_SynthCT300"
HIPPO_ID = 4
CT_SHAPE = (300, 512, 512)
CT_SPACING_XYZ = (0.8, 0.8, 2.5)
CT_NOISE_HU = 25.0
TOOLS = {"pnnunet": ("pnnunet", "pnnunetPlans"), "upstream": ("nnUNet", "nnUNetPlans")}


def make_synthetic_ct(raw: Path, n_cases: int) -> Path:
    """The raw synthetic CT dataset (written once; reused when complete)."""
    import SimpleITK as sitk

    ds = raw / CT_NAME
    if (ds / "dataset.json").is_file() and len(list((ds / "imagesTr").glob("*.nii.gz"))) == n_cases:
        return ds
    shutil.rmtree(ds, ignore_errors=True)
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir(parents=True)
    for i in range(n_cases):
        hu, seg = synthetic_ct_hu(CT_SHAPE, seed=i, noise_hu=CT_NOISE_HU)
        for arr, path in ((hu, ds / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"),
                          (seg.astype(np.uint8), ds / "labelsTr" / f"ct_{i:03d}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(CT_SPACING_XYZ)
            sitk.WriteImage(im, str(path), useCompression=True)
        print(f"synthetic CT case {i}: {CT_SHAPE[::-1]} (x y z), spacing {CT_SPACING_XYZ}", flush=True)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "kidney": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}, indent=1))
    return ds


def tool_env(root: Path, prefix: str) -> dict:
    env = dict(os.environ)
    env.update({f"{prefix}_raw": str(root / "raw"), f"{prefix}_preprocessed": str(root / "preprocessed"),
                f"{prefix}_results": str(root / "results"), "nnUNet_def_n_proc": "2"})
    return env


def command(tool: str, args: argparse.Namespace, step: str, dataset_id: int, configs: list[str] | None = None) -> list[str]:
    if tool == "pnnunet":
        bindir, names = Path(sys.executable).parent, {"fp": "pnnunet_extract_fingerprint",
                                                      "plan": "pnnunet_plan_experiment", "pp": "pnnunet_preprocess"}
    else:
        bindir, names = args.upstream_venv / "bin", {"fp": "nnUNetv2_extract_fingerprint",
                                                     "plan": "nnUNetv2_plan_experiment", "pp": "nnUNetv2_preprocess"}
    cmd = [str(bindir / names[step]), "-d", str(dataset_id)]
    if step == "fp":
        cmd += ["-np", str(args.np)]
    if step == "pp":
        cmd += ["-c", *configs, "-np", *([str(args.np)] * (len(configs) if tool == "upstream" else 1))]
    if tool == "pnnunet" and step != "plan":
        cmd.append("--no_pbar")
    return cmd


def prepare_raw(tool: str, dataset: str, root: Path, ct_raw: Path, args: argparse.Namespace) -> int:
    """Fresh roots for ``tool``; the raw dataset in place; returns the dataset id."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "raw").mkdir(parents=True)
    env = tool_env(root, TOOLS[tool][0])
    if dataset == "synthct":
        (root / "raw" / CT_NAME).symlink_to(ct_raw)
        return CT_ID
    if tool == "pnnunet":
        subprocess.run([str(Path(sys.executable).parent / "pnnunet_convert_msd"), "-i", str(SAMPLE), "--id",
                        str(HIPPO_ID)], env=env, check=True, capture_output=True)
    else:
        (root / "msd").mkdir()
        (root / "msd" / "Task04_Hippocampus").symlink_to(SAMPLE)
        subprocess.run([str(args.upstream_venv / "bin/nnUNetv2_convert_MSD_dataset"), "-i",
                        str(root / "msd" / "Task04_Hippocampus"), "-overwrite_id", str(HIPPO_ID), "-np",
                        str(args.np)], env=env, check=True, capture_output=True)
    return HIPPO_ID


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_step(tool: str, root: Path, cmd: list[str], label: str) -> dict:
    env = tool_env(root, TOOLS[tool][0])
    before = load_average()
    res = run_measured(cmd, env, root / f"{label}.log")
    if res["returncode"]:
        raise SystemExit(f"{tool} {label} failed (exit {res['returncode']}), see {root / (label + '.log')}")
    row = {"step": label, "wall_s": round(res["wall_s"], 2), "peak_rss_gib": round(res["peak_rss_bytes"] / 2**30, 3),
           "load_before": before, "load_after": load_average(), "cmd": res["cmd"]}
    print(f"  {tool:8s} {label:24s} {row['wall_s']:8.1f} s  {row['peak_rss_gib']:6.2f} GiB  "
          f"(load {before:.1f} -> {row['load_after']:.1f})", flush=True)
    return row


def preprocessed_dir(root: Path) -> Path:
    return next((root / "preprocessed").glob("Dataset*"))


def config_steps(tool: str, plans: dict) -> list[list[str]]:
    """The preprocess commands' configuration lists, in order."""
    names = [c for c in ("2d", "3d_fullres", "3d_lowres") if c in plans["configurations"]]
    if tool == "pnnunet":
        joint = [c for c in names if c in ("2d", "3d_fullres")]
        return [joint] + [[c] for c in names if c not in joint]
    return [[c] for c in names]


def bench_dataset(dataset: str, args: argparse.Namespace, ct_raw: Path | None) -> dict:
    print(f"== {dataset}", flush=True)
    roots = {t: args.work / dataset / t for t in args.tools}
    ids = {t: prepare_raw(t, dataset, roots[t], ct_raw, args) for t in args.tools}
    steps: dict[str, list[dict]] = {t: [] for t in args.tools}
    for step in ("fp", "plan"):
        for t in args.tools:
            steps[t].append(run_step(t, roots[t], command(t, args, step, ids[t]),
                                     {"fp": "extract_fingerprint", "plan": "plan_experiment"}[step]))
    plans = {t: json.loads((preprocessed_dir(roots[t]) / f"{TOOLS[t][1]}.json").read_text()) for t in args.tools}
    todo = {t: config_steps(t, plans[t]) for t in args.tools}
    for i in range(max(len(v) for v in todo.values())):
        for t in args.tools:
            if i < len(todo[t]):
                configs = todo[t][i]
                steps[t].append(run_step(t, roots[t], command(t, args, "pp", ids[t], configs),
                                         "preprocess " + " ".join(configs)))
    out: dict = {"tools": {}}
    for t in args.tools:
        pre = preprocessed_dir(roots[t])
        folders = {c: folder_bytes(pre / plans[t]["configurations"][c]["data_identifier"])
                   for c in plans[t]["configurations"] if (pre / plans[t]["configurations"][c].get(
                       "data_identifier", "-")).is_dir()}
        out["tools"][t] = {"steps": steps[t], "total_wall_s": round(sum(s["wall_s"] for s in steps[t]), 2),
                           "peak_rss_gib": max(s["peak_rss_gib"] for s in steps[t]), "bytes_per_folder": folders,
                           "bytes_total": folder_bytes(pre),
                           "configurations": list(plans[t]["configurations"])}
    if len(args.tools) == 2:
        from pnnunet.planning.compare import plan_differences

        out["plan_differences"] = [str(d) for d in plan_differences(plans["pnnunet"], plans["upstream"])]
    return out


def table(result: dict) -> str:
    lines = []
    for dataset, res in result["datasets"].items():
        lines.append(f"\n{dataset}:\n| tool | step | wall s | peak RSS GiB |\n|---|---|---|---|")
        for t, r in res["tools"].items():
            for s in r["steps"]:
                lines.append(f"| {t} | {s['step']} | {s['wall_s']:.1f} | {s['peak_rss_gib']:.2f} |")
            lines.append(f"| {t} | **total** | **{r['total_wall_s']:.1f}** | **{r['peak_rss_gib']:.2f}** |")
        lines.append("\n| tool | folder | bytes |\n|---|---|---|")
        for t, r in res["tools"].items():
            for f, b in r["bytes_per_folder"].items():
                lines.append(f"| {t} | {f} | {b:,} |")
            lines.append(f"| {t} | whole preprocessed dataset folder | **{r['bytes_total']:,}** |")
        if "plan_differences" in res:
            lines.append(f"\nplan differences: {res['plan_differences'] or 'none'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--upstream-venv", type=Path, default=Path("/work/venvs/upstream"))
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["hippocampus", "synthct"], choices=["synthct", "hippocampus"])
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "command": " ".join(sys.argv), "datasets": {}}
    ct_raw = make_synthetic_ct(args.work / "synthct_raw", args.cases) if "synthct" in args.datasets else None
    for dataset in args.datasets:
        result["datasets"][dataset] = bench_dataset(dataset, args, ct_raw)
        (args.work / "ct_preprocessing.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {args.work / 'ct_preprocessing.json'}")


if __name__ == "__main__":
    main()
