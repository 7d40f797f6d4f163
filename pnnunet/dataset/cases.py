"""Find the cases of a raw dataset and of a prediction input folder (reference §1.1).

Training layout: ``imagesTr/{CASE}_{CCCC}{file_ending}`` (one file per channel, 4-digit channel
index) and ``labelsTr/{CASE}{file_ending}``, or an explicit ``"dataset"`` entry in dataset.json.
Hidden files (``.gitkeep``, ``.DS_Store``, macOS ``._*`` files) are skipped everywhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from pnnunet.errors import DatasetError


class CaseScan(NamedTuple):
    """Result of :func:`scan_training_cases`."""

    cases: dict[str, dict]  # complete cases only, sorted by id
    problems: list[DatasetError]  # one per missing, misnamed or extra file
    identifiers: list[str]  # every case id discovered (complete or not), sorted


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _channel_pattern(file_ending: str) -> re.Pattern:
    return re.compile(r"(?P<case>.+)_(?P<ch>\d{4})" + re.escape(file_ending))


def _first_of(problems: list[DatasetError]) -> DatasetError:
    """One DatasetError standing for ``problems`` (the first, with a count of the rest)."""
    first = problems[0]
    if len(problems) == 1:
        return first
    others = "; ".join(str(p.path) for p in problems[1:4])
    more = f" (and {len(problems) - 1} more: {others}{', ...' if len(problems) > 4 else ''})"
    return DatasetError(first.path, first.problem + more, first.fix)


def scan_training_cases(raw_dir: Path, dataset_json: dict) -> CaseScan:
    """Like :func:`get_training_cases` but returns every problem found instead of raising.

    Returns
    -------
    CaseScan : ``cases`` ``{case_id: {"images": [Path, ...], "label": Path}}`` (complete cases, sorted),
        ``problems`` (one DatasetError per missing, misnamed or extra file) and ``identifiers`` (all
        case ids found, complete or not; upstream compares their number with ``numTraining``).
    """
    raw_dir = Path(raw_dir)
    n_ch = len(dataset_json["channel_names"])
    fe = dataset_json["file_ending"]
    if "dataset" in dataset_json:
        return _cases_from_dataset_key(raw_dir, dataset_json["dataset"], n_ch)
    images_dir, labels_dir = raw_dir / "imagesTr", raw_dir / "labelsTr"
    if not images_dir.is_dir():
        fix = f"put the training images into {images_dir} as CASE_0000{fe}, CASE_0001{fe}, ..."
        return CaseScan({}, [DatasetError(images_dir, "imagesTr folder not found", fix)], [])
    files = _visible_files(images_dir)
    if not files:
        return CaseScan({}, [DatasetError(images_dir, "imagesTr is empty",
                                          f"put the training images into it as CASE_0000{fe}, CASE_0001{fe}, ...")],
                        [])
    problems: list[DatasetError] = []
    channels: dict[str, dict[int, Path]] = {}
    pat = _channel_pattern(fe)
    for f in files:
        m = pat.fullmatch(f.name)
        if m is None:
            problems.append(DatasetError(
                f, f"file name does not match CASE_XXXX{fe} (does it use file_ending {fe}?)",
                f"name image files CASE_0000{fe}, CASE_0001{fe}, ... (4-digit channel index) with the "
                f"file_ending {fe} of dataset.json, or change file_ending"))
            continue
        channels.setdefault(m["case"], {})[int(m["ch"])] = f
    cases: dict[str, dict] = {}
    for case in sorted(channels):
        found = channels[case]
        ok = True
        for c in sorted(found):
            if c >= n_ch:
                ok = False
                problems.append(DatasetError(
                    found[c], f"channel {c:04d} but dataset.json declares {n_ch} channel(s) (0000..{n_ch - 1:04d})",
                    "add the channel to channel_names in dataset.json or remove the file"))
        for c in range(n_ch):
            if c not in found:
                ok = False
                problems.append(DatasetError(
                    images_dir / f"{case}_{c:04d}{fe}", f"missing channel {c} of case '{case}'",
                    f"every case needs all {n_ch} channel file(s) CASE_0000{fe} .. CASE_{n_ch - 1:04d}{fe}"))
        label = labels_dir / f"{case}{fe}"
        if not label.is_file():
            ok = False
            problems.append(DatasetError(label, f"missing label file of case '{case}'",
                                         f"add the label map {label.name} to labelsTr (or remove the case's images)"))
        if ok:
            cases[case] = {"images": [found[c] for c in range(n_ch)], "label": label}
    problems += _labels_without_images(labels_dir, fe, set(channels), images_dir)
    return CaseScan(cases, problems, sorted(channels))


def _labels_without_images(labels_dir: Path, fe: str, cases: set[str], images_dir: Path) -> list[DatasetError]:
    """One problem per ``labelsTr/{CASE}{fe}`` whose case has no image file in imagesTr."""
    if not labels_dir.is_dir():
        return []
    out = []
    for f in _visible_files(labels_dir):
        if f.name.endswith(fe) and f.name[: -len(fe)] not in cases:
            case = f.name[: -len(fe)]
            out.append(DatasetError(f, f"label file without image: imagesTr has no {case}_0000{fe}",
                                    f"add the image(s) {images_dir / f'{case}_0000{fe}'} ... or remove the label file"))
    return out


def _expand(raw_dir: Path, p: str) -> Path:
    q = Path(os.path.expandvars(str(p))).expanduser()
    return q if q.is_absolute() else (raw_dir / q).absolute()


def _cases_from_dataset_key(raw_dir: Path, entries: dict, n_ch: int) -> CaseScan:
    """Cases listed in dataset.json's ``"dataset"`` key (paths relative to ``raw_dir``, env vars expanded)."""
    src = raw_dir / "dataset.json"
    if not isinstance(entries, dict) or not entries:
        return CaseScan({}, [DatasetError(src, "the 'dataset' entry must be a non-empty object {case: {images, label}}",
                                          'write "dataset": {"case1": {"images": ["imagesTr/case1_0000.nii.gz"], '
                                          '"label": "labelsTr/case1.nii.gz"}, ...} or remove it to use '
                                          'imagesTr/labelsTr')], [])
    problems: list[DatasetError] = []
    cases: dict[str, dict] = {}
    for case in sorted(entries):
        e = entries[case]
        if not isinstance(e, dict) or not isinstance(e.get("images"), list) or not isinstance(e.get("label"), str):
            problems.append(DatasetError(src, f"'dataset' entry of case '{case}' must be "
                                              '{"images": [paths], "label": path}', "fix the entry"))
            continue
        images = [_expand(raw_dir, p) for p in e["images"]]
        label = _expand(raw_dir, e["label"])
        ok = True
        if len(images) != n_ch:
            ok = False
            problems.append(DatasetError(src, f"case '{case}' lists {len(images)} image(s) but dataset.json "
                                              f"declares {n_ch} channel(s)", "list one image file per channel"))
        for p in images:
            if not p.is_file():
                ok = False
                problems.append(DatasetError(p, f"image file of case '{case}' not found",
                                             "fix the path in dataset.json 'dataset' (relative to the dataset folder)"))
        if not label.is_file():
            ok = False
            problems.append(DatasetError(label, f"label file of case '{case}' not found",
                                         "fix the path in dataset.json 'dataset' (relative to the dataset folder)"))
        if ok:
            cases[case] = {"images": images, "label": label}
    return CaseScan(cases, problems, sorted(entries))


