"""Kill -9 trials (issue 14): a command is killed at a seeded random moment, the same command is run again
(``--c`` for training, ``--continue_prediction`` for prediction), and its outputs are compared with those of
an uninterrupted run; no temporary (half-written) file may be left.

Stages (bundled Hippocampus sample, tiny plans): preprocessing, training (3 epochs), prediction (4 cases,
with probabilities) and find_best_config. Half of the trials kill at a random time, the other half the moment
a temporary file of an atomic write appears (inside a checkpoint write / an export).

    python benchmarks/kill_resume.py --trials 10 --seed 0 --out /tmp/kill_resume.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "Task04_Hippocampus_sample"
DATASET = "Dataset004_Hippocampus_sample"
PLANS = "pnnunetTinyPlans"
MODEL = f"pnnunetTrainer__{PLANS}__3d_fullres"
CASES = ("hippocampus_045", "hippocampus_048", "hippocampus_049", "hippocampus_050")
TRAIN = ["3d_fullres", "0", "-d", DATASET, "-p", PLANS, "--epochs", "3", "--iterations_per_epoch", "2",
         "--val_iterations_per_epoch", "1", "--num_workers", "0", "-device", "cpu", "--no_pbar", "--val_disable_tta"]


def _env(ws: Path) -> dict:
    return dict(os.environ, pnnunet_raw=str(ws / "raw"), pnnunet_preprocessed=str(ws / "pre"),
                pnnunet_results=str(ws / "res"), OMP_NUM_THREADS="1")


def _cmd(ws: Path, stage: str, resume: bool) -> list[str]:
    py = [sys.executable, "-m"]
    if stage == "preprocessing":
        return py + ["pnnunet.cli.plan_and_preprocess", "-d", str(SAMPLE), "-pl", "tiny", "-c", "3d_fullres", "-np",
                     "1", "--no_pbar"]
    if stage == "training":
        return py + ["pnnunet.cli.train", *TRAIN, *(["--c"] if resume else [])]
    if stage == "prediction":
        return py + ["pnnunet.cli.predict", "-i", str(ws / "imagesTs"), "-o", str(ws / "pred"), "-d", DATASET, "-c",
                     "3d_fullres", "-p", PLANS, "-npp", "0", "-nps", "0", "--save_probabilities", "--no_pbar",
                     "-device", "cpu", *(["--continue_prediction"] if resume else [])]
    return py + ["pnnunet.cli.find_best_config", "-d", DATASET, "-p", PLANS, "-c", "3d_fullres", "-f", "0", "-np", "1"]


def _outputs(ws: Path, stage: str) -> Path:
    return {"preprocessing": ws / "pre" / DATASET, "training": ws / "res" / DATASET / MODEL / "fold_0",
            "prediction": ws / "pred", "find_best_config": ws / "res" / DATASET}[stage]


TEXT_ENDINGS = (".json", ".txt")


def _hashes(folder: Path, ws: Path, skip=("training_log.txt", "progress.png", "predict_args.json")) -> dict[str, str]:
    """sha256 per file; text files with the workspace path replaced (it differs between runs by design);
    checkpoints are compared by :func:`_training_equal` (they also hold timings)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name in skip or p.name.endswith((".lock", ".pdparams")):
            continue
        data = p.read_bytes()
        if p.name.endswith(TEXT_ENDINGS):
            data = data.replace(str(ws).encode(), b"WS")
        out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def _temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".tmp-*")] if folder.exists() else []


