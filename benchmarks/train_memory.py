"""Peak memory of CPU training on a CT-sized dataset, per phase (issue 16: 3d_lowres peaked at 13.5 GiB).

Builds a seeded synthetic abdominal-CT-like dataset (default 3 cases of 512 x 512 x ~130 voxels,
spacing 0.8 x 0.8 x 2.5-3 mm; HU-like values: -1000 air outside a body ellipse, soft tissue 40 +- 20
HU, 5 labels as organ-like blobs), runs ``pnnunet_plan_and_preprocess -c 3d_lowres`` (Blosc2 .b2nd)
and then ``pnnunet_train CONFIG FOLD`` for a few iterations in a subprocess, sampling the memory of
the whole process tree (trainer + augmentation workers) every ``--interval`` seconds: the sum of RSS
and the sum of PSS (``/proc/PID/smaps_rollup``; pages shared between the trainer and its forked
workers are counted once). Phases come from the training log (the trainer's stdout with
``--verbose``): ``startup`` (imports, plans), ``first_epoch`` (network, optimizer, workers and
epoch 0's iterations: the first oneDNN primitives and activations), ``later_epochs`` (steady
iterations, from the first epoch line on), ``final_validation`` (after "training finished").

    python benchmarks/train_memory.py --work /tmp/ctmem --configuration 3d_lowres
    python benchmarks/train_memory.py --work /tmp/ctmem --configuration 3d_cascade_fullres  # after 3d_lowres

Writes ``<work>/memory_<configuration>[_fp32|_bf16].json`` (the samples and the per-phase peaks) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import PAGE, _children_map  # noqa: E402

GIB = 1024 ** 3
DATASET = "Dataset916_SynthCT"


# ---- data set ---------------------------------------------------------------------------------------
def make_case(rng: np.random.Generator, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """float32 HU-like image and uint8 labels 0-4: body ellipse, liver-, kidney-, spleen-, aorta-like blobs."""
    nz, ny, nx = shape_zyx
    z, y, x = np.ogrid[0:nz, 0:ny, 0:nx]
    zc, yc, xc = (z - nz / 2) / (nz / 2), (y - ny / 2) / (ny / 2), (x - nx / 2) / (nx / 2)
    body = (xc / 0.85) ** 2 + (yc / 0.65) ** 2 < 1.0
    img = np.full(shape_zyx, -1000.0, dtype=np.float32)
    noise = rng.normal(40.0, 20.0, size=shape_zyx).astype(np.float32)
    body3 = np.broadcast_to(body, shape_zyx)
    img[body3] = noise[body3]
    del noise
    seg = np.zeros(shape_zyx, dtype=np.uint8)
    jitter = rng.uniform(-0.05, 0.05, size=(4, 3))
    blobs = [  # (label, centre z y x in [-1, 1], radii, HU offset)
        (1, (0.0, -0.1, -0.35), (0.55, 0.3, 0.3), 30.0),   # liver-like
        (2, (0.1, 0.15, 0.4), (0.25, 0.12, 0.1), 80.0),    # kidney-like
        (3, (-0.1, -0.2, 0.45), (0.3, 0.15, 0.12), 20.0),  # spleen-like
        (4, (0.0, 0.2, 0.0), (0.9, 0.06, 0.06), 150.0),    # aorta-like tube
    ]
    for (lab, c, r, hu), j in zip(blobs, jitter):
        m = ((zc - c[0] - j[0]) / r[0]) ** 2 + ((yc - c[1] - j[1]) / r[1]) ** 2 + ((xc - c[2] - j[2]) / r[2]) ** 2 < 1
        seg[m] = lab
        img[m] += hu
    return img, seg


def make_dataset(raw: Path, n_cases: int, seed: int) -> Path:
    import SimpleITK as sitk

    ds = raw / DATASET
    if (ds / "dataset.json").is_file():
        return ds
    (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
    (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        nz = int(rng.integers(125, 136))
        spacing = (0.8, 0.8, float(rng.uniform(2.5, 3.0)))  # SimpleITK x, y, z
        img, seg = make_case(rng, (nz, 512, 512))
        for arr, path in ((img, ds / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"), (seg, ds / "labelsTr" / f"ct_{i:03d}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(spacing)
            sitk.WriteImage(im, str(path), useCompression=True)
        print(f"case {i}: {nz} x 512 x 512, spacing {spacing}", flush=True)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "aorta": 4},
        "numTraining": n_cases, "file_ending": ".nii.gz"}, indent=1))
    return ds


# ---- memory sampling ----------------------------------------------------------------------------------
def tree_pids(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(summed RSS, summed PSS, number of processes) of ``pid`` and its descendants, bytes."""
    rss = pss = n = 0
    for p in tree_pids(pid):
        try:
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
            n += 1
        except (OSError, ValueError, IndexError):
            pass
    return rss, pss, n


