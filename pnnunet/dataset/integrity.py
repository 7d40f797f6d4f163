"""``--verify_dataset_integrity``: check a raw dataset and report every problem at once (reference §1.1-1.2).

Checks, as upstream's ``verify_dataset_integrity`` does: dataset.json has the required keys;
labels are consecutive from 0 (an ignore label counts as the next one); every case has every channel
and a label file; ``numTraining`` equals the number of cases; per case, the image and label
shapes and spacings agree, the channel count is right, there is no NaN, and the label values are
among those in dataset.json. NaN/inf in NIfTI files are counted on the raw voxels read with nibabel
(SimpleITK's NIfTI reader turns them into 0). Origin/direction mismatches between image and label only warn (logged).
In addition to upstream: ``inf`` in images is an error, and unreadable files are reported
per file instead of aborting the check.

Files are only read; nothing under the dataset folder is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pnnunet.dataset.cases import scan_training_cases
from pnnunet.dataset.dataset_json import load_dataset_json
from pnnunet.dataset.labels import LabelInfo
from pnnunet.errors import DatasetError, DatasetProblems
from pnnunet.imageio import reader_writer_by_name, reader_writer_for
from pnnunet.imageio.completeness import nonfinite_counts
from pnnunet.parallel import map_in_pool

log = logging.getLogger(__name__)

# A worker returns plain tuples (DatasetError does not survive pickling): (path, problem, fix).
Problem = tuple[str, str, str]


def check_labels_consecutive(info: LabelInfo, source: Path) -> list[DatasetError]:
    """Labels (plus ignore) must be 0, 1, 2, ... without gaps (reference §1.1, ``np.ediff1d == 1``)."""
    expected = info.expected_values
    gaps = [b for a, b in zip(expected[:-1], expected[1:]) if b - a != 1]
    if not gaps:
        return []
    return [DatasetError(source, f"labels must be consecutive integers 0, 1, 2, ...; found {expected} "
                                 f"(values {gaps} do not follow their predecessor)",
                         "renumber the labels in dataset.json and in the label files without gaps")]


def check_case(case: str, image_files: list[str], label_file: str, reader_name: str, num_channels: int,
               allowed: list[int]) -> tuple[list[Problem], list[str]]:
    """Check one case; returns (problems, warnings). Runs in a worker process, so plain values only.

    Parameters
    ----------
    image_files : the case's channel files in order.
    label_file : its label map.
    reader_name : name of the ImageIO class (``reader_writer_by_name``).
    num_channels : channels declared in dataset.json.
    allowed : label values allowed in the label file (all labels plus ignore).
    """
    rw = reader_writer_by_name(reader_name)
    problems: list[Problem] = []
    warns: list[str] = []
    images = seg = None
    try:
        images, props_img = rw.read_images(image_files)
    except DatasetError as e:
        problems.append((str(e.path), e.problem, e.fix))
    try:
        seg, props_seg = rw.read_seg(label_file)
    except DatasetError as e:
        problems.append((str(e.path), e.problem, e.fix))
    first = image_files[0]
    if images is not None:
        if images.shape[0] != num_channels:
            problems.append((first, f"case '{case}' has {images.shape[0]} image channel(s) but dataset.json "
                                    f"declares {num_channels}",
                             "give one single-channel file per channel (4D files must be split into "
                             "CASE_0000, CASE_0001, ...)"))
        for f, c in zip(image_files, images):
            # SimpleITK's NIfTI reader turns NaN/inf into 0: count them on nibabel's raw voxels there
            raw = nonfinite_counts(f)
            n_nan, n_inf = raw if raw is not None else (int(np.isnan(c).sum()), int(np.isinf(c).sum()))
            counts = [f"{n} {k} voxel(s)" for k, n in (("NaN", n_nan), ("inf", n_inf)) if n]
            if counts:
                problems.append((f, f"image contains {' and '.join(counts)}",
                                 "replace NaN/inf voxels with finite values that make sense for the image"))
    if seg is not None:
        raw = nonfinite_counts(label_file)
        if np.isnan(seg).any() or (raw is not None and sum(raw)):
            problems.append((label_file, "label map contains NaN or inf values", "store the label map as integers"))
        found = np.unique(seg[np.isfinite(seg)])
        unexpected = [v for v in found.tolist() if v not in allowed]
        if unexpected:
            shown = [int(v) if float(v).is_integer() else v for v in unexpected]
            problems.append((label_file, f"label values {shown[:20]} are not in dataset.json 'labels' "
                                         f"(allowed: {allowed}; found: {found.astype(float).tolist()[:20]})",
                             "add them to dataset.json 'labels' or correct the label map"))
        if found.size == 1 and found[0] == 0:
            warns.append(f"{label_file}: only contains background (0); this may or may not be intended")
    if images is not None and seg is not None:
        if images.shape[1:] != seg.shape[1:]:
            problems.append((label_file, f"shape {tuple(seg.shape[1:])} differs from the image's "
                                         f"{tuple(images.shape[1:])} ({Path(first).name})",
                             "image and label must lie on the same voxel grid; resample the label onto the image"))
        if not np.allclose(props_img["spacing"], props_seg["spacing"]):
            problems.append((label_file, f"spacing {props_seg['spacing']} differs from the image's "
                                         f"{props_img['spacing']} ({Path(first).name})",
                             "image and label must have the same spacing; fix the label file's header"))
        gi, gs = props_img.get("sitk_stuff"), props_seg.get("sitk_stuff")
        if gi and gs:
            for key in ("origin", "direction"):
                if len(gi[key]) != len(gs[key]) or not np.allclose(gi[key], gs[key]):
                    warns.append(f"{label_file}: {key} {gs[key]} differs from the image's {gi[key]} "
                                 f"({Path(first).name}); check that image and label are aligned")
    return problems, warns


def _check_case_star(args: tuple) -> tuple[list[Problem], list[str]]:
    return check_case(*args)


def verify_dataset_integrity(raw_dir: Path, num_processes: int = 2) -> None:
    """Check a raw dataset folder and raise one :class:`DatasetProblems` listing every problem.

    Parameters
    ----------
    raw_dir : the ``DatasetXXX_Name`` folder (dataset.json, imagesTr/, labelsTr/).
    num_processes : worker processes for reading the cases (1 = in this process).

    Raises
    ------
    DatasetProblems : with one DatasetError per problem; each names the offending file.
    """
    raw_dir = Path(raw_dir)
    source = raw_dir / "dataset.json"
    try:
        dj = load_dataset_json(source)
        info = LabelInfo.from_dataset_json(dj, source)
    except DatasetError as e:
        raise DatasetProblems([e], what=f"integrity check of {raw_dir.name}") from None
    problems: list[DatasetError] = check_labels_consecutive(info, source)
    cases, scan_problems, identifiers = scan_training_cases(raw_dir, dj)
    problems += scan_problems
    if dj["numTraining"] != len(identifiers):
        problems.append(DatasetError(source, f"numTraining is {dj['numTraining']} but {len(identifiers)} training "
                                             "case(s) were found",
                                     f"set numTraining to {len(identifiers)} (or add the missing cases)"))
    if cases:
        first_image = next(iter(cases.values()))["images"][0]
        override = dj.get("overwrite_image_reader_writer")
        try:
            rw = reader_writer_for(dj["file_ending"], first_image, override)
        except DatasetError:  # the example itself may be broken: then it is reported with its case below
            try:
                rw = reader_writer_for(dj["file_ending"], None, override)
            except DatasetError as e:  # unsupported file_ending or reader name
                raise DatasetProblems(problems + [DatasetError(source, e.problem, e.fix)],
                                      what=f"integrity check of {raw_dir.name}") from None
        jobs = [(case, [str(p) for p in c["images"]], str(c["label"]), rw.name, len(dj["channel_names"]),
                 info.expected_values) for case, c in cases.items()]
        for case_problems, warns in map_in_pool(_check_case_star, [(j,) for j in jobs], num_processes, progress=False):
            problems += [DatasetError(*p) for p in case_problems]
            for w in warns:
                log.warning(w)
    if problems:
        raise DatasetProblems(problems, what=f"integrity check of {raw_dir.name}")
    log.info("integrity check of %s: %d cases OK", raw_dir.name, len(cases))

