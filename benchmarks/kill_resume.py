"""Kill -9 trials (issue 14): a command is killed at a seeded random moment, the same command is run again
(``--c`` for training, ``--continue_prediction`` for prediction), and its outputs are compared with those of
an uninterrupted run; no temporary (half-written) file may be left.

Stages (bundled Hippocampus sample, tiny plans): preprocessing, training (3 epochs), prediction (4 cases,
with probabilities) and find_best_config. Half of the trials kill at a random time, the other half the moment
a temporary file of an atomic write appears (inside a checkpoint write / an export).

    nice -n 19 python benchmarks/kill_resume.py --trials 10 --seed 0 --work /tmp/kill_resume

Resumable: every finished trial is appended to ``WORK/results.jsonl`` and the uninterrupted reference runs
(with the hashes of their outputs, taken right after each run) are kept in ``WORK/reference``; running the same
command again skips what is done. Each trial draws from its own generator seeded with (seed, stage, trial), so
a trial does not depend on which trials ran before it. ``WORK/summary.json`` holds the counts per stage.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "Task04_Hippocampus_sample"
DATASET = "Dataset004_Hippocampus_sample"
PLANS = "pnnunetTinyPlans"
MODEL = f"pnnunetTrainer__{PLANS}__3d_fullres"
CASES = ("hippocampus_045", "hippocampus_048", "hippocampus_049", "hippocampus_050")
TRAIN = ["3d_fullres", "0", "-d", DATASET, "-p", PLANS, "--epochs", "3", "--iterations_per_epoch", "2",
         "--val_iterations_per_epoch", "1", "--save_every", "1", "--num_workers", "0", "-device", "cpu", "--no_pbar", "--val_disable_tta"]


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
# different in every run by design: timings and logs, the exported graph's record of its checkpoint's mtime
BY_DESIGN = ("training_log.txt", "progress.png", "predict_args.json", "export_meta.json")


def _hashes(folder: Path, *workspaces: Path, skip=BY_DESIGN) -> dict[str, str]:
    """sha256 per file; text files with the workspace paths replaced (they differ between runs by design, and a
    trial's inputs copied from the reference hold the reference's path); checkpoints are compared by
    :func:`_training_equal` (they also hold timings)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name in skip or p.name.endswith((".lock", ".pdparams")):
            continue
        data = p.read_bytes()
        if p.name.endswith(TEXT_ENDINGS):
            for ws in workspaces:
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


def _trial(base: Path, work: Path, stage: str, k: int, seed: int, ref_seconds: float, ref_hashes: dict) -> dict:
    rng = random.Random(f"{seed}:{stage}:{k}")
    ws = work / f"{stage}_{k}"
    if ws.exists():  # a trial cut by stopping the benchmark itself
        shutil.rmtree(ws)
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
    ref, got = ref_hashes, _hashes(watch, ws, base)
    result = {"stage": stage, "trial": k, "mode": mode, "killed": killed, "killed_at_s": round(killed_at, 2),
              "temporary_files_at_kill": len(temporaries_at_kill), "rerun_s": round(rerun, 1),
              "temporaries_left": _temporaries(watch), "missing": sorted(set(ref) - set(got)),
              "extra": sorted(set(got) - set(ref)), "differing": sorted(k for k in ref if k in got and ref[k] != got[k])}
    result["identical"] = not (result["missing"] or result["extra"] or result["differing"])
    if stage == "training":
        result.update(_training_equal(_outputs(base, stage), watch))
        result["identical"] = (result["identical"] and result["epochs_equal"] and result["lrs_equal"]
                               and result["max_weight_diff"] == 0.0)
    shutil.rmtree(ws)
    return result


STAGES = ("preprocessing", "training", "prediction", "find_best_config")


