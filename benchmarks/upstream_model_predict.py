"""One nnU-Net v2 model folder predicted by upstream nnU-Net v2 and by pnnunet, same machine, same run (issue 11).

Upstream (``benchmarks/upstream/predict_speed_upstream.py``, in the upstream venv) first creates an
upstream model folder for the plan (``fold_0/checkpoint_final.pth`` written by ``torch.save``, random
weights) unless it exists, and predicts the cases with ``nnUNetPredictor`` on CPU. pnnunet then
predicts the **same folder** (``Predictor(model_folder)``, via ``predict_speed.py --worker``): the first
pnnunet run converts the ``.pth`` and exports the static graph (its ``load_s`` shows that one-off cost),
the next runs use the cached conversion. Each run is a separate process; peak RSS/PSS is of the whole
process tree (workers included). Results: a markdown table on stdout and ``<work>/upstream_model_predict.json``.

    python benchmarks/upstream_model_predict.py --data ../shared/data/Task04_Hippocampus --cases 6 --rounds 2
    python benchmarks/upstream_model_predict.py --data ... --plans PLANS.json --cases 1 --disable_tta  # larger
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict_speed import DATASET_JSON, DEFAULT_PLANS, _load, make_inputs, run_measured


def _commands(args: argparse.Namespace, model_dir: Path, tool: str, out: Path, result: Path) -> list[str]:
    common = ["-i", str(args.work / "input"), "-o", str(out), "--result", str(result), "-npp", str(args.npp),
              "-nps", str(args.nps)] + (["--disable_tta"] if args.disable_tta else [])
    if tool == "upstream":
        return [args.upstream_python, str(HERE / "upstream" / "predict_speed_upstream.py"), "--plans", str(args.plans),
                "--dataset_json", str(args.work / "dataset.json"), "--configuration", args.configuration,
                "--model_dir", str(model_dir), "--folds", "0", *common]
    return [sys.executable, str(HERE / "predict_speed.py"), "--worker", "auto", "--model_dir", str(model_dir),
            "--n_folds", "1", *common]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "Task04_Hippocampus")
    p.add_argument("--plans", type=Path, default=DEFAULT_PLANS)
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--work", type=Path, default=Path("upstream_model_predict_work"))
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--upstream-python", default="/work/venvs/upstream/bin/python")
    p.add_argument("-npp", type=int, default=2)
    p.add_argument("-nps", type=int, default=2)
    p.add_argument("--disable_tta", action="store_true")
    args = p.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    make_inputs(args.data, args.work / "input", args.cases)
    (args.work / "dataset.json").write_text(json.dumps(DATASET_JSON))
    model_dir = args.work / "nnUNet_results" / "Dataset004_Hippocampus" / f"nnUNetTrainer__nnUNetPlans__{args.configuration}"
    shutil.rmtree(model_dir / "fold_0" / "pnnunet", ignore_errors=True)  # the first pnnunet run converts
    rows = []
    for rnd in range(args.rounds):
        tools = ("upstream", "pnnunet") if rnd % 2 == 0 else ("pnnunet", "upstream")
        if rnd == 0:
            tools = ("upstream", "pnnunet")  # upstream creates the model folder
        for tool in tools:
            out, result = args.work / f"out_{tool}", args.work / f"result_{tool}_{rnd}.json"
            before = _load()
            m = run_measured(_commands(args, model_dir, tool, out, result), args.work / f"log_{tool}_{rnd}.txt")
            if m["returncode"] != 0:
                raise SystemExit(f"{tool} failed: see {args.work}/log_{tool}_{rnd}.txt")
            r = json.loads(result.read_text())
            row = {"round": rnd, "tool": tool, "cases": r["cases"], "s_per_case": r["predict_seconds"] / r["cases"],
                   "load_s": r["load_seconds"], "wall_s": m["wall_s"], "peak_rss_gib": m["peak_rss_bytes"] / 2**30,
                   "peak_pss_gib": m["peak_pss_bytes"] / 2**30, "backend": r.get("backend", "torch"),
                   "load_avg_before": before, "load_avg_after": _load()}
            rows.append(row)
            print(f"round {rnd} {tool:8s}: {row['s_per_case']:.2f} s/case, load {row['load_s']:.1f} s, wall "
                  f"{row['wall_s']:.1f} s, peak RSS {row['peak_rss_gib']:.2f} GiB (load avg {before})", flush=True)
    (args.work / "upstream_model_predict.json").write_text(json.dumps(rows, indent=2))
    print("| tool | cases | s per case (median of rounds) | all rounds | model load s (1st, later) | peak RSS GiB | "
          "peak PSS GiB |\n|---|---|---|---|---|---|---|")
    for tool in ("upstream", "pnnunet"):
        sel = [r for r in rows if r["tool"] == tool]
        per_case = ", ".join(f"{r['s_per_case']:.2f}" for r in sel)
        loads = ", ".join(f"{r['load_s']:.1f}" for r in sel)
        print(f"| {tool} ({sel[0]['backend']}) | {sel[0]['cases']} | "
              f"{statistics.median(r['s_per_case'] for r in sel):.2f} | {per_case} | {loads} | "
              f"{max(r['peak_rss_gib'] for r in sel):.2f} | {max(r['peak_pss_gib'] for r in sel):.2f} |")


if __name__ == "__main__":
    main()
