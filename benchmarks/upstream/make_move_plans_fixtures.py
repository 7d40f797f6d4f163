"""Expected outputs of upstream's ``nnUNetv2_move_plans_between_datasets`` for tests/data/upstream_move_plans.

Run with upstream's own interpreter (never pnnunet's venv), from the repository root:

    nice -n 19 /work/venvs/upstream/bin/python benchmarks/upstream/make_move_plans_fixtures.py \
        --out tests/data/upstream_move_plans

It lays out a throw-away nnUNet_raw / nnUNet_preprocessed in a temporary folder:
- source Dataset004_Hippocampus (preprocessed only, as upstream needs) with two plans files:
  ``nnUNetPlansTiny.json`` (the upstream model fixture's plans, data identifiers ``nnUNetPlans_*``, i.e. not
  prefixed by the plans name) and ``nnUNetPlans.json`` (upstream's plans of Hippocampus-220, prefixed);
- target Dataset010_HippocampusSample (raw: dataset.json and two .nii.gz cases of the bundled sample) and
  target Dataset011_ISBI2012 (raw: the bundled .png sample), each with an empty preprocessed folder;
then runs the upstream command once per case in ``CASES`` and copies each written plans file to
``OUT/<case>.json``. The source plans are not copied (the tests read them from where they are committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SOURCE_PLANS = {
    "nnUNetPlansTiny": DATA / "upstream_models" / "Dataset004_Hippocampus"
                       / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres" / "plans.json",
    "nnUNetPlans": DATA / "upstream_hippocampus_220" / "nnUNetPlans.json",
}
# case name -> (target dataset id, -sp, -tp or None)
CASES = {
    "tiny_to_010_as_nnUNetPlansTinyFrom4": ("10", "nnUNetPlansTiny", "nnUNetPlansTinyFrom4"),
    "tiny_to_010_same_name": ("10", "nnUNetPlansTiny", None),
    "hippocampus220_to_010_as_nnUNetPlansFrom4": ("10", "nnUNetPlans", "nnUNetPlansFrom4"),
    "hippocampus220_to_011_as_nnUNetPlansFrom4": ("11", "nnUNetPlans", "nnUNetPlansFrom4"),
}
TARGETS = {"10": "Dataset010_HippocampusSample", "11": "Dataset011_ISBI2012"}


def hippocampus_target(raw: Path, cases=("hippocampus_001", "hippocampus_003")) -> Path:
    """A v2 raw dataset of a few bundled-sample cases (target 10)."""
    sample = DATA / "Task04_Hippocampus_sample"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for case in cases:
        shutil.copyfile(sample / "imagesTr" / f"{case}.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copyfile(sample / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(cases), "file_ending": ".nii.gz"}, indent=2))
    return raw


def lay_out_inputs(raw: Path, preprocessed: Path) -> None:
    """The source's preprocessed plans files and the two targets' raw datasets, as described above (shared
    with tests/planning/test_move_plans.py, which runs pnnunet's command on the same tree)."""
    src = preprocessed / "Dataset004_Hippocampus"
    src.mkdir(parents=True)
    for name, path in SOURCE_PLANS.items():
        shutil.copyfile(path, src / f"{name}.json")
    hippocampus_target(raw / TARGETS["10"])
    shutil.copytree(DATA / "ISBI2012_EM_2D_sample", raw / TARGETS["11"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, nnUNet_raw=str(tmp / "raw"), nnUNet_preprocessed=str(tmp / "pre"),
                   nnUNet_results=str(tmp / "res"))
        lay_out_inputs(tmp / "raw", tmp / "pre")
        for target in TARGETS.values():
            (tmp / "pre" / target).mkdir()
        command = str(Path(sys.executable).parent / "nnUNetv2_move_plans_between_datasets")
        for case, (target, sp, tp) in CASES.items():
            argv = [command, "-s", "4", "-t", target, "-sp", sp] + (["-tp", tp] if tp else [])
            print(" ".join(argv[1:]))
            subprocess.run(argv, env=env, check=True)
            written = tmp / "pre" / TARGETS[target] / f"{tp or sp}.json"
            shutil.copyfile(written, args.out / f"{case}.json")
            written.unlink()


if __name__ == "__main__":
    main()