def _references(work: Path, stages: list[str]) -> tuple[Path, dict, dict]:
    """The uninterrupted runs (each stage needs the outputs of the ones before it), their durations and the
    hashes of their outputs taken right after each run (a later stage adds files, e.g. splits_final.json),
    cached in ``work/reference.json``."""
    base, cache = work / "reference", work / "reference.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {"seconds": {}, "hashes": {}}
    need = STAGES[:max(STAGES.index(s) for s in stages) + 1]
    if any(s not in done["seconds"] for s in need):
        if base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True)
        done = {"seconds": {}, "hashes": {}}
        for stage in need:
            if stage == "prediction":
                (base / "imagesTs").mkdir()
                for c in CASES:
                    shutil.copyfile(SAMPLE / "imagesTs" / f"{c}.nii.gz", base / "imagesTs" / f"{c}.nii.gz")
            done["seconds"][stage] = _run(base, stage)
            done["hashes"][stage] = _hashes(_outputs(base, stage), base)
        cache.write_text(json.dumps(done, indent=1))
    return base, done["seconds"], done["hashes"]


def _expected_seconds(stage: str, seconds: dict, results: list[dict]) -> float:
    """How long an uninterrupted run of ``stage`` takes: the reference run's time, or less if a trial's run
    finished sooner (the machine's load changes; random kill times drawn from a duration measured under a
    heavier load would mostly fall after the end)."""
    finished = [r["killed_at_s"] for r in results if r["stage"] == stage and not r["killed"]]
    return min([seconds[stage], *finished])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--work", type=Path, required=True, help="work folder (kept; rerun to resume)")
    ap.add_argument("--summarize", action="store_true", help="only print the counts of the trials done so far")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.summarize:
        seconds = json.loads((args.work / "reference.json").read_text())["seconds"]
    else:
        base, seconds, ref_hashes = _references(args.work, args.stages)
    print("uninterrupted:", {k: round(v, 1) for k, v in seconds.items()}, flush=True)
    log = args.work / "results.jsonl"
    results = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    results = list({(r["stage"], r["trial"], r["seed"]): r for r in reversed(results)}.values())[::-1]  # first kept
    done = {(r["stage"], r["trial"], r["seed"]) for r in results}
    for stage in args.stages:
        for k in range(args.trials):
            if args.summarize or (stage, k, args.seed) in done:
                continue
            t1 = time.perf_counter()
            r = _trial(base, args.work, stage, k, args.seed, _expected_seconds(stage, seconds, results),
                       ref_hashes[stage])
            r.update(seed=args.seed, trial_s=round(time.perf_counter() - t1, 1))
            results.append(r)
            with log.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)
    for r in results:  # judged again: trials recorded by an older version of this script compared more files
        for key in ("missing", "extra", "differing"):
            r[key] = [f for f in r[key] if Path(f).name not in BY_DESIGN]
        r["identical"] = not (r["missing"] or r["extra"] or r["differing"]) and (
            r["stage"] != "training" or (r["epochs_equal"] and r["lrs_equal"] and r["max_weight_diff"] == 0.0))
    summary = {}
    for stage in args.stages:
        rs = [r for r in results if r["stage"] == stage and r["seed"] == args.seed and r["trial"] < args.trials]
        summary[stage] = {"trials": len(rs), "killed": sum(r["killed"] for r in rs),
                          "killed_inside_a_write": sum(r["temporary_files_at_kill"] > 0 for r in rs),
                          "identical": sum(r["identical"] for r in rs),
                          "temporaries_left": sum(bool(r["temporaries_left"]) for r in rs),
                          "uninterrupted_s": round(seconds[stage], 1),
                          "trials_s": round(sum(r["trial_s"] for r in rs), 1)}
        if stage == "training":
            summary[stage].update(epochs_equal=sum(r["epochs_equal"] for r in rs),
                                  lrs_equal=sum(r["lrs_equal"] for r in rs),
                                  max_weight_diff=max((r["max_weight_diff"] for r in rs), default=None))
    print(json.dumps(summary, indent=1))
    print(f"this invocation: {time.perf_counter() - t0:.0f} s")
    if not args.summarize:
        (args.work / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
