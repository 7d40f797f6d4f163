"""Inference speed and peak RAM: pnnunet (static graph / eager) vs upstream nnU-Net v2, on CPU.

Builds, for one plan (default: upstream's Hippocampus 3d_fullres, patch 40x56x40, 4 stages), a
pnnunet model folder with random weights (one network per fold) and, with ``--upstream-python``,
an upstream model folder of the same plan; then predicts the same N cases with 1 fold and with 5
folds, TTA on, step 0.5, alternating the tools round by round. Each run is a separate process: the
reported ``predict`` time covers ``predict_folder`` / ``predict_from_files`` only (model loading and
the one-off static-graph export excluded), the wall time and peak RAM (summed RSS of the process
tree, workers included; and the summed PSS, which splits shared pages instead of counting them in
every worker) the whole process. Results: a markdown table on stdout and
``<work>/predict_speed.json``.

    python benchmarks/predict_speed.py --data ../shared/data/Task04_Hippocampus --cases 6 \
        --folds 1 5 --tools static eager upstream --upstream-python /work/venvs/upstream/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import _children_map, tree_rss

DEFAULT_PLANS = HERE.parent.parent / "shared" / "reference" / "upstream_hippocampus_220" / "nnUNetPlans.json"
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                "numTraining": 260, "file_ending": ".nii.gz"}


# ---- set-up ---------------------------------------------------------------------------------------
def make_inputs(data: Path, folder: Path, n: int) -> Path:
    """Symlink the first ``n`` training images of an MSD/v2 dataset as ``CASE_0000.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    images = sorted((data / "imagesTr").glob("*.nii.gz"))[:n]
    for img in images:
        case = img.name[: -len(".nii.gz")]
        case = case.removesuffix("_0000")
        link = folder / f"{case}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(img.resolve())
    return folder


def make_pnnunet_model(model_dir: Path, plans_file: Path, configuration: str, n_folds: int) -> None:
    """A pnnunet model folder with random weights (fold k: ``paddle.seed(k)``)."""
    import paddle

    from pnnunet.fileio import load_json, write_json_atomic
    from pnnunet.plans import resolve_configuration
    from pnnunet.runtime.architectures import build_network
    from pnnunet.runtime.checkpoints import save_checkpoint

    plans = load_json(plans_file)
    write_json_atomic(model_dir / "plans.json", plans)
    write_json_atomic(model_dir / "dataset.json", DATASET_JSON)
    cfg = resolve_configuration(plans, configuration)
    for fold in range(n_folds):
        ckpt = model_dir / f"fold_{fold}" / "checkpoint_final.pdparams"
        if ckpt.is_file():
            continue
        paddle.seed(fold)
        with paddle.utils.unique_name.guard():
            net = build_network(cfg, 1, 3, deep_supervision=False)
        save_checkpoint(ckpt, {"network_weights": net.state_dict(), "trainer_name": "pnnunetTrainer",
                               "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                                             "dataset_json": DATASET_JSON},
                               "inference_allowed_mirroring_axes": list(range(len(cfg["patch_size"])))})


# ---- measuring ------------------------------------------------------------------------------------
def tree_pss(pid: int) -> int:
    """Summed proportional set size (bytes) of ``pid`` and its descendants: shared pages (libpaddle,
    libtorch mapped into every worker) are split between the processes instead of counted in each."""
    kids, total, todo = _children_map(), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
        todo.extend(kids.get(p, []))
    return total


