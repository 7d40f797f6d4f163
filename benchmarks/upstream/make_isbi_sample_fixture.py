"""Make the bundled 4-case ISBI 2012 PNG sample and upstream nnU-Net v2's fingerprint of it.

Runs ONLY in the upstream venv (``/work/venvs/upstream/bin/python``, nnunetv2 + torch inside); the
project never imports it. It

1. copies 4 of the 30 training cases of ``/work/shared/data/ISBI2012_EM_2D`` (images and labels byte
   for byte, sections ``CASES``) to ``tests/data/ISBI2012_EM_2D_sample/`` with a ``dataset.json`` whose
   keys and values are those of the full set except ``numTraining`` (4), ``name`` and ``description``
   (no ``imagesTs``; ``README.md`` there is written by hand, not by this script),
2. copies that sample into upstream's raw layout as ``Dataset{ID}_ISBI2012_EM_2D_sample`` under
   ``<scratch>/nnUNet_raw`` and runs upstream's own
   ``nnUNetv2_extract_fingerprint -d ID -np 2 --verify_dataset_integrity --clean``,
3. copies the ``dataset_fingerprint.json`` upstream wrote (byte for byte) to
   ``tests/planning/expected/isbi_2d_sample/dataset_fingerprint.json``.

Usage::

    /work/venvs/upstream/bin/python benchmarks/upstream/make_isbi_sample_fixture.py \
        [--scratch /work/scratch/upstream_fx] [--source /work/shared/data/ISBI2012_EM_2D]

Deterministic: fixed case list; upstream samples foreground intensities with a fixed seed (1234).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "ISBI2012_EM_2D_sample"
EXPECTED = REPO / "tests" / "planning" / "expected" / "isbi_2d_sample"
UPSTREAM_BIN = Path(sys.executable).parent
DATASET_ID = 929
DATASET_NAME = f"Dataset{DATASET_ID:03d}_ISBI2012_EM_2D_sample"
# four sections spread over the 30-slice stack (first, two in the middle, last)
CASES = ["isbi2012_00", "isbi2012_10", "isbi2012_20", "isbi2012_29"]


def make_sample(source: Path) -> None:
    ds = json.loads((source / "dataset.json").read_text())
    ds["numTraining"] = len(CASES)
    ds["name"] = "ISBI2012_EM_2D_sample"
    ds["description"] = (ds["description"] + "; 4-case subset for tests (sections "
                         + ", ".join(c.split("_")[1] for c in CASES) + ")")
    for sub in ("imagesTr", "labelsTr"):
        d = SAMPLE / sub
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for c in CASES:
        shutil.copyfile(source / "imagesTr" / f"{c}_0000.png", SAMPLE / "imagesTr" / f"{c}_0000.png")
        shutil.copyfile(source / "labelsTr" / f"{c}.png", SAMPLE / "labelsTr" / f"{c}.png")
    with open(SAMPLE / "dataset.json", "w") as f:
        json.dump(ds, f, indent=4)  # same key order as the source file
        f.write("\n")


def upstream_env(scratch: Path) -> dict:
    env = dict(os.environ)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[k] = str(scratch / k)
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    env["nnUNet_def_n_proc"] = "2"
    env["OMP_NUM_THREADS"] = "1"
    return env


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", type=Path, default=Path("/work/scratch/upstream_fx"))
    p.add_argument("--source", type=Path, default=Path("/work/shared/data/ISBI2012_EM_2D"))
    args = p.parse_args(argv)

    make_sample(args.source)
    env = upstream_env(args.scratch)
    raw = args.scratch / "nnUNet_raw" / DATASET_NAME
    pre = args.scratch / "nnUNet_preprocessed" / DATASET_NAME
    for d in (raw, pre):
        if d.exists():
            shutil.rmtree(d)
    raw.mkdir(parents=True)
    shutil.copyfile(SAMPLE / "dataset.json", raw / "dataset.json")
    shutil.copytree(SAMPLE / "imagesTr", raw / "imagesTr")
    shutil.copytree(SAMPLE / "labelsTr", raw / "labelsTr")

    cmd = [str(UPSTREAM_BIN / "nnUNetv2_extract_fingerprint"), "-d", str(DATASET_ID), "-np", "2",
           "--verify_dataset_integrity", "--clean"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)

    EXPECTED.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pre / "dataset_fingerprint.json", EXPECTED / "dataset_fingerprint.json")
    print("wrote", EXPECTED / "dataset_fingerprint.json")


if __name__ == "__main__":
    main()
