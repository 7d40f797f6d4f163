"""pn venv: write the UPSTREAM_SCENARIOS folders to scen2/<name>/{cv,gt}."""
import shutil, sys
from pathlib import Path
sys.path.insert(0, "/work/main")
from tests.postprocessing.scenarios import UPSTREAM_SCENARIOS
from tests.postprocessing.synthetic import DATASET_JSON, REGION_DATASET_JSON
from tests.postprocessing.test_determine import _write_cv
root = Path("/work/scratch/pp_helper/scen2"); shutil.rmtree(root, ignore_errors=True)
for name, (gen, seed, mode) in UPSTREAM_SCENARIOS.items():
    _write_cv(root / name, gen(seed), DATASET_JSON if mode == "labels" else REGION_DATASET_JSON)