def run_measured(cmd: list[str], log_file: Path) -> dict:
    """Run ``cmd``; wall seconds, peak summed RSS and peak summed PSS of its process tree (sampled every 0.2 s)."""
    with open(log_file, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peak_rss = peak_pss = 0
        while proc.poll() is None:
            peak_rss = max(peak_rss, tree_rss(proc.pid))
            peak_pss = max(peak_pss, tree_pss(proc.pid))
            time.sleep(0.2)
    return {"wall_s": time.perf_counter() - t0, "peak_rss_bytes": peak_rss, "peak_pss_bytes": peak_pss,
            "returncode": proc.returncode}


# ---- one measured run (child process) -------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    from pnnunet.inference.predictor import Predictor

    t0 = time.perf_counter()
    predictor = Predictor(args.model_dir, folds=list(range(args.n_folds)), device="cpu",
                          use_tta=not args.disable_tta, use_static_graph=args.worker != "eager", progress=False,
                          tile_batch_size=args.tile_batch_size,
                          precision={"bf16": "bf16", "auto": "auto"}.get(args.worker, "fp32"))
    predictor.prepare()
    t1 = time.perf_counter()
    if args.output.exists():
        import shutil

        shutil.rmtree(args.output)
    summary = predictor.predict_folder(args.input, args.output, num_preprocessing_workers=args.npp,
                                       num_export_workers=args.nps)
    t2 = time.perf_counter()
    args.result.write_text(json.dumps({"tool": args.worker, "load_seconds": t1 - t0, "predict_seconds": t2 - t1,
                                       "cases": summary.num_predicted, "backend": summary.backend,
                                       "tile_batch_size": predictor.tile_batch_size}))


def _command(tool: str, args: argparse.Namespace, n_folds: int, out: Path, result: Path) -> list[str]:
    common = ["-i", str(args.work / "input"), "-o", str(out), "--result", str(result), "-npp", str(args.npp),
              "-nps", str(args.nps)] + (["--disable_tta"] if args.disable_tta else [])
    if tool == "upstream":
        return [args.upstream_python, str(HERE / "upstream" / "predict_speed_upstream.py"), "--plans",
                str(args.plans), "--dataset_json", str(args.work / "dataset.json"), "--configuration",
                args.configuration, "--model_dir", str(args.work / "upstream_model"), "--folds",
                *[str(f) for f in range(n_folds)], *common]
    cmd = [sys.executable, __file__, "--worker", tool, "--model_dir", str(_pnnunet_model_dir(args)),
           "--n_folds", str(n_folds), *common]
    return cmd + (["--tile_batch_size", str(args.tile_batch_size)] if args.tile_batch_size else [])


def _pnnunet_model_dir(args: argparse.Namespace) -> Path:
    return args.work / "pnnunet_results" / "Dataset004_Hippocampus" / f"pnnunetTrainer__nnUNetPlans__{args.configuration}"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(args: argparse.Namespace) -> list[dict]:
    args.work.mkdir(parents=True, exist_ok=True)
    make_inputs(args.data, args.work / "input", args.cases)
    (args.work / "dataset.json").write_text(json.dumps(DATASET_JSON))
    if any(t != "upstream" for t in args.tools):
        make_pnnunet_model(_pnnunet_model_dir(args), args.plans, args.configuration, max(args.folds))
    rows = []
    for rnd in range(args.rounds):
        for n_folds in args.folds:
            tools = args.tools if rnd % 2 == 0 else args.tools[::-1]  # alternate the order between rounds
            for tool in tools:
                out = args.work / f"out_{tool}_{n_folds}"
                result = args.work / f"result_{tool}_{n_folds}_{rnd}.json"
                load_before = _load()
                m = run_measured(_command(tool, args, n_folds, out, result),
                                 args.work / f"log_{tool}_{n_folds}_{rnd}.txt")
                if m["returncode"] != 0:
                    print(f"{tool} {n_folds} folds failed: see {args.work}/log_{tool}_{n_folds}_{rnd}.txt")
                    continue
                r = json.loads(result.read_text())
                row = {"round": rnd, "tool": tool, "folds": n_folds, "cases": r["cases"],
                       "s_per_case": r["predict_seconds"] / max(1, r["cases"]), "load_s": r["load_seconds"],
                       "wall_s": m["wall_s"], "peak_ram_gib": m["peak_rss_bytes"] / 2**30,
                       "peak_pss_gib": m["peak_pss_bytes"] / 2**30,
                       "load_avg_before": load_before, "load_avg_after": _load()}
                rows.append(row)
                print(f"round {rnd} {tool:9s} {n_folds} fold(s): {row['s_per_case']:.2f} s/case, "
                      f"wall {row['wall_s']:.1f} s, peak RSS {row['peak_ram_gib']:.2f} GiB, PSS {row['peak_pss_gib']:.2f} GiB "
                      f"(load {load_before})",
                      flush=True)
    (args.work / "predict_speed.json").write_text(json.dumps(rows, indent=2))
    return rows


def table(rows: list[dict]) -> str:
    header = ("| tool | folds | cases | s per case (median) | all rounds | peak RSS GiB | peak PSS GiB | "
              "load avg (1/5/15 min) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["tool"], r["folds"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for tool, folds in keys:
        sel = [r for r in rows if r["tool"] == tool and r["folds"] == folds]
        per_case = [r["s_per_case"] for r in sel]
        lines.append(f"| {tool} | {folds} | {sel[0]['cases']} | {statistics.median(per_case):.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in per_case)} | {max(r['peak_ram_gib'] for r in sel):.2f} | "
                     f"{max(r['peak_pss_gib'] for r in sel):.2f} | "
                     f"{sel[0]['load_avg_before']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=["static", "eager", "bf16", "auto"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model_dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--n_folds", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("-i", dest="input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("-o", dest="output", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "Task04_Hippocampus")
    p.add_argument("--plans", type=Path, default=DEFAULT_PLANS)
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--work", type=Path, default=Path("predict_speed_work"))
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--folds", type=int, nargs="+", default=[1, 5])
    p.add_argument("--tools", nargs="+", default=["auto", "upstream"],
                   choices=["auto", "static", "bf16", "eager", "upstream"],
                   help="auto: pnnunet's default (bf16 convolutions on CPUs that have them, else static fp32); "
                        "static: Paddle Inference fp32; bf16; eager fp32; upstream nnU-Net")
    p.add_argument("--upstream-python", default="/work/venvs/upstream/bin/python")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("-npp", "--npp", dest="npp", type=int, default=2)
    p.add_argument("-nps", "--nps", dest="nps", type=int, default=2)
    p.add_argument("--tile_batch_size", type=int, default=None)
    p.add_argument("--disable_tta", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    args.work = args.work.resolve()
    rows = run(args)
    print(table(rows))


if __name__ == "__main__":
    main()
