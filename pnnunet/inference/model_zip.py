"""Model sharing in nnU-Net v2's zip layout (issue 11): export a trained model, install a zip.

A model zip holds paths relative to the results root, so installing it is extracting it there::

    DatasetXXX_Name/<Trainer>__<Plans>__<config>/{plans.json, dataset.json, dataset_fingerprint.json,
        fold_K/{checkpoint_final.pdparams | checkpoint_final.pth, progress.png, debug.json | train_config.json,
                validation/summary.json},
        crossval_results_folds_0_1_2_3_4/{summary.json, postprocessing.json, postprocessing.pkl}}
    DatasetXXX_Name/ensembles/<ensemble>/{summary.json, postprocessing.json, postprocessing.pkl}
    DatasetXXX_Name/{inference_instructions.json, .txt, postprocessing.json}   (pnnunet_find_best_config)
    DatasetXXX_Name/inference_information.json, .txt                          (upstream's find_best_configuration)

A pnnunet model zips with its ``.pdparams`` checkpoints, an upstream one with its ``.pth`` (both predict
here). Only the listed files are taken (never conversions, static-graph caches or temporaries). Installing
checks every member first: no path may leave the results root (absolute paths, ``..``, drive letters,
links), every member lies under a ``DatasetXXX_Name/`` folder, at least one model folder with plans.json is
inside, no member lies inside another member; an existing file with other contents is not replaced unless
``overwrite``. The members are extracted to temporaries beside their targets and renamed into place only
when all were read (CRC checked; checkpoints first, plans.json last), so a refused or broken zip, a full
disk or an unreadable member writes nothing. Installing never unpickles anything: the ``.pdparams`` of a
zip are checked by :func:`pnnunet.runtime.checkpoints.load_checkpoint` when a prediction loads them (a
pickle naming anything but arrays and plain data is refused unrun).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pnnunet.defaults import (CHECKPOINT_SUFFIX, DATASET_FOLDER, INFORMATION_FILE, INSTRUCTIONS_TEXT_FILE,
                              POSTPROCESSING_FILE, UPSTREAM_CHECKPOINT_SUFFIX, UPSTREAM_INFORMATION_FILE, Fold,
                              checkpoint_stem, fold_sort_key, model_dir_name, parse_fold, parse_model_dir_name)
from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path, load_json

log = logging.getLogger(__name__)

OVERWRITE_FLAG = "--overwrite"
UPSTREAM_INFORMATION_TEXT = "inference_information.txt"
_FOLD_DIR = re.compile(r"fold_(?P<fold>\d+|all)")
_CROSSVAL_DIR = re.compile(r"crossval_results_folds_(?P<folds>.+)")
_FOLD_FILES = ("debug.json", "train_config.json", "progress.png", "network_architecture.pdf")  # train_config: ours
_CROSSVAL_FILES = ("summary.json", POSTPROCESSING_FILE, "postprocessing.pkl")
_MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_DATASET_FILES = (INFORMATION_FILE, INSTRUCTIONS_TEXT_FILE, POSTPROCESSING_FILE, UPSTREAM_INFORMATION_FILE,
                  UPSTREAM_INFORMATION_TEXT)


# ---------------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportedModel:
    model_dir: Path
    folds: tuple[Fold, ...]
    checkpoints: tuple[str, ...]  # file names, e.g. checkpoint_final.pdparams


def _checkpoint_file(fold_dir: Path, stem: str) -> Path | None:
    """``fold_K/<stem>.pdparams`` (pnnunet's) or, else, ``<stem>.pth`` (upstream's), whichever exists."""
    for suffix in (CHECKPOINT_SUFFIX, UPSTREAM_CHECKPOINT_SUFFIX):
        if (fold_dir / (stem + suffix)).is_file():
            return fold_dir / (stem + suffix)
    return None


def _fold_dirs(model_dir: Path) -> list[Fold]:
    folds = [parse_fold(m["fold"]) for p in model_dir.iterdir() if p.is_dir() and (m := _FOLD_DIR.fullmatch(p.name))]
    return sorted(folds, key=fold_sort_key)


def _crossval_folds(name: str) -> set[str] | None:
    m = _CROSSVAL_DIR.fullmatch(name)
    return set(m["folds"].split("_")) if m else None


def _files(folder: Path, names: Sequence[str] | None = None, skip_suffixes: tuple[str, ...] = ()) -> list[Path]:
    """The named files of ``folder`` that exist (every file when ``names`` is None), sorted, temporaries left out."""
    if not folder.is_dir():
        return []
    found = [folder / n for n in names] if names is not None else sorted(folder.iterdir())
    return [p for p in found if p.is_file() and not p.name.startswith(".") and not p.name.endswith(skip_suffixes)]


def _missing(what: str, fix: str, strict: bool) -> None:
    if strict:
        raise PnnunetError(f"{what}\n  fix: {fix}, or pass --not_strict to export what exists")
    log.warning("skipped: %s", what)


def _export_model(model_dir: Path, folds: Sequence[Fold] | None, checkpoints: Sequence[str], strict: bool,
                  crossval_predictions: bool) -> tuple[list[Path], ExportedModel | None]:
    """The files of one model folder to export (and what they are), or ([], None) if nothing can be."""
    for name in ("plans.json", "dataset.json"):
        if not (model_dir / name).is_file():
            _missing(f"{model_dir / name}: not found (a model needs it to predict)",
                     "copy the file the model was trained with into the model folder", strict)
            return [], None
    stems = [checkpoint_stem(c) for c in checkpoints]
    requested = folds is not None
    candidates = [parse_fold(f) for f in folds] if requested else _fold_dirs(model_dir)
    files: list[Path] = []
    exported: list[Fold] = []
    names: set[str] = set()
    for fold in candidates:
        fold_dir = model_dir / f"fold_{fold}"
        found = {stem: _checkpoint_file(fold_dir, stem) for stem in stems}
        lacking = [s for s, p in found.items() if p is None]
        if lacking:
            if requested:
                _missing(f"{fold_dir}: no {', '.join(lacking)} ({CHECKPOINT_SUFFIX} or {UPSTREAM_CHECKPOINT_SUFFIX})",
                         f"train fold {fold} to the end, choose other folds with -f or other checkpoints with -chk",
                         strict)
            continue
        exported.append(fold)
        files += [p for p in found.values() if p is not None]
        names.update(p.name for p in found.values() if p is not None)
        files += _files(fold_dir, _FOLD_FILES)
        validation = fold_dir / "validation"
        files += (_files(validation, skip_suffixes=(".npz", ".pkl")) if crossval_predictions
                  else _files(validation, ("summary.json", "validation_settings.json")))
    if not exported:
        _missing(f"{model_dir}: no fold with {', '.join(stems)}" + (f" among folds {candidates}" if requested else ""),
                 "train a fold first (pnnunet_train CONFIG FOLD) or choose -f / -chk", strict)
        return [], None
    fold_names = {str(f) for f in exported}
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        cv = _crossval_folds(sub.name)
        if cv is not None and cv <= fold_names:
            files += _files(sub) if crossval_predictions else _files(sub, _CROSSVAL_FILES)
    files += _files(model_dir, _MODEL_FILES)
    return files, ExportedModel(model_dir, tuple(exported), tuple(sorted(names)))


def _ensemble_members(name: str) -> list[str] | None:
    """The model folder names of ``ensemble___<M1>___<M2>___<folds>`` (None if the name is not one)."""
    parts = name.split("___")
    return parts[1:-1] if len(parts) >= 4 and parts[0] == "ensemble" else None


def _selected_models(info_file: Path) -> list[str] | None:
    """Model folder names an instructions file selects (None if it cannot be read)."""
    try:
        best = load_json(info_file)["best_model_or_ensemble"]
        return [model_dir_name(m["trainer"], m["plans_identifier"], m["configuration"])
                for m in best["selected_model_or_models"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _dataset_files(dataset_dir: Path, exported: set[str], crossval_predictions: bool) -> list[Path]:
    """Ensembles of exported models and the find_best_config files, when what they select is exported."""
    files = []
    for ens in sorted(p for p in (dataset_dir / "ensembles").glob("*") if p.is_dir()):
        members = _ensemble_members(ens.name)
        if members and set(members) <= exported:
            files += _files(ens) if crossval_predictions else _files(ens, _CROSSVAL_FILES)
    pnnunet_files = (INFORMATION_FILE, INSTRUCTIONS_TEXT_FILE, POSTPROCESSING_FILE)
    for info, companions in ((INFORMATION_FILE, pnnunet_files), (UPSTREAM_INFORMATION_FILE,
                                                                 (UPSTREAM_INFORMATION_FILE, UPSTREAM_INFORMATION_TEXT))):
        if not (dataset_dir / info).is_file():
            continue
        selected = _selected_models(dataset_dir / info)
        if selected is None or not set(selected) <= exported:
            log.warning("%s not exported: it selects %s, which is not all in the zip (export those "
                        "configurations too, with -c)", dataset_dir / info, ", ".join(selected or ["nothing readable"]))
            continue
        files += _files(dataset_dir, companions)
    return files


def export_model_zip(results_root: Path | str, dataset_name: str, output_file: Path | str,
                     configurations: Sequence[str] | None, trainer: str, plans_name: str,
                     folds: Sequence[Fold] | None = None, checkpoints: Sequence[str] = ("checkpoint_final",),
                     strict: bool = True, crossval_predictions: bool = False) -> list[ExportedModel]:
    """Write the zip of a trained model (nnU-Net v2's ``export_model_to_zip`` layout, see the module docstring).

    Parameters
    ----------
    results_root : ``$pnnunet_results``; the zip's paths are relative to it
    dataset_name : ``DatasetXXX_Name``
    output_file : the zip to write (atomically; an existing file is replaced)
    configurations : e.g. ``["3d_fullres", "2d"]``; None: every configuration trained with ``trainer`` and
        ``plans_name`` (nothing is "missing" then)
    trainer, plans_name : the model folders ``<trainer>__<plans_name>__<configuration>``
    folds : folds to export; None: every fold that has the checkpoints
    checkpoints : checkpoint names (``checkpoint_final``; ``.pdparams`` / ``.pth`` suffixes are accepted):
        each fold's ``.pdparams`` is taken, else its ``.pth``
    strict : a missing configuration, fold or checkpoint is an error (else skipped, with a warning)
    crossval_predictions : also the fold validation predictions and cross-validation folder contents
        (``.npz``/``.pkl`` of the validation folders excluded, as upstream)

    Returns
    -------
    the exported models (folder, folds, checkpoint file names)
    """
    results_root = Path(results_root).expanduser().resolve()
    dataset_dir = results_root / dataset_name
    if configurations is None:
        configurations = [parse_model_dir_name(p.name)[2] for p in sorted(dataset_dir.glob(f"{trainer}__{plans_name}__*"))
                          if p.is_dir()]
        if not configurations:
            raise PnnunetError(f"{dataset_dir}: no model folder {model_dir_name(trainer, plans_name, '<config>')}\n"
                               "  fix: train a configuration first, or pass -tr and -p of a trained model")
    files: list[Path] = []
    models: list[ExportedModel] = []
    for configuration in configurations:
        model_dir = dataset_dir / model_dir_name(trainer, plans_name, configuration)
        if not model_dir.is_dir():
            _missing(f"{model_dir}: model folder not found (configuration {configuration})",
                     "train that configuration, leave it out of -c, or check -tr and -p", strict)
            continue
        found, model = _export_model(model_dir, folds, checkpoints, strict, crossval_predictions)
        files += found
        if model is not None:
            models.append(model)
    if not models:
        raise PnnunetError(f"{dataset_dir}: nothing to export (no trained model among configurations "
                           f"{', '.join(configurations)} of {trainer} / {plans_name})\n"
                           "  fix: check -c, -tr, -p, -f and -chk")
    files += _dataset_files(dataset_dir, {m.model_dir.name for m in models}, crossval_predictions)
    output_file = Path(output_file).expanduser().absolute()
    with atomic_path(output_file) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.relative_to(results_root).as_posix())
    for m in models:
        log.info("exported %s/%s: folds %s (%s)", dataset_name, m.model_dir.name, " ".join(map(str, m.folds)),
                 ", ".join(m.checkpoints))
    log.info("wrote %s (%d files, %.1f MB)", output_file, len(files), output_file.stat().st_size / 1e6)
    return models


# --------------------------------------------------------------------------------------------------- install


@dataclass(frozen=True)
class InstalledModel:
    model_dir: Path
    folds: tuple[Fold, ...]

    def predict_command(self) -> str:
        trainer, plans_name, configuration = parse_model_dir_name(self.model_dir.name)
        return (f"pnnunet_predict -i INPUT -o OUTPUT -d {self.model_dir.parent.name} -c {configuration} "
                f"-tr {trainer} -p {plans_name}")


def _bad_member(zip_path: str, name: str, problem: str) -> PnnunetError:
    return PnnunetError(f"{zip_path}: member '{name}' {problem}; nothing was installed\n"
                        "  fix: use a zip made by pnnunet_export_model_to_zip or nnUNetv2_export_model_to_zip "
                        "(paths DatasetXXX_Name/<Trainer>__<Plans>__<config>/...)")


def _member_parts(zip_path: str, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path parts of a member, refusing anything that could land outside the results root."""
    name = info.filename
    if "\\" in name or "\x00" in name:
        raise _bad_member(zip_path, name, "has a backslash or NUL in its path")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise _bad_member(zip_path, name, "has an absolute path (it would be written outside the results folder)")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts or posixpath.normpath(name).startswith(".."):
        raise _bad_member(zip_path, name, "climbs out with '..' (it would be written outside the results folder)")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise _bad_member(zip_path, name, "is a symbolic link (links are not installed)")
    if not parts or not DATASET_FOLDER.fullmatch(parts[0]):
        raise _bad_member(zip_path, name, "is not under a DatasetXXX_Name/ folder")
    return parts


def _same_contents(path: Path, info: zipfile.ZipInfo) -> bool:
    if not path.is_file() or path.stat().st_size != info.file_size:
        return False
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc == info.CRC


def _is_model_dir_name(name: str) -> bool:
    try:
        parse_model_dir_name(name)
    except PnnunetError:
        return False
    return True


def _installed_models(members: Sequence[tuple[str, ...]], results_root: Path) -> list[InstalledModel]:
    models: dict[tuple[str, str], set] = {}
    for parts in members:
        if len(parts) >= 3 and _is_model_dir_name(parts[1]) and parts[2] == "plans.json":
            models.setdefault(parts[:2], set())
    for parts in members:
        if len(parts) == 4 and parts[:2] in models and (m := _FOLD_DIR.fullmatch(parts[2])) and \
                parts[3].endswith((CHECKPOINT_SUFFIX, UPSTREAM_CHECKPOINT_SUFFIX)):
            models[parts[:2]].add(parse_fold(m["fold"]))
    return [InstalledModel(results_root.joinpath(*key), tuple(sorted(folds, key=fold_sort_key)))
            for key, folds in sorted(models.items())]


def _check_no_file_folder_clash(zip_path: str, members: Sequence[tuple[str, ...]], results_root: Path) -> None:
    """A member whose file is a folder on disk or in the zip, or whose folder is a file on disk, cannot be
    installed."""
    files = {"/".join(parts) for parts in members}
    for parts in members:
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in files:
                raise _bad_member(zip_path, "/".join(parts), f"lies inside '{'/'.join(parts[:depth])}', which the zip "
                                  "also holds as a file")
    for parts in members:
        target = results_root.joinpath(*parts)
        if target.is_dir():
            raise PnnunetError(f"{target}: is a folder, the zip has a file there; nothing was installed\n"
                               "  fix: remove or rename the folder, or install into another results folder "
                               "(set pnnunet_results)")
        for depth in range(1, len(parts)):
            folder = results_root.joinpath(*parts[:depth])
            if folder.exists() and not folder.is_dir():
                raise PnnunetError(f"{folder}: is a file, the zip has a folder there; nothing was installed\n"
                                   "  fix: remove or rename the file, or install into another results folder "
                                   "(set pnnunet_results)")


def _install_order(item: tuple[zipfile.ZipInfo, Path]) -> int:
    """Checkpoints first, the model folder's plans.json and dataset.json last: a run killed while the files
    are renamed into place leaves no plans.json that names folds whose checkpoints are missing."""
    name = item[1].name
    return 2 if name in ("plans.json", "dataset.json") else 0 if name.endswith(
        (CHECKPOINT_SUFFIX, UPSTREAM_CHECKPOINT_SUFFIX)) else 1


def _write_members(zf: zipfile.ZipFile, zip_path: str, todo: list[tuple[zipfile.ZipInfo, Path]]) -> None:
    """Extract every member to a ``.tmp-PID-`` file beside its target (same folder, so the rename cannot
    cross file systems, e.g. a Dataset folder linked to another disk), then rename them all into place.
    On any error the temporaries and the folders made for them are removed: nothing is installed."""
    staged: list[tuple[Path, Path]] = []
    made: list[Path] = []
    member, moved = "", -1
    try:
        for info, target in sorted(todo, key=_install_order):
            member = info.filename
            missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            made.extend(reversed(missing))
            tmp = target.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{target.name}")
            staged.append((tmp, target))
            with zf.open(info) as src, open(tmp, "wb") as dst:  # the CRC is checked as the member is read
                shutil.copyfileobj(src, dst, 1 << 20)
        member = ""
        for moved, (tmp, target) in enumerate(staged):
            os.replace(tmp, target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        _remove(staged, made)
        raise PnnunetError(f"{zip_path}: is damaged ({e}); nothing was installed\n"
                           "  fix: download or copy the zip again") from None
    except (RuntimeError, NotImplementedError) as e:  # an encrypted member, an unsupported compression method
        _remove(staged, made)
        raise PnnunetError(f"{zip_path}: member '{member}' cannot be extracted ({e}); nothing was installed\n"
                           "  fix: export the model again without encryption, with standard (deflate) "
                           "compression") from None
    except OSError as e:
        _remove(staged, made)
        where = f"extracting '{member}'" if member else "moving the files into place"
        done = (f"{moved} of {len(staged)} files were installed before the error" if moved > 0
                else "nothing was installed")
        raise PnnunetError(f"{zip_path}: {where} failed ({e.strerror or e}); {done}\n"
                           "  fix: check the free space and permissions of the results folder "
                           "(pnnunet_results) and retry") from None


def _remove(staged: list[tuple[Path, Path]], made: list[Path]) -> None:
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)
    for folder in reversed(made):  # deepest first; only the empty ones made for this install
        try:
            folder.rmdir()
        except OSError:
            pass


def install_model_zip(zip_path: Path | str, results_root: Path | str, overwrite: bool = False,
                      source: str | None = None) -> list[InstalledModel]:
    """Extract a model zip into ``results_root`` (see the module docstring for what is checked).
    ``source``: what error messages name instead of ``zip_path`` (the URL of a downloaded zip).

    Raises
    ------
    PnnunetError : not a zip, an unsafe or misplaced member, no model folder inside, an existing file with
        other contents (without ``overwrite``), a corrupt member. Nothing is written in any of these cases.
    """
    zip_path = Path(zip_path).expanduser().absolute()
    shown = source or str(zip_path)  # what the messages name: the zip, or where it came from (a URL)
    results_root = Path(results_root).expanduser().absolute()
    if not zip_path.is_file():
        raise PnnunetError(f"{shown}: file not found\n  fix: pass the path of a model zip")
    if not zipfile.is_zipfile(zip_path):
        raise PnnunetError(f"{shown}: not a zip file\n  fix: pass a model zip (pnnunet_export_model_to_zip or "
                           "nnUNetv2_export_model_to_zip write them)")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise PnnunetError(f"{shown}: cannot be read as a zip ({e})\n  fix: download or copy it again") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        members = [_member_parts(shown, i) for i in infos]
        if len({p for p in members}) != len(members):
            raise PnnunetError(f"{shown}: a file is in the zip twice; nothing was installed\n"
                               "  fix: export the model again")
        models = _installed_models(members, results_root)
        if not models:
            raise PnnunetError(f"{shown}: no model folder (DatasetXXX_Name/<Trainer>__<Plans>__<config>/plans.json) "
                               "inside; nothing was installed\n  fix: pass a zip written by pnnunet_export_model_to_zip "
                               "or nnUNetv2_export_model_to_zip")
        targets = [results_root.joinpath(*p) for p in members]
        _check_no_file_folder_clash(shown, members, results_root)
        todo = [(i, t) for i, t in zip(infos, targets) if not _same_contents(t, i)]
        clashes = [t for _, t in todo if t.exists()]
        if clashes and not overwrite:
            more = f" and {len(clashes) - 1} more file(s)" if len(clashes) > 1 else ""
            raise PnnunetError(f"{clashes[0]}: exists with other contents{more}; nothing was installed\n"
                               f"  fix: pass {OVERWRITE_FLAG} to replace the installed model, or install into another "
                               "results folder (set pnnunet_results)")
        try:
            results_root.mkdir(parents=True, exist_ok=True)
            needed, free = sum(i.file_size for i, _ in todo), shutil.disk_usage(results_root).free
        except OSError as e:
            raise PnnunetError(f"{results_root}: cannot be written ({e.strerror})\n  fix: choose a writable "
                               "results folder (pnnunet_results)") from None
        if needed > free:
            raise PnnunetError(f"{results_root}: {needed / 1e9:.2f} GB needed to install {Path(shown).name}, "
                               f"{free / 1e9:.2f} GB free; nothing was installed\n  fix: free space, or install "
                               "into another results folder (set pnnunet_results)")
        _write_members(zf, shown, todo)
    log.info("installed %s into %s (%d files, %d already identical)", Path(shown).name, results_root, len(todo),
             len(infos) - len(todo))
    for m in models:
        log.info("  %s/%s: folds %s\n  predict with: %s", m.model_dir.parent.name, m.model_dir.name,
                 " ".join(map(str, m.folds)) or "none", m.predict_command())
    return models
