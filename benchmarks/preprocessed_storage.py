"""Benchmark: preprocessed storage, ``.npy`` (pnnunet before) vs Blosc2 ``.b2nd`` (now, and upstream's format).

    python benchmarks/preprocessed_storage.py [--upstream-venv /work/venvs/upstream] [--np 2]

Two parts, written to ``--out`` (JSON) and printed:

1. Hippocampus (the bundled sample, 20 cases): ``pnnunet_plan_and_preprocess -c 2d 3d_fullres`` once with
   ``--storage npy --no_share`` (the old behaviour) and once with the defaults (b2nd, 2d shares the
   3d_fullres cases), measured with ``measure.run_measured`` (wall time, peak RSS of the process tree);
   the preprocessed folder's size; random 3d_fullres patches per second (open the case, read one box)
   and ``NNUNetPatchLoader`` batches per second (3d_fullres plans, no augmentation). With
   ``--upstream-venv``: upstream's ``nnUNetv2_plan_and_preprocess`` side by side, and pnnunet's loader on
   upstream's folder.
2. A synthetic CT-like case, (1, 300, 512, 512) float32 (see :func:`synthetic_ct`): written with
   ``save_preprocessed_case`` as npy and as b2nd (chunked for a (128, 128, 128) patch, a copy chunked
   for a 2D (512, 512) patch, and two copies with 10 and 25 HU noise inside the body) in a child
   process each (write time, peak RSS, size); then random 3D patches and random 2D slices per second
   from each.

Read rates are given per second of wall time and per second of the reading process's CPU time. The
``.npy`` files are read from the page cache (just written), as a training run on a machine with
enough RAM would; ``.b2nd`` decompresses with one thread, as the loader's workers do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

from pnnunet.fileio import load_json  # noqa: E402
from pnnunet.preprocessing.storage import list_cases, load_preprocessed_case, save_preprocessed_case  # noqa: E402
from pnnunet.training.dataloading import NNUNetPatchLoader  # noqa: E402
from pnnunet.training.sampling import crop_with_padding  # noqa: E402

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "tests" / "data" / "Task04_Hippocampus_sample"
CT_SHAPE = (300, 512, 512)
CT_PATCH_3D = (128, 128, 128)
CT_PATCH_2D = (512, 512)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _env(root: Path, prefix: str) -> dict:
    env = dict(os.environ)
    env.update({f"{prefix}_raw": str(root / "raw"), f"{prefix}_preprocessed": str(root / "pre"),
                f"{prefix}_results": str(root / "res"), "OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "2"})
    return env


def _rates(n: int, t0: float, c0: float) -> dict:
    """Per second of wall time and of this process's CPU time (the latter is what other processes on a
    shared machine disturb least; reading is single-threaded)."""
    return {"wall": n / (time.perf_counter() - t0), "cpu": n / (time.process_time() - c0)}


def patches_per_second(folder: Path, patch, n: int = 200, seed: int = 0, two_d: bool = False) -> dict:
    """Open a random case and read a random box (3D patch, or one slice of the 2D patch) ``n`` times."""
    cases = list_cases(folder)
    rng = np.random.default_rng(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        data, seg, _ = load_preprocessed_case(folder, cases[int(rng.integers(len(cases)))], mmap=True)
        box = (1, *patch) if two_d else tuple(patch)
        lb = [int(rng.integers(0, max(1, s - b + 1))) for s, b in zip(data.shape[1:], box)]
        bbox = [(lo, lo + b) for lo, b in zip(lb, box)]
        crop_with_padding(data, bbox, 0, dtype=np.float32)
        crop_with_padding(seg, bbox, -1, dtype=np.int16)
    return _rates(n, t0, c0)


def loader_batches_per_second(folder: Path, plans: dict, n: int = 30) -> dict:
    cfg = plans["configurations"]["3d_fullres"]
    loader = NNUNetPatchLoader(folder, list_cases(folder), cfg["batch_size"], cfg["patch_size"], cfg["patch_size"])
    loader.generate_train_batch()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        loader.generate_train_batch()
    return _rates(n, t0, c0)


def hippocampus(args, work: Path) -> dict:
    bindir = Path(sys.executable).parent
    out: dict = {}
    variants = {"npy_no_share": ["--storage", "npy", "--no_share"], "b2nd_shared": []}
    for name, extra in variants.items():
        root = work / f"hippo_{name}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        env = _env(root, "pnnunet")
        subprocess.run([str(bindir / "pnnunet_convert_msd"), "-i", str(SAMPLE), "--id", "4"], env=env, check=True,
                       capture_output=True)
        res = run_measured([str(bindir / "pnnunet_plan_and_preprocess"), "-d", "4", "-c", "2d", "3d_fullres", "-np",
                            str(args.np), "--no_pbar", *extra], env, root / "pp.log")
        if res["returncode"]:
            raise SystemExit(f"pnnunet failed, see {root / 'pp.log'}")
        pre = next((root / "pre").glob("Dataset*"))
        plans = load_json(pre / "pnnunetPlans.json")
        f3d = pre / "pnnunetPlans_3d_fullres"
        out[name] = {"wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_bytes"] / 2**20,
                     "bytes_2d": folder_bytes(pre / "pnnunetPlans_2d"), "bytes_3d_fullres": folder_bytes(f3d),
                     "patches_per_s": patches_per_second(f3d, plans["configurations"]["3d_fullres"]["patch_size"]),
                     "loader_batches_per_s": loader_batches_per_second(f3d, plans)}
        print(name, json.dumps(out[name]), flush=True)
    if args.upstream_venv:
        root = work / "hippo_upstream"
        shutil.rmtree(root, ignore_errors=True)
        (root / "msd").mkdir(parents=True)
        (root / "msd" / "Task04_Hippocampus").symlink_to(SAMPLE)
        env = _env(root, "nnUNet")
        subprocess.run([str(args.upstream_venv / "bin/nnUNetv2_convert_MSD_dataset"), "-i",
                        str(root / "msd" / "Task04_Hippocampus"), "-overwrite_id", "4", "-np", str(args.np)],
                       env=env, check=True, capture_output=True)
        res = run_measured([str(args.upstream_venv / "bin/nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "2d",
                            "3d_fullres", "-np", str(args.np), str(args.np)], env, root / "pp.log")
        if res["returncode"]:
            raise SystemExit(f"upstream failed, see {root / 'pp.log'}")
        pre = next((root / "pre").glob("Dataset*"))
        plans = load_json(pre / "nnUNetPlans.json")
        f3d = pre / "nnUNetPlans_3d_fullres"
        out["upstream"] = {"wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_bytes"] / 2**20,
                           "bytes_2d": folder_bytes(pre / "nnUNetPlans_2d"), "bytes_3d_fullres": folder_bytes(f3d),
                           "pnnunet_patches_per_s": patches_per_second(
                               f3d, plans["configurations"]["3d_fullres"]["patch_size"]),
                           "pnnunet_loader_batches_per_s": loader_batches_per_second(f3d, plans)}
        print("upstream", json.dumps(out["upstream"]), flush=True)
    return out


def synthetic_ct_hu(shape=CT_SHAPE, seed: int = 0, noise_hu: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in integer HU (int16, slices along the first axis) and its label map (int16).

    Without noise: air -1000 outside an elliptic body whose outline changes along the first axis;
    inside, subcutaneous fat (-100), soft tissue (40) with a slow integer ripple (±8 HU), a liver (60,
    label 1), two kidneys (30, label 2), a spine (cancellous 300, cortical ring 800) and, in the last
    80 slices, lungs (-850). Real scans add acquisition noise, so they compress less than this;
    ``noise_hu`` > 0 adds integer Gaussian noise of that standard deviation inside the body.
    """
    n, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hu = np.empty(shape, np.int16)
    seg = np.zeros(shape, np.int16)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi)
    ripple = np.round(8 * np.sin(xx / 23 + phase) * np.cos(yy / 31)).astype(np.int16)
    for z in range(n):
        a, b = 170 + 15 * np.sin(z / 45), 225 + 10 * np.cos(z / 60)
        r = ((yy - h / 2) / a) ** 2 + ((xx - w / 2) / b) ** 2
        sl = np.full((h, w), -1000, np.int16)
        sl[r <= 1] = -100
        inner = r <= 0.8
        sl[inner] = 40 + ripple[inner]
        liver = ((z - 120) / 90) ** 2 + ((yy - 230) / 70) ** 2 + ((xx - 170) / 85) ** 2 <= 1
        sl[liver], seg[z][liver] = 60, 1
        for cx in (190, 322):
            kidney = ((z - 90) / 40) ** 2 + ((yy - 300) / 30) ** 2 + ((xx - cx) / 22) ** 2 <= 1
            sl[kidney], seg[z][kidney] = 30, 2
        d = np.hypot(yy - 345, xx - w / 2)
        sl[d <= 28], sl[d <= 22] = 800, 300
        if z >= n - 80:
            for cx in (170, 342):
                sl[((yy - 230) / 80) ** 2 + ((xx - cx) / 60) ** 2 <= 1] = -850
        if noise_hu > 0:
            body = r <= 1
            sl[body] += np.round(rng.normal(0, noise_hu, int(body.sum()))).astype(np.int16)
        hu[z] = sl
    return hu, seg


