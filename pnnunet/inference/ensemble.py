"""Ensemble predictions by averaging their probabilities (reference §8.2 step 3, §8.3).

Each prediction folder holds, per case, ``CASE.npz`` (key ``probabilities``, float32 (K, X, Y, Z)
in the original geometry) and ``CASE.json`` (its properties), as written by
:func:`pnnunet.inference.export_prediction.export_prediction` with ``save_probabilities=True``
(``pnnunet_predict --save_probabilities``, ``pnnunet_train --npz``). The ensemble of a case is the
float32 mean of the probabilities, turned into a segmentation by argmax (labels) or by the
regions rule, and written with the first folder's properties, reader/writer and file ending.

DEVIATION(nnU-Net §8.3): the properties are JSON (``CASE.json``), not pickles (``CASE.pkl``), so
folders written by upstream nnU-Net cannot be ensembled here.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.fileio import atomic_path, load_json, write_json_atomic
from pnnunet.imageio import ImageIO, reader_writer_by_name, reader_writer_for
from pnnunet.inference.export_prediction import probabilities_to_segmentation
from pnnunet.parallel import map_in_pool

log = logging.getLogger(__name__)


class MissingProbabilitiesError(PnnunetError):
    """A model or prediction folder has no ``.npz`` probabilities (training/prediction ran without them)."""


def _list_names(names: Sequence[str], limit: int = 10) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def npz_cases(folder: Path) -> set[str]:
    """Case names with a ``CASE.npz`` in ``folder`` (hidden temporaries skipped)."""
    return {p.name[:-4] for p in folder.iterdir() if p.is_file() and p.name.endswith(".npz")
            and not p.name.startswith(".")}


def average_probabilities(npz_files: Sequence[Path | str]) -> np.ndarray:
    """Mean of the ``probabilities`` arrays of ``npz_files``, float32 (K, X, Y, Z) (reference §8.3).

    Raises
    ------
    DatasetError : a file without ``probabilities`` or with a shape different from the first file's.
    """
    total: np.ndarray | None = None
    for f in npz_files:
        with np.load(f) as z:
            if "probabilities" not in z:
                raise DatasetError(f, f"has no 'probabilities' array (keys {list(z.keys())})",
                                   "use the .npz files written with --save_probabilities / --npz")
            p = z["probabilities"].astype(np.float32, copy=False)
        if total is None:
            total = p  # a fresh array loaded from the file: safe to accumulate into
        elif p.shape != total.shape:
            raise DatasetError(f, f"has probabilities of shape {p.shape} but {npz_files[0]} has {total.shape}",
                               "ensemble only predictions of the same cases and classes")
        else:
            total += p
    if total is None:
        raise ValueError("no files to average")
    total /= len(npz_files)
    return total


def _properties_file(npz_file: Path) -> Path:
    props = npz_file.with_suffix(".json")
    if not props.is_file():
        pkl = npz_file.with_suffix(".pkl")
        hint = (" (there is an upstream .pkl; pnnunet reads JSON properties only)" if pkl.is_file() else "")
        raise DatasetError(props, f"properties file missing next to {npz_file.name}{hint}",
                           "re-create the predictions with pnnunet (--save_probabilities / --npz) so that "
                           "CASE.npz and CASE.json are written together")
    return props


def merge_case(npz_files: Sequence[Path], output_base: Path, file_ending: str, reader_writer: ImageIO,
               dataset_json: dict, save_npz: bool = False) -> Path:
    """Average one case's probabilities and write its segmentation ``{output_base}{file_ending}``.

    Geometry comes from the first file's ``CASE.json``. With ``save_npz`` also writes
    ``{output_base}.npz`` (float32 ``probabilities``) and ``{output_base}.json``.
    """
    properties = load_json(_properties_file(Path(npz_files[0])))
    probabilities = average_probabilities(npz_files)
    labels = LabelInfo.from_dataset_json(dataset_json)
    if probabilities.shape[0] != labels.num_segmentation_heads:
        raise DatasetError(npz_files[0], f"has {probabilities.shape[0]} probability channels but dataset.json's "
                                         f"labels need {labels.num_segmentation_heads}",
                           "ensemble predictions of models trained on this dataset")
    seg_dtype = np.uint8 if len(labels.foreground_labels) < 255 else np.uint16
    seg = probabilities_to_segmentation(probabilities, labels).astype(seg_dtype, copy=False)
    out_file = Path(str(output_base) + file_ending)
    if save_npz:
        with atomic_path(str(output_base) + ".npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probabilities)
        write_json_atomic(str(output_base) + ".json", properties)
    reader_writer.write_seg(seg, out_file, properties)
    return out_file


def _copy_into(src: Path, folder: Path) -> None:
    if src.is_file():
        with atomic_path(folder / src.name) as tmp:
            shutil.copyfile(src, tmp)


def _io_for(first_folder: Path, dataset_json: dict | Path | str | None, plans: dict | Path | str | None
            ) -> tuple[dict, ImageIO, dict | None]:
    """dataset.json, reader/writer and plans for ensembling (defaults: the first folder's files)."""
    if isinstance(dataset_json, dict):
        dj = dataset_json
    else:
        dj_file = Path(dataset_json) if dataset_json is not None else first_folder / "dataset.json"
        if not dj_file.is_file():
            raise DatasetError(dj_file, "dataset.json not found (needed for the labels and the file ending)",
                               "predict with pnnunet_predict (it copies dataset.json and plans.json into the "
                               "output folder) or copy the model's dataset.json there")
        dj = load_json(dj_file)
    if isinstance(plans, dict):
        pl = plans
    else:
        pl_file = Path(plans) if plans is not None else first_folder / "plans.json"
        pl = load_json(pl_file) if pl_file.is_file() else None
    if pl is not None and pl.get("image_reader_writer"):
        rw = reader_writer_by_name(pl["image_reader_writer"])
    else:
        rw = reader_writer_for(dj["file_ending"], None, dj.get("overwrite_image_reader_writer"))
    return dj, rw, pl


def ensemble_folders(folders: Sequence[Path | str], output_folder: Path | str, save_npz: bool = False,
                     num_processes: int = 2, *, dataset_json: dict | Path | str | None = None,
                     plans: dict | Path | str | None = None, progress: bool = False) -> list[Path]:
    """Ensemble prediction folders case by case (reference §8.3, ``nnUNetv2_ensemble``).

    Parameters
    ----------
    folders : two or more folders with ``CASE.npz`` + ``CASE.json`` for the same set of cases
    output_folder : gets ``CASE{file_ending}`` per case (and ``.npz``/``.json`` with ``save_npz``),
        plus the ``dataset.json`` and ``plans.json`` used; must not be one of ``folders``
    save_npz : also write the averaged probabilities
    num_processes : worker processes
    dataset_json, plans : override the first folder's ``dataset.json`` / ``plans.json``

    Returns
    -------
    the written segmentation files, sorted by case

    Raises
    ------
    PnnunetError : fewer than two folders, a missing folder, folders without ``.npz``
        (:class:`MissingProbabilitiesError`), different case sets (the message names the
        folders and cases), output folder among the inputs
    """
    folders = [Path(f) for f in folders]
    output_folder = Path(output_folder)
    if len(folders) < 2:
        raise PnnunetError("ensembling needs at least two prediction folders (-i F1 F2 ...)")
    for f in folders:
        if not f.is_dir():
            raise DatasetError(f, "prediction folder does not exist", "check the paths given to -i")
        if output_folder.expanduser().resolve() == f.expanduser().resolve():
            raise PnnunetError(f"the output folder {output_folder} is one of the input folders\n"
                               "  fix: choose a different output folder (-o)")
    cases = [npz_cases(f) for f in folders]
    for f, c in zip(folders, cases):
        if not c:
            raise MissingProbabilitiesError(
                f"{f}: contains no .npz probabilities\n  fix: predict with --save_probabilities "
                "(pnnunet_predict) or train/validate with --npz (pnnunet_train ... --npz / --val --npz)")
    union = set().union(*cases)
    problems = [f"{f} lacks {len(union - c)} case(s): {_list_names(union - c)}" for f, c in zip(folders, cases)
                if union - c]
    if problems:
        raise PnnunetError("the folders do not contain the same cases (.npz files):\n  " + "\n  ".join(problems)
                           + "\n  fix: ensemble folders predicted from the same input images")
    dj, rw, pl = _io_for(folders[0], dataset_json, plans)
    output_folder.mkdir(parents=True, exist_ok=True)
    if pl is not None:
        write_json_atomic(output_folder / "plans.json", pl)
    write_json_atomic(output_folder / "dataset.json", dj)
    names = sorted(union)
    jobs = [([f / f"{c}.npz" for f in folders], output_folder / c, dj["file_ending"], rw, dj, save_npz)
            for c in names]
    written = map_in_pool(merge_case, jobs, num_processes, progress, desc="ensembling")
    log.info("ensembled %d cases from %d folders into %s", len(written), len(folders), output_folder)
    return written


def cv_probability_files(model_dir: Path, folds: Sequence[int | str]) -> dict[str, Path]:
    """``{case: fold_K/validation/CASE.npz}`` over ``folds`` of one trained model.

    Raises
    ------
    DatasetError : a fold folder is missing, or a case is in two folds
    MissingProbabilitiesError : a fold's validation has no ``.npz`` (trained without ``--npz``)
    """
    mapping: dict[str, Path] = {}
    for fold in folds:
        val = model_dir / f"fold_{fold}" / "validation"
        if not val.is_dir():
            raise DatasetError(val, f"fold {fold} of model {model_dir.name} has no validation folder",
                               f"train and validate fold {fold} of this model first")
        found = npz_cases(val)
        if not found:
            raise MissingProbabilitiesError(
                f"{val}: no .npz probabilities (fold {fold} of {model_dir.name} was validated without --npz)\n"
                f"  fix: rerun its validation with probabilities: pnnunet_train ... {fold} --val --npz")
        for c in found:
            if c in mapping:
                raise DatasetError(val, f"case {c} is also in {mapping[c].parent}",
                                   "each case must be validated in exactly one fold (check splits_final.json)")
            mapping[c] = val / f"{c}.npz"
    return mapping


def ensemble_crossvalidations(model_dirs: Sequence[Path | str], output_folder: Path | str,
                              folds: Sequence[int | str] = (0, 1, 2, 3, 4), num_processes: int = 2,
                              progress: bool = False) -> list[Path]:
    """Ensemble the cross-validation predictions of trained models (reference §8.2 step 3).

    For every case, the ``fold_K/validation/CASE.npz`` of each model (folds may differ between
    models) are averaged; segmentations go to ``output_folder`` together with the first model's
    ``plans.json`` and ``dataset.json``.

    Raises
    ------
    MissingProbabilitiesError : a model has no ``.npz`` (train/validate with ``--npz``)
    PnnunetError : missing folds, duplicate cases, models with different case sets
    """
    model_dirs = [Path(m) for m in model_dirs]
    mappings = [cv_probability_files(m, folds) for m in model_dirs]
    union = set().union(*[set(m) for m in mappings])
    problems = [f"{d.name} lacks {len(union - set(m))} case(s): {_list_names(union - set(m))}"
                for d, m in zip(model_dirs, mappings) if union - set(m)]
    if problems:
        raise PnnunetError("the models' cross-validation predictions cover different cases:\n  "
                           + "\n  ".join(problems) + "\n  fix: validate every fold of every model with --npz")
    dj, rw, _ = _io_for(model_dirs[0], None, None)
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    names = sorted(union)
    jobs = [([m[c] for m in mappings], output_folder / c, dj["file_ending"], rw, dj, False) for c in names]
    written = map_in_pool(merge_case, jobs, num_processes, progress, desc="ensembling")
    ending = dj["file_ending"]
    for p in output_folder.iterdir():  # results of an earlier run with other cases
        if p.is_file() and p.name.endswith(ending) and p.name[:-len(ending)] not in union:
            p.unlink()
    for name in ("plans.json", "dataset.json"):
        _copy_into(model_dirs[0] / name, output_folder)
    return written
