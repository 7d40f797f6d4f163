"""One job, in its own process: ``python -m pnnunet.app.worker JOB_DIR``.

Reads ``job.json``, turns the upload into the model's input folder (a DICOM series through
:func:`pnnunet.dataset.dicom.convert_dicom`), predicts it through :mod:`pnnunet.inference.pipeline`
(``choose_models`` + ``predict_folder``, as ``pnnunet_predict`` does), writes the statistics
(:mod:`pnnunet.evaluation.statistics`) and the files the viewer loads, and ends with ``result.json``:
``done`` with the files, or ``failed`` with the error in plain words. ``progress.json`` follows the
stages (importing, preparing, preprocessing, predicting with fold and tile i/N, exporting,
statistics). Killing the process group is how a job is cancelled.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
import traceback
from pathlib import Path

import SimpleITK as sitk

import pnnunet
from pnnunet.app.models import BEST, find_model, label_names
from pnnunet.app.uploads import image_ending
from pnnunet.cli.common import setup_logging
from pnnunet.dataset.dicom import convert_dicom
from pnnunet.dataset.dicom_seg import write_dicom_seg
from pnnunet.dataset.label_colors import label_colors
from pnnunet.defaults import parse_model_dir_name
from pnnunet.errors import PnnunetError
from pnnunet.evaluation.clinical_outputs import write_clinical_outputs
from pnnunet.fileio import load_json, write_json_atomic
from pnnunet.runtime.device import import_paddle

log = logging.getLogger("pnnunet.app.worker")
PROGRESS_INTERVAL = 0.25  # seconds between progress.json writes within one stage


class ProgressFile:
    """Writes the latest progress event to ``progress.json`` (at once on a new stage, else throttled)."""

    def __init__(self, path: Path):
        self.path, self.last, self.stage = path, 0.0, None

    def __call__(self, event: dict) -> None:
        now = time.monotonic()
        if event.get("stage") != self.stage or now - self.last >= PROGRESS_INTERVAL or \
                event.get("tile") == event.get("tiles"):
            self.stage, self.last = event.get("stage"), now
            write_json_atomic(self.path, {**event, "time": time.time()})


def _as_file(src: Path, dst: Path) -> Path:
    """``src`` as ``dst`` (copied when the ending is the same, else converted; geometry kept)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if image_ending(src.name) == image_ending(dst.name):
        shutil.copyfile(src, dst)
    else:
        sitk.WriteImage(sitk.ReadImage(str(src)), str(dst), True)
    return dst


def _input_images(job: dict, folder: Path, ending: str, progress: ProgressFile) -> tuple[list[str], list]:
    """Fill ``folder/images`` with ``CASE_0000<ending>``; the case names and, for DICOM, the converted
    series (:class:`pnnunet.dataset.dicom.DicomCase`, their source files stay in the job folder)."""
    images = folder / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir()
    upload = job["input"]
    source = folder / upload["path"]
    if upload["kind"] == "image":
        _as_file(source, images / f"{upload['name']}_0000{ending}")
        return [upload["name"]], []
    progress({"stage": "importing DICOM"})
    converted = folder / "dicom_nifti"
    if converted.exists():
        shutil.rmtree(converted)
    dicom_cases = convert_dicom(source, converted)  # a folder: the series' files stay where they are
    for case in dicom_cases:
        _as_file(case.image_file, images / f"{case.case}_0000{ending}")
    return [c.case for c in dicom_cases], dicom_cases


def _dicom_seg(seg: Path, dicom_case, dataset_json: dict, out: Path, description: str) -> str | None:
    """Write the DICOM-SEG of ``seg``; None, or why it was not written (highdicom missing, regions)."""
    try:
        write_dicom_seg(seg, dicom_case.series.files, dataset_json["labels"], out, dataset_json,
                        algorithm=description[:64], algorithm_version=pnnunet.__version__)
    except PnnunetError as e:
        log.warning("no DICOM-SEG: %s", e)
        return str(e).splitlines()[0]
    return None


def _colors_by_value(labels: dict, dataset_json: dict) -> dict[int, list[int]]:
    """Label value -> RGB, the colours of the report and the DICOM-SEG (:mod:`pnnunet.dataset.label_colors`)."""
    by_name = label_colors(labels, dataset_json)
    return {value: list(by_name[name]) for value, name in label_names(labels).items() if name in by_name}


