"""How upstream nnU-Net v2 answers the dataset rows of tests/test_bad_inputs.py (issue 14).

Each row's broken raw dataset is made with pnnunet's test helpers (this venv); upstream's
``nnUNetv2_plan_and_preprocess -d 1 --verify_dataset_integrity --no_pp -np 1`` then runs from its own venv.
"Clean" = exit code != 0 and no Python traceback in its output.

    python benchmarks/upstream/bad_inputs_upstream.py --upstream-bin /work/venvs/upstream/bin
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_bad_inputs import ROWS_DATASET, Ctx  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream-bin", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = {}
    for row in ROWS_DATASET:
        root = Path(tempfile.mkdtemp(prefix=f"up_{row.__name__}_"))
        ctx = Ctx(root, None)
        _, argv, _ = row(ctx)
        up_args = ["-d", "1", "--verify_dataset_integrity", "--no_pp", "-np", "1"]
        if "-np" in argv and argv[argv.index("-np") + 1] == "0":
            up_args[-1] = "0"
        if "--verify_dataset_integrity" not in argv:  # the row preprocesses without the check
            up_args = ["-d", "1", "-c", "3d_fullres", "-np", "1"]
        env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                   nnUNet_results=str(root / "res"))
        done = subprocess.run([str(args.upstream_bin / "nnUNetv2_plan_and_preprocess"), *up_args], env=env,
                              capture_output=True, text=True, timeout=900)
        text = done.stdout + done.stderr
        last = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
        results[row.__name__] = {"exit": done.returncode, "traceback": "Traceback" in text,
                                 "clean": done.returncode != 0 and "Traceback" not in text, "last_line": last[0][:200]}
        print(row.__name__, json.dumps(results[row.__name__]), flush=True)
    print(f"upstream rejects cleanly: {sum(r['clean'] for r in results.values())} of {len(results)}; "
          f"rejects at all: {sum(r['exit'] != 0 for r in results.values())}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
