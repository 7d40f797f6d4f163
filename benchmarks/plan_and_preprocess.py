"""Benchmark: fingerprint + planning + preprocessing of an MSD dataset, pnnunet vs upstream nnU-Net v2.

Both tools run side by side on the same machine in one invocation (alternating, fresh folders each
round), each with ``-np`` worker processes. Upstream runs from its own venv (it brings torch).

    python benchmarks/plan_and_preprocess.py --data ../shared/data/Task04_Hippocampus \
        --upstream-venv /path/to/upstream-venv --np 2 --rounds 2

The MSD conversion is run first and timed separately (not part of the compared number). After the
runs, the plans are compared (pnnunet.planning.compare) and, with --compare-arrays, every
preprocessed case is compared by a script run in the upstream venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent


def _env(root: Path, prefix: str) -> dict:
    env = dict(os.environ)
    for k in ("raw", "preprocessed", "results"):
        env[f"{prefix}_{k}"] = str(root / k)
    env["nnUNet_def_n_proc"] = env.get("nnUNet_def_n_proc", "2")
    return env


def _task_id(data: Path) -> int:
    return int(data.name.split("_")[0].lstrip("TaskDataset"))


def run_upstream(venv: Path, data: Path, root: Path, np_: int, configs: list[str]) -> dict:
    env = _env(root, "nnUNet")
    env["nnUNet_raw"], env["nnUNet_preprocessed"], env["nnUNet_results"] = (
        str(root / "raw"), str(root / "preprocessed"), str(root / "results"))
    tid = _task_id(data)
    conv = run_measured([str(venv / "bin/nnUNetv2_convert_MSD_dataset"), "-i", str(data), "-overwrite_id", str(tid),
                         "-np", str(np_)], env, root / "convert.log")
    res = run_measured([str(venv / "bin/nnUNetv2_plan_and_preprocess"), "-d", str(tid), "-c", *configs,
                        "-np", *[str(np_)] * len(configs), "-npfp", str(np_), "--verify_dataset_integrity"],
                       env, root / "plan_and_preprocess.log")
    res["convert"] = conv
    return res


def run_pnnunet(data: Path, root: Path, np_: int, configs: list[str]) -> dict:
    env = _env(root, "pnnunet")
    bindir = Path(sys.executable).parent
    conv = run_measured([str(bindir / "pnnunet_convert_msd"), "-i", str(data), "-np", str(np_)], env,
                        root / "convert.log")
    tid = _task_id(data)
    res = run_measured([str(bindir / "pnnunet_plan_and_preprocess"), "-d", str(tid), "-c", *configs, "-np", str(np_),
                        "--verify_dataset_integrity", "--no_pbar"], env, root / "plan_and_preprocess.log")
    res["convert"] = conv
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--upstream-venv", type=Path, required=True)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pnnunet_bench_pp"))
    ap.add_argument("--compare-arrays", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pnnunet_results_plan_and_preprocess.json"))
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {"upstream": [], "pnnunet": []}
    for r in range(args.rounds):
        for tool in ("upstream", "pnnunet") if r % 2 == 0 else ("pnnunet", "upstream"):
            root = args.workdir / f"{tool}_{r}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            if tool == "upstream":
                res = run_upstream(args.upstream_venv, args.data, root, args.np, args.c)
            else:
                res = run_pnnunet(args.data, root, args.np, args.c)
            res["root"] = str(root)
            print(f"round {r} {tool}: {res['wall_s']:.1f} s, peak {res['peak_rss_bytes'] / 2**30:.2f} GiB, "
                  f"rc {res['returncode']} (convert {res['convert']['wall_s']:.1f} s)", flush=True)
            if res["returncode"] != 0:
                raise SystemExit(f"{tool} failed, see {root}/plan_and_preprocess.log")
            runs[tool].append(res)

    from pnnunet.planning.compare import plan_differences

    up_root, pn_root = Path(runs["upstream"][-1]["root"]), Path(runs["pnnunet"][-1]["root"])
    up_plans = json.loads(next((up_root / "preprocessed").glob("*/nnUNetPlans.json")).read_text())
    pn_plans = json.loads(next((pn_root / "preprocessed").glob("*/pnnunetPlans.json")).read_text())
    diffs = plan_differences(pn_plans, up_plans)
    summary = {
        "date": str(date.today()), "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                              f"{os.cpu_count()} cpus", "np": args.np, "configs": args.c,
        "runs": runs, "plan_differences": diffs,
    }
    for tool in runs:
        walls = [r["wall_s"] for r in runs[tool]]
        peaks = [r["peak_rss_bytes"] for r in runs[tool]]
        summary[f"{tool}_median_wall_s"] = statistics.median(walls)
        summary[f"{tool}_max_peak_rss_gib"] = max(peaks) / 2**30
    if args.compare_arrays:
        cmp = subprocess.run([str(args.upstream_venv / "bin/python"), str(HERE / "upstream/compare_preprocessed.py"),
                              str(up_root / "preprocessed"), str(pn_root / "preprocessed")],
                             capture_output=True, text=True)
        print(cmp.stdout[-3000:], cmp.stderr[-3000:])
        summary["array_comparison"] = json.loads(cmp.stdout.strip().splitlines()[-1]) if cmp.returncode == 0 else None
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"plan differences: {diffs or 'none'}")
    print(f"median wall: upstream {summary['upstream_median_wall_s']:.1f} s, pnnunet {summary['pnnunet_median_wall_s']:.1f} s"
          f"; peak RSS: upstream {summary['upstream_max_peak_rss_gib']:.2f} GiB, "
          f"pnnunet {summary['pnnunet_max_peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