PHASE_MARKS = [  # (substring of a log line, phase that starts with it)
    ("patch [", "first_epoch"),  # logged just before the network is built and the workers start
    ("epoch 0 | train_loss", "later_epochs"),  # the first epoch line: epoch 0 done
    ("training finished", "final_validation"),
]


def phase_of(text: str) -> str:
    phase = "startup"
    for mark, name in PHASE_MARKS:
        if mark in text:
            phase = name
    return phase


def _suffix(args: argparse.Namespace) -> str:
    return "" if args.precision == "default" else f"_{args.precision}"


def run_training(args: argparse.Namespace, env: dict) -> dict:
    cmd = [str(Path(sys.executable).parent / "pnnunet_train"), args.configuration, args.fold, "-d", DATASET,
           "-device", "cpu", "--epochs", str(args.epochs), "--iterations_per_epoch", str(args.iterations),
           "--val_iterations_per_epoch", str(args.val_iterations), "--no_pbar", "--verbose"]
    if args.val_disable_tta:
        cmd.append("--val_disable_tta")
    if args.num_workers is not None:
        cmd += ["--num_workers", str(args.num_workers)]
    if args.precision != "default":
        cmd.append(f"--{args.precision}")
    log_path = Path(args.work) / f"train_{args.configuration}{_suffix(args)}.log"
    t0 = time.time()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        samples, phases = [], {}
        while proc.poll() is None:
            rss, pss, n = tree_memory(proc.pid)
            phase = phase_of(log_path.read_text(errors="replace"))
            t = time.time() - t0
            if phase not in phases:
                phases[phase] = t
                print(f"{t:8.1f} s  phase {phase}", flush=True)
            samples.append((round(t, 2), phase, rss, pss, n))
            time.sleep(args.interval)
    peaks = {}
    for _, phase, rss, pss, n in samples:
        p = peaks.setdefault(phase, {"rss_gib": 0.0, "pss_gib": 0.0, "processes": 0})
        p["rss_gib"] = max(p["rss_gib"], rss / GIB)
        p["pss_gib"] = max(p["pss_gib"], pss / GIB)
        p["processes"] = max(p["processes"], n)
    return {"cmd": " ".join(cmd), "returncode": proc.returncode, "wall_s": time.time() - t0, "phase_start_s": phases,
            "peaks": peaks, "samples": samples, "log": str(log_path)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--configuration", default="3d_lowres")
    p.add_argument("--fold", default="all")
    p.add_argument("--cases", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--val_iterations", type=int, default=1)
    p.add_argument("--num_workers", type=int, default=None)
    p.add_argument("--val_disable_tta", action="store_true")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--skip_preprocess", action="store_true")
    p.add_argument("--precision", choices=("default", "fp32", "bf16"), default="default",
                   help="pnnunet_train --fp32 / --bf16 (default: the trainer's choice, bfloat16 where native)")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, pnnunet_raw=str(a.work / "raw"), pnnunet_preprocessed=str(a.work / "preprocessed"),
               pnnunet_results=str(a.work / "results"))
    make_dataset(a.work / "raw", a.cases, a.seed)
    bindir = Path(sys.executable).parent
    plans_file = a.work / "preprocessed" / DATASET / "pnnunetPlans.json"
    if not a.skip_preprocess:
        configs = ["3d_lowres"] if a.configuration == "3d_lowres" else ["3d_lowres", "3d_fullres"]
        subprocess.run([str(bindir / "pnnunet_plan_and_preprocess"), "-d", DATASET, "-c", *configs, "-np", "2"],
                       env=env, check=True)
    plans = json.loads(plans_file.read_text())["configurations"]
    low = plans.get("3d_lowres")
    if low is None:
        raise SystemExit("the plans have no 3d_lowres: make the images larger")
    print(f"3d_lowres: batch {low['batch_size']}, patch {low['patch_size']}, spacing {low['spacing']}", flush=True)
    result = run_training(a, env)
    result["configuration"], result["plan_3d_lowres"] = a.configuration, {k: low[k] for k in ("batch_size", "patch_size", "spacing")}
    (a.work / f"memory_{a.configuration}{_suffix(a)}.json").write_text(json.dumps(result, indent=1))
    print(f"\n{result['cmd']}\nexit {result['returncode']}, {result['wall_s']:.0f} s")
    print(f"{'phase':20s} {'start s':>8s} {'peak RSS GiB':>13s} {'peak PSS GiB':>13s} {'procs':>6s}")
    for phase, pk in result["peaks"].items():
        print(f"{phase:20s} {result['phase_start_s'].get(phase, 0):8.1f} {pk['rss_gib']:13.2f} {pk['pss_gib']:13.2f} "
              f"{pk['processes']:6d}")


if __name__ == "__main__":
    main()
