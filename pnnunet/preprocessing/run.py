"""Preprocess a whole dataset with a process pool (reference §4, §4.7).

Output: ``<preprocessed_dataset_dir>/<data_identifier>/`` with the files of
:mod:`pnnunet.preprocessing.storage`, plus ``preprocessing_config.json``: everything that decides
the preprocessed arrays (the configuration's spacing, normalization and resampling entries, the
transposition, the intensity properties and the labels). A run whose marker matches resumes
(finished cases are skipped unless their raw files are newer); a different marker means the
folder is stale and is rebuilt. ``labelsTr`` is copied to ``gt_segmentations/`` (only missing or
newer files).

DEVIATION(nnU-Net §4): upstream always deletes and rebuilds the output folder; pnnunet reuses
finished cases when nothing that affects them changed (``clean=True`` rebuilds).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

from pnnunet.dataset import get_training_cases
from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path, load_json, write_json_atomic
from pnnunet.parallel import map_in_pool
from pnnunet.preprocessing.preprocessor import preprocess_case_files, resolve_configuration
from pnnunet.preprocessing.storage import (DEFAULT_STORAGE, SHARED_POINTER, case_done_time, marker_without_identifier,
                                           save_preprocessed_case, write_shared_pointer)

log = logging.getLogger(__name__)

MARKER_NAME = "preprocessing_config.json"
MARKER_FORMAT = 1
# configuration entries that change the preprocessed arrays
_CONFIG_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
                "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs")


def preprocessing_marker(plans: dict, config: dict, dataset_json: dict) -> dict:
    """The JSON-normalized record of everything that decides a folder's preprocessed arrays."""
    marker = {
        "format": MARKER_FORMAT,
        "transpose_forward": plans["transpose_forward"],
        "foreground_intensity_properties_per_channel": plans.get("foreground_intensity_properties_per_channel"),
        "labels": dataset_json.get("labels"),
        "regions_class_order": dataset_json.get("regions_class_order"),
        "configuration": {k: config.get(k) for k in _CONFIG_KEYS},
    }
    return json.loads(json.dumps(marker))


def _process_case(case: str, image_files: list[str], seg_file: str | None, plans: dict, config: dict,
                  dataset_json: dict, reader_writer, out_folder: str, storage: str = DEFAULT_STORAGE) -> str:
    data, seg, props = preprocess_case_files(image_files, seg_file, plans, config, dataset_json, reader_writer)
    save_preprocessed_case(out_folder, case, data, seg, props, patch_size=config.get("patch_size"), storage=storage)
    return case


def _case_is_current(folder: Path, case: str, entry: dict) -> bool:
    done_at = case_done_time(folder, case)
    if done_at is None:
        return False
    sources = [*entry["images"], *([entry["label"]] if entry.get("label") else [])]
    return all(Path(p).stat().st_mtime <= done_at for p in sources)


def _prepare_folder(folder: Path, marker: dict, clean: bool) -> bool:
    """Create/validate ``folder``; returns True if it was (re)built from scratch."""
    marker_file = folder / MARKER_NAME
    if folder.is_dir():
        old = load_json(marker_file) if marker_file.is_file() else None
        if not clean and old == marker:
            return False
        reason = "--clean was given" if clean else ("its preprocessing settings changed" if old else "it has no marker")
        log.info("rebuilding %s because %s", folder, reason)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker_file, marker)
    return True


def _sharing_key(marker: dict, config: dict, axis0_spacings: list[float] | None) -> str | None:
    """What decides a folder's arrays apart from its name, as a comparable string; None: never shared.

    The marker without the data identifier, with a 2D configuration's spacing completed by the cases'
    own axis-0 spacing (a 2D configuration keeps it, :func:`target_spacing_for`): a 2D and a 3D
    configuration preprocess identically when every case already has the 3D spacing along axis 0 and
    everything else agrees. Without the cases' spacings (``axis0_spacings`` None) or with several
    different ones, a 2D configuration is not shared.
    """
    m = marker_without_identifier(marker)
    spacing = [float(v) for v in config["spacing"]]
    if len(spacing) == 2:
        if not axis0_spacings or len(set(axis0_spacings)) != 1:
            return None
        spacing = [axis0_spacings[0], *spacing]
    m["configuration"]["spacing"] = spacing
    return json.dumps(m, sort_keys=True)


def _axis0_spacings(preprocessed_dataset_dir: Path, plans: dict, n_cases: int) -> list[float] | None:
    """Every case's spacing along the transposed axis 0, from the fingerprint (None if it does not fit)."""
    fp = preprocessed_dataset_dir / "dataset_fingerprint.json"
    if not fp.is_file():
        return None
    spacings = load_json(fp).get("spacings") or []
    if len(spacings) != n_cases:
        return None
    axis0 = int(plans["transpose_forward"][0])
    return [float(s[axis0]) for s in spacings]


def _share_folder(folder: Path, owner: str, owner_marker: dict, marker: dict, clean: bool) -> bool:
    """Make ``folder`` a pointer to the sibling ``owner`` (identical preprocessing); True if it changed."""
    pointer = folder / SHARED_POINTER
    expected = {"data_identifier": owner, "marker": marker_without_identifier(owner_marker)}
    if (not clean and pointer.is_file() and load_json(pointer) == expected
            and (folder / MARKER_NAME).is_file() and load_json(folder / MARKER_NAME) == marker):
        return False
    if folder.is_dir():
        log.info("%s: its cases are now shared with %s (identical preprocessing); removing its own copy", folder, owner)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json_atomic(folder / MARKER_NAME, marker)
    write_shared_pointer(folder, owner, expected["marker"])
    return True


