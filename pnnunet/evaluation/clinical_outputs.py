"""What ``pnnunet_predict --stats --report --dicom_seg`` writes beside the predicted label maps.

For every predicted case ``CASE`` in the output folder: ``CASE_statistics.json`` and one
``statistics.csv`` over all cases (``--stats``), ``CASE_report.html`` + ``CASE_report.png``
(``--report``), ``CASE_seg.dcm`` referencing the source series and ``CASE_dicom.json`` (the series'
ids) when the input was DICOM (``--dicom_seg``). Works from files only (the image, the label map, the
model's dataset.json), so a server can call it after :func:`pnnunet.inference.pipeline.predict_folder`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnnunet.dataset.cases import get_inference_cases
from pnnunet.dataset.dicom import DicomCase
from pnnunet.dataset.dicom_seg import write_dicom_seg
from pnnunet.errors import DatasetError
from pnnunet.evaluation.case_report import write_case_report
from pnnunet.evaluation.statistics import case_statistics, statistics_rows, write_rows_csv, write_statistics
from pnnunet.fileio import load_json

log = logging.getLogger(__name__)


@dataclass
class CaseOutputs:
    case: str
    segmentation: Path
    statistics: Path | None = None
    report_html: Path | None = None
    report_png: Path | None = None
    dicom_seg: Path | None = None


def write_clinical_outputs(input_folder: Path | str, output_folder: Path | str, dataset_json: dict, *,
                           stats: bool = True, report: bool = True, dicom_cases: Sequence[DicomCase] | None = None,
                           dicom_seg: bool = False, model_info: Mapping[str, Any] | None = None) -> list[CaseOutputs]:
    """Statistics, reports and DICOM-SEGs of the cases predicted from ``input_folder`` into ``output_folder``.

    Parameters
    ----------
    input_folder : the prediction input (NIfTI cases; for DICOM input, the converted folder)
    output_folder : holds ``CASE<file_ending>`` label maps
    dataset_json : the model's dataset.json (labels, file_ending, optional label_colors)
    dicom_cases : the converted series (:func:`pnnunet.dataset.dicom.open_dicom_cases`), if DICOM input
    dicom_seg : write ``CASE_seg.dcm`` (needs ``dicom_cases`` whose source files still exist)
    """
    output = Path(output_folder)
    fe = dataset_json["file_ending"]
    n_channels = len(dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": ""})
    cases = get_inference_cases(Path(input_folder), fe, n_channels)
    by_case = {c.case: c for c in (dicom_cases or [])}
    if dicom_seg and not by_case:
        raise DatasetError(input_folder, "--dicom_seg needs a DICOM input (a folder or zip of DICOM files)",
                           "pass the DICOM series to -i, or leave --dicom_seg out")
    labels = dataset_json["labels"]
    done, rows = [], []
    for i, (case, images) in enumerate(cases.items(), 1):
        seg = output / f"{case}{fe}"
        if not seg.is_file():
            log.warning("%s: no prediction %s, skipped", case, seg)
            continue
        out = CaseOutputs(case, seg)
        info = None
        if case in by_case:
            sidecar = output / f"{case}_dicom.json"
            shutil.copyfile(by_case[case].sidecar, sidecar)
            info = load_json(sidecar)
        st = case_statistics(images[0], seg, labels)
        if info is not None:  # the converted image is scratch: name the DICOM source instead
            st["image"], st["series_instance_uid"] = info["source"], info["series_instance_uid"]
        if stats:
            out.statistics = write_statistics(st, output / f"{case}_statistics.json")
            rows += statistics_rows(st)
        if report:
            out.report_html, out.report_png = write_case_report(images[0], seg, output, labels, st, model_info,
                                                                dataset_json=dataset_json, case_info=info)
        if dicom_seg:
            name = (model_info or {}).get("model", "pnnunet")
            out.dicom_seg = write_dicom_seg(seg, by_case[case].series.files, labels, output / f"{case}_seg.dcm",
                                            dataset_json, algorithm=str(name)[:64])
        log.info("[%d/%d] %s: %s", i, len(cases), case, ", ".join(
            p.name for p in (out.statistics, out.report_html, out.dicom_seg) if p is not None) or "nothing to write")
        done.append(out)
    if stats and rows:
        write_rows_csv(rows, output / "statistics.csv")
    log.info("clinical outputs for %d case(s) in %s", len(done), output)
    return done