def synthetic_ct(shape=CT_SHAPE, seed: int = 0, noise_hu: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`synthetic_ct_hu` after pnnunet's CT normalization, channel first: clipped to [-160, 240] HU
    (as CT normalization clips to the foreground's 0.5/99.5 percentiles) and z-scored with mean 50,
    std 60 (float32; 22 distinct values without noise)."""
    hu, seg = synthetic_ct_hu(shape, seed, noise_hu)
    data = ((np.clip(hu, -160, 240).astype(np.float32) - 50) / 60)[None]
    return data, seg[None]


def ct_write(fmt: str, folder: Path, patch: list[int], noise_hu: float = 0.0) -> None:
    """Child process: generate the volume, write it, print the write seconds."""
    data, seg = synthetic_ct(noise_hu=noise_hu)
    t0 = time.perf_counter()
    save_preprocessed_case(folder, "ct", data, seg, {"spacing": [2.5, 0.8, 0.8]}, patch_size=patch, storage=fmt)
    print(json.dumps({"write_s": time.perf_counter() - t0}))


def ct(work: Path) -> dict:
    out: dict = {}
    variants = {"npy": ("npy", CT_PATCH_3D, 0), "b2nd_3d_chunks": ("b2nd", CT_PATCH_3D, 0),
                "b2nd_2d_chunks": ("b2nd", CT_PATCH_2D, 0), "b2nd_3d_chunks_noise10": ("b2nd", CT_PATCH_3D, 10),
                "b2nd_3d_chunks_noise25": ("b2nd", CT_PATCH_3D, 25)}
    for name, (fmt, patch, noise) in variants.items():
        folder = work / f"ct_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        log = work / f"ct_{name}.log"
        res = run_measured([sys.executable, __file__, "--ct-write", fmt, str(folder), *map(str, patch),
                            "--ct-noise", str(noise)], log_file=log)
        if res["returncode"]:
            raise SystemExit(f"CT write failed, see {log}")
        write_s = json.loads(log.read_text().strip().splitlines()[-1])["write_s"]
        out[name] = {"process_wall_s": res["wall_s"], "write_s": write_s,
                     "peak_rss_mib": res["peak_rss_bytes"] / 2**20, "bytes": folder_bytes(folder),
                     "patches_3d_per_s": patches_per_second(folder, CT_PATCH_3D, n=30),
                     "slices_2d_per_s": patches_per_second(folder, CT_PATCH_2D, n=60, two_d=True)}
        print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream-venv", type=Path, default=None)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pnnunet_bench_storage"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/pnnunet_results_preprocessed_storage.json"))
    ap.add_argument("--skip-ct", action="store_true")
    ap.add_argument("--skip-hippocampus", action="store_true")
    ap.add_argument("--ct-write", nargs="+", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ct-noise", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ct_write:
        ct_write(args.ct_write[0], Path(args.ct_write[1]), [int(p) for p in args.ct_write[2:]], args.ct_noise)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    summary = {"date": str(date.today()), "machine": f"{platform.node()} {platform.processor() or platform.machine()}"
               f", {os.cpu_count()} cpus", "command": " ".join(sys.argv)}
    if not args.skip_hippocampus:
        summary["hippocampus"] = hippocampus(args, args.workdir)
    if not args.skip_ct:
        summary["ct"] = ct(args.workdir)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