def copy_gt_segmentations(cases: dict, target_dir: Path | str, file_ending: str) -> int:
    """Copy every case's label file to ``target_dir/{case}{file_ending}`` if missing or older; returns #copied."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    copied = 0
    for case, entry in sorted(cases.items()):
        src = entry.get("label")
        if not src:
            continue
        dst = target_dir / f"{case}{file_ending}"
        if dst.is_file() and dst.stat().st_mtime >= Path(src).stat().st_mtime:
            continue
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)
        copied += 1
    return copied


def _group_by_identifier(plans: dict, configurations: Iterable[str], dataset_json: dict) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for name in configurations:
        config = resolve_configuration(plans, name)
        ident = config["data_identifier"]
        marker = preprocessing_marker(plans, config, dataset_json)
        if ident in groups:
            if groups[ident]["marker"] != marker:
                raise PnnunetError(f"configurations {groups[ident]['names'] + [name]} share the data identifier "
                                   f"'{ident}' but preprocess differently; give them different data_identifiers")
            groups[ident]["names"].append(name)
        else:
            groups[ident] = {"names": [name], "config": config, "marker": marker}
    return groups


def preprocess_dataset(raw_dir: Path | str, preprocessed_dataset_dir: Path | str, plans: dict,
                       configurations: Sequence[str], dataset_json: dict, reader_writer, num_processes: int = 2,
                       clean: bool = False, progress: bool = True, cases: dict | None = None,
                       storage: str = DEFAULT_STORAGE, share: bool = True) -> dict:
    """Preprocess all training cases for the given configurations (reference §4).

    Parameters
    ----------
    raw_dir : the raw dataset folder (``imagesTr``, ``labelsTr``, dataset.json)
    preprocessed_dataset_dir : ``$pnnunet_preprocessed/DatasetXXX_Name``
    plans : plans dict (upstream v2 keys)
    configurations : configuration names; configurations sharing a ``data_identifier`` are done once
    dataset_json : the dataset's dataset.json dict
    reader_writer : an :class:`pnnunet.imageio.ImageIO`
    num_processes : worker processes (0 or 1: in this process)
    clean : rebuild the output folders even if they are current
    cases : ``{case: {"images": [...], "label": ...}}``; default: discovered in ``raw_dir``
    storage : 'b2nd' (compressed, default) or 'npy' (see :mod:`pnnunet.preprocessing.storage`)
    share : a configuration whose preprocessing equals an earlier one's in ``configurations``
        (:func:`_sharing_key`) gets a pointer to that folder instead of a copy

    Returns
    -------
    summary : ``{"data_identifiers": {identifier: {"configurations", "folder", "rebuilt",
        "cases_done", "cases_skipped", "seconds"}}, "gt_segmentations_copied", "seconds"}``
    """
    t_start = time.perf_counter()
    if cases is None:
        cases = get_training_cases(raw_dir, dataset_json)
    out_root = Path(preprocessed_dataset_dir)
    summary: dict = {"data_identifiers": {}}
    owners: dict[str, tuple[str, dict]] = {}  # sharing key → (the folder holding those cases, its marker)
    axis0 = _axis0_spacings(out_root, plans, len(cases)) if share else None
    groups = _group_by_identifier(plans, configurations, dataset_json)
    # 2D configurations first, so that a shared folder is chunked slice by slice: 3D patches read from it
    # nearly as fast as from 3D chunks, while 2D slices read from 3D chunks are several times slower
    # (benchmarks/RESULTS.md, "Preprocessed storage")
    order = sorted(groups, key=lambda i: len(groups[i]["config"].get("patch_size") or [0, 0, 0]) != 2) if share \
        else list(groups)
    for ident in order:
        group = groups[ident]
        t0 = time.perf_counter()
        folder = out_root / ident
        same = _sharing_key(group["marker"], group["config"], axis0) if share else None
        if same is not None and same in owners:
            owner, owner_marker = owners[same]
            rebuilt = _share_folder(folder, owner, owner_marker, group["marker"], clean)
            summary["data_identifiers"][ident] = {
                "configurations": group["names"], "folder": str(folder), "rebuilt": rebuilt, "cases_done": 0,
                "cases_skipped": len(cases), "shared_with": owner,
                "seconds": round(time.perf_counter() - t0, 3)}
            log.info("%s: identical preprocessing to %s, shares its cases", ident, owner)
            continue
        if same is not None:
            owners[same] = (ident, group["marker"])
        (folder / SHARED_POINTER).unlink(missing_ok=True)  # was a pointer before: now holds its own cases
        rebuilt = _prepare_folder(folder, group["marker"], clean)
        todo = [c for c in sorted(cases) if not _case_is_current(folder, c, cases[c])]
        args = [(c, [str(p) for p in cases[c]["images"]], str(cases[c]["label"]) if cases[c].get("label") else None,
                 plans, group["config"], dataset_json, reader_writer, str(folder), storage) for c in todo]
        map_in_pool(_process_case, args, num_processes, progress, desc=f"preprocessing {ident}")
        summary["data_identifiers"][ident] = {
            "configurations": group["names"], "folder": str(folder), "rebuilt": rebuilt,
            "cases_done": len(todo), "cases_skipped": len(cases) - len(todo),
            "seconds": round(time.perf_counter() - t0, 3)}
        log.info("%s: %d case(s) preprocessed, %d already done", ident, len(todo), len(cases) - len(todo))
    summary["gt_segmentations_copied"] = copy_gt_segmentations(cases, out_root / "gt_segmentations",
                                                               dataset_json["file_ending"])
    summary["seconds"] = round(time.perf_counter() - t_start, 3)
    return summary
