"""Benchmark: does data loading keep up with training? ``.npy`` (pnnunet before issue 16) vs Blosc2 ``.b2nd``.

    python benchmarks/data_loading.py --preprocessed <pnnunet_preprocessed>/DatasetXXX_Name -c 3d_fullres \\
        --work /tmp/loading [--batches 20] [--workers 2]

For the configuration's preprocessed folder (``.b2nd``, the default now) a copy of its cases in ``.npy``
is written under ``--work`` (:func:`pnnunet.preprocessing.storage.save_preprocessed_case`, same arrays;
the old storage). From each, in a child process of its own (so that one's page cache and heap do not
help the other; the ``.npy`` copy was just written, so it is read from the page cache as a machine
with enough RAM would):

- ``loader``: ``NNUNetPatchLoader`` batches per second, one process, no augmentation (the read cost);
- ``augmented``: batches per second from ``make_batch_iterators`` with ``--workers`` worker processes
  and the full augmentation pipeline, i.e. what the trainer receives (after a warm-up of 2 batches);
  and the peak RSS of the child's process tree.

Compare ``augmented`` with the training step time of the same plan (benchmarks/RESULTS.md): loading
keeps up if it delivers batches faster than a step takes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import run_measured  # noqa: E402


def _plan(preprocessed: Path, configuration: str):
    from pnnunet.plans import ConfigurationPlan, load_plans

    plans_file = preprocessed / "pnnunetPlans.json"
    return ConfigurationPlan.from_plans(load_plans(plans_file), configuration, plans_file)


def cases_folder(preprocessed: Path, configuration: str) -> Path:
    """The folder that holds the configuration's cases (a shared folder's owner)."""
    from pnnunet.preprocessing.storage import case_folder

    return case_folder(preprocessed / _plan(preprocessed, configuration).data_identifier)


def write_npy_copy(src: Path, dst: Path) -> None:
    from pnnunet.preprocessing.storage import list_cases, load_preprocessed_case, save_preprocessed_case

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for case in list_cases(src):
        data, seg, props = load_preprocessed_case(src, case, mmap=False)
        save_preprocessed_case(dst, case, data, seg, props, storage="npy")


def child(args: argparse.Namespace) -> None:
    """One storage variant: print {loader, augmented} batches/s as JSON."""
    from pnnunet.preprocessing.storage import list_cases
    from pnnunet.training.augmentation import make_batch_iterators
    from pnnunet.training.dataloading import NNUNetPatchLoader

    plan = _plan(args.preprocessed, args.configuration)
    folder = args.child
    ids = list_cases(folder)
    loader = NNUNetPatchLoader(folder, ids, plan.batch_size, plan.patch_size, plan.patch_size)
    loader.generate_train_batch()
    t0 = time.perf_counter()
    for _ in range(args.loader_batches):
        loader.generate_train_batch()
    loader_rate = args.loader_batches / (time.perf_counter() - t0)
    del loader
    train_iter, val_iter = make_batch_iterators(folder, plan, ids, ids[:1], args.workers, seed=0)
    try:
        for _ in range(2):
            next(train_iter)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(train_iter)
        augmented = args.batches / (time.perf_counter() - t0)
    finally:
        train_iter.close()
        val_iter.close()
    print(json.dumps({"loader_batches_per_s": loader_rate, "augmented_batches_per_s": augmented}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preprocessed", type=Path, required=True)
    ap.add_argument("-c", "--configuration", default="3d_fullres")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--loader_batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    src = cases_folder(args.preprocessed, args.configuration)
    npy = args.work / f"{src.name}_npy"
    write_npy_copy(src, npy)
    plan = _plan(args.preprocessed, args.configuration)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "command": " ".join(sys.argv), "configuration": args.configuration,
              "batch_size": plan.batch_size, "patch_size": list(plan.patch_size), "variants": {}}
    for name, folder in (("npy (before)", npy), ("b2nd (now)", src)):
        log = args.work / f"loading_{name.split()[0]}_{args.configuration}.log"
        load = float(Path("/proc/loadavg").read_text().split()[0])
        res = run_measured([sys.executable, __file__, "--preprocessed", str(args.preprocessed), "-c",
                            args.configuration, "--work", str(args.work), "--batches", str(args.batches),
                            "--loader_batches", str(args.loader_batches), "--workers", str(args.workers),
                            "--child", str(folder)], log_file=log)
        if res["returncode"]:
            raise SystemExit(f"{name} failed, see {log}")
        row = json.loads(log.read_text().strip().splitlines()[-1])
        row.update(peak_rss_gib=round(res["peak_rss_bytes"] / 2**30, 3), load_before=load,
                   bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()))
        result["variants"][name] = row
        print(name, json.dumps(row), flush=True)
    shutil.rmtree(npy, ignore_errors=True)
    out = args.work / f"data_loading_{args.preprocessed.name}_{args.configuration}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