def _run(ws: Path, stage: str, resume: bool = False) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(_cmd(ws, stage, resume), env=_env(ws), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{stage} failed in {ws}:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def _training_equal(ref: Path, got: Path) -> dict:
    """Final checkpoint of the resumed run against the uninterrupted one: epochs, LR list, weights."""
    import numpy as np

    import pnnunet  # noqa: F401  (import order before paddle)
    from pnnunet.runtime.checkpoints import load_checkpoint

    a, b = (load_checkpoint(p / "checkpoint_final.pdparams") for p in (ref, got))
    diff = max(float(np.abs(np.asarray(a["network_weights"][k]) - np.asarray(b["network_weights"][k])).max())
               for k in a["network_weights"])
    return {"epochs_equal": a["current_epoch"] == b["current_epoch"],
            "lrs_equal": a["logging"]["lrs"] == b["logging"]["lrs"], "max_weight_diff": diff}


def _prepare(base: Path, ws: Path, stage: str) -> None:
    """``ws`` holds what ``stage`` needs as input, copied from the reference workspace ``base``."""
    ws.mkdir(parents=True)
    if stage == "preprocessing":
        return
    shutil.copytree(base / "raw", ws / "raw")
    shutil.copytree(base / "pre", ws / "pre")
    if stage == "training":
        return
    shutil.copytree(base / "res", ws / "res")
    shutil.copytree(base / "imagesTs", ws / "imagesTs")
    if stage == "find_best_config":
        for f in ("inference_instructions.json", "inference_information.json", "postprocessing.json"):
            (ws / "res" / DATASET / f).unlink(missing_ok=True)
        for p in (ws / "res" / DATASET).glob("*/crossval_results_folds_*"):
            shutil.rmtree(p)


def _trial(base: Path, work: Path, stage: str, k: int, rng: random.Random, ref_seconds: float) -> dict:
    ws = work / f"{stage}_{k}"
    _prepare(base, ws, stage)
    watch = _outputs(ws, stage)
    mode = "random" if k % 2 == 0 else "in_write"
    delay = rng.uniform(0.5, max(1.0, 0.95 * ref_seconds))
    proc = subprocess.Popen(_cmd(ws, stage, False), env=_env(ws), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    while proc.poll() is None:
        elapsed = time.perf_counter() - t0
        if (mode == "random" and elapsed >= delay) or (mode == "in_write" and elapsed >= delay * 0.3
                                                        and _temporaries(watch)):
            break
        time.sleep(0.005 if mode == "in_write" else 0.05)
    killed = proc.poll() is None
    killed_at = time.perf_counter() - t0
    temporaries_at_kill = _temporaries(watch) if killed else []
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = _run(ws, stage, resume=True)
    ref, got = _hashes(_outputs(base, stage), base), _hashes(watch, ws)
    result = {"stage": stage, "trial": k, "mode": mode, "killed": killed, "killed_at_s": round(killed_at, 2),
              "temporary_files_at_kill": len(temporaries_at_kill), "rerun_s": round(rerun, 1),
              "temporaries_left": _temporaries(watch), "missing": sorted(set(ref) - set(got)),
              "extra": sorted(set(got) - set(ref)), "differing": sorted(k for k in ref if k in got and ref[k] != got[k])}
    if stage == "training":
        result.update(_training_equal(_outputs(base, stage), watch))
    shutil.rmtree(ws)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", nargs="+", default=["preprocessing", "training", "prediction", "find_best_config"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill_resume_"))
    base = work / "reference"
    base.mkdir()
    seconds = {"preprocessing": _run(base, "preprocessing")}
    (base / "imagesTs").mkdir()
    for c in CASES:
        shutil.copyfile(SAMPLE / "imagesTs" / f"{c}.nii.gz", base / "imagesTs" / f"{c}.nii.gz")
    for stage in ("training", "prediction", "find_best_config"):
        seconds[stage] = _run(base, stage)
    print("uninterrupted:", {k: round(v, 1) for k, v in seconds.items()}, flush=True)
    results = []
    for stage in args.stages:
        for k in range(args.trials):
            r = _trial(base, work, stage, k, rng, seconds[stage])
            results.append(r)
            print(json.dumps(r), flush=True)
    summary = {}
    for stage in args.stages:
        rs = [r for r in results if r["stage"] == stage]
        summary[stage] = {"trials": len(rs), "killed": sum(r["killed"] for r in rs),
                          "killed_inside_a_write": sum(r["temporary_files_at_kill"] > 0 for r in rs),
                          "identical": sum(not (r["missing"] or r["extra"] or r["differing"]) for r in rs),
                          "temporaries_left": sum(bool(r["temporaries_left"]) for r in rs),
                          "uninterrupted_s": round(seconds[stage], 1)}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"seconds": seconds, "results": results, "summary": summary}, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