def _choose(models_root: Path, entry):
    from pnnunet.inference import pipeline  # deferred: imports Paddle at load time (after import_paddle())

    results = models_root / entry.dataset
    if entry.model == BEST:
        return pipeline, pipeline.choose_models(results)
    trainer, plans, configuration = parse_model_dir_name(entry.model)
    return pipeline, pipeline.choose_models(results, configuration, trainer, plans)


def run_job(folder: Path) -> dict:
    """Run the job in ``folder``; the contents of ``result.json`` (also written)."""
    start = time.perf_counter()
    job = load_json(folder / "job.json")
    progress = ProgressFile(folder / "progress.json")
    progress({"stage": "starting"})
    models_root = Path(job["models_root"])
    entry = find_model(models_root, job["model"])
    if len(entry.channels) > 1:
        raise PnnunetError(f"the model {entry.key} needs {len(entry.channels)} channels "
                           f"({', '.join(map(str, entry.channels.values()))}); the platform takes one image per job\n"
                           "  fix: pick a single-channel model, or use pnnunet_predict")
    ending = entry.file_ending
    progress({"stage": "importing"})
    cases, dicom_cases = _input_images(job, folder, ending, progress)
    import_paddle()
    pipeline, choice = _choose(models_root, entry)
    output = folder / "output"
    settings = pipeline.PredictionSettings(folds=job.get("folds") or None, use_tta=job.get("tta", True),
                                           progress=False, num_preprocessing_workers=0, num_export_workers=0,
                                           on_progress=progress)
    predicted = time.perf_counter()
    pipeline.predict_folder(folder / "images", output, choice, settings)
    predict_seconds = time.perf_counter() - predicted
    progress({"stage": "statistics and report"})
    case = cases[0]
    image, seg = folder / "images" / f"{case}_0000{ending}", output / f"{case}{ending}"
    view = folder / "view"
    _as_file(image, view / "image.nii.gz")
    _as_file(seg, view / "seg.nii.gz")
    dataset_json = load_json(output / "dataset.json")  # the model's, as predict_folder wrote it
    model_info = {"model": choice.describe(), "folds": " ".join(map(str, job.get("folds") or [])) or "all trained",
                  "mirroring (TTA)": "on" if job.get("tta", True) else "off"}
    (outputs,) = [o for o in write_clinical_outputs(folder / "images", output, dataset_json, stats=True, report=True,
                                                    dicom_cases=dicom_cases, model_info=model_info)
                  if o.case == case]
    files = {"segmentation": f"output/{case}{ending}", "statistics_csv": "output/statistics.csv",
             "statistics_json": f"output/{outputs.statistics.name}",
             "report_html": f"output/{outputs.report_html.name}", "report_png": f"output/{outputs.report_png.name}"}
    notes = []
    if dicom_cases:
        progress({"stage": "DICOM-SEG"})
        dicom_case = next(c for c in dicom_cases if c.case == case)
        why_not = _dicom_seg(seg, dicom_case, dataset_json, output / f"{case}_seg.dcm", choice.describe())
        if why_not is None:
            files["dicom_seg"] = f"output/{case}_seg.dcm"
        else:
            notes.append(f"no DICOM-SEG: {why_not}")
    result = {"state": "done", "message": f"segmented {case}" + (f" (and {len(cases) - 1} more series)"
                                                                   if len(cases) > 1 else ""),
              "cases": cases, "case": case, "files": files, "labels": label_names(entry.labels),
              "colors": _colors_by_value(entry.labels, dataset_json),
              "model": entry.key, "model_description": choice.describe(), "seconds": time.perf_counter() - start,
              "predict_seconds": predict_seconds, "notes": notes}
    write_json_atomic(folder / "result.json", result)
    progress({"stage": "done"})
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pnnunet.app.worker JOB_DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    setup_logging()
    try:
        run_job(folder)
        return 0
    except PnnunetError as e:
        message = str(e)
    except MemoryError:
        message = "the computer ran out of memory while segmenting this image\n  fix: try a smaller image"
    except Exception as e:  # noqa: BLE001 - the page gets plain words, the log the traceback
        traceback.print_exc()
        message = f"the segmentation failed unexpectedly ({type(e).__name__}: {e}); the job's log.txt has the details"
    print(f"pnnunet: error: {message}", file=sys.stderr)
    write_json_atomic(folder / "result.json", {"state": "failed", "message": message})
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
