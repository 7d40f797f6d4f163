"""The trained models a results root offers: one entry per model folder with trained folds, plus
one per dataset whose ``pnnunet_find_best_config`` choice exists (``inference_instructions.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pnnunet.defaults import DEFAULT_CHECKPOINT, INFORMATION_FILE, parse_model_dir_name
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json
from pnnunet.inference.model_folder import find_trained_folds, trained_model_dirs

BEST = "best"  # the model name of a dataset's find_best_config choice


@dataclass(frozen=True)
class ModelEntry:
    """One choice on the page. ``model`` is a model folder name or :data:`BEST`."""

    key: str  # "<dataset>/<model>", what the page sends back
    dataset: str
    model: str
    configuration: str
    trainer: str
    plans: str
    folds: list
    labels: dict  # name -> value (dataset.json "labels", background and ignore included)
    channels: dict  # dataset.json channel_names
    file_ending: str

    def to_json(self) -> dict:
        return asdict(self)


def _entry(dataset_dir: Path, model_dir: Path, model: str, configuration: str, trainer: str, plans: str,
           folds: list) -> ModelEntry | None:
    dj_file = model_dir / "dataset.json"
    if not dj_file.is_file():
        return None
    try:
        dj = load_json(dj_file)
        labels, channels, ending = dict(dj["labels"]), dict(dj.get("channel_names", dj.get("modality", {}))), \
            dj["file_ending"]
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable model folder is not offered (pnnunet_predict would say why)
    return ModelEntry(f"{dataset_dir.name}/{model}", dataset_dir.name, model, configuration, trainer, plans,
                      [f if f == "all" else int(f) for f in folds], labels, channels, ending)


def list_models(results_root: Path, checkpoint: str = DEFAULT_CHECKPOINT) -> list[ModelEntry]:
    """Every trained model under ``results_root`` (``DatasetXXX_Name/<Trainer>__<Plans>__<config>``)."""
    out: list[ModelEntry] = []
    if not results_root.is_dir():
        return out
    for dataset_dir in sorted(p for p in results_root.iterdir() if p.is_dir()):
        dirs = trained_model_dirs(dataset_dir, checkpoint)
        if (dataset_dir / INFORMATION_FILE).is_file() and dirs:
            best = _best_entry(dataset_dir, dirs, checkpoint)
            if best is not None:
                out.append(best)
        for model_dir in dirs:
            trainer, plans, configuration = parse_model_dir_name(model_dir.name)
            entry = _entry(dataset_dir, model_dir, model_dir.name, configuration, trainer, plans,
                           find_trained_folds(model_dir, checkpoint))
            if entry is not None:
                out.append(entry)
    return out


def _best_entry(dataset_dir: Path, dirs: list[Path], checkpoint: str) -> ModelEntry | None:
    try:
        best = load_json(dataset_dir / INFORMATION_FILE)["best_model_or_ensemble"]
        names = [m["configuration"] for m in best["selected_model_or_models"]]
    except (ValueError, KeyError, TypeError):
        return None
    description = " + ".join(names) + (" + postprocessing" if best.get("postprocessing_file") else "")
    return _entry(dataset_dir, dirs[0], BEST, f"best: {description}", "", "", find_trained_folds(dirs[0], checkpoint))


def find_model(results_root: Path, key: str) -> ModelEntry:
    """The entry named ``key`` (``<dataset>/<model>``); a plain error if it is not offered."""
    for entry in list_models(results_root):
        if entry.key == key:
            return entry
    raise PnnunetError(f"model '{key}' is not one of the trained models under {results_root}\n"
                       "  fix: pick a model from the list (reload the page if models were added or removed)")


def label_names(labels: dict) -> dict[int, str]:
    """Label value -> name for the foreground labels (regions: their first value), as the viewer shows them."""
    out = {}
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if name not in ("background", "ignore") and values:
            out[int(values[0])] = str(name)
    return out
