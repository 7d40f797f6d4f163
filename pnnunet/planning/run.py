"""Planning stage on disk: fingerprint → plans file (the API the CLI calls).

Each step reads and writes files in ``$pnnunet_preprocessed/DatasetXXX_Name/`` so it can be rerun
on its own; nothing under the raw folder is modified.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pnnunet.dataset.cases import get_training_cases
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json, write_json_atomic
from pnnunet.imageio import reader_writer_for
from pnnunet.planning.fingerprint import extract_fingerprint
from pnnunet.planning.planner import PlannerSettings, plan_experiment
from pnnunet.plans import save_plans

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"


def dataset_reader_writer(raw_dir: Path, dataset_json: dict, cases: dict):
    """The reader/writer for a dataset, chosen with its first training image (reference §1.2)."""
    first = next(iter(cases.values()))["images"][0]
    return reader_writer_for(dataset_json["file_ending"], first, dataset_json.get("overwrite_image_reader_writer"))


def fingerprint_dataset(raw_dir: Path, preprocessed_dir: Path, num_processes: int = 2, clean: bool = False,
                        progress: bool = True) -> dict:
    """Load ``dataset_fingerprint.json`` or compute it (again when ``clean`` or the case count changed)."""
    dataset_json = load_dataset_json(raw_dir / "dataset.json")
    cases = get_training_cases(raw_dir, dataset_json)
    path = preprocessed_dir / FINGERPRINT_FILE
    if path.is_file() and not clean:
        fp = load_json(path)
        if len(fp.get("spacings", [])) == len(cases):
            log.info("fingerprint exists, reusing %s (--clean recomputes it)", path)
            return fp
        log.info("fingerprint has %d cases but the dataset has %d: recomputing", len(fp.get("spacings", [])), len(cases))
    rw = dataset_reader_writer(raw_dir, dataset_json, cases)
    fp = extract_fingerprint(cases, rw, num_processes=num_processes, progress=progress)
    write_json_atomic(path, fp)
    return fp


def plan_dataset(raw_dir: Path, preprocessed_dir: Path, settings: PlannerSettings = PlannerSettings()) -> dict:
    """Write ``<plans_name>.json`` (keeping user-added configurations) and copy dataset.json (§3.7)."""
    dataset_json = load_dataset_json(raw_dir / "dataset.json")
    cases = get_training_cases(raw_dir, dataset_json)
    fp_path = preprocessed_dir / FINGERPRINT_FILE
    if not fp_path.is_file():
        raise PnnunetError(f"{fp_path}: no dataset fingerprint\n  fix: run pnnunet_extract_fingerprint (or "
                           "pnnunet_plan_and_preprocess) for this dataset first")
    fp = load_json(fp_path)
    rw = dataset_reader_writer(raw_dir, dataset_json, cases)
    plans = plan_experiment(fp, dataset_json, raw_dir.name, rw.name, settings)
    save_plans(plans, preprocessed_dir / f"{settings.plans_name}.json")
    shutil.copyfile(raw_dir / "dataset.json", preprocessed_dir / "dataset.json")
    splits = raw_dir / "splits_final.json"
    if splits.is_file():
        shutil.copyfile(splits, preprocessed_dir / "splits_final.json")
    return load_json(preprocessed_dir / f"{settings.plans_name}.json")
