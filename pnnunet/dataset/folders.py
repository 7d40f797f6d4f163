"""Folders of segmentations or predictions: their files, their dataset.json, their reader/writer.

Used by postprocessing, evaluation and ensembling, which all take "a folder of label maps" plus,
optionally, the model's dataset.json and plans to know the file ending and the reader/writer.
"""

from __future__ import annotations

from pathlib import Path

from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.fileio import load_json
from pnnunet.imageio import ImageIO, reader_writer_by_name, reader_writer_for


def segmentation_files(folder: Path, file_ending: str) -> list[str]:
    """Sorted names of the ``*{file_ending}`` files in ``folder`` (hidden temporaries skipped)."""
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith("."))


def _load_optional(value: dict | Path | str | None, fallback: Path, what: str) -> dict | None:
    if isinstance(value, dict):
        return value
    path = Path(value) if value is not None else fallback
    if not path.is_file():
        if value is not None:
            raise DatasetError(path, f"{what} not found", f"check the path of the {what}")
        return None
    return load_json(path)


def folder_dataset_json(dataset_json: dict | Path | str | None, folder: Path) -> dict:
    """``dataset_json`` itself (dict), the file it names, or ``folder/dataset.json``; a clear error if missing."""
    dj = _load_optional(dataset_json, folder / "dataset.json", "dataset.json")
    if dj is None:
        raise DatasetError(folder / "dataset.json", "dataset.json not found (needed for the labels and file ending)",
                           "pass the model's dataset.json explicitly (-dataset_json / -djfile)")
    return dj


def resolve_io(folder: Path, dataset_json: dict | Path | str | None = None, plans: dict | Path | str | None = None,
               reader_writer: ImageIO | None = None, file_ending: str | None = None) -> tuple[ImageIO, str]:
    """Reader/writer and file ending for the segmentations in ``folder``.

    ``file_ending`` comes from the argument, else ``dataset_json`` (dict or file), else
    ``folder/dataset.json``. The reader/writer comes from the argument, else the plans'
    ``image_reader_writer`` (``plans`` or ``folder/plans.json``), else the file ending and the
    first file (as for a dataset, reference §1.2).
    """
    dj = None
    if file_ending is None or reader_writer is None:
        dj = _load_optional(dataset_json, folder / "dataset.json", "dataset.json")
    if file_ending is None:
        if dj is None or "file_ending" not in dj:
            raise DatasetError(folder, "the file ending of the segmentations is unknown (no dataset.json here)",
                               "pass -dataset_json (the model's dataset.json) or -plans_json/-dataset_json")
        file_ending = dj["file_ending"]
    if reader_writer is None:
        pl = _load_optional(plans, folder / "plans.json", "plans file")
        if pl is not None and pl.get("image_reader_writer"):
            reader_writer = reader_writer_by_name(pl["image_reader_writer"])
        else:
            files = segmentation_files(folder, file_ending) if folder.is_dir() else []
            override = dj.get("overwrite_image_reader_writer") if dj else None
            reader_writer = reader_writer_for(file_ending, folder / files[0] if files else None, override)
    return reader_writer, file_ending


def check_distinct_folders(input_folder: Path, output_folder: Path) -> None:
    """Refuse to write results into the input folder (its files would be overwritten)."""
    if output_folder.expanduser().resolve() == input_folder.expanduser().resolve():
        raise PnnunetError(f"the output folder {output_folder} is the input folder\n"
                           "  fix: choose a different output folder (-o); the input is never overwritten")
