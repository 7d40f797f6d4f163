"""``pnnunet_app --demo``: the bundled Hippocampus sample and a demo model, in one command.

The model is the pretrained one bundled in the package (``pnnunet/pretrained``, ``-m pretrained:hippocampus``),
served at once. An installation without its weights trains one at the first start instead: the tiny
preset, fold 0, a short schedule on the 20 bundled training cases (a few minutes on 2 CPU cores), into a
cache folder (``~/.cache/pnnunet/app_demo`` by default); later starts find it there. The jobs go to
the cache folder either way. The held-out ``imagesTs`` cases are offered on the page as samples.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from pnnunet import pretrained
from pnnunet.errors import PnnunetError
from pnnunet.fileio import write_json_atomic

log = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parents[2] / "tests" / "data" / "Task04_Hippocampus_sample"
DEMO_PLANS = "pnnunetTinyPlans"
DEMO_EPOCHS = 10
READY = "demo_ready.json"
PRETRAINED = "hippocampus"


def default_cache() -> Path:
    return Path.home() / ".cache" / "pnnunet" / "app_demo"


def sample_images(sample: Path = SAMPLE) -> tuple[Path, ...]:
    return tuple(sorted((sample / "imagesTs").glob("*.nii.gz")))


def prepare_demo(cache: Path, sample: Path = SAMPLE, epochs: int = DEMO_EPOCHS) -> Path:
    """The results root of the demo model: the bundled pretrained model's, else one trained into ``cache``
    unless it is already there."""
    if pretrained.is_bundled(PRETRAINED):
        print(f"pnnunet_app --demo: the bundled pretrained model ({pretrained.MODELS[PRETRAINED]})", flush=True)
        return pretrained.ROOT
    results = cache / "results"
    if (cache / READY).is_file():
        return results
    if not (sample / "dataset.json").is_file():
        raise PnnunetError(f"{sample}: the bundled sample is missing (--demo needs a clone of the pnnunet "
                           "repository)\n  fix: run pnnunet_app --models YOUR_RESULTS_ROOT instead")
    env = dict(os.environ, pnnunet_raw=str(cache / "raw"), pnnunet_preprocessed=str(cache / "preprocessed"),
               pnnunet_results=str(results))
    steps = [("planning and preprocessing the bundled sample",
              ["pnnunet.cli.plan_and_preprocess", "-d", str(sample), "-pl", "tiny", "-c", "3d_fullres", "-np", "1",
               "--no_pbar"]),
             (f"training the demo model ({epochs} short epochs, tiny preset, fold 0)",
              ["pnnunet.cli.train", "3d_fullres", "0", "-d", "4", "-p", DEMO_PLANS, "--epochs", str(epochs),
               "--iterations_per_epoch", "25", "--val_iterations_per_epoch", "5", "--val_disable_tta", "--c",
               "--no_pbar"])]
    start = time.perf_counter()
    for what, args in steps:
        print(f"pnnunet_app --demo: {what} into {cache} (once) ...", flush=True)
        out = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
            raise PnnunetError(f"--demo: {what} failed:\n  " + "\n  ".join(tail) +
                               f"\n  fix: see the message above; delete {cache} to start over")
    write_json_atomic(cache / READY, {"epochs": epochs, "seconds": time.perf_counter() - start})
    print(f"pnnunet_app --demo: demo model ready in {time.perf_counter() - start:.0f} s", flush=True)
    return results