def get_training_cases(raw_dir: Path, dataset_json: dict) -> dict[str, dict]:
    """Training cases of a raw dataset folder (reference §1.1).

    Parameters
    ----------
    raw_dir : the ``DatasetXXX_Name`` folder.
    dataset_json : its validated dataset.json (``channel_names``, ``file_ending``, optional ``dataset``).

    Returns
    -------
    dict : ``{case_id: {"images": [Path per channel, in channel order], "label": Path}}`` sorted by id.

    Raises
    ------
    DatasetError : imagesTr missing or empty, a file not named ``{CASE}_{CCCC}{file_ending}``, a missing
        channel or label file (the expected path is named). With several problems the first is raised
        and the others are counted; :func:`pnnunet.dataset.verify_dataset_integrity` lists them all.
    """
    cases, problems, _ = scan_training_cases(raw_dir, dataset_json)
    if problems:
        raise _first_of(problems)
    return cases


def get_inference_cases(folder: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Cases of a prediction input folder: ``{case_id: [Path per channel]}`` sorted by id (reference §1.1).

    Files are named ``{CASE}_{CCCC}{file_ending}``. For a single-channel dataset the ``_0000`` may be
    left out (challenge ``imagesTs`` folders do): a file ``{CASE}{file_ending}`` is then the case
    ``CASE``, and only ``_0000`` is taken as a channel suffix, so ``img_0001.nii.gz`` is case
    ``img_0001``. DEVIATION(nnU-Net §1.1): upstream requires the suffix at inference.

    Raises
    ------
    DatasetError : folder missing or empty, a file with another ending, a missing or extra channel,
        the same case given with and without ``_0000``.
    """
    folder = Path(folder)
    fe = file_ending
    if not folder.is_dir():
        raise DatasetError(folder, "input folder not found", "pass the folder that holds the images to predict")
    files = _visible_files(folder)
    if not files:
        raise DatasetError(folder, "input folder is empty", f"put the images to predict into it (CASE_0000{fe})")
    bad = [f for f in files if not f.name.endswith(fe)]
    if bad:
        raise _first_of([DatasetError(f, f"does not end with the dataset's file_ending {fe}",
                                      f"convert the input images to {fe} (the format the model was trained on) "
                                      "or remove other files from the folder") for f in bad])
    pat = _channel_pattern(fe)
    channels: dict[str, dict[int, Path]] = {}
    problems: list[DatasetError] = []
    for f in files:
        m = pat.fullmatch(f.name)
        if num_channels == 1 and (m is None or m["ch"] != "0000"):
            case, ch = f.name[: -len(fe)], 0
        elif m is None:
            problems.append(DatasetError(f, f"file name does not match CASE_XXXX{fe}",
                                         f"name the {num_channels} channel files CASE_0000{fe} .. "
                                         f"CASE_{num_channels - 1:04d}{fe}"))
            continue
        else:
            case, ch = m["case"], int(m["ch"])
        if ch in channels.get(case, {}):
            problems.append(DatasetError(f, f"case '{case}' is given twice (with and without _0000: "
                                            f"{channels[case][ch].name})", "keep only one of the two files"))
            continue
        channels.setdefault(case, {})[ch] = f
    if num_channels == 1:
        for case in channels:
            m = pat.fullmatch(case + fe)
            if m and m["case"] in channels and int(m["ch"]) > 0:
                problems.append(DatasetError(
                    channels[case][0], f"looks like channel {m['ch']} of case '{m['case']}', but the model "
                                       "expects 1 channel",
                    "give only the channel the model was trained on (CASE_0000); if these are separate "
                    f"single-channel cases numbered _0000, _0001, ..., add the channel suffix to every file "
                    f"(e.g. {case}_0000{fe})"))
    for case in sorted(channels):
        found = channels[case]
        for c in sorted(found):
            if c >= num_channels:
                problems.append(DatasetError(found[c], f"channel {c:04d} but the model expects {num_channels} "
                                                       f"channel(s) (0000..{num_channels - 1:04d})",
                                             "remove the extra channel files"))
        for c in range(num_channels):
            if c not in found:
                problems.append(DatasetError(folder / f"{case}_{c:04d}{fe}", f"missing channel {c} of case '{case}'",
                                             f"every case needs all {num_channels} channel files"))
    if problems:
        raise _first_of(problems)
    return {case: [channels[case][c] for c in range(num_channels)] for case in sorted(channels)}
